"""``model.fit`` with :class:`natgrad.NaturalGradient`: the one hook Keras 3 needs.

Keras 3's TensorFlow ``train_step`` computes gradients and hands the optimizer
``(gradient, variable)`` pairs; a natural-gradient step needs closures over the batch instead
(the loss, and the model outputs for curvature products and the KL). So
:func:`enable_natural_gradient` replaces the model's ``train_step`` with one that calls
:meth:`NaturalGradient.minimize` on the batch, and keeps everything else of ``fit``
(validation, callbacks, metrics, History) as Keras does it::

    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    natgrad.enable_natural_gradient(model)   # the one added line
    model.fit(x, y, validation_split=0.2, epochs=10)

One step on a batch ``x`` of ``n`` samples, with ``r = reference_batch_size``:

* **One model per step.** Every forward pass of the step (the loss and gradient, the
  linearization for curvature products, each line-search trial) runs with the non-trainable
  variables at their start-of-step values (``keras.StatelessScope``): dropout draws the same
  masks and BatchNorm normalizes the same way in all of them, so the KL at ``θ₀`` is exactly 0
  and the line search compares losses of one function. The non-trainable values produced by
  the loss pass at ``θ₀`` (BatchNorm moving statistics, dropout seeds) are written back once,
  accepted step or not, as Keras' own ``train_step`` does.
* **Small batches.** Curvature products and the line search's KL are measured on the batch
  topped up to ``r`` samples with recent training inputs (:mod:`natgrad.recent_inputs`), and
  the KL bound is ``max_kl · min(1, n / r)``: the trust region constrains the model on more
  than a handful of samples, and a noisy small-batch gradient moves it less. Batches of ``r``
  samples or more are used exactly as before.
* **Losses.** The compiled loss decides the output distribution whose Fisher (equal here to
  the Gauss-Newton matrix of the loss) is used, summed over outputs with ``loss_weights``:
  see :mod:`natgrad.keras_losses`.
* **Logs.** ``kl``, ``accepted`` and ``line_search_tries`` are logged as epoch means next to
  the loss and metrics. ``optimizer.iterations`` counts steps attempted, accepted or not.
* **XLA** (``compile(jit_compile=True)``, or ``"auto"`` on a GPU). Every shape must follow
  from the batch's: the topped-up curvature batch has ``max(n, r)`` rows however full the
  ring is, and rows the ring cannot fill yet are left out of the KL and the curvature by a
  mask (:func:`natgrad.keras_losses.mean_over_leading_rows`): the step is the one without XLA.
* **Mixed precision** (``mixed_float16``, where ``compile`` wraps the optimizer in a
  ``LossScaleOptimizer``): the gradient is taken with that optimizer's dynamic loss scale, a
  step with a non-finite scaled gradient is skipped and the scale moves as Keras moves it, and
  curvature products are scaled through float16 (:mod:`natgrad.keras_mixed_precision`).
"""

from __future__ import annotations

import dataclasses
import math

import keras
import tensorflow as tf

from natgrad.checks import check_int
from natgrad.distribute import check_strategy, replica_context
from natgrad.keras_adapter import (
    call_model,
    compiled_loss,
    compiled_loss_weights,
    install_train_step,
    loss_scale_state,
    loss_tracker,
)
from natgrad.keras_kfac import build_factors, kfac_step_arguments
from natgrad.keras_losses import (
    SUPPORTED_LOSSES,
    check_losses,
    compiled_output_distribution,
    mean_over_leading_rows,
    output_distribution_for_loss,
    output_losses,
)
from natgrad.keras_mixed_precision import LossScale, curvature_arguments
from natgrad.keras_stateless import StatelessForward
from natgrad.kfac import KroneckerFactors
from natgrad.optimizer import NaturalGradient
from natgrad.recent_inputs import RecentInputs, top_up, top_up_to_fixed_size

STEP_METRICS = ("kl", "accepted", "line_search_tries")
_LOW_PRECISION = (tf.float16, tf.bfloat16)


def natural_gradient_of(optimizer) -> NaturalGradient | None:
    """The :class:`NaturalGradient` a compiled optimizer is or wraps (``mixed_float16`` makes
    ``compile`` wrap it in a ``LossScaleOptimizer``), else ``None``."""
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        optimizer = optimizer.inner_optimizer
    return optimizer if isinstance(optimizer, NaturalGradient) else None


