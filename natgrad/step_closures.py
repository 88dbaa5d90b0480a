"""What a natural-gradient step is given, resolved into what its math uses.

:meth:`natgrad.NaturalGradient.minimize` takes the batch as closures: ``loss_fn``, and
optionally ``kl_fn``, ``outputs_fn`` with ``output_distribution``, or an explicit
``curvature_vector_product``. This module turns whichever were given into

* the step's KL bound (:func:`step_max_kl`),
* the curvature operator ``v -> C v`` (:func:`linearize_curvature`), with ``C`` the Hessian of
  the loss (``curvature="hessian"``), ``Jᵀ H_out J`` from the outputs and their distribution
  (``"fisher"`` / ``"gauss_newton"``), or the Hessian of ``kl_fn`` (``"fisher"``), and
* the KL the line search measures: ``kl_fn``, or ``KL(z(θ₀) ‖ z(θ))`` from the outputs
  (:func:`step_closures`),

and, under ``tf.distribute``, makes every curvature product a mean over the replicas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import tensorflow as tf

from natgrad.curvature import hessian_vector_product, linearize_gauss_newton
from natgrad.distribute import ReplicaMean
from natgrad.distributions import OutputDistribution
from natgrad.structure import all_finite, zeros_if_none

CURVATURES = ("fisher", "gauss_newton", "hessian")


def step_max_kl(default, override, *, kl_fn, outputs_fn, output_distribution):
    """The trust-region radius of one step: ``override`` (a number or scalar tensor) if the
    optimizer has one (``default``), else ``default``; ``None`` means no trust region.

    Raises:
      ValueError: a radius but no way to measure the KL (neither ``kl_fn`` nor
        ``outputs_fn`` with ``output_distribution``).
    """
    max_kl = default if default is None or override is None else override
    can_measure_kl = kl_fn is not None or (
        outputs_fn is not None and output_distribution is not None
    )
    if max_kl is not None and not can_measure_kl:
        raise ValueError(
            "max_kl is set, so the line search must measure the KL: pass kl_fn, or "
            "outputs_fn and output_distribution"
        )
    return max_kl


def linearize_curvature(
    curvature: str,
    loss_fn: Callable[[], tf.Tensor],
    variables: Sequence,
    *,
    kl_fn: Callable[[], tf.Tensor] | None,
    outputs_fn: Callable[[], object] | None,
    output_distribution: OutputDistribution | None,
    hvp_method: str,
) -> tuple[object, Callable]:
    """``(outputs, matvec)``: the curvature operator ``v -> C v`` a ``curvature`` setting asks
    for, and the model outputs at the current variables if it linearized the model (else
    ``None``), to be reused as the "old" outputs of the KL.

    ``"hessian"``: the Hessian of ``loss_fn``. ``"fisher"`` / ``"gauss_newton"``: ``Jᵀ H_out J``
    from ``outputs_fn`` and ``output_distribution.fisher_vector_product`` if both are given
    (linearized once, :func:`natgrad.linearize_gauss_newton`), else (``"fisher"`` only) the
    Hessian of ``kl_fn``.

    Raises:
      ValueError: no source of curvature for this setting among the arguments given.
    """
    if curvature == "hessian":
        return None, lambda v: hessian_vector_product(loss_fn, variables, v, method=hvp_method)
    if outputs_fn is not None and output_distribution is not None:
        return linearize_gauss_newton(
            outputs_fn, variables, output_distribution.fisher_vector_product
        )
    if curvature == "fisher" and kl_fn is not None:
        return None, lambda v: hessian_vector_product(kl_fn, variables, v, method=hvp_method)
    given = [name for name, value in (("outputs_fn", outputs_fn),
                                      ("output_distribution", output_distribution),
                                      ("kl_fn", kl_fn)) if value is not None]
    raise ValueError(
        f"curvature={curvature!r} needs outputs_fn and output_distribution (a "
        "natgrad.distributions.OutputDistribution) together"
        + (", or a kl_fn whose Hessian is the Fisher" if curvature == "fisher" else "")
        + ", or an explicit curvature_vector_product; got "
        + (" and ".join(given) if given else "none of them")
    )


class StepClosures(NamedTuple):
    """The closures a step's math calls: ``matvec`` (``v -> C v``, averaged over replicas) and
    ``kl_fn`` (``θ -> KL(π_θ₀ ‖ π_θ)``, or ``None`` when no KL can be measured)."""

    matvec: Callable
    kl_fn: Callable[[], tf.Tensor] | None


def step_closures(
    curvature: str,
    loss_fn: Callable[[], tf.Tensor],
    variables: Sequence,
    *,
    kl_fn: Callable[[], tf.Tensor] | None,
    outputs_fn: Callable[[], object] | None,
    output_distribution: OutputDistribution | None,
    curvature_vector_product: Callable | None,
    hvp_method: str,
    mean: ReplicaMean,
) -> StepClosures:
    """Resolves the closures given to ``minimize`` into a :class:`StepClosures`.

    ``curvature_vector_product``, if given, is the curvature operator; otherwise
    :func:`linearize_curvature` builds it (running the model once at ``θ₀`` when it linearizes
    it). Without a ``kl_fn`` but with ``outputs_fn`` and ``output_distribution``, the KL is
    ``output_distribution.kl(z(θ₀), outputs_fn())``, with ``z(θ₀)`` the linearization's
    outputs, or one more forward pass at ``θ₀`` if there was none.
    """
    if curvature_vector_product is not None:
        linearized_outputs, matvec = None, curvature_vector_product
    else:
        linearized_outputs, matvec = linearize_curvature(
            curvature, loss_fn, variables, kl_fn=kl_fn, outputs_fn=outputs_fn,
            output_distribution=output_distribution, hvp_method=hvp_method,
        )
    if kl_fn is None and outputs_fn is not None and output_distribution is not None:
        old_outputs = (
            linearized_outputs
            if linearized_outputs is not None
            else tf.nest.map_structure(tf.stop_gradient, outputs_fn())
        )

        def kl_fn():
            return output_distribution.kl(old_outputs, outputs_fn())

    if mean.active:  # every data-derived quantity averaged over the replicas
        local_matvec = matvec

        def matvec(v):
            return mean(local_matvec(v))

    return StepClosures(matvec, kl_fn)


def loss_and_gradient(loss_fn, variables: list, mean: ReplicaMean) -> tuple:
    """``(L(θ₀), ∇L(θ₀), finite)``, averaged over replicas; a non-finite loss or gradient gives
    ``finite`` false and a zero gradient (zeros instead of NaN keep CG quiet; the step is
    rejected anyway).

    Raises:
      ValueError: ``loss_fn`` returns a non-scalar.
    """
    with tf.GradientTape() as tape:
        loss = tf.convert_to_tensor(loss_fn())
    if loss.shape.rank != 0:
        raise ValueError(f"loss_fn must return a scalar; got shape {loss.shape}")
    grads = tape.gradient(loss, variables)
    grads = [tf.convert_to_tensor(g) for g in zeros_if_none(grads, variables)]
    loss, grads = mean((loss, grads))
    finite = all_finite(loss, grads)
    grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
    return loss, grads, finite


__all__ = ["CURVATURES", "StepClosures", "linearize_curvature", "loss_and_gradient",
           "step_closures", "step_max_kl"]
