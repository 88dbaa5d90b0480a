"""A diagonal preconditioner for the conjugate-gradient solve of a natural-gradient step.

CG on ``(C + λI) x = g`` converges in few iterations only when the system is well
conditioned; a deep network's curvature spans many orders of magnitude across parameters. A
preconditioner ``M ≈ C + λI`` that is cheap to invert (here a diagonal) lets the same number
of CG iterations go much further (Martens, 2010, §4.7).

The diagonal is a running average of squared gradients, as Adam keeps it, at no extra
product: with ``d_t = β d_{t−1} + (1 − β) g_t²`` and the bias correction
``d̂_t = d_t / (1 − βᵗ)``,

    M = (d̂ + ε · mean(d̂))^ξ,        M⁻¹ r = r / M,

``ξ = 0.75`` (Martens' exponent: between the identity, ξ = 0, and the full diagonal scale),
``ε`` a relative floor so that parameters whose gradients vanish are not amplified without
bound. CG's answer does not depend on a constant factor of ``M``, so only the relative
scales matter.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

EXPONENT = 0.75
RELATIVE_FLOOR = 1e-2


def update_second_moments(moments: Sequence, grads: Sequence, decay: float, ok) -> None:
    """``d ← β d + (1 − β) g²`` for each slot in ``moments``, only where ``ok`` (a scalar
    bool: a step whose gradient is not finite leaves the average as it was)."""
    for moment, grad in zip(moments, grads, strict=True):
        grad = tf.cast(grad, moment.dtype)
        new = decay * moment + (1.0 - decay) * tf.square(grad)
        moment.assign(tf.where(ok, new, moment))


def diagonal_preconditioner(moments: Sequence, steps, decay: float,
                            dtypes: Sequence) -> Callable[[list], list]:
    """``r -> M⁻¹ r`` (see the module docstring) from the running second moments after
    ``steps`` updates; each result is cast to the matching entry of ``dtypes``. Before any
    gradient (all moments zero) it is the identity."""
    correction = 1.0 - tf.pow(tf.cast(decay, tf.float32), tf.cast(steps, tf.float32))
    diagonals = [tf.cast(m, tf.float32) / tf.maximum(correction, 1e-12) for m in moments]
    total = tf.add_n([tf.reduce_sum(d) for d in diagonals])
    count = sum(int(d.shape.num_elements()) for d in diagonals)
    mean = total / count
    scales = [tf.where(mean > 0, tf.pow(d + RELATIVE_FLOOR * mean, EXPONENT), tf.ones_like(d))
              for d in diagonals]

    def apply(residual: list) -> list:
        return [r / tf.cast(s, dtype) for r, s, dtype in zip(residual, scales, dtypes,
                                                               strict=True)]

    return apply
