"""One step's forward passes of a Keras model, all with the same non-trainable state.

A natural-gradient step runs the model several times (the loss and its gradient, the
linearization for curvature products, each line-search trial). :class:`StatelessForward` runs
each of them in a ``keras.StatelessScope`` that reads the non-trainable variables (BatchNorm
statistics, dropout seed generators) at their start-of-step values, so all passes compute one
function; the values one chosen pass produces are written back once, at the end of the step.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from natgrad.keras_adapter import compiled_loss_variables
from natgrad.keras_mixed_precision import LossScale
from natgrad.structure import as_tf_variables


class StatelessForward:
    """Runs forward passes with the non-trainable variables read at fixed values.

    ``run(fn)`` calls ``fn()`` in a ``keras.StatelessScope`` mapping each non-trainable
    variable to its start-of-step value: nothing is written, and every call sees the same
    dropout seeds and BatchNorm state. ``run(fn, keep=True)`` also keeps that pass's new
    values (and the compiled loss's per-output metric updates) for :meth:`write_kept`.
    """

    def __init__(self, model: keras.Model):
        self.trainable = list(model.trainable_variables)
        self.variables = list(model.non_trainable_variables)
        self.start = [tf.identity(v.value) for v in self.variables]
        self.metric_variables = compiled_loss_variables(model)
        self.kept: list = []

    def run(self, fn, *, keep: bool = False, loss_scale: LossScale | None = None):
        # Trainable variables map to their current value, read here (inside the caller's
        # tapes, so gradients and JVPs flow to them): Keras' weight regularizers look every
        # trainable variable up in the scope. With a loss scale, each read divides the
        # gradient reaching its variable by the scale.
        values = as_tf_variables(self.trainable)
        if loss_scale is not None:
            values = [loss_scale.unscale_gradient(tf.convert_to_tensor(t)) for t in values]
        mapping = [(v, t) for v, t in zip(self.trainable, values, strict=True)]
        mapping += list(zip(self.variables, self.start, strict=True))
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            result = fn()
        if keep:
            watched = self.variables + self.metric_variables
            self.kept = [(v, scope.get_current_value(v)) for v in watched]
        return result

    def write_kept(self) -> None:
        """Assigns, once, the values the kept pass produced (``None``: left unchanged)."""
        for variable, value in self.kept:
            if value is not None:
                variable.assign(value)
