"""Action heads: from a network's last layer ``z [N, out_dim]`` to a distribution over actions.

Each head is a ``tf.Module`` (its variables, if any, are trained with the network) that knows

* ``out_dim``, the width of the layer feeding it, and its ``distribution``
  (:class:`natgrad.distributions.OutputDistribution`: KL and Fisher product);
* ``outputs(z)``: the distribution's outputs, what ``kl`` and ``fisher_vector_product`` take;
* ``log_prob(outputs, actions) [N]`` and ``entropy(outputs) [N]``;
* ``numpy_act(z, params, rng, deterministic)``: actions sampled in NumPy from the same ``z``
  (``params`` from ``numpy_params()``), so rollouts draw from the agent's one seeded NumPy
  ``Generator``.

| action space | head | outputs | deterministic action |
|---|---|---|---|
| ``Discrete(K)`` | :class:`CategoricalHead` | logits ``[N, K]`` | argmax |
| ``Box(D)`` | :class:`GaussianHead` | ``(mean [N, D], log_std [D])`` | mean |
| ``MultiDiscrete(nvec)`` | :class:`MultiCategoricalHead` | logits ``[N, Σnvec]`` | argmax each |
| ``MultiBinary(D)`` | :class:`BernoulliHead` | logits ``[N, D]`` | ``z > 0`` |
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import tensorflow as tf

from natgrad import distributions


def sample_categorical(logits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One draw per row of ``softmax(logits)`` by inverse CDF: ``[N, K] -> [N]`` (int64)."""
    # The ufuncs' reduce/accumulate are max/cumsum/sum's arithmetic without their per-call
    # overhead: this runs every env step, on a few rows.
    z = np.exp(logits - np.maximum.reduce(logits, axis=-1, keepdims=True))
    cdf = np.add.accumulate(z, axis=-1)
    u = rng.random(len(logits))[:, None] * cdf[:, -1:]
    return np.minimum(np.add.reduce(cdf < u, axis=-1, dtype=np.int64), logits.shape[-1] - 1)


class CategoricalHead(tf.Module):
    """``π(a|s) = softmax(z)_a``."""

    distribution = distributions.CATEGORICAL

    def __init__(self, n: int):
        super().__init__(name="categorical_head")
        self.out_dim = int(n)

    def outputs(self, z):
        return z

    def log_prob(self, outputs, actions):
        return distributions.categorical_log_prob(outputs, actions)

    def entropy(self, outputs):
        return distributions.categorical_entropy(outputs)

    def numpy_params(self) -> dict:
        return {}

    def numpy_act(self, z, params, rng, deterministic=False):
        return np.argmax(z, axis=-1) if deterministic else sample_categorical(z, rng)


class GaussianHead(tf.Module):
    """``π(a|s) = N(a; z, diag(exp(2·log_std)))``, ``log_std [D]`` trained, state-independent."""

    distribution = distributions.DIAGONAL_GAUSSIAN

    def __init__(self, d: int, log_std_init: float = 0.0, dtype=tf.float32):
        super().__init__(name="gaussian_head")
        self.out_dim = int(d)
        self.log_std = tf.Variable(tf.fill([d], tf.cast(log_std_init, dtype)), name="log_std")

    def outputs(self, z):
        return z, self.log_std

    def log_prob(self, outputs, actions):
        return distributions.diagonal_gaussian_log_prob(*outputs, actions)

    def entropy(self, outputs):
        return distributions.diagonal_gaussian_entropy(*outputs)

    def numpy_params(self) -> dict:
        return {"log_std": self.log_std.numpy()}

    def numpy_act(self, z, params, rng, deterministic=False):
        if deterministic:
            return z
        return z + np.exp(params["log_std"]) * rng.standard_normal(z.shape)


class MultiCategoricalHead(tf.Module):
    """``π(a|s) = Π_m softmax(z_m)_{a_m}``: independent categoricals, ``nvec[m]`` classes each."""

    def __init__(self, nvec):
        super().__init__(name="multi_categorical_head")
        self.nvec = tuple(int(k) for k in nvec)
        self.out_dim = sum(self.nvec)
        self.distribution = distributions.multi_categorical(self.nvec)
        self._edges = np.cumsum(self.nvec)[:-1]

    def outputs(self, z):
        return z

    def log_prob(self, outputs, actions):
        return distributions.multi_categorical_log_prob(outputs, actions, self.nvec)

    def entropy(self, outputs):
        return distributions.multi_categorical_entropy(outputs, self.nvec)

    def numpy_params(self) -> dict:
        return {}

    def numpy_act(self, z, params, rng, deterministic=False):
        parts = np.split(z, self._edges, axis=-1)
        if deterministic:
            return np.stack([np.argmax(p, axis=-1) for p in parts], axis=-1)
        return np.stack([sample_categorical(p, rng) for p in parts], axis=-1)


class BernoulliHead(tf.Module):
    """``π(a|s) = Π_d σ(z_d)^{a_d} (1 − σ(z_d))^{1−a_d}``: independent binary units."""

    distribution = distributions.INDEPENDENT_BERNOULLI

    def __init__(self, d: int):
        super().__init__(name="bernoulli_head")
        self.out_dim = int(d)

    def outputs(self, z):
        return z

    def log_prob(self, outputs, actions):
        return distributions.independent_bernoulli_log_prob(outputs, actions)

    def entropy(self, outputs):
        return distributions.independent_bernoulli_entropy(outputs)

    def numpy_params(self) -> dict:
        return {}

    def numpy_act(self, z, params, rng, deterministic=False):
        if deterministic:
            return (z > 0).astype(np.int64)
        return (rng.random(z.shape) * (1.0 + np.exp(-z)) < 1.0).astype(np.int64)  # u < σ(z)


def make_head(action_space, *, log_std_init: float = 0.0, dtype=tf.float32):
    """The head for ``action_space`` (see the table above)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return CategoricalHead(int(action_space.n))
    if isinstance(action_space, gym.spaces.MultiDiscrete):
        return MultiCategoricalHead(action_space.nvec)
    if isinstance(action_space, gym.spaces.MultiBinary):
        return BernoulliHead(int(action_space.shape[0]))
    return GaussianHead(int(action_space.shape[0]), log_std_init, dtype)
