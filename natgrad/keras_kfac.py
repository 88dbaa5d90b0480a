"""K-FAC's layer statistics in ``model.fit``: each Dense / Conv2D layer's inputs and
pre-activation gradients, from the forward pass the step already makes.

``NaturalGradient(cg_preconditioner="kfac")`` preconditions CG with the Kronecker factors of
:mod:`natgrad.kfac`, which need per-example quantities that Keras' gradient sums away: each
layer's inputs ``a`` and the gradient ``g`` at its pre-activations ``s`` (before the
activation function). :class:`LayerRecording` reads them from the curvature batch's forward
pass, the one the Gauss-Newton products linearize anyway (no extra forward): for the
duration of that one call it wraps each supported layer's ``call`` (to keep its input) and its
``activation`` (to keep, and watch on a tape, the pre-activation), both public attributes of
Keras' ``Dense`` and ``Conv2D``, and restores them after. Then one backward pass from the
outputs to the pre-activations, with sampled output cotangents ``u`` (``E[u uᵀ]`` = the
output-space Fisher, :func:`sampled_output_cotangents`), gives ``g``.

Supported: ``keras.layers.Dense`` and ``Conv2D`` (``channels_last``, ``groups=1``, no LoRA or
quantization), each called once in the forward pass, with a trainable kernel. Every other
variable is preconditioned by a scaled identity (:class:`natgrad.kfac.KroneckerFactors`).
"""

from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

from natgrad.keras_adapter import compiled_loss_weights
from natgrad.keras_losses import output_losses
from natgrad.kfac import KroneckerBlock, KroneckerFactors, input_factor, output_factor

_SEED = 0x4B464143  # "KFAC": sampling hashed from (step, output, this)


def _supported(layer) -> bool:
    if getattr(layer, "lora_enabled", False) or getattr(layer, "quantization_mode", None):
        return False
    if type(layer).call is not keras.layers.Dense.call and not isinstance(
            layer, keras.layers.Conv2D):
        return False
    if isinstance(layer, keras.layers.Conv2D):
        return (type(layer).call is keras.layers.Conv2D.call and layer.groups == 1
                and layer.data_format == "channels_last")
    return isinstance(layer, keras.layers.Dense)