@dataclasses.dataclass
class FitState:
    """What the installed ``train_step`` keeps between steps: the ring of recent inputs, the
    reference batch size ``r`` and the epoch-mean trackers of :data:`STEP_METRICS`."""

    recent: RecentInputs
    reference_batch_size: int
    trackers: dict
    kronecker: KroneckerFactors | None = None  # cg_preconditioner="kfac": made at first use

    @classmethod
    def create(cls, reference_batch_size: int) -> FitState:
        return cls(
            recent=RecentInputs(reference_batch_size),
            reference_batch_size=reference_batch_size,
            trackers={name: keras.metrics.Mean(name=name) for name in STEP_METRICS},
        )


def _leading_part(x, fraction: float):
    if fraction >= 1.0:
        return x
    n = tf.shape(tf.nest.flatten(x)[0])[0]
    m = tf.maximum(1, tf.cast(tf.math.ceil(fraction * tf.cast(n, tf.float32)), tf.int32))
    return tf.nest.map_structure(lambda t: t[:m], x)


def _float32_outputs(outputs):
    """Low-precision outputs (``mixed_float16``) in float32: the KL, the output-space Fisher
    and CG run in float32 (variables are float32 under mixed precision)."""
    return tf.nest.map_structure(
        lambda z: tf.cast(z, tf.float32) if z.dtype in _LOW_PRECISION else z, outputs
    )


def _output_names(model) -> list | None:
    names = getattr(model, "output_names", None)
    return list(names) if names else None


def _check_model(model: keras.Model) -> NaturalGradient:
    optimizer = natural_gradient_of(getattr(model, "optimizer", None))
    if optimizer is None:
        raise ValueError(
            "enable_natural_gradient(model) needs model.compile(optimizer="
            "natgrad.NaturalGradient(...), ...) first; the model's optimizer is "
            f"{type(getattr(model, 'optimizer', None)).__name__}"
        )
    check_losses(model.loss)
    outputs = getattr(model, "outputs", None)  # known for functional and Sequential models
    if outputs:
        structure = outputs if len(outputs) > 1 else outputs[0]
        output_losses(model.loss, compiled_loss_weights(model), structure,
                      _output_names(model))
    return optimizer


def _update_step_metrics(trackers: dict, stats: dict, epoch_start) -> dict:
    """Updates the ``kl`` / ``accepted`` / ``line_search_tries`` epoch means; returns results.

    Keras resets its metrics (``model.metrics``) at every epoch start; these trackers are not
    among them (they would then appear, empty, in ``evaluate``'s logs), so they are reset when
    ``epoch_start``: the loss tracker was empty before this step.
    """
    values = {
        "kl": tf.where(tf.math.is_finite(stats["kl"]), stats["kl"], tf.zeros_like(stats["kl"])),
        "accepted": stats["accepted"],
        "line_search_tries": stats["line_search_tries"],
    }
    results = {}
    for name, tracker in trackers.items():
        for variable in tracker.variables:
            variable.assign(tf.where(epoch_start, tf.zeros_like(variable.value), variable.value))
        tracker.update_state(tf.cast(values[name], tf.float32))
        results[name] = tracker.result()
    return results


def _curvature_batch(optimizer: NaturalGradient, x, state: FitState | None, n_global, *,
                     distributed: bool, fixed_size: bool):
    """``(x_curvature, real_rows, recent, max_kl)``: the inputs curvature products and the KL
    are measured on, how many of its leading rows count (``None``: all), the ring they were
    topped up from (``None``: not topped up) and the step's KL bound.

    With ``fixed_size`` (under XLA, which needs every shape to follow from the batch's shape)
    the batch is topped up to a fixed size (:func:`natgrad.recent_inputs.top_up_to_fixed_size`)
    and ``real_rows`` says which rows are the ones :func:`natgrad.recent_inputs.top_up` gives.
    """
    x_curvature = _leading_part(x, optimizer.curvature_batch_fraction)
    reference = state.reference_batch_size if state is not None else 0
    # Under a strategy each replica would keep its own ring: not yet; the bound still shrinks.
    recent = (state.recent if reference > 0 and not distributed and state.recent.supports(x)
              else None)
    real_rows = None
    if recent is not None:
        target = max(1, math.ceil(optimizer.curvature_batch_fraction * reference))
        if fixed_size:
            x_curvature, real_rows = top_up_to_fixed_size(x_curvature, recent, target)
        else:
            x_curvature = top_up(x_curvature, recent, target)
    max_kl = optimizer.max_kl
    if max_kl is not None and reference > 0:  # also for inputs the ring cannot keep
        share = tf.minimum(tf.constant(1.0, tf.float64),
                           tf.cast(n_global, tf.float64) / reference)
        max_kl = tf.constant(max_kl, tf.float64) * share
    return x_curvature, real_rows, recent, max_kl


