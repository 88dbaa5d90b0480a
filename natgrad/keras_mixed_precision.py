"""``model.fit`` under ``mixed_float16``: loss scaling and float16-safe curvature products.

Under ``keras.mixed_precision.set_global_policy("mixed_float16")`` the variables are float32,
but the layers compute in float16, whose smallest subnormal is ``2⁻²⁴ ≈ 6·10⁻⁸``: a gradient
flowing back through them below that is zero. Two things of a natural-gradient step pass
through the float16 layers:

* **The gradient** ``g = ∇L``. As Keras' ``LossScaleOptimizer`` does, the backward pass carries
  ``S·∂L`` with ``S`` its dynamic scale (a power of two, ``2¹⁵`` at first), and ``g`` is
  unscaled in float32 where it reaches each variable: :class:`LossScale` does both with two
  identity functions whose gradients multiply by ``S`` (at the loss) and divide by ``S`` (at the
  variables), so the loss, its value and every other pass are unchanged. A non-finite ``g``
  (``S·∂L`` overflowed float16's 65504) is rejected by ``NaturalGradient.minimize``, which leaves
  every variable as it was; the scale then halves, and doubles after ``growth_steps`` finite
  steps in a row (:meth:`LossScale.update`, the ``LossScaleOptimizer``'s rule and state).
* **Curvature products** ``C v = Jᵀ H_out J v`` (Gauss-Newton form, on float32 outputs). Their
  vectors ``v`` are as small as ``g`` (conjugate gradient starts from it), and ``H_out J v``
  carries the loss's ``1 / batch``: one fixed ``S`` cannot fit both, so
  :func:`float16_gauss_newton` scales ``v`` before ``J`` and ``H_out J v`` before ``Jᵀ``, each by
  the power of two that brings its largest entry near 1 (``2⁻⁸`` for ``H_out J v``, which is
  summed over the batch), and divides the product by both in float32. Powers of two make the
  scaling exact: where nothing underflows, the product is the unscaled one bit for bit.
  (With ``curvature="hessian"`` the products are Hessian-vector products of the loss, taken
  unscaled.)

Where a step's gradient is not finite, ``iterations`` still counts it (a step attempted), and
with ``adaptive_damping`` the damping grows as after any rejected step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from natgrad.curvature import linearize_gauss_newton
from natgrad.distributions import OutputDistribution
from natgrad.keras_adapter import LossScaleState

# Largest entry of a scaled vector: 2**0 for v (summed over a layer's inputs by J), 2**-8 for
# H_out J v (summed over the batch's rows by Jᵀ: room for ~10⁵ rows below float16's 65504).
VECTOR_EXPONENT, OUTPUT_EXPONENT = 0, -8


def power_of_two_scale(tensors, exponent: int) -> tf.Tensor:
    """``2^(exponent − e)`` with ``2^e ≤ max|t| < 2^(e+1)`` over all of ``tensors``, in float32;
    ``1`` when every entry is zero or one is not finite. Exactly a power of two."""
    largest = tf.reduce_max(tf.stack([
        tf.reduce_max(tf.abs(tf.cast(t, tf.float32))) for t in tf.nest.flatten(tensors)
    ]))
    usable = tf.math.is_finite(largest) & (largest > 0.0)
    e = tf.floor(tf.math.log(tf.where(usable, largest, 1.0)) / tf.math.log(2.0))
    k = tf.where(usable, tf.clip_by_value(exponent - e, -126.0, 127.0), 0.0)
    return tf.bitcast(tf.bitwise.left_shift(tf.cast(k, tf.int32) + 127, 23), tf.float32)


def _scaled(structure, scale):
    return tf.nest.map_structure(lambda t: t * tf.cast(scale, t.dtype), structure)


def float16_gauss_newton(
    outputs_fn: Callable[[], object],
    variables: Sequence,
    output_curvature: Callable[[object, object], object],
) -> tuple[object, Callable]:
    """:func:`natgrad.linearize_gauss_newton` with each product scaled through float16.

    ``matvec(v) = Jᵀ(c · H_out J (a·v)) / (a·c)``, with ``a`` and ``c`` the powers of two
    :func:`power_of_two_scale` picks for ``v`` and for ``H_out J (a·v)``: the same matrix, with
    the float16 parts of ``J`` and ``Jᵀ`` working on numbers near 1 instead of underflowing.

    Returns ``(outputs, matvec)`` as :func:`natgrad.linearize_gauss_newton` does.
    """
    # linearize_gauss_newton calls output_curvature inside each product, between J and Jᵀ;
    # the scale it picks there is handed to the product's last line through this list.
    output_scales = []

    def scaled_output_curvature(outputs, u):
        product = output_curvature(outputs, u)
        output_scales.append(power_of_two_scale(product, OUTPUT_EXPONENT))
        return _scaled(product, output_scales[-1])

    outputs, matvec = linearize_gauss_newton(outputs_fn, variables, scaled_output_curvature)

    def scaled_matvec(vector):
        vector_scale = power_of_two_scale(vector, VECTOR_EXPONENT)
        product = matvec(_scaled(vector, vector_scale))
        return _scaled(product, 1.0 / (vector_scale * output_scales.pop()))

    return outputs, scaled_matvec


def curvature_arguments(compute_dtype: str, curvature: str, outputs_fn, variables,
                        distribution: OutputDistribution) -> dict:
    """:meth:`natgrad.NaturalGradient.minimize`'s curvature and KL arguments in ``fit``.

    ``outputs_fn`` (the outputs on the curvature batch) and ``distribution``; for a model
    computing in float16 with the ``"fisher"`` / ``"gauss_newton"`` curvature, instead the
    product of :func:`float16_gauss_newton` and the KL against the outputs it linearized at:
    the same matrix and KL, its products kept clear of float16 underflow.
    """
    if compute_dtype != "float16" or curvature == "hessian":
        return {"outputs_fn": outputs_fn, "output_distribution": distribution}
    old_outputs, matvec = float16_gauss_newton(outputs_fn, variables,
                                               distribution.fisher_vector_product)
    return {"curvature_vector_product": matvec,
            "kl_fn": lambda: distribution.kl(old_outputs, outputs_fn())}


class LossScale:
    """The dynamic loss scale ``S`` of one ``fit`` step (see the module docstring).

    ``S`` is read once, when this is made. :meth:`scale_gradient` wraps the loss,
    :meth:`unscale_gradient` each variable's value in the pass whose gradient is taken;
    :meth:`gradient_is_finite` then says whether the unscaled gradient was finite, and
    :meth:`update` moves ``S`` as ``LossScaleOptimizer`` does.
    """

    def __init__(self, state: LossScaleState):
        self.state = state
        self.scale = tf.convert_to_tensor(state.scale.value)
        self._finite: list[tf.Tensor] = []

    def scale_gradient(self, loss: tf.Tensor) -> tf.Tensor:
        """``loss`` itself; its gradient is multiplied by ``S`` on the way back."""

        @tf.custom_gradient
        def identity(t):
            def grad(upstream):
                return upstream * tf.cast(self.scale, upstream.dtype)

            return tf.identity(t), grad

        return identity(loss)

    def unscale_gradient(self, value: tf.Tensor) -> tf.Tensor:
        """``value`` itself; the gradient reaching it is divided by ``S`` (in ``value``'s
        dtype, float32) and its finiteness recorded for :meth:`gradient_is_finite`."""

        @tf.custom_gradient
        def identity(t):
            def grad(upstream):
                if isinstance(upstream, tf.IndexedSlices):  # an Embedding's gradient
                    values = upstream.values / tf.cast(self.scale, upstream.values.dtype)
                    self._finite.append(tf.reduce_all(tf.math.is_finite(values)))
                    return tf.IndexedSlices(values, upstream.indices, upstream.dense_shape)
                unscaled = upstream / tf.cast(self.scale, upstream.dtype)
                self._finite.append(tf.reduce_all(tf.math.is_finite(unscaled)))
                return unscaled

            return tf.identity(t), grad

        return identity(value)

    def gradient_is_finite(self) -> tf.Tensor:
        """Whether every unscaled gradient was finite (true if none was taken yet)."""
        if not self._finite:
            return tf.constant(True)
        return tf.reduce_all(tf.stack(self._finite))

    def update(self, finite) -> None:
        """``S ← S/2`` after a non-finite gradient; ``S ← 2S`` after ``growth_steps`` finite
        steps in a row; the counter of finite steps restarts whenever ``S`` changes."""
        scale, counter = self.state.scale, self.state.counter
        count = tf.convert_to_tensor(counter.value)
        grow = finite & tf.equal(count, tf.cast(self.state.growth_steps - 1, count.dtype))
        factor = tf.where(finite, tf.where(grow, 2.0, 1.0), 0.5)
        scale.assign(self.scale * tf.cast(factor, self.scale.dtype))
        counter.assign(tf.where(finite & ~grow, count + 1, tf.zeros_like(count)))


__all__ = ["LossScale", "curvature_arguments", "float16_gauss_newton", "power_of_two_scale"]
