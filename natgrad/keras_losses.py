"""Compiled Keras losses as output distributions: the curvature and KL that ``model.fit`` uses.

A natural-gradient step needs, for the model outputs ``z``, a KL ``KL(z_old ‖ z_new)`` and its
Hessian ``H_out`` in ``z``. For each supported Keras loss there is an
:class:`~natgrad.distributions.OutputDistribution` whose ``H_out`` is the (expected) Hessian of
the loss, so its Fisher equals the loss's Gauss-Newton matrix. A model with several outputs and
a loss ``L = Σ_i w_i L_i(z_i)`` (``w_i`` the compiled ``loss_weights``) gets the block-diagonal
output curvature ``H_out = diag(w_i H_i)`` and the KL ``Σ_i w_i KL_i``: the parameter-space
matrix ``Jᵀ H_out J`` is then the sum of each output's Gauss-Newton / Fisher term.
"""

from __future__ import annotations

import re

import keras
import tensorflow as tf

from natgrad import distributions
from natgrad.distributions import OutputDistribution

_CATEGORICAL_NAMES = {
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
}
_BINARY_NAMES = {"binary_crossentropy"}
_SQUARED_ERROR_NAMES = {"mse", "mean_squared_error"}
# Keras' batch means: "mean" and "sum_over_batch_size" divide the summed loss by the number of
# elements; "mean_with_sample_weight" by the summed sample weights (the same without weights).
_MEAN_REDUCTIONS = ("sum_over_batch_size", "mean", "mean_with_sample_weight")
SUPPORTED_LOSSES = (
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "binary_crossentropy",
    "mean_squared_error (mse)",
)


def _loss_name_and_logits(loss) -> tuple[str, bool]:
    if isinstance(loss, str):
        return loss, False
    if isinstance(loss, keras.losses.Loss):
        config = loss.get_config()
        reduction = config.get("reduction", "sum_over_batch_size")
        if reduction not in _MEAN_REDUCTIONS:
            raise ValueError(
                f"NaturalGradient needs a loss averaged over the batch (reduction one of "
                f"{', '.join(repr(r) for r in _MEAN_REDUCTIONS)}); got reduction={reduction!r}"
            )
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(loss).__name__).lower()
        return name, bool(config.get("from_logits", False))
    name = getattr(loss, "__name__", type(loss).__name__)
    return name, False


def output_distribution_for_loss(loss) -> OutputDistribution:
    """The output distribution whose KL and Fisher match one compiled Keras loss.

    (Sparse) categorical cross-entropy: categorical, from logits or probabilities; binary
    cross-entropy: independent Bernoulli, from logits or probabilities; mean squared error:
    squared error. For each, the output-space Fisher equals the expected Hessian of the loss
    (and for logits and MSE its exact Hessian), so ``"fisher"`` and ``"gauss_newton"`` coincide.

    Raises:
      ValueError: a dict or list of losses (see :func:`output_losses`), a loss that is not a
        batch mean, or any other loss, naming the supported ones.
    """
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "output_distribution_for_loss takes one loss; got a "
            f"{type(loss).__name__} of losses (use natgrad.keras_losses.output_losses)"
        )
    name, from_logits = _loss_name_and_logits(loss)
    if name in _CATEGORICAL_NAMES:
        return distributions.CATEGORICAL if from_logits else distributions.CATEGORICAL_PROBS
    if name in _BINARY_NAMES:
        return distributions.BERNOULLI if from_logits else distributions.BERNOULLI_PROBS
    if name in _SQUARED_ERROR_NAMES:
        return distributions.SQUARED_ERROR
    raise ValueError(
        f"NaturalGradient cannot form a Fisher / Gauss-Newton product for the loss {name!r}; "
        f"supported losses: {', '.join(SUPPORTED_LOSSES)} (as strings or keras.losses objects, "
        "with or without from_logits). Use curvature='hessian' with a custom loop for others."
    )


def check_losses(loss) -> None:
    """Checks every loss in a compiled ``loss`` (one loss, a list, or a dict; ``None`` entries
    mean "no loss for this output") has an output distribution; raises ``ValueError`` if not."""
    if loss is None:
        raise ValueError("NaturalGradient with model.fit needs a compiled loss; got loss=None")
    leaves = [leaf for leaf in keras.tree.flatten(loss) if leaf is not None]
    if not leaves:
        raise ValueError(f"NaturalGradient with model.fit needs at least one loss; got {loss!r}")
    for leaf in leaves:
        output_distribution_for_loss(leaf)