def _loss_and_outputs_fns(model, forward: StatelessForward, data, x_curvature, replicas: int,
                          loss_scale: LossScale | None):
    """``(loss_fn, outputs_fn, first_pass)`` for :meth:`NaturalGradient.minimize`.

    ``minimize`` calls ``loss_fn`` first at ``θ₀``, and takes the gradient of that call: that
    pass's predictions are kept in ``first_pass["y_pred"]`` for the metrics, its new
    non-trainable values (BatchNorm statistics, dropout seeds) are kept for
    :meth:`StatelessForward.write_kept`, and its gradient is loss-scaled if ``loss_scale``.
    """
    x, y, sample_weight = data
    first_pass = {}
    variable_dtype = tf.as_dtype(model.trainable_variables[0].dtype)

    def loss_pass():
        y_pred = call_model(model, x)
        # Refuses, before Keras computes anything, losses that do not match the outputs.
        output_losses(model.loss, compiled_loss_weights(model), y_pred, _output_names(model))
        return y_pred, compiled_loss(model, x, y, y_pred, sample_weight)

    def loss_fn():
        scale = loss_scale if not first_pass else None
        y_pred, loss = forward.run(loss_pass, keep=not first_pass, loss_scale=scale)
        first_pass.setdefault("y_pred", y_pred)
        # In the variables' dtype: Keras computes losses in floatx (float32) for a float64
        # model, and in float32 under mixed precision (float32 variables) already.
        loss = tf.cast(loss, variable_dtype) * replicas
        return loss if scale is None else scale.scale_gradient(loss)

    def outputs_fn():
        return _float32_outputs(forward.run(lambda: call_model(model, x_curvature)))

    return loss_fn, outputs_fn, first_pass


def _logs(model, state: FitState | None, stats: dict, data, y_pred, n) -> dict:
    """Updates the loss tracker, the compiled metrics (with the predictions before the step)
    and the step metrics, as Keras' own ``train_step`` does; returns the logs."""
    x, y, sample_weight = data
    tracker = loss_tracker(model)
    epoch_start = tf.equal(tf.convert_to_tensor(tracker.count), 0.0)
    tracker.update_state(stats["loss_before"], sample_weight=n)
    logs = model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
    if state is not None:
        logs.update(_update_step_metrics(state.trackers, stats, epoch_start))
    return logs


def natural_gradient_train_step(model: keras.Model, data, state: FitState | None = None) -> dict:
    """One ``fit`` step: a :meth:`NaturalGradient.minimize` call on the batch ``data``.

    The loss is the compiled loss (with regularization losses and sample weights) in training
    mode. The curvature and the trust-region KL come from the model outputs, in training mode
    with the same non-trainable state (see the module docstring), on the leading
    ``curvature_batch_fraction`` of the batch topped up with recent inputs from ``state``.
    Metrics and the loss tracker are updated with the predictions before the step, as Keras'
    own ``train_step`` does. If the model was compiled again with another optimizer, this is
    the model class's own ``train_step``.
    """
    optimizer = natural_gradient_of(model.optimizer)
    if optimizer is None:  # re-compiled with another optimizer: the hook steps aside
        return type(model).train_step(model, data)
    data = keras.utils.unpack_x_y_sample_weight(data)
    x = data[0]
    n = tf.shape(tf.nest.flatten(x)[0])[0]
    # Under tf.distribute (fit in a strategy's scope) this runs once per replica on its shard:
    # minimize averages over the replicas, weighted by shard size, and Keras' losses come
    # scaled by 1 / replicas, which the loss undoes (natgrad.distribute).
    context = replica_context()
    replicas = 1 if context is None else context.num_replicas_in_sync
    n_global = n if context is None else context.all_reduce(tf.distribute.ReduceOp.SUM, n)
    if not model.trainable_variables:
        # A subclassed model builds its layers on its first call; inference mode changes no
        # state (no BatchNorm update, no dropout seed drawn).
        call_model(model, x, training=False)
    forward = StatelessForward(model)
    x_curvature, real_rows, recent, max_kl = _curvature_batch(
        optimizer, x, state, n_global, distributed=context is not None,
        fixed_size=bool(model.jit_compile))
    scale_state = loss_scale_state(model.optimizer, model.trainable_variables)
    loss_scale = LossScale(scale_state) if scale_state is not None else None
    loss_fn, outputs_fn, first_pass = _loss_and_outputs_fns(model, forward, data, x_curvature,
                                                            replicas, loss_scale)
    distribution = compiled_output_distribution(
        model.loss, compiled_loss_weights(model), _output_names(model)
    )
    if real_rows is not None:
        distribution = mean_over_leading_rows(distribution, real_rows)
    preconditioner = None
    if optimizer.cg_preconditioner == "kfac" and state is not None and context is None:
        state.kronecker = state.kronecker or KroneckerFactors(
            optimizer.preconditioner_decay, optimizer.kfac_inverse_period)
        outputs_fn, preconditioner = kfac_step_arguments(
            model, state.kronecker, outputs_fn, distribution, optimizer.iterations, real_rows)
    stats = optimizer.minimize(
        loss_fn,
        model.trainable_variables,
        **curvature_arguments(model.compute_dtype, optimizer.curvature, outputs_fn,
                              model.trainable_variables, distribution),
        max_kl=max_kl,
        replica_weight=None if context is None else n,
        preconditioner=preconditioner,
    )
    if loss_scale is not None:
        finite = loss_scale.gradient_is_finite()
        if context is not None:  # minimize skipped the step if any replica's was not finite
            failed = context.all_reduce(tf.distribute.ReduceOp.SUM, tf.cast(~finite, tf.int32))
            finite = tf.equal(failed, 0)
        loss_scale.update(finite)
    forward.write_kept()
    if recent is not None:
        # A batch whose loss is not finite (NaN inputs) would poison later curvature: skipped.
        recent.add(x, enabled=tf.math.is_finite(stats["loss_before"]))
    return _logs(model, state, stats, data, first_pass["y_pred"], n)


