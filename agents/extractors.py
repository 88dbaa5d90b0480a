"""Keras networks for observations with images (Atari frames, pixels, dicts holding images).

:func:`build_trunk` builds a ``keras.Model`` from an :class:`agents.spaces.ObservationEncoder`:

* every image ``[N, H, W, C]`` uint8 goes through its own Nature-DQN trunk (Mnih et al., 2015):
  ``x/255 -> Conv 32×8×8/4 -> Conv 64×4×4/2 -> Conv 64×3×3/1 -> Dense 512`` (ReLU each),
* the vector part ``[N, D]`` (a ``Dict``'s other entries, flattened) goes through an MLP
  (``hidden``, ``activation``),
* the features are concatenated and a last ``Dense(out_dim)`` gives ``z``.

Weights are set orthogonally from the agent's seeded NumPy ``Generator`` (gain √2, last layer
``output_gain``), as for the MLPs: no Keras or TensorFlow random state is used.

:class:`ExtractorPolicy` puts an :mod:`agents.heads` head on such a trunk, and
:class:`ExtractorValueFunction` is ``V(s)``. Rollouts run the trunk as a compiled
``tf.function`` (one call per env step on ``n_envs`` observations) and sample in NumPy; a NumPy
convolution would be slower (``scripts/bench_pixels.py`` measures both).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from agents.policies import orthogonal
from agents.spaces import VECTOR_KEY, ObservationEncoder

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


def _compiled_forward(model: keras.Model, encoder: ObservationEncoder):
    specs = encoder.leaf_specs()
    signature = {k: tf.TensorSpec([None, *s], tf.as_dtype(d)) for k, (s, d) in specs.items()}
    return tf.function(lambda obs: model(obs), input_signature=[signature])


class ExtractorPolicy(tf.Module):
    """A :func:`build_trunk` model ``-> z`` and an :mod:`agents.heads` head on it.

    ``trainable_variables`` is the trunk's weights (in layer order), then the head's.
    """

    def __init__(self, encoder: ObservationEncoder, head: tf.Module, *, hidden=(64, 64),
                 activation="tanh", rng: np.random.Generator):
        super().__init__(name="extractor_policy")
        self.head = head
        self.distribution = head.distribution
        self.trunk = build_trunk(encoder, head.out_dim, hidden=tuple(hidden),
                                 activation=activation, output_gain=0.01, rng=rng,
                                 name="policy")
        self._forward = _compiled_forward(self.trunk, encoder)

    @property
    def trainable_variables(self):
        return (*self.trunk.trainable_variables, *self.head.trainable_variables)

    def outputs(self, obs):
        return self.head.outputs(self.trunk(obs))

    def log_prob(self, outputs, actions):
        return self.head.log_prob(outputs, actions)

    def entropy(self, outputs):
        return self.head.entropy(outputs)

    def numpy_params(self) -> dict:
        """The head's parameters; the trunk's are read by the compiled forward pass."""
        return self.head.numpy_params()

    def numpy_act(self, params: dict, obs, rng: np.random.Generator,
                  deterministic: bool = False) -> np.ndarray:
        z = self._forward(obs).numpy().astype(np.float64)
        return self.head.numpy_act(z, params, rng, deterministic)


class ExtractorValueFunction(tf.Module):
    """``V(s)``: a :func:`build_trunk` model with one output, ``-> [N]``."""

    def __init__(self, encoder: ObservationEncoder, *, hidden=(64, 64), activation="tanh",
                 rng: np.random.Generator):
        super().__init__(name="extractor_value_function")
        self.trunk = build_trunk(encoder, 1, hidden=tuple(hidden), activation=activation,
                                 output_gain=1.0, rng=rng, name="value")
        self._forward = _compiled_forward(self.trunk, encoder)

    @property
    def trainable_variables(self):
        return tuple(self.trunk.trainable_variables)

    def __call__(self, obs):
        return self.trunk(obs)[:, 0]

    def numpy_params(self) -> None:
        return None

    def numpy_values(self, params, obs) -> np.ndarray:
        """``V(s)`` for a batch, in compiled chunks of ``VALUE_CHUNK``: ``-> [N]``."""
        n = len(next(iter(obs.values())))
        out = [self._forward({k: v[i:i + VALUE_CHUNK] for k, v in obs.items()}).numpy()[:, 0]
               for i in range(0, n, VALUE_CHUNK)]
        return np.concatenate(out)
