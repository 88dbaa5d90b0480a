"""Trust-region pieces of a natural-gradient step: step size, line search, adaptive damping.

Given a direction ``s ≈ (F + λI)⁻¹ g`` and a KL budget ``δ``, the largest step along ``−s``
whose quadratic KL model ``½ (βs)ᵀ(F + λI)(βs)`` equals ``δ`` is ``β = sqrt(2δ / sᵀ(F + λI)s)``
(Schulman et al., 2015, Appendix C). The quadratic model can be wrong, so a backtracking line
search tries ``θ₀ − shrinkᵏ·step`` for ``k = 0, 1, …`` and takes the first that lowers the loss
and keeps the measured KL within ``δ``; if none does, the variables are restored bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf

from natgrad.structure import as_dtype, dot


def trust_region_step_size(max_kl, s_dot_fs) -> tuple[tf.Tensor, tf.Tensor]:
    """``β = sqrt(2·max_kl / sᵀ(F + λI)s)`` and whether it is usable.

    Returns ``(β, ok)``; ``ok`` is false, and ``β`` zero, when ``sᵀ(F + λI)s`` is not a
    positive finite number (then ``2δ / sᵀFs`` would be negative, infinite or NaN).
    """
    s_dot_fs = tf.convert_to_tensor(s_dot_fs)
    max_kl = as_dtype(max_kl, s_dot_fs.dtype)
    ok = tf.math.is_finite(s_dot_fs) & (s_dot_fs > 0.0)
    safe = tf.where(ok, s_dot_fs, tf.ones_like(s_dot_fs))
    beta = tf.sqrt(2.0 * max_kl / safe)
    ok = ok & tf.math.is_finite(beta)
    return tf.where(ok, beta, tf.zeros_like(beta)), ok


class LineSearchResult(NamedTuple):
    """Outcome of :func:`backtracking_line_search`.

    ``accepted`` (bool), ``tries`` (int32: how many points were evaluated), ``fraction``
    (the accepted ``shrinkᵏ``, 0 if none), ``loss`` and ``kl`` at the final variables.
    """

    accepted: tf.Tensor
    tries: tf.Tensor
    fraction: tf.Tensor
    loss: tf.Tensor
    kl: tf.Tensor


def backtracking_line_search(
    variables: Sequence,
    step: Sequence,
    evaluate: Callable[[], tuple[tf.Tensor, tf.Tensor]],
    *,
    loss_before: tf.Tensor,
    max_kl=None,
    shrink: float = 0.8,
    max_tries: int = 10,
    enabled=True,
    unroll: bool = False,
) -> LineSearchResult:
    """Tries ``θ₀ − shrinkᵏ·step`` for ``k < max_tries``; restores ``θ₀`` exactly if none passes.

    A point is accepted when ``evaluate() -> (loss, kl)`` is finite, ``loss < loss_before``, and
    (if ``max_kl`` is given) ``kl ≤ max_kl``. ``max_tries == 0`` applies the full step and
    accepts it if the loss is finite (no improvement or KL test). ``enabled`` (a bool tensor)
    false skips the search and leaves the variables untouched.

    ``unroll=True`` evaluates the trial points as ``max_tries`` Python-unrolled steps with no
    graph control flow (after acceptance the rest re-evaluate the accepted point and change
    nothing), for an ``evaluate`` that all-reduces across ``tf.distribute`` replicas: the same
    result, at the price of always ``max_tries`` evaluations.
    """
    theta0 = [tf.identity(v) for v in variables]
    dtype = loss_before.dtype
    check = max_tries > 0
    tries_cap = max(max_tries, 1)

    def assign(fraction):
        for v, v0, d in zip(variables, theta0, step, strict=True):
            v.assign(v0 - tf.cast(fraction, v0.dtype) * d)

    def cond(k, accepted, fraction, loss, kl):
        return enabled & ~accepted & (k < tries_cap)

    def body(k, accepted, fraction, loss, kl):
        fraction = as_dtype(shrink, dtype) ** tf.cast(k, dtype)
        assign(fraction)
        loss, kl = evaluate()
        loss = tf.cast(loss, dtype)
        kl = tf.cast(kl, dtype)
        accepted = tf.math.is_finite(loss)
        if check:
            accepted = accepted & (loss < loss_before)
            if max_kl is not None:
                accepted = accepted & tf.math.is_finite(kl) & (kl <= as_dtype(max_kl, dtype))
        return k + 1, accepted, fraction, loss, kl

    nan = tf.constant(float("nan"), dtype)
    state = (tf.constant(0), tf.constant(False), tf.zeros([], dtype), loss_before, nan)
    if unroll:
        tries, accepted, fraction, loss, kl = _unrolled_loop(variables, body, state, enabled,
                                                             tries_cap)
    else:
        tries, accepted, fraction, loss, kl = tf.while_loop(cond, body, state)

    def restore():
        for v, v0 in zip(variables, theta0, strict=True):
            v.assign(v0)
        return tf.constant(0)

    def keep():
        return tf.constant(0)

    # Variables change only inside the loop, so restoring matters only if it ran.
    if unroll:  # no tf.cond: keep the graph free of control flow
        for v, v0 in zip(variables, theta0, strict=True):
            v.assign(tf.where(accepted | (tries == 0), v, v0))
    else:
        tf.cond(accepted | (tries == 0), keep, restore)
    return LineSearchResult(
        accepted=accepted,
        tries=tries,
        fraction=tf.where(accepted, fraction, tf.zeros_like(fraction)),
        loss=tf.where(accepted, loss, loss_before),
        kl=tf.where(accepted, kl, tf.zeros_like(kl)),
    )


def _unrolled_loop(variables, body, state, enabled, tries_cap) -> tuple:
    """The line search's loop as straight-line code: ``body`` (which assigns the trial point
    and evaluates it) runs ``tries_cap`` times; a step after acceptance, or with ``enabled``
    false, puts the variables back and leaves the state as it was."""
    enabled = tf.convert_to_tensor(enabled)
    for _ in range(tries_cap):
        active = enabled & ~state[1]
        current = [tf.identity(v) for v in variables]
        new = body(*state)
        for v, kept in zip(variables, current, strict=True):
            v.assign(tf.where(active, v, kept))
        state = tuple(tf.where(active, b, a) for a, b in zip(state, new, strict=True))
    return state


def reduction_ratio(
    actual_change: tf.Tensor,
    gradient: Sequence,
    direction: Sequence,
    s_dot_damped_cs: tf.Tensor,
    damping: tf.Tensor,
    fraction: tf.Tensor,
) -> tf.Tensor:
    """``ρ = actual_change / q(Δ)``: the loss change against the quadratic model's prediction.

    For the taken step ``Δ = −fraction·s`` along the solved direction ``s``, the model is
    ``q(Δ) = gᵀΔ + ½ΔᵀCΔ`` with ``sᵀCs = sᵀ(C + λI)s − λ‖s‖²`` (``s_dot_damped_cs`` is
    ``sᵀ(C + λI)s``, ``damping`` is ``λ``). Where ``q(Δ) = 0`` (no step) ``ρ`` is
    ``actual_change`` itself.
    """
    s_dot_cs = s_dot_damped_cs - damping * dot(direction, direction)
    predicted = -fraction * dot(gradient, direction) + 0.5 * fraction**2 * s_dot_cs
    return actual_change / tf.where(predicted == 0.0, tf.ones_like(predicted), predicted)


def levenberg_marquardt_damping(
    damping: tf.Tensor,
    reduction_ratio: tf.Tensor,
    accepted: tf.Tensor,
    *,
    decay: float = 2.0 / 3.0,
    min_damping: float = 1e-8,
    max_damping: float = 1e4,
) -> tf.Tensor:
    """Levenberg-Marquardt rule (Martens, 2010, §4.1) for the next damping ``λ``.

    ``ρ = (L(θ_new) − L(θ₀)) / q(Δ)`` compares the actual loss change with the quadratic
    model's ``q(Δ) = gᵀΔ + ½ ΔᵀAΔ``. ``ρ > ¾``: the model is trusted, ``λ ← decay·λ``;
    ``ρ < ¼`` or a rejected step: ``λ ← λ / decay``; else unchanged. Clipped to
    ``[min_damping, max_damping]``.
    """
    damping = tf.convert_to_tensor(damping)
    rho = tf.cast(reduction_ratio, damping.dtype)
    decay = as_dtype(decay, damping.dtype)
    new = tf.where(
        ~accepted | ~tf.math.is_finite(rho) | (rho < 0.25),
        damping / decay,
        tf.where(rho > 0.75, damping * decay, damping),
    )
    return tf.clip_by_value(new, min_damping, max_damping)
