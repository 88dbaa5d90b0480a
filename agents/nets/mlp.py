"""The MLP trunk: plain ``tf.Variable`` weights with a TensorFlow and a NumPy forward pass.

``MLP`` computes ``x -> act(x W₁ + b₁) -> … -> x W_L + b_L`` twice over the same weights:

* in TensorFlow (``__call__``), differentiated in the update;
* in NumPy (:func:`mlp_forward` on :meth:`MLP.numpy_params`), used while collecting rollouts,
  where a small MLP on one batch of observations costs a fraction of a ``tf.function`` call
  (``scripts/profile_trpo.py`` measures the rollout's parts).

Weights are initialised orthogonally (hidden gain √2, output gain given: 0.01 for a policy, 1
for a value, as in the PPO/TRPO implementations of SB3 and CleanRL) from a seeded NumPy
``Generator``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

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
    """``x -> act(x W₁ + b₁) -> … -> x W_L + b_L``: ``[N, in] -> [N, out]``.

    As a trunk (:class:`agents.nets.policy.Policy`): ``__call__`` in TensorFlow,
    ``numpy_forward(numpy_params(), x)`` in NumPy.
    """

    #: A policy lists its head's variables before an MLP trunk's (tf.Module's attribute order;
    #: checkpoints store the variables in this order).
    head_variables_first = True

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
        """A NumPy copy of the weights, ``[(W₁, b₁), …]``, for :meth:`numpy_forward`."""
        return [(w.numpy(), b.numpy()) for w, b in zip(self.kernels, self.biases, strict=True)]

    def numpy_forward(self, params: list, x: np.ndarray) -> np.ndarray:
        """:func:`mlp_forward` with this MLP's activation."""
        return mlp_forward(params, x, self.activation)


def mlp_forward(params: list, x: np.ndarray, activation: str) -> np.ndarray:
    """The NumPy twin of :meth:`MLP.__call__`: ``[N, in] -> [N, out]``."""
    act = NUMPY_ACTIVATIONS[activation]
    *hidden, (w_out, b_out) = params
    for w, b in hidden:
        x = act(np.add(np.matmul(x, w), b))
    return np.add(np.matmul(x, w_out), b_out)
