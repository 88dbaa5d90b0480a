"""The networks of a TRPO agent: a categorical or diagonal-Gaussian policy and a value function.

Each network is a ``tf.Module`` of plain ``tf.Variable``s (``trainable_variables`` is what
``NaturalGradient.minimize`` and Adam update) with two forward passes computing the same MLP:

* TensorFlow (``outputs`` / ``__call__``), differentiated in the update;
* NumPy (:func:`mlp_forward` on :meth:`numpy_params`), used while collecting rollouts, where a
  64-64 MLP on one batch of observations costs ~10 µs instead of ~150 µs per ``tf.function``.

Policy outputs and their distribution (``natgrad.distributions``):

* ``CategoricalPolicy``: ``logits [N, K]``, ``CATEGORICAL``.
* ``GaussianPolicy``: ``(mean [N, D], log_std [D])``, ``DIAGONAL_GAUSSIAN``; ``log_std`` is a
  trainable, state-independent ``tf.Variable`` initialised to ``log_std_init``.
* ``MLPPolicy``: an MLP feeding any :mod:`agents.heads` head (MultiDiscrete and MultiBinary
  actions); ``distribution`` is the head's.

Weights are initialised orthogonally (hidden gain √2, policy output 0.01, value output 1, as
in the PPO/TRPO implementations of SB3 and CleanRL) from a seeded NumPy ``Generator``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from agents.heads import sample_categorical
from natgrad import distributions

TF_ACTIVATIONS = {"tanh": tf.tanh, "relu": tf.nn.relu, "elu": tf.nn.elu}


def _np_elu(x):
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


NUMPY_ACTIVATIONS = {"tanh": np.tanh, "relu": lambda x: np.maximum(x, 0.0), "elu": _np_elu}


def orthogonal(rng: np.random.Generator, shape: tuple[int, int], gain: float) -> np.ndarray:
    """An ``[in, out]`` matrix with orthonormal rows or columns, times ``gain`` (Saxe et al.)."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    q = q if rows >= cols else q.T
    return gain * q[:rows, :cols]