def output_losses(loss, loss_weights, y_pred, output_names=None) -> list[tuple]:
    """``[(distribution or None, weight)]``, one per leaf of ``keras.tree.flatten(y_pred)``.

    Follows Keras' ``compile``: one loss for a single output; a list or tuple with one loss per
    output (in output order); a dict keyed by output name (``y_pred`` a dict, or a list named
    by ``output_names``). ``loss_weights`` is ``None`` (all 1), or shaped like ``loss`` (a list,
    or a dict by name). An output with loss ``None`` gets ``(None, 0.0)``.

    Raises:
      ValueError: one loss for several outputs, a count or name that does not match the
        outputs, or an unsupported loss.
    """
    flat_pred = keras.tree.flatten(y_pred)
    n = len(flat_pred)
    if not isinstance(loss, (dict, list, tuple)):
        if n != 1:
            raise ValueError(
                f"the model returns {n} outputs but was compiled with one loss ({loss!r}); "
                "NaturalGradient needs one loss per output: compile with a list (in output "
                "order) or a dict keyed by output name, e.g. loss=[loss_a, loss_b]"
            )
        losses, weights = [loss], [1.0 if loss_weights is None else loss_weights]
        weights = keras.tree.flatten(weights)
    elif isinstance(loss, dict):
        if isinstance(y_pred, dict):
            names = sorted(y_pred)  # keras.tree.flatten's order for dicts
        else:
            names = list(output_names or [])
        unknown = sorted(set(loss) - set(names))
        if unknown or len(names) != n:
            raise ValueError(
                f"loss dict keys {sorted(loss)} do not name the model's outputs {names}"
            )
        losses = [loss.get(name) for name in names]
        if isinstance(loss_weights, dict):
            weights = [loss_weights.get(name, 1.0) for name in names]
        elif loss_weights is None:
            weights = [1.0] * n
        else:
            raise ValueError("a dict of losses needs loss_weights as a dict by output name")
    else:
        losses = list(loss)
        if len(losses) != n:
            raise ValueError(
                f"the model returns {n} outputs but {len(losses)} losses were compiled"
            )
        weights = [1.0] * n if loss_weights is None else keras.tree.flatten(loss_weights)
        if len(weights) != n:
            raise ValueError(f"{len(weights)} loss_weights for {n} outputs")
    return [
        (None, 0.0) if item is None else (output_distribution_for_loss(item), float(w))
        for item, w in zip(losses, weights, strict=True)
    ]


def compiled_output_distribution(loss, loss_weights=None, output_names=None) -> OutputDistribution:
    """One :class:`OutputDistribution` for a compiled loss over all of a model's outputs.

    For outputs ``z = (z_1, …)`` with the parts ``(d_i, w_i)`` of :func:`output_losses`,
    ``kl(old, new) = Σ_i w_i KL_i(old_i, new_i)`` and
    ``fisher_vector_product(z, u)_i = w_i H_i(z_i) u_i`` (zero for an output without a loss),
    so ``Jᵀ H_out J`` is the weighted sum of the outputs' Gauss-Newton / Fisher terms. The
    parts are resolved from the structure of the outputs each function receives; one output
    with weight 1 uses its distribution's own functions unchanged.
    """

    def parts(outputs):
        return output_losses(loss, loss_weights, outputs, output_names)

    def kl(old, new):
        resolved = parts(new)
        if len(resolved) == 1 and resolved[0][1] == 1.0:
            return resolved[0][0].kl(keras.tree.flatten(old)[0], keras.tree.flatten(new)[0])
        terms = [
            w * d.kl(o, z)
            for (d, w), o, z in zip(
                resolved, keras.tree.flatten(old), keras.tree.flatten(new), strict=True
            )
            if d is not None and w != 0.0
        ]
        return tf.add_n(terms)

    def fisher_vector_product(outputs, u):
        products = [
            tf.zeros_like(v) if d is None or w == 0.0 else w * d.fisher_vector_product(z, v)
            for (d, w), z, v in zip(
                parts(outputs), keras.tree.flatten(outputs), keras.tree.flatten(u), strict=True
            )
        ]
        return keras.tree.pack_sequence_as(u, products)

    return OutputDistribution("compiled_loss", kl, fisher_vector_product)


def mean_over_leading_rows(distribution: OutputDistribution, rows) -> OutputDistribution:
    """``distribution`` as a mean over the first ``rows`` rows of its outputs only.

    For outputs of ``N`` rows whose KL and Fisher are means over rows (every distribution
    here), ``kl`` replaces the other rows of the new outputs by the old ones (a zero KL each)
    and ``fisher_vector_product`` zeroes them in the tangent, and both multiply by ``N / rows``.
    ``model.fit`` under XLA uses it on a curvature batch padded to a fixed size
    (:func:`natgrad.recent_inputs.top_up_to_fixed_size`).
    """

    def counted(t):
        index = tf.range(tf.shape(t)[0])
        return tf.reshape(index < rows, [-1] + [1] * (t.shape.rank - 1))

    def ratio(outputs, dtype):
        total = tf.shape(tf.nest.flatten(outputs)[0])[0]
        return tf.cast(total, dtype) / tf.cast(rows, dtype)

    def kl(old, new):
        new = tf.nest.map_structure(lambda o, z: tf.where(counted(z), z, o), old, new)
        value = distribution.kl(old, new)
        return value * ratio(new, value.dtype)

    def fisher_vector_product(outputs, u):
        u = tf.nest.map_structure(lambda t: tf.where(counted(t), t, tf.zeros_like(t)), u)
        product = distribution.fisher_vector_product(outputs, u)
        return tf.nest.map_structure(lambda t: t * ratio(outputs, t.dtype), product)

    return OutputDistribution(f"{distribution.name}_leading_rows", kl, fisher_vector_product)


__all__ = [
    "SUPPORTED_LOSSES",
    "check_losses",
    "output_distribution_for_loss",
    "output_losses",
    "compiled_output_distribution",
    "mean_over_leading_rows",
]
