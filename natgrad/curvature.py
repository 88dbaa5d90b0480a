"""Curvature-vector products without forming a matrix.

For parameters ``θ`` (a list of variables, ``n`` numbers in all) and a vector ``v`` shaped like
them, these functions return

* ``hessian_vector_product``:      ``H v``,          ``H = ∇²_θ f(θ)``
* ``gauss_newton_vector_product``: ``Jᵀ H_out J v``, ``J = ∂z/∂θ`` the Jacobian of the model
  outputs ``z``, ``H_out`` an output-space curvature applied analytically (see
  :mod:`natgrad.distributions`). With ``H_out`` the Hessian of a convex loss in ``z`` this is the
  generalized Gauss-Newton matrix; with ``H_out`` the Fisher of the model's output distribution
  it is the exact Fisher, which is also the Hessian of ``KL(π_old ‖ π_θ)`` at ``θ = θ_old``.

each at roughly the cost of one gradient (Pearlmutter, 1994), and ``hessian`` the dense
``[n, n]`` matrix for small problems and tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf

from natgrad.checks import check_choice
from natgrad.structure import (
    as_tf_variables,
    check_variables,
    check_vector,
    flatten,
    zeros_if_none,
)

HVP_METHODS = ("forward_over_reverse", "reverse_over_reverse")


def _scalar(value, what: str = "fn") -> tf.Tensor:
    value = tf.convert_to_tensor(value)
    if value.shape.rank is None or value.shape.num_elements() != 1 or value.shape.rank > 1:
        raise ValueError(f"{what} must return a scalar tensor; got a tensor of shape {value.shape}")
    return tf.reshape(value, [])


def hessian_vector_product(
    fn: Callable[[], tf.Tensor],
    variables: Sequence,
    vector: Sequence,
    *,
    method: str = "forward_over_reverse",
) -> list[tf.Tensor]:
    """Exact Hessian-vector product ``∇²f(θ) v`` of a scalar function of the variables.

    Args:
      fn: zero-argument callable returning a scalar tensor ``f(θ)`` that reads ``variables``.
      variables: list of ``tf.Variable`` or Keras variables ``θ``.
      vector: list of tensors ``v``, ``vector[i].shape == variables[i].shape``.
      method: ``"forward_over_reverse"`` (default; a ``tf.autodiff.ForwardAccumulator`` pushes
        ``v`` through the gradient computation, ``∂/∂ε ∇f(θ + εv)``) or
        ``"reverse_over_reverse"`` (nested ``GradientTape``s, ``∇_θ (∇f(θ) · v)``, what TRPO
        libraries traditionally use). Both are exact and cost 2-3 gradients; which is faster
        depends on the model (``scripts/bench_curvature.py`` measures both). For a Fisher or
        Gauss-Newton matrix, :func:`gauss_newton_operator` is much cheaper than either.

    Returns:
      ``H v`` as a list of tensors shaped like ``variables``. Works eagerly and in ``tf.function``.

    Raises:
      ValueError: bad ``variables`` / ``vector`` structure or shapes, a non-scalar ``fn``, or an
        unknown ``method``.
    """
    check_choice("method", method, HVP_METHODS)
    variables = check_variables(variables)
    vector = check_vector(variables, vector)
    if method == "forward_over_reverse":
        with tf.autodiff.ForwardAccumulator(as_tf_variables(variables), vector) as acc:
            with tf.GradientTape() as tape:
                value = _scalar(fn())
            grads = zeros_if_none(tape.gradient(value, variables), variables)
        return zeros_if_none(
            [acc.jvp(g, unconnected_gradients=tf.UnconnectedGradients.ZERO) for g in grads],
            variables,
        )
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = _scalar(fn())
        grads = zeros_if_none(inner.gradient(value, variables), variables)
        grad_dot_v = tf.add_n(
            [tf.reduce_sum(g * tf.stop_gradient(v)) for g, v in zip(grads, vector, strict=True)]
        )
    return zeros_if_none(outer.gradient(grad_dot_v, variables), variables)


def gauss_newton_vector_product(
    outputs_fn: Callable[[], object],
    variables: Sequence,
    vector: Sequence,
    output_curvature: Callable[[object, object], object],
) -> list[tf.Tensor]:
    """Generalized Gauss-Newton / Fisher product ``Jᵀ H_out J v``.

    One forward pass carries both a ``ForwardAccumulator`` (for ``u = J v``) and a
    ``GradientTape`` (for ``Jᵀ w``), so the cost is one forward pass, one JVP and one
    backward pass: close to a single gradient.

    Args:
      outputs_fn: zero-argument callable returning the model outputs ``z(θ)``: a tensor (e.g.
        logits ``[batch, k]``) or a nested structure (e.g. ``(mean, log_std)``).
      variables: list of variables ``θ``.
      vector: list of tensors ``v`` shaped like ``variables``.
      output_curvature: ``(z, u) -> H_out(z) u``, the output-space curvature applied to a
        tangent ``u`` of the same structure as ``z``; e.g.
        :func:`natgrad.distributions.categorical_fisher_vector_product`. It must be symmetric
        positive semi-definite for the result to be a Gauss-Newton matrix.

    Returns:
      ``Jᵀ H_out J v`` as a list of tensors shaped like ``variables``.
    """
    variables = check_variables(variables)
    vector = check_vector(variables, vector)
    with tf.GradientTape() as tape:
        with tf.autodiff.ForwardAccumulator(as_tf_variables(variables), vector) as acc:
            outputs = outputs_fn()
    jv = tf.nest.map_structure(
        lambda z: acc.jvp(z, unconnected_gradients=tf.UnconnectedGradients.ZERO), outputs
    )
    hjv = tf.nest.map_structure(
        tf.stop_gradient, output_curvature(tf.nest.map_structure(tf.stop_gradient, outputs), jv)
    )
    flat_outputs = tf.nest.flatten(outputs)
    grads = tape.gradient(flat_outputs, variables, output_gradients=tf.nest.flatten(hjv))
    return zeros_if_none(grads, variables)


def gauss_newton_operator(
    outputs_fn: Callable[[], object],
    variables: Sequence,
    output_curvature: Callable[[object, object], object],
) -> Callable[[Sequence], list[tf.Tensor]]:
    """See :func:`linearize_gauss_newton`; returns only the matvec."""
    return linearize_gauss_newton(outputs_fn, variables, output_curvature)[1]


def linearize_gauss_newton(
    outputs_fn: Callable[[], object],
    variables: Sequence,
    output_curvature: Callable[[object, object], object],
) -> tuple[object, Callable[[Sequence], list[tf.Tensor]]]:
    """Linearizes the model once and returns ``v -> Jᵀ H_out J v`` that reuses the forward pass.

    :func:`gauss_newton_vector_product` runs the model on every call. A conjugate-gradient
    solve multiplies by the same matrix many times, so this runs ``outputs_fn`` once, under two
    persistent tapes, and each product then costs one ``J v`` and one ``Jᵀ w`` with no forward
    pass. ``Jᵀ w`` is the inner tape's vector-Jacobian product; ``J v`` is obtained as the
    transpose of the linear map ``w ↦ Jᵀ w``: differentiate ``Jᵀ w₀`` with respect to a dummy
    ``w₀ = 0`` against the cotangent ``v`` (the "double-VJP" trick, since TensorFlow has no
    ``linearize``).

    Build it and use it inside the same ``tf.function`` (or eagerly); the tapes hold the
    activations until the returned function is dropped. Arguments as for
    :func:`gauss_newton_vector_product`; results are identical to it.

    Returns:
      ``(outputs, matvec)``: the model outputs at the current variables (gradient-stopped, so
      a caller can keep them as the "old" outputs of a KL without another forward pass) and
      ``v -> Jᵀ H_out J v``.
    """
    variables = check_variables(variables)
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape(persistent=True) as inner:
            outputs = outputs_fn()
        flat_outputs = tf.nest.flatten(outputs)
        dummy_cotangents = [tf.zeros_like(z) for z in flat_outputs]
        outer.watch(dummy_cotangents)
        vjp_of_dummy = zeros_if_none(
            inner.gradient(flat_outputs, variables, output_gradients=dummy_cotangents), variables
        )
    fixed_outputs = tf.nest.map_structure(tf.stop_gradient, outputs)

    def matvec(vector: Sequence) -> list[tf.Tensor]:
        vector = check_vector(variables, vector)
        jv = outer.gradient(
            vjp_of_dummy,
            dummy_cotangents,
            output_gradients=vector,
            unconnected_gradients=tf.UnconnectedGradients.ZERO,
        )
        jv = tf.nest.pack_sequence_as(outputs, jv)
        hjv = tf.nest.map_structure(tf.stop_gradient, output_curvature(fixed_outputs, jv))
        grads = inner.gradient(flat_outputs, variables, output_gradients=tf.nest.flatten(hjv))
        return zeros_if_none(grads, variables)

    return fixed_outputs, matvec


def hessian(fn: Callable[[], tf.Tensor], variables: Sequence) -> tf.Tensor:
    """Dense Hessian ``[n, n]`` of a scalar function, in :func:`natgrad.flatten` order.

    Memory and time grow as ``n²``: for small models and tests only.
    """
    variables = check_variables(variables)
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            value = _scalar(fn())
        grad = flatten(zeros_if_none(inner.gradient(value, variables), variables))
    # Unconnected blocks come back as None and are zero-filled here: asking ``jacobian`` for
    # ``UnconnectedGradients.ZERO`` fails on Keras 3 variables (their ``dtype`` is a string).
    blocks = outer.jacobian(grad, variables)
    n = grad.shape[0]
    return tf.concat(
        [
            tf.zeros([n, tf.TensorShape(v.shape).num_elements()], dtype=grad.dtype)
            if b is None
            else tf.reshape(b, [n, -1])
            for b, v in zip(blocks, variables, strict=True)
        ],
        axis=1,
    )