class MLP(tf.Module):
    """``x -> act(x W₁ + b₁) -> … -> x W_L + b_L``: ``[N, in] -> [N, out]``."""

    def __init__(self, in_dim: int, hidden: tuple, out_dim: int, *, activation: str,
                 rng: np.random.Generator, output_gain: float, dtype=tf.float32, name=None):
        super().__init__(name=name)
        sizes = [in_dim, *hidden, out_dim]
        gains = [np.sqrt(2.0)] * len(hidden) + [output_gain]
        self.activation = activation
        self.kernels = [
            tf.Variable(orthogonal(rng, (a, b), g), dtype=dtype, name=f"kernel_{i}")
            for i, (a, b, g) in enumerate(zip(sizes[:-1], sizes[1:], gains, strict=True))
        ]
        self.biases = [tf.Variable(tf.zeros([b], dtype), name=f"bias_{i}")
                       for i, b in enumerate(sizes[1:])]

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        act = TF_ACTIVATIONS[self.activation]
        for i, (w, b) in enumerate(zip(self.kernels, self.biases, strict=True)):
            x = tf.matmul(x, w) + b
            if i < len(self.kernels) - 1:
                x = act(x)
        return x

    def numpy_params(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """A NumPy copy of the weights, ``[(W₁, b₁), …]``, for :func:`mlp_forward`."""
        return [(w.numpy(), b.numpy()) for w, b in zip(self.kernels, self.biases, strict=True)]


def mlp_forward(params: list, x: np.ndarray, activation: str) -> np.ndarray:
    """The NumPy twin of :meth:`MLP.__call__`: ``[N, in] -> [N, out]``."""
    act = NUMPY_ACTIVATIONS[activation]
    *hidden, (w_out, b_out) = params
    for w, b in hidden:
        x = act(np.add(np.matmul(x, w), b))
    return np.add(np.matmul(x, w_out), b_out)


class CategoricalPolicy(tf.Module):
    """``π(a|s) = softmax(logits(s))_a`` over ``n_actions`` discrete actions."""

    distribution = distributions.CATEGORICAL

    def __init__(self, obs_dim: int, n_actions: int, *, hidden=(64, 64), activation="tanh",
                 rng: np.random.Generator, dtype=tf.float32):
        super().__init__(name="categorical_policy")
        self.activation = activation
        self.logits_net = MLP(obs_dim, tuple(hidden), n_actions, activation=activation, rng=rng,
                              output_gain=0.01, dtype=dtype)

    def outputs(self, obs: tf.Tensor) -> tf.Tensor:
        """``logits [N, K]``."""
        return self.logits_net(obs)

    @staticmethod
    def log_prob(outputs, actions: tf.Tensor) -> tf.Tensor:
        """``log π(a_n|s_n)``: ``[N]``."""
        return distributions.categorical_log_prob(outputs, actions)

    @staticmethod
    def entropy(outputs) -> tf.Tensor:
        """``H[π(·|s_n)]``: ``[N]``."""
        return distributions.categorical_entropy(outputs)

    def numpy_params(self) -> dict:
        return {"net": self.logits_net.numpy_params()}

    def numpy_act(self, params: dict, obs: np.ndarray, rng: np.random.Generator,
                  deterministic: bool = False) -> np.ndarray:
        """Actions ``[N]`` (int64) for observations ``[N, obs_dim]``: argmax or a sample."""
        logits = mlp_forward(params["net"], obs, self.activation)
        if deterministic:
            return np.argmax(logits, axis=-1)
        return sample_categorical(logits, rng)


class GaussianPolicy(tf.Module):
    """``π(a|s) = N(a; μ(s), diag(exp(2·log_std)))`` with a state-independent ``log_std``."""

    distribution = distributions.DIAGONAL_GAUSSIAN

    def __init__(self, obs_dim: int, action_dim: int, *, hidden=(64, 64), activation="tanh",
                 log_std_init: float = 0.0, rng: np.random.Generator, dtype=tf.float32):
        super().__init__(name="gaussian_policy")
        self.activation = activation
        self.mean_net = MLP(obs_dim, tuple(hidden), action_dim, activation=activation, rng=rng,
                            output_gain=0.01, dtype=dtype)
        self.log_std = tf.Variable(tf.fill([action_dim], tf.cast(log_std_init, dtype)),
                                   trainable=True, name="log_std")

    def outputs(self, obs: tf.Tensor) -> tuple[tf.Tensor, tf.Variable]:
        """``(mean [N, D], log_std [D])``."""
        return self.mean_net(obs), self.log_std

    @staticmethod
    def log_prob(outputs, actions: tf.Tensor) -> tf.Tensor:
        """``Σ_d log N(a_d; μ_d, σ_d²)``: ``[N]``."""
        mean, log_std = outputs
        return distributions.diagonal_gaussian_log_prob(mean, log_std, actions)

    @staticmethod
    def entropy(outputs) -> tf.Tensor:
        """``Σ_d (log σ_d + ½ log 2πe)``: ``[N]``."""
        mean, log_std = outputs
        return distributions.diagonal_gaussian_entropy(mean, log_std)

    def numpy_params(self) -> dict:
        return {"net": self.mean_net.numpy_params(), "log_std": self.log_std.numpy()}

    def numpy_act(self, params: dict, obs: np.ndarray, rng: np.random.Generator,
                  deterministic: bool = False) -> np.ndarray:
        """Unclipped actions ``[N, D]``: the mean, or ``μ + σ·ε`` with ``ε ~ N(0, I)``."""
        mean = mlp_forward(params["net"], obs, self.activation)
        if deterministic:
            return mean
        return mean + np.exp(params["log_std"]) * rng.standard_normal(mean.shape)


class MLPPolicy(tf.Module):
    """An MLP ``[N, obs_dim] -> z [N, head.out_dim]`` and an action ``head`` on top of it."""

    def __init__(self, obs_dim: int, head: tf.Module, *, hidden=(64, 64), activation="tanh",
                 rng: np.random.Generator, dtype=tf.float32):
        super().__init__(name="mlp_policy")
        self.activation = activation
        self.head = head
        self.distribution = head.distribution
        self.net = MLP(obs_dim, tuple(hidden), head.out_dim, activation=activation, rng=rng,
                       output_gain=0.01, dtype=dtype)

    def outputs(self, obs: tf.Tensor):
        return self.head.outputs(self.net(obs))

    def log_prob(self, outputs, actions: tf.Tensor) -> tf.Tensor:
        """``log π(a_n|s_n)``: ``[N]``."""
        return self.head.log_prob(outputs, actions)

    def entropy(self, outputs) -> tf.Tensor:
        """``H[π(·|s_n)]``: ``[N]``."""
        return self.head.entropy(outputs)

    def numpy_params(self) -> dict:
        return {"net": self.net.numpy_params(), **self.head.numpy_params()}

    def numpy_act(self, params: dict, obs: np.ndarray, rng: np.random.Generator,
                  deterministic: bool = False) -> np.ndarray:
        """Actions ``[N, ...]`` for observations ``[N, obs_dim]`` (see the head)."""
        z = mlp_forward(params["net"], obs, self.activation)
        return self.head.numpy_act(z, params, rng, deterministic)


class ValueFunction(tf.Module):
    """``V(s)``: ``[N, obs_dim] -> [N]``."""

    def __init__(self, obs_dim: int, *, hidden=(64, 64), activation="tanh",
                 rng: np.random.Generator, dtype=tf.float32):
        super().__init__(name="value_function")
        self.activation = activation
        self.net = MLP(obs_dim, tuple(hidden), 1, activation=activation, rng=rng,
                       output_gain=1.0, dtype=dtype)

    def __call__(self, obs: tf.Tensor) -> tf.Tensor:
        return self.net(obs)[:, 0]

    def numpy_params(self) -> list:
        return self.net.numpy_params()

    def numpy_values(self, params: list, obs: np.ndarray) -> np.ndarray:
        """``V(s)`` in NumPy: ``[N, obs_dim] -> [N]``."""
        return mlp_forward(params, obs, self.activation)[:, 0]