def kfac_layers(model: keras.Model) -> list:
    """The supported layers of ``model`` and of the models and layers it nests (via their
    public ``layers``), each once, in order."""
    found, seen = [], set()

    def walk(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if _supported(layer) and layer.trainable:
            found.append(layer)
        for child in getattr(layer, "layers", []) or []:
            walk(child)

    for layer in model.layers:
        walk(layer)
    return found


def layer_block(layer, variables) -> KroneckerBlock:
    """Where ``layer``'s kernel and bias are in ``variables`` (the kernel must be there)."""
    index = {id(v): i for i, v in enumerate(variables)}
    return KroneckerBlock(index[id(layer.kernel)],
                          index.get(id(layer.bias)) if layer.bias is not None else None)


def build_factors(model: keras.Model, factors: KroneckerFactors) -> None:
    """Makes ``factors``' variables for every supported layer of a built ``model`` now, so
    that the ``fit`` step does not make them while it is traced (which traces it twice)."""
    variables = list(model.trainable_variables)
    ids = {id(v) for v in variables}
    for layer in kfac_layers(model):
        if getattr(layer, "built", False) and id(layer.kernel) in ids:
            shape = layer.kernel.shape
            rows = math.prod(int(d) for d in shape[:-1]) + (layer.bias is not None)
            dtype = tf.as_dtype(layer.kernel.dtype)
            factors.build(layer_block(layer, variables), rows, int(shape[-1]),
                          dtype if dtype in (tf.float32, tf.float64) else tf.float32)


def _patches(layer, inputs: tf.Tensor) -> tf.Tensor:
    """A Conv2D layer's input patches ``[N, L, k_h·k_w·c_in]`` in its kernel's row order."""
    kh, kw = layer.kernel_size
    patches = tf.image.extract_patches(
        inputs, sizes=[1, kh, kw, 1], strides=[1, *layer.strides, 1],
        rates=[1, *layer.dilation_rate, 1], padding=layer.padding.upper())
    return tf.reshape(patches, [tf.shape(patches)[0], -1, patches.shape[-1]])


class LayerRecording:
    """The inputs and pre-activations of the supported layers in one forward pass.

    ``wrap(outputs_fn)`` returns an ``outputs_fn`` whose first call is recorded (later calls,
    the line search's, are not); :meth:`factors` then gives each recorded layer's ``(A, G)``.
    ``blocks`` (after the recorded call) locate the layers' variables in ``variables``.
    """

    def __init__(self, model: keras.Model, variables):
        self.model = model
        self.layers = kfac_layers(model)
        self.variables = list(variables)
        self.records: dict = {}
        self.outputs = None
        self.tape: tf.GradientTape | None = None

    @contextlib.contextmanager
    def _recording(self, tape: tf.GradientTape):
        originals = []
        for layer in self.layers:
            originals.append((layer, vars(layer).get("call"), layer.activation))
            calls = self.records.setdefault(id(layer), [])

            def call(inputs, *args, _layer=layer, _call=layer.call, _calls=calls, **kwargs):
                _calls.append({"a": inputs})
                return _call(inputs, *args, **kwargs)

            def activation(s, _activation=layer.activation, _calls=calls):
                tape.watch(s)
                _calls[-1]["s"] = s
                return _activation(s) if _activation is not None else s

            layer.call, layer.activation = call, activation
        try:
            yield
        finally:
            for layer, call, activation in originals:
                if call is None:
                    del layer.call  # back to the class's method
                else:
                    layer.call = call
                layer.activation = activation

    def wrap(self, outputs_fn):
        def recorded_outputs_fn():
            if self.tape is not None:
                return outputs_fn()
            self.tape = tf.GradientTape(persistent=False, watch_accessed_variables=False)
            with self.tape, self._recording(self.tape):
                self.outputs = outputs_fn()
            return self.outputs

        return recorded_outputs_fn

    @property
    def recorded(self) -> list:
        """``[(layer, {"a", "s"})]`` for the layers called exactly once in the recorded pass
        whose kernel is among ``variables``."""
        index = {id(v): i for i, v in enumerate(self.variables)}
        kept = []
        for layer in self.layers:
            calls = self.records.get(id(layer), [])
            if len(calls) == 1 and "s" in calls[0] and id(layer.kernel) in index:
                kept.append((layer, calls[0]))
        return kept

    def blocks(self) -> list[KroneckerBlock]:
        return [layer_block(layer, self.variables) for layer, _ in self.recorded]

    def factors(self, cotangents, dtype, rows=None) -> list[tuple[tf.Tensor, tf.Tensor]]:
        """``[(A, G)]`` per block (in ``dtype``): ``g`` is the backward pass of ``cotangents``
        (structured like the recorded outputs) from the outputs to each pre-activation.
        ``rows``: ``A`` counts only the first ``rows`` examples (the cotangents of the others
        are zero, see :func:`sampled_output_cotangents`)."""
        recorded = self.recorded
        if not recorded:
            return []
        grads = self.tape.gradient(
            tf.nest.flatten(self.outputs), [r["s"] for _, r in recorded],
            output_gradients=tf.nest.flatten(cotangents),
            unconnected_gradients=tf.UnconnectedGradients.ZERO)
        result = []
        for (layer, record), g in zip(recorded, grads, strict=True):
            a = tf.stop_gradient(tf.cast(record["a"], dtype))
            if isinstance(layer, keras.layers.Conv2D):
                a = _patches(layer, a)
            result.append((input_factor(a, layer.bias is not None, rows),
                           output_factor(tf.cast(g, dtype))))
        return result


def _mix(x: tf.Tensor) -> tf.Tensor:
    """A 32-bit integer hash (C. Wellons' "lowbias32") of ``uint32`` ``x``."""
    for shift, factor in ((16, 0x7FEB352D), (15, 0x846CA68B)):
        x = tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, shift)) * tf.constant(
            factor, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, 16))


def hashed_uniform(like: tf.Tensor, step, stream: int) -> tf.Tensor:
    """Numbers uniform on ``(0, 1)`` (float32, 24 bits), shaped like ``like``: a hash of
    ``(step, stream, index)``, ``index`` the flat (row-major) position. Unlike ``tf.random``'s
    stateless ops, the same in graph mode and under XLA, and an entry's number does not depend
    on how many rows follow it (XLA's padded curvature batch draws the same for its real rows).
    """
    key = _mix(tf.cast(step, tf.uint32) * tf.constant(0x9E3779B9, tf.uint32)
               + tf.constant((_SEED + 0x632BE5AB * stream) & 0xFFFFFFFF, tf.uint32))
    index = tf.reshape(tf.range(tf.size(like)), tf.shape(like))
    bits = _mix(_mix(tf.cast(index, tf.uint32) + key))
    return (tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) + 0.5) / 2.0**24


