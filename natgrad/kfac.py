"""Kronecker-factored curvature (K-FAC) of dense and convolution layers, as a CG preconditioner.

For a dense layer ``s = a W + b`` with inputs ``a`` (``[N, d_in]``, a column of ones appended
when the layer has a bias, so that ``W`` and ``b`` form one ``[d_in + 1, d_out]`` block) and
pre-activations ``s`` (``[N, d_out]``), the layer's block of the Fisher is
``F_W = (1/N) Σ_i a_i a_iᵀ ⊗ E[g_i g_iᵀ]`` with ``g_i = ∂(−log p(ŷ_i | x_i))/∂s_i`` for targets
``ŷ`` drawn from the model's own predictive distribution. K-FAC (Martens & Grosse, 2015)
approximates it by a Kronecker product of two small matrices,

    F_W ≈ A ⊗ G,    A = (1/N) Σ_i a_i a_iᵀ,    G = (1/N) Σ_i g_i g_iᵀ,

whose inverse is ``(A ⊗ G)⁻¹ vec(V) = vec(A⁻¹ V G⁻¹)``: two products with ``[d_in, d_in]``
and ``[d_out, d_out]`` matrices instead of a solve with the ``[d_in·d_out]²`` block.
A convolution (Grosse & Martens, 2016, KFC) is the same with ``a`` the input patches at each of
the ``L`` output locations (``[N, L, k_h·k_w·c_in]``) and ``g`` the gradient at each location:
``A`` is the mean over examples and locations, ``G`` the sum over locations, mean over examples.

Damping ``λ`` is split between the factors (Martens & Grosse, 2015, §6.3, "π-correction"):

    M = (A + π √λ I) ⊗ (G + √λ/π I),    π = sqrt((tr A / d_A) / (tr G / d_G)),

which keeps ``M`` within a factor of ``A ⊗ G + λ I`` where the two differ most. Variables that
belong to no block (BatchNorm scales, embeddings, ...) get ``M = (c + λ) I`` with ``c`` the
mean diagonal entry of the blocks' ``A ⊗ G``.

:class:`KroneckerFactors` keeps moving averages of ``A`` and ``G`` over steps (K-FAC's
curvature estimate from many batches at the cost of one) and their damped inverses, recomputed
every ``inverse_period`` steps. The inverse is only a preconditioner here: conjugate gradient
still solves with the exact Fisher, so the approximation sets how few iterations suffice, not
what the step converges to; with one CG iteration the step is ``α M⁻¹ g`` with ``α`` from the
exact quadratic model ``gᵀM⁻¹g / (M⁻¹g)ᵀ(F + λI)(M⁻¹g)`` (K-FAC's own step-size rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf


class KroneckerBlock(NamedTuple):
    """One layer's variables in a variable list: the kernel's index and the bias' (or ``None``).

    The kernel is ``[..., d_out]`` (``[d_in, d_out]`` dense, ``[k_h, k_w, c_in, c_out]``
    convolution), read as ``[rows, d_out]`` with ``rows`` the product of its leading dimensions.
    """

    kernel: int
    bias: int | None


def input_factor(a: tf.Tensor, has_bias: bool, rows=None) -> tf.Tensor:
    """``A = mean over rows of a aᵀ`` for inputs ``a`` ``[N, ..., d]`` (``[N, L, d]`` patches:
    the mean over examples and locations), with a ones column appended if ``has_bias``:
    ``[d (+1), d (+1)]``. ``rows``: only the first ``rows`` examples count (``fit``'s curvature
    batch padded to a fixed size under XLA)."""
    weight = None
    if rows is not None:
        counted = tf.cast(tf.range(tf.shape(a)[0]) < tf.cast(rows, tf.int32), a.dtype)
        weight = tf.reshape(tf.broadcast_to(
            tf.reshape(counted, [-1] + [1] * (a.shape.rank - 2)), tf.shape(a)[:-1]), [-1, 1])
    a = tf.reshape(a, [-1, a.shape[-1]])
    if has_bias:
        a = tf.concat([a, tf.ones_like(a[:, :1])], axis=1)
    if weight is None:
        return tf.matmul(a, a, transpose_a=True) / tf.cast(tf.shape(a)[0], a.dtype)
    return tf.matmul(a * weight, a, transpose_a=True) / tf.reduce_sum(weight)


def output_factor(g: tf.Tensor) -> tf.Tensor:
    """``G = (1/N) Σ_i Σ_locations g gᵀ`` for pre-activation gradients ``g`` ``[N, ..., d]``
    (``[N, d]`` dense, ``[N, H, W, d]`` convolution): ``[d, d]``."""
    n = tf.cast(tf.shape(g)[0], g.dtype)
    g = tf.reshape(g, [-1, g.shape[-1]])
    return tf.matmul(g, g, transpose_a=True) / n


def _mean_diagonal(m: tf.Tensor) -> tf.Tensor:
    return tf.linalg.trace(m) / tf.cast(tf.shape(m)[0], m.dtype)


def damped_inverses(a: tf.Tensor, g: tf.Tensor, damping) -> tuple[tf.Tensor, tf.Tensor]:
    """``((A + π√λ I)⁻¹, (G + √λ/π I)⁻¹)`` with ``π`` as in the module docstring (``π = 1``
    when a factor's trace is zero), by Cholesky factorization."""
    damping = tf.cast(tf.convert_to_tensor(damping, dtype_hint=a.dtype), a.dtype)
    mean_a, mean_g = _mean_diagonal(a), _mean_diagonal(g)
    usable = (mean_a > 0) & (mean_g > 0)
    pi = tf.where(usable, tf.sqrt(mean_a / tf.where(usable, mean_g, 1.0)), tf.ones_like(mean_a))
    root = tf.sqrt(damping)

    def inverse(m, shift):
        eye = tf.eye(tf.shape(m)[0], dtype=m.dtype)
        chol = tf.linalg.cholesky(m + shift * eye)
        return tf.linalg.cholesky_solve(chol, eye)

    return inverse(a, pi * root), inverse(g, root / pi)


def kronecker_solve(a_inverse: tf.Tensor, g_inverse: tf.Tensor, kernel: tf.Tensor,
                    bias: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor | None]:
    """``A⁻¹ V G⁻¹`` for ``V`` the kernel-shaped ``kernel`` read as ``[rows, d_out]`` with
    ``bias`` (``[d_out]``) as one more row; returned in the shapes given."""
    shape = kernel.shape
    v = tf.reshape(kernel, [-1, shape[-1]])
    if bias is not None:
        v = tf.concat([v, bias[None, :]], axis=0)
    x = tf.matmul(a_inverse, tf.matmul(v, g_inverse))
    if bias is None:
        return tf.reshape(x, shape), None
    return tf.reshape(x[:-1], shape), x[-1]


class KroneckerFactors:
    """Moving averages of each block's ``A`` and ``G`` and their damped inverses.

    :meth:`preconditioner` folds one step's factors into the averages
    (``F ← β F + (1 − β) F_step``, the first step's factors taken as they are), recomputes the
    inverses on the first step and every ``inverse_period`` steps after, and returns CG's
    ``r -> M⁻¹ r``. A block's variables are made by :meth:`build`, or on its first step
    (under ``tf.init_scope``, so inside a ``tf.function`` too, which then traces twice).
    """

    def __init__(self, decay: float, inverse_period: int):
        self.decay = float(decay)
        self.inverse_period = int(inverse_period)
        self._state: dict = {}  # block -> (A average, G average, A⁻¹, G⁻¹)
        self._count: tf.Variable | None = None

    def build(self, block: KroneckerBlock, a_size: int, g_size: int, dtype) -> None:
        """Makes ``block``'s variables (``A`` is ``[a_size, a_size]``, ``G`` ``[g_size,
        g_size]``) if it has none."""
        if block in self._state:
            return
        with tf.init_scope():
            if self._count is None:
                self._count = tf.Variable(0, dtype=tf.int64, trainable=False,
                                          name="kronecker_count")
            self._state[block] = tuple(
                tf.Variable(init(size, dtype=dtype), trainable=False, name=name)
                for init, size, name in (
                    (lambda k, dtype: tf.zeros([k, k], dtype), a_size, "kronecker_a"),
                    (lambda k, dtype: tf.zeros([k, k], dtype), g_size, "kronecker_g"),
                    (tf.eye, a_size, "kronecker_a_inverse"),
                    (tf.eye, g_size, "kronecker_g_inverse")))

    def states(self) -> list[tuple[tf.Variable, ...]]:
        """``(A, G, A⁻¹, G⁻¹)`` averages and inverses of every block built so far."""
        return list(self._state.values())

    def preconditioner(self, blocks: Sequence[KroneckerBlock],
                       factors: Sequence[tuple[tf.Tensor, tf.Tensor]], damping,
                       dtypes: Sequence) -> Callable[[list], list]:
        """Updates the state with this step's ``factors`` (one ``(A, G)`` per block; skipped
        if any is not finite) and returns ``r -> M⁻¹ r`` over a list shaped like
        ``dtypes`` (one entry per variable), casting each result to its dtype."""
        for block, (a, g) in zip(blocks, factors, strict=True):
            self.build(block, a.shape[0], g.shape[0], a.dtype)
        states = [self._state[block] for block in blocks]
        flat = [f for pair in factors for f in pair]
        # One scalar for all: a sum of finite numbers that overflows counts as not finite.
        finite = tf.math.is_finite(tf.add_n([tf.reduce_sum(f) for f in flat]))
        # F ← F + w (F_step − F): w = 1 on the first step, 1 − β after, 0 when not finite.
        weight = tf.where(tf.equal(self._count, 0), 1.0, 1.0 - self.decay)
        weight = tf.where(finite, weight, 0.0)
        for average, new in zip([v for state in states for v in state[:2]], flat, strict=True):
            average.assign_add(tf.cast(weight, new.dtype) * (new - average))
        refresh = finite & tf.equal(self._count % self.inverse_period, 0)
        self._count.assign_add(tf.cast(finite, tf.int64))

        # The branches only compute (no assignment inside a cond: cheaper to trace).
        def recompute():
            return [m for a, g, _, _ in states for m in damped_inverses(a, g, damping)]

        def keep():
            return [tf.identity(v) for state in states for v in state[2:]]

        fresh = tf.cond(refresh, recompute, keep)
        for variable, value in zip([v for state in states for v in state[2:]], fresh,
                                   strict=True):
            variable.assign(value)
        inverses = list(zip(fresh[::2], fresh[1::2], strict=True))
        covered = {i for block in blocks for i in (block.kernel, block.bias) if i is not None}
        other_scale = None
        if len(covered) < len(dtypes):
            means = [_mean_diagonal(s[0]) * _mean_diagonal(s[1]) for s in states]
            other_scale = tf.add_n(means) / len(means) + tf.cast(damping, means[0].dtype)

        def apply(residual: list) -> list:
            result = [None if i in covered else r / tf.cast(other_scale, r.dtype)
                      for i, r in enumerate(residual)]
            for block, (a_inverse, g_inverse) in zip(blocks, inverses, strict=True):
                kernel = tf.cast(residual[block.kernel], a_inverse.dtype)
                bias = (None if block.bias is None
                        else tf.cast(residual[block.bias], a_inverse.dtype))
                x_kernel, x_bias = kronecker_solve(a_inverse, g_inverse, kernel, bias)
                result[block.kernel] = tf.cast(x_kernel, dtypes[block.kernel])
                if block.bias is not None:
                    result[block.bias] = tf.cast(x_bias, dtypes[block.bias])
            return result

        return apply


__all__ = [
    "KroneckerBlock",
    "KroneckerFactors",
    "damped_inverses",
    "input_factor",
    "kronecker_solve",
    "output_factor",
]
