"""Keras networks for observations with images (Atari frames, pixels, dicts holding images).

:func:`build_trunk` builds a ``keras.Model`` from an
:class:`agents.envs.spaces.ObservationEncoder`:

* every image ``[N, H, W, C]`` uint8 goes through its own Nature-DQN trunk (Mnih et al., 2015):
  ``x/255 -> Conv 32×8×8/4 -> Conv 64×4×4/2 -> Conv 64×3×3/1 -> Dense 512`` (ReLU each),
* the vector part ``[N, D]`` (a ``Dict``'s other entries, flattened) goes through an MLP
  (``hidden``, ``activation``),
* the features are concatenated and a last ``Dense(out_dim)`` gives ``z``.

:class:`KerasTrunk` wraps such a model as a trunk of :class:`agents.nets.policy.Policy` or
:class:`agents.nets.policy.ValueFunction`.

Weights are set orthogonally from the agent's seeded NumPy ``Generator`` (gain √2, last layer
``output_gain``), as for the MLPs: no Keras or TensorFlow random state is used.

Rollouts run the trunk as a compiled ``tf.function`` (one call per env step on ``n_envs``
observations) and sample in NumPy; a NumPy convolution would be slower
(``scripts/bench_pixels.py`` measures both).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from agents.envs.spaces import VECTOR_KEY, ObservationEncoder
from agents.nets.mlp import orthogonal

VALUE_CHUNK = 1024  # observations per compiled call when computing values of a whole batch


def nature_cnn(image: keras.KerasTensor, name: str) -> keras.KerasTensor:
    """The Nature-DQN convolutional trunk: ``[N, H, W, C] uint8 -> [N, 512]``."""
    x = keras.layers.Rescaling(1.0 / 255.0, name=f"{name}_scale")(image)
    for i, (filters, size, stride) in enumerate(((32, 8, 4), (64, 4, 2), (64, 3, 1))):
        x = keras.layers.Conv2D(filters, size, strides=stride, activation="relu",
                                name=f"{name}_conv{i}")(x)
    x = keras.layers.Flatten(name=f"{name}_flatten")(x)
    return keras.layers.Dense(512, activation="relu", name=f"{name}_dense")(x)


def build_trunk(encoder: ObservationEncoder, out_dim: int, *, hidden: tuple, activation: str,
                output_gain: float, rng: np.random.Generator, name: str) -> keras.Model:
    """``encoded observations -> z [N, out_dim]``; see the module docstring."""
    specs = encoder.leaf_specs()
    inputs = {key: keras.Input(shape, dtype=np.dtype(dtype).name, name=key)
              for key, (shape, dtype) in sorted(specs.items())}
    features = []
    for key, tensor in inputs.items():
        if key == VECTOR_KEY:
            x = tensor
            for i, width in enumerate(hidden):
                x = keras.layers.Dense(width, activation=activation,
                                       name=f"{name}_mlp{i}")(x)
            features.append(x)
        else:
            features.append(nature_cnn(tensor, f"{name}_{key}"))
    x = features[0] if len(features) == 1 else keras.layers.Concatenate()(features)
    z = keras.layers.Dense(out_dim, name=f"{name}_out")(x)
    model = keras.Model(inputs, z, name=name)
    kernels = [v for v in model.weights if len(v.shape) >= 2]
    for variable in model.weights:
        if len(variable.shape) < 2:
            variable.assign(np.zeros(variable.shape, np.float32))
    for i, kernel in enumerate(kernels):  # model.weights follows the layer order
        shape = tuple(kernel.shape)
        gain = output_gain if i == len(kernels) - 1 else np.sqrt(2.0)
        matrix = orthogonal(rng, (int(np.prod(shape[:-1])), shape[-1]), gain)
        kernel.assign(matrix.reshape(shape).astype(np.float32))
    return model


class KerasTrunk(tf.Module):
    """A :func:`build_trunk` model as a policy or value trunk (:mod:`agents.nets.policy`).

    ``numpy_forward`` runs the model as a compiled ``tf.function`` (one traced signature), in
    chunks of ``VALUE_CHUNK`` observations, and returns float64 ``[N, out_dim]``.
    """

    #: A policy lists a Keras trunk's variables (in layer order) before its head's.
    head_variables_first = False

    def __init__(self, encoder: ObservationEncoder, out_dim: int, *, hidden: tuple,
                 activation: str, output_gain: float, rng: np.random.Generator, name: str):
        super().__init__(name=f"{name}_trunk")
        self.model = build_trunk(encoder, out_dim, hidden=tuple(hidden), activation=activation,
                                 output_gain=output_gain, rng=rng, name=name)
        specs = encoder.leaf_specs()
        signature = {k: tf.TensorSpec([None, *s], tf.as_dtype(d)) for k, (s, d) in specs.items()}
        self.compiled = tf.function(lambda obs: self.model(obs), input_signature=[signature])

    @property
    def trainable_variables(self) -> tuple:
        return tuple(self.model.trainable_variables)

    def __call__(self, obs):
        return self.model(obs)

    def numpy_params(self) -> None:
        """Nothing to copy: the compiled forward pass reads the variables."""
        return None

    def numpy_forward(self, params: None, obs: dict) -> np.ndarray:
        """``z`` for a batch of encoded observations (a dict of ``[N, ...]`` arrays)."""
        n = len(next(iter(obs.values())))
        out = [self.compiled({k: v[i:i + VALUE_CHUNK] for k, v in obs.items()}).numpy()
               for i in range(0, n, VALUE_CHUNK)]
        return np.concatenate(out).astype(np.float64)