def sampled_output_cotangents(model: keras.Model, outputs, distribution, step, rows=None):
    """Cotangents ``u`` on the outputs with ``E[u uᵀ] = N · H_out`` (``H_out`` the batch's
    output-space Fisher ``distribution.fisher_vector_product`` applies, ``N`` rows).

    For the Keras losses' distributions whose ``H_out`` is diagonal (categorical from
    probabilities, Bernoulli, squared error): ``u = ξ ⊙ sqrt(N · H_out 1)`` with Rademacher
    ``ξ`` (exact in expectation, as sampling targets is). For a categorical from logits
    (``H_out`` per row ``(diag p − p pᵀ)/N``): ``u = p − onehot(ŷ)``, ``ŷ ~ p`` (the gradient of
    the log-likelihood of a sampled target, as K-FAC samples it), times the output's loss
    weight's square root. Sampling is stateless: :func:`hashed_uniform` of ``step``.
    ``rows``: ``distribution`` counts only the first ``rows`` rows, each ``N / rows`` times
    (:func:`natgrad.keras_losses.mean_over_leading_rows`); the categorical's ``u`` is scaled
    to match (the diagonal ones read it from ``H_out``).
    """
    flat = tf.nest.flatten(outputs)
    n = tf.cast(tf.shape(flat[0])[0], flat[0].dtype)
    ones = tf.nest.map_structure(tf.ones_like, outputs)
    diagonal = tf.nest.flatten(distribution.fisher_vector_product(outputs, ones))
    names = list(getattr(model, "output_names", None) or []) or None
    parts = output_losses(model.loss, compiled_loss_weights(model), outputs, names)
    result = []
    for k, (z, d, (dist, weight)) in enumerate(zip(flat, diagonal, parts, strict=True)):
        uniform = hashed_uniform(z, step, k)
        if dist is not None and dist.name == "categorical":
            p = tf.nn.softmax(z)
            # ŷ ~ softmax(z) by the Gumbel-max trick: argmax(z − log(−log U)).
            drawn = tf.argmax(tf.cast(z, tf.float32) - tf.math.log(-tf.math.log(uniform)), -1)
            u = (p - tf.one_hot(drawn, tf.shape(z)[-1], dtype=z.dtype)) * tf.sqrt(
                tf.cast(weight, z.dtype))
            if rows is not None:
                counted = tf.range(tf.shape(z)[0]) < tf.cast(rows, tf.int32)
                counted = tf.reshape(counted, [-1] + [1] * (z.shape.rank - 1))
                scale = tf.sqrt(tf.cast(n, z.dtype) / tf.cast(rows, z.dtype))
                u = tf.where(counted, u * scale, tf.zeros_like(u))
        else:
            sign = tf.cast(tf.where(uniform < 0.5, -1.0, 1.0), z.dtype)
            u = sign * tf.sqrt(tf.maximum(n * d, 0.0))
        result.append(tf.stop_gradient(u))
    return tf.nest.pack_sequence_as(outputs, result)


def kfac_step_arguments(model: keras.Model, factors: KroneckerFactors, outputs_fn,
                        distribution, step, rows=None) -> tuple:
    """``(outputs_fn, preconditioner)`` for one ``fit`` step: ``outputs_fn`` recording its
    first call, and :meth:`natgrad.NaturalGradient.minimize`'s ``preconditioner`` argument
    (``λ -> r -> M⁻¹ r`` from this step's factors folded into ``factors``; ``None`` when no
    supported layer was recorded). ``rows``: the curvature batch's real rows under XLA
    (``distribution`` already masked to them)."""
    variables = list(model.trainable_variables)
    recording = LayerRecording(model, variables)
    dtypes = [tf.as_dtype(v.dtype) for v in variables]
    dtype = dtypes[0] if dtypes[0] in (tf.float32, tf.float64) else tf.float32

    def preconditioner(damping):
        if recording.outputs is None or not recording.recorded:
            return None
        cotangents = sampled_output_cotangents(model, recording.outputs, distribution, step,
                                               rows)
        return factors.preconditioner(recording.blocks(),
                                      recording.factors(cotangents, dtype, rows), damping, dtypes)

    return recording.wrap(outputs_fn), preconditioner


__all__ = ["LayerRecording", "build_factors", "hashed_uniform", "kfac_layers",
           "kfac_step_arguments", "layer_block", "sampled_output_cotangents"]
