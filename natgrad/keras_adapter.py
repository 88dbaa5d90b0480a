"""Every Keras internal that natgrad depends on, each behind one small function.

``model.fit`` with :class:`natgrad.NaturalGradient` replaces the model's ``train_step``
(:mod:`natgrad.keras_fit`), and to behave as Keras' own TensorFlow ``train_step`` does it reads
a few names Keras does not document. They are all here, so a Keras release that changes them
breaks this one module (and ``tests/test_keras_fit.py``), and the rest of natgrad uses public
API only. Checked against Keras 3.12.0, 3.13.2, 3.14.1 and 3.15.1 with TensorFlow 2.21 (the
range ``pyproject.toml`` allows; ``.ci/run`` also runs the Keras tests on the newest Keras that
TensorFlow accepts), where
``keras/src/backend/tensorflow/trainer.py`` (``train_step``, ``make_train_function``),
``keras/src/trainers/trainer.py`` (``compile``, ``_compute_loss``) and
``keras/src/trainers/compile_utils.py`` (``CompileLoss``) define them:

* ``model._call_has_training_arg``: whether ``call`` takes ``training`` (:func:`call_model`).
* ``model._compute_loss(x, y, y_pred, sample_weight, training)``: the compiled loss with
  regularization losses, calling a user's ``compute_loss`` override with or without its
  ``training`` argument (:func:`compiled_loss`).
* ``model._compile_loss``: the ``CompileLoss`` built by ``compile``; its
  ``_user_loss_weights`` (the ``loss_weights`` given to ``compile``,
  :func:`compiled_loss_weights`) and its ``variables`` (per-output loss metrics,
  :func:`compiled_loss_variables`).
* ``model._loss_tracker``: the ``Mean`` metric behind the logged ``loss``
  (:func:`loss_tracker`).
* ``model.train_function``: not private by name, but ``make_train_function`` caches the
  compiled ``train_step`` there and builds it again only when it is ``None``
  (:func:`install_train_step`).
* ``LossScaleOptimizer.dynamic_scale``, ``.step_counter`` and ``.dynamic_growth_steps``
  (``keras/src/optimizers/loss_scale_optimizer.py``): the dynamic loss scale that ``compile``
  under ``mixed_float16`` wraps the optimizer in, created by its ``build``, and its update
  rule (:func:`loss_scale_state`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import keras

CHECKED_KERAS_VERSIONS = ">=3.12,<3.16"  # as pyproject.toml declares


def call_model(model: keras.Model, x, *, training: bool = True):
    """``model(x, training=training)``, or ``model(x)`` if its ``call`` has no ``training``
    argument, as Keras' ``train_step`` calls it."""
    if getattr(model, "_call_has_training_arg", True):
        return model(x, training=training)
    return model(x)


def compiled_loss(model: keras.Model, x, y, y_pred, sample_weight):
    """The loss ``fit`` minimizes, in training mode: the compiled loss of ``y_pred`` plus the
    regularization losses (through a ``compute_loss`` override if the model has one)."""
    return model._compute_loss(  # noqa: SLF001 - the wrapper Keras' own train_step calls
        x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True
    )


def _compile_loss_of(model: keras.Model):
    return getattr(model, "_compile_loss", None)  # None before compile()


def compiled_loss_weights(model: keras.Model):
    """The ``loss_weights`` given to ``compile`` (``None``: all 1), or ``None`` if not compiled."""
    return getattr(_compile_loss_of(model), "_user_loss_weights", None)


def compiled_loss_variables(model: keras.Model) -> list:
    """The state variables of the compiled loss (its per-output loss metrics); may be empty."""
    return list(getattr(_compile_loss_of(model), "variables", None) or [])


def loss_tracker(model: keras.Model) -> keras.metrics.Mean:
    """The metric whose ``result()`` ``fit`` logs as ``loss`` (reset at every epoch start)."""
    return model._loss_tracker  # noqa: SLF001 - Keras keeps no public handle on it


def install_train_step(model: keras.Model, train_step: Callable) -> None:
    """Makes ``model.fit`` call ``train_step(data)`` instead of the model's own ``train_step``.

    ``fit`` compiles ``model.train_step`` into ``model.train_function`` once and reuses it;
    clearing that makes the next ``fit`` compile the new step.
    """
    model.train_step = train_step
    model.train_function = None


class LossScaleState(NamedTuple):
    """A ``LossScaleOptimizer``'s dynamic loss scale: ``scale`` (float32 variable, a power of
    two), ``counter`` (int variable: finite steps since it last changed) and ``growth_steps``
    (the scale doubles after that many finite steps, and halves on a non-finite gradient)."""

    scale: keras.Variable
    counter: keras.Variable
    growth_steps: int


def loss_scale_state(optimizer, variables) -> LossScaleState | None:
    """The dynamic loss scale of ``optimizer`` if it is a ``keras.optimizers.LossScaleOptimizer``
    (built on ``variables`` first if ``fit`` has not built it), else ``None``."""
    if not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return None
    if not optimizer.built:
        optimizer.build(variables)
    return LossScaleState(optimizer.dynamic_scale, optimizer.step_counter,
                          int(optimizer.dynamic_growth_steps))


__all__ = [
    "CHECKED_KERAS_VERSIONS",
    "LossScaleState",
    "call_model",
    "compiled_loss",
    "compiled_loss_variables",
    "compiled_loss_weights",
    "install_train_step",
    "loss_scale_state",
    "loss_tracker",
]
