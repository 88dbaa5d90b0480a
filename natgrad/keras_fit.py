"""``model.fit`` with :class:`natgrad.NaturalGradient`: the one hook Keras 3 needs.

Keras 3's TensorFlow ``train_step`` computes gradients and hands the optimizer
``(gradient, variable)`` pairs; a natural-gradient step needs closures over the batch instead
(the loss, and the model outputs for curvature products and the KL). So
:func:`enable_natural_gradient` replaces the model's ``train_step`` with one that calls
:meth:`NaturalGradient.minimize` on the batch, and keeps everything else of ``fit``
(validation, callbacks, metrics, History) as Keras does it::

    model.compile(optimizer=natgrad.NaturalGradient(), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    natgrad.enable_natural_gradient(model)   # the one added line
    model.fit(x, y, validation_split=0.2, epochs=10)

The compiled loss decides the output distribution whose Fisher (equal here to the Gauss-Newton
matrix of the loss) is used: see :func:`output_distribution_for_loss`.
"""

from __future__ import annotations

import functools
import re

import keras
import tensorflow as tf

from natgrad import distributions
from natgrad.distributions import OutputDistribution
from natgrad.optimizer import NaturalGradient

_CATEGORICAL_NAMES = {
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
}
_BINARY_NAMES = {"binary_crossentropy"}
_SQUARED_ERROR_NAMES = {"mse", "mean_squared_error"}
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
        if reduction != "sum_over_batch_size":
            raise ValueError(
                f"NaturalGradient needs a loss averaged over the batch (reduction="
                f"'sum_over_batch_size'); got reduction={reduction!r}"
            )
        name = re.sub(r"(?<!^)(?=[A-Z])", "_", type(loss).__name__).lower()
        return name, bool(config.get("from_logits", False))
    name = getattr(loss, "__name__", type(loss).__name__)
    return name, False


def output_distribution_for_loss(loss) -> OutputDistribution:
    """The output distribution whose KL and Fisher match a compiled Keras loss.

    (Sparse) categorical cross-entropy: categorical, from logits or probabilities; binary
    cross-entropy: independent Bernoulli, from logits or probabilities; mean squared error:
    squared error. For each, the output-space Fisher equals the expected Hessian of the loss
    (and for logits and MSE its exact Hessian), so ``"fisher"`` and ``"gauss_newton"`` coincide.

    Raises:
      ValueError: any other loss, naming the supported ones.
    """
    if isinstance(loss, (dict, list, tuple)):
        raise ValueError(
            "NaturalGradient with model.fit supports one output with one loss; got a "
            f"{type(loss).__name__} of losses"
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


def _leading_part(x, fraction: float):
    if fraction >= 1.0:
        return x
    n = tf.shape(tf.nest.flatten(x)[0])[0]
    m = tf.maximum(1, tf.cast(tf.math.ceil(fraction * tf.cast(n, tf.float32)), tf.int32))
    return tf.nest.map_structure(lambda t: t[:m], x)


def _check_model(model: keras.Model) -> None:
    if not isinstance(getattr(model, "optimizer", None), NaturalGradient):
        raise ValueError(
            "enable_natural_gradient(model) needs model.compile(optimizer="
            "natgrad.NaturalGradient(...), ...) first; the model's optimizer is "
            f"{type(getattr(model, 'optimizer', None)).__name__}"
        )
    if len(getattr(model, "outputs", None) or [None]) > 1:
        raise ValueError("NaturalGradient with model.fit supports single-output models only")
    output_distribution_for_loss(model.loss)


def natural_gradient_train_step(model: keras.Model, data) -> dict:
    """One ``fit`` step: a :meth:`NaturalGradient.minimize` call on the batch ``data``.

    The loss is the compiled loss (with regularization losses and sample weights); the
    curvature and the trust-region KL come from the model outputs, in inference mode (no
    dropout noise), on the leading ``curvature_batch_fraction`` of the batch. Metrics and the
    loss tracker are updated with the predictions before the step, as Keras' own
    ``train_step`` does.
    """
    _check_model(model)
    optimizer: NaturalGradient = model.optimizer
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
    output_distribution = output_distribution_for_loss(model.loss)
    x_curvature = _leading_part(x, optimizer.curvature_batch_fraction)
    y_pred = model(x, training=True)

    def loss_fn():
        return model._compute_loss(
            x=x, y=y, y_pred=model(x, training=True), sample_weight=sample_weight, training=True
        )

    stats = optimizer.minimize(
        loss_fn,
        model.trainable_variables,
        # Inference mode: dropout would draw new masks on every call, so the KL would not be
        # 0 at the start and the line search's KL test would measure noise.
        outputs_fn=lambda: model(x_curvature, training=False),
        output_distribution=output_distribution,
    )
    model._loss_tracker.update_state(
        stats["loss_before"], sample_weight=tf.shape(tf.nest.flatten(x)[0])[0]
    )
    return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)


def enable_natural_gradient(model: keras.Model) -> keras.Model:
    """Makes ``model.fit`` take :class:`NaturalGradient` steps; returns ``model``.

    Call it after ``model.compile(optimizer=natgrad.NaturalGradient(...), loss=...)``. It
    installs :func:`natural_gradient_train_step` as this model's ``train_step`` (evaluation,
    prediction, saving and loading are unchanged). A loaded model needs the call again before
    it trains further.

    Raises:
      ValueError: the optimizer is not a ``NaturalGradient``, the model has several outputs,
        or the compiled loss has no supported Fisher (the message lists the supported losses).
    """
    _check_model(model)
    model.train_step = functools.partial(natural_gradient_train_step, model)
    model.train_function = None  # rebuilt with the new train_step on the next fit()
    return model


__all__ = [
    "SUPPORTED_LOSSES",
    "enable_natural_gradient",
    "natural_gradient_train_step",
    "output_distribution_for_loss",
]
