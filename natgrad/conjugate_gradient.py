"""Conjugate gradient for ``(A + λI) x = b`` from matrix-vector products alone.

``A`` is never formed: ``matvec(v) -> A v`` is enough, so ``A`` can be a Hessian, Gauss-Newton
or Fisher matrix given by a curvature-vector product. ``b`` is a tensor or any ``tf.nest``
structure of tensors (e.g. a list shaped like a model's variables); ``x`` comes back in the
same structure. The whole iteration is one ``tf.while_loop``, so it compiles into a single
graph loop inside ``tf.function``.

It stops on the first of:

* ``converged``: ``‖r‖ ≤ tol · ‖b‖`` with ``r = b − (A + λI) x``;
* ``max_iters``: the iteration cap;
* ``negative_curvature``: ``pᵀ(A + λI)p ≤ 0`` for a search direction ``p`` (``A + λI`` is not
  positive definite), where CG is undefined;
* ``non_finite``: a NaN or Inf appeared (in ``b``, a product or an update).

On the last two it keeps the last good iterate, never returning NaN it made itself.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import tensorflow as tf

from natgrad.checks import check_int, check_number
from natgrad.structure import all_finite, as_dtype, dot

CONVERGED, MAX_ITERS, NEGATIVE_CURVATURE, NON_FINITE = 0, 1, 2, 3
STATUS_NAMES = ("converged", "max_iters", "negative_curvature", "non_finite")


class CGResult(NamedTuple):
    """Result of :func:`conjugate_gradient`.

    Attributes:
      x: the solution, same structure as ``b``.
      iterations: ``int32`` scalar, number of CG steps taken (each costs one product; a
        step rejected for negative curvature or a non-finite value costs one more, uncounted).
      residual_norm: ``‖b − (A + λI) x‖`` as tracked by the recurrence.
      status: ``int32`` scalar, an index into :data:`STATUS_NAMES`.
      x_dot_ax: ``xᵀ(A + λI)x``, computed as ``xᵀ(b − r)`` at no extra product; a trust-region
        step size ``sqrt(2δ / xᵀ(A + λI)x)`` needs it.
    """

    x: object
    iterations: tf.Tensor
    residual_norm: tf.Tensor
    status: tf.Tensor
    x_dot_ax: tf.Tensor

    @property
    def reason(self) -> str:
        """Why the iteration stopped, as a word from :data:`STATUS_NAMES` (eager only)."""
        return STATUS_NAMES[int(self.status)]


def _axpy(alpha, x, y):
    """``alpha · x + y`` over matching structures."""
    return tf.nest.map_structure(lambda a, b: alpha * a + b, x, y)


def conjugate_gradient(
    matvec: Callable,
    b,
    *,
    max_iters: int = 10,
    tol: float = 1e-10,
    damping: float = 0.0,
    x0=None,
    preconditioner: Callable | None = None,
    unroll: bool = False,
) -> CGResult:
    """Solves ``(A + damping·I) x = b`` by (preconditioned) conjugate gradient.

    Args:
      matvec: ``v -> A v`` for ``v`` structured like ``b``; ``A`` symmetric positive
        (semi-)definite.
      b: right-hand side, a tensor or a ``tf.nest`` structure of tensors.
      max_iters: iteration cap (≥ 1). Exact arithmetic solves an ``n × n`` system in ``n``.
      tol: relative tolerance: stop when ``‖r‖ ≤ tol · ‖b‖``.
      damping: ``λ ≥ 0`` added to the diagonal (Tikhonov / Levenberg-Marquardt damping).
      x0: starting point, structured like ``b`` (default zeros).
      preconditioner: ``r -> M⁻¹ r`` for an SPD ``M ≈ A + λI`` (default identity).
      unroll: run the iterations as ``max_iters`` Python-unrolled steps instead of one
        ``tf.while_loop``; once stopped, the remaining steps still call ``matvec`` but change
        nothing. For a ``matvec`` that all-reduces across ``tf.distribute`` replicas on CPU,
        where a collective may not sit inside graph control flow. Same result.

    Returns:
      A :class:`CGResult`.

    Raises:
      ValueError: ``max_iters`` not an integer ``>= 1``, ``tol`` or ``damping`` not a finite
        number ``>= 0`` (Python and NumPy numbers only; tensors are not checked), or ``x0``
        not structured like ``b``.
    """
    if isinstance(max_iters, numbers.Real):  # tensors are not checked
        max_iters = check_int("max_iters", max_iters, at_least=1)
    if isinstance(tol, numbers.Real):
        check_number("tol", tol, at_least=0)
    if isinstance(damping, numbers.Real):
        check_number("damping", damping, at_least=0)

    b = tf.nest.map_structure(tf.convert_to_tensor, b)
    dtype = tf.nest.flatten(b)[0].dtype
    damping = as_dtype(damping, dtype)
    tol = as_dtype(tol, dtype)

    def damped_matvec(v):
        return _axpy(damping, v, matvec(v))

    def precondition(r):
        return preconditioner(r) if preconditioner is not None else r

    if x0 is None:
        x = tf.nest.map_structure(tf.zeros_like, b)
        r = b
    else:
        try:
            tf.nest.assert_same_structure(b, x0)
        except (ValueError, TypeError) as e:
            raise ValueError(f"x0 must have the same structure as b: {e}") from None
        x = tf.nest.map_structure(lambda t, ref: tf.cast(t, ref.dtype), x0, b)
        r = _axpy(-1.0, damped_matvec(x), b)
    b_norm = tf.sqrt(dot(b, b))
    threshold = tol * b_norm
    z = precondition(r)
    p = z
    rz = dot(r, z)
    r_norm = tf.sqrt(dot(r, r))

    start_finite = all_finite(b, x, r) & tf.math.is_finite(rz)
    status = tf.where(
        start_finite,
        tf.where(r_norm <= threshold, CONVERGED, MAX_ITERS),
        NON_FINITE,
    )
    done = tf.logical_or(~start_finite, r_norm <= threshold)
    # A non-finite start keeps x as given (zeros or x0) and reports the residual norm as NaN,
    # an infinite one included, so that it is never mistaken for a usable number.
    r_norm = tf.where(start_finite, r_norm, tf.constant(float("nan"), dtype))

    def cond(i, done, x, r, p, rz, r_norm, status):
        return tf.logical_and(~done, i < max_iters)

    def body(i, done, x, r, p, rz, r_norm, status):
        ap = damped_matvec(p)
        p_ap = dot(p, ap)
        bad_curvature = p_ap <= 0.0
        # p is finite, so pᵀAp is finite exactly when A p is: no elementwise scan needed.
        finite_product = tf.math.is_finite(p_ap)
        safe_p_ap = tf.where(bad_curvature | ~finite_product, tf.ones_like(p_ap), p_ap)
        alpha = rz / safe_p_ap
        x_new = _axpy(alpha, p, x)
        r_new = _axpy(-alpha, ap, r)
        z_new = precondition(r_new)
        rz_new = dot(r_new, z_new)
        r_r_new = dot(r_new, r_new)
        r_norm_new = tf.sqrt(r_r_new)
        # Sums of squares and products are finite exactly when their vectors are.
        finite = (finite_product & tf.math.is_finite(r_r_new) & tf.math.is_finite(rz_new)
                  & tf.math.is_finite(dot(x_new, x_new)))
        ok = finite & ~bad_curvature
        beta = rz_new / tf.where(rz == 0.0, tf.ones_like(rz), rz)
        p_new = _axpy(beta, p, z_new)

        def keep(new, old):  # one branch, not an elementwise select per tensor
            return tf.cond(ok, lambda: new, lambda: old)

        step_status = tf.where(
            ~finite,
            NON_FINITE,
            tf.where(
                bad_curvature,
                NEGATIVE_CURVATURE,
                tf.where(r_norm_new <= threshold, CONVERGED, MAX_ITERS),
            ),
        )
        stop = ~ok | (r_norm_new <= threshold)
        return (
            i + tf.where(ok, 1, 0),
            stop,
            *keep((x_new, r_new, p_new), (x, r, p)),
            tf.where(ok, rz_new, rz),
            tf.where(ok, r_norm_new, r_norm),
            step_status,
        )

    state = (tf.constant(0), done, x, r, p, rz, r_norm, status)
    if unroll:
        if not isinstance(max_iters, int):
            raise ValueError("unroll=True needs max_iters as a Python int")
        for _ in range(max_iters):
            state = tf.nest.map_structure(
                lambda old, new, stopped=state[1]: tf.where(stopped, old, new),
                state, body(*state))
    else:
        state = tf.while_loop(cond, body, state, maximum_iterations=max_iters)
    i, _, x, r, _, _, r_norm, status = state
    x_dot_ax = dot(x, _axpy(-1.0, r, b))
    return CGResult(x=x, iterations=i, residual_norm=r_norm, status=status, x_dot_ax=x_dot_ax)