def _build_state(model: keras.Model, optimizer: NaturalGradient, state: FitState) -> None:
    """Makes the optimizer's and the step's own variables now, where the model is built and
    (for the ring) its one input is declared, as ``Sequential`` and functional models do:
    variables made while ``fit`` traces the step make TensorFlow trace it twice, doubling the
    first epoch's overhead (Keras builds the optimizer there on TensorFlow)."""
    if model.built and model.trainable_variables:
        model.optimizer.build(model.trainable_variables)  # and a LossScaleOptimizer's state
    inputs = getattr(model, "inputs", None) or []
    if len(inputs) == 1 and state.recent.supports(inputs[0]):
        state.recent.all_rows(inputs[0])  # builds the ring
    if optimizer.cg_preconditioner == "kfac":
        state.kronecker = KroneckerFactors(optimizer.preconditioner_decay,
                                           optimizer.kfac_inverse_period)
        build_factors(model, state.kronecker)


def enable_natural_gradient(model: keras.Model, *, reference_batch_size: int = 128) -> keras.Model:
    """Makes ``model.fit`` take :class:`NaturalGradient` steps; returns ``model``.

    Call it after ``model.compile(optimizer=natgrad.NaturalGradient(...), loss=...)``. It
    installs :func:`natural_gradient_train_step` as this model's ``train_step`` (evaluation,
    prediction, saving and loading are unchanged). A loaded model needs the call again before
    it trains further. Compiling again with another optimizer makes ``fit`` use that optimizer
    (the hook steps aside while ``model.optimizer`` is not a ``NaturalGradient``).

    Args:
      model: a compiled Keras model.
      reference_batch_size: ``r``, default 128. Curvature and the trust-region KL are measured
        on at least ``r`` samples (a smaller batch is topped up with the most recent training
        inputs, kept in a ring of ``r`` rows), and a batch of ``n < r`` samples gets the KL
        bound ``max_kl · n / r``. ``0`` turns both off (every batch on its own). Inputs
        without a fixed per-sample shape (variable-length sequences) are not kept: their
        small batches get only the smaller bound.

    Raises:
      ValueError: the optimizer is not (or does not wrap) a ``NaturalGradient``; a compiled
        loss has no supported Fisher (the message lists the supported losses) or is not a
        batch mean; the losses do not match the model's outputs (one loss per output); the
        model lives in a ``tf.distribute`` strategy other than ``MirroredStrategy`` or
        ``MultiWorkerMirroredStrategy`` (see :mod:`natgrad.distribute`).
    """
    reference_batch_size = check_int("reference_batch_size", reference_batch_size, at_least=0)
    optimizer = _check_model(model)
    check_strategy(model.distribute_strategy)
    state = FitState.create(reference_batch_size)
    _build_state(model, optimizer, state)

    # Not converted by AutoGraph (natgrad's graph code has no Python control flow on tensors;
    # converting it tripled the time to trace the step), as Keras' own step is not: a model's
    # ``call`` is traced as Keras' ``fit`` traces it.
    @tf.autograph.experimental.do_not_convert
    def train_step(data):
        return natural_gradient_train_step(model, data, state)

    install_train_step(model, train_step)
    return model


__all__ = [
    "STEP_METRICS",
    "SUPPORTED_LOSSES",
    "FitState",
    "enable_natural_gradient",
    "natural_gradient_of",
    "natural_gradient_train_step",
    "output_distribution_for_loss",
]
