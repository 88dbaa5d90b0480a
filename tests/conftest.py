"""Shared fixtures: small float32 / float64 Keras models and the batches they are fed.

Keras caches its global dtype policy, so nothing here calls ``keras.backend.set_floatx``: every
float64 model is built with ``dtype="float64"`` on its ``Input`` and on every layer.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
from pathlib import Path

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

import gymnasium as gym  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

IN_DIM, HIDDEN, OUT_DIM, NUM_CLASSES, BATCH = 3, 4, 2, 3, 5


def make_tanh_mlp(dtype: str, *, out_dim: int = OUT_DIM, seed: int = 0) -> keras.Model:
    """``Dense(HIDDEN, tanh) -> Dense(out_dim)``: 26 parameters for the defaults."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IN_DIM,), dtype=dtype)
    hidden = keras.layers.Dense(HIDDEN, activation="tanh", dtype=dtype)(inputs)
    outputs = keras.layers.Dense(out_dim, dtype=dtype)(hidden)
    return keras.Model(inputs, outputs)


def make_classifier(dtype: str, *, seed: int = 1) -> tuple[keras.Model, keras.Model]:
    """A softmax classifier as two models sharing every variable: ``(logits, probs)``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IN_DIM,), dtype=dtype)
    hidden = keras.layers.Dense(HIDDEN, activation="tanh", dtype=dtype)(inputs)
    logits = keras.layers.Dense(NUM_CLASSES, dtype=dtype)(hidden)
    probs = keras.layers.Activation("softmax", dtype=dtype)(logits)
    return keras.Model(inputs, logits), keras.Model(inputs, probs)


def make_gaussian_policy(dtype: str, *, seed: int = 2) -> tuple[keras.Model, keras.Variable]:
    """A mean network and a learned, state-independent ``log_std`` of shape ``[OUT_DIM]``."""
    model = make_tanh_mlp(dtype, seed=seed)
    rng = np.random.default_rng(seed)
    log_std = keras.Variable(
        rng.uniform(-0.5, 0.3, OUT_DIM), dtype=dtype, name="log_std", trainable=True
    )
    return model, log_std


def make_two_head_gaussian(dtype: str, *, seed: int = 3) -> keras.Model:
    """A model with two heads, ``(mean [N, D], log_std [N, D])``: a per-sample ``log_std``."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((IN_DIM,), dtype=dtype)
    hidden = keras.layers.Dense(HIDDEN, activation="tanh", dtype=dtype)(inputs)
    mean = keras.layers.Dense(OUT_DIM, dtype=dtype)(hidden)
    log_std = keras.layers.Dense(OUT_DIM, dtype=dtype)(hidden)
    return keras.Model(inputs, [mean, log_std])


def make_batch(dtype: str, *, seed: int = 10) -> dict[str, tf.Tensor]:
    """Inputs, regression targets and class labels for a batch of ``BATCH`` samples."""
    rng = np.random.default_rng(seed)
    return {
        "x": tf.constant(rng.normal(size=(BATCH, IN_DIM)), dtype=dtype),
        "y": tf.constant(rng.normal(size=(BATCH, OUT_DIM)), dtype=dtype),
        "labels": tf.constant(rng.integers(0, NUM_CLASSES, size=BATCH), dtype=tf.int32),
    }


def random_vector(variables, *, seed: int = 20) -> list[tf.Tensor]:
    """A random tangent shaped like ``variables`` (one tensor per variable, same dtype)."""
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=tuple(v.shape)), dtype=v.dtype) for v in variables]


def numpy_flat(tensors) -> np.ndarray:
    """Concatenates tensors into one float64 NumPy vector, independently of natgrad.flatten."""
    return np.concatenate([np.reshape(np.asarray(t, dtype=np.float64), -1) for t in tensors])


@pytest.fixture(params=["float32", "float64"])
def dtype(request) -> str:
    return request.param


@pytest.fixture
def tanh_mlp(dtype):
    return make_tanh_mlp(dtype)


@pytest.fixture
def classifier(dtype):
    return make_classifier(dtype)


@pytest.fixture
def batch(dtype):
    return make_batch(dtype)


@pytest.fixture
def tanh_mlp64():
    return make_tanh_mlp("float64")


@pytest.fixture
def batch64():
    return make_batch("float64")


# The TRPO agent's tests --------------------------------------------------------------------

#: The tiny TRPO configuration the agent tests train with: 2 envs x 64 steps (a batch of
#: ``TINY_BATCH``), two value-fit epochs, one hidden layer of 16 units in each network.
TINY_CONFIG = {"n_envs": 2, "n_steps": 64, "critic_epochs": 2, "policy_hidden": (16,),
               "value_hidden": (16,)}
TINY_BATCH = TINY_CONFIG["n_envs"] * TINY_CONFIG["n_steps"]


def cli_settings(config: dict) -> list[str]:
    """``config`` as ``natgrad-trpo train`` options: ``["--set", "key=value", ...]``."""

    def text(value) -> str:
        if isinstance(value, bool):
            return str(value).lower()
        if isinstance(value, tuple):
            return ",".join(str(v) for v in value)
        return str(value)

    return [arg for key, value in config.items() for arg in ("--set", f"{key}={text(value)}")]


@pytest.fixture
def tiny_config() -> dict:
    """A fresh copy of :data:`TINY_CONFIG`, to pass as ``TRPO(env, **tiny_config)``."""
    return dict(TINY_CONFIG)


def mlp_policy(obs_dim: int, head, *, hidden: tuple, rng: np.random.Generator,
               dtype=tf.float32, activation: str = "tanh"):
    """A :class:`agents.nets.Policy` of an MLP trunk and ``head``, initialised as the agent's
    (output gain ``POLICY_OUTPUT_GAIN``)."""
    from agents.nets import POLICY_OUTPUT_GAIN, Policy
    from agents.nets.mlp import MLP

    return Policy(MLP(obs_dim, tuple(hidden), head.out_dim, activation=activation, rng=rng,
                      output_gain=POLICY_OUTPUT_GAIN, dtype=dtype), head)


@contextlib.contextmanager
def fails_instead_of_hanging(seconds: int = 10):
    """Turns a call blocked for ``seconds`` (a FIFO opened) into a test failure, not a hang
    (nor the bare ``SIGALRM`` that would kill the whole test session)."""
    def blocked(*_):
        raise TimeoutError("blocked: a FIFO was opened")

    previous = signal.signal(signal.SIGALRM, blocked)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


class WrongShapeEnv(gym.Env):
    """Declares ``Box(4)`` observations but returns 3 numbers (at reset, or from step 2)."""

    def __init__(self, bad_at_reset=True):
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.action_space = gym.spaces.Discrete(2)
        self.bad_at_reset, self.t = bad_at_reset, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(3 if self.bad_at_reset else 4, np.float32), {}

    def step(self, action):
        self.t += 1
        return np.zeros(3 if self.t >= 2 else 4, np.float32), 0.0, False, False, {}


@pytest.fixture
def mixed_float16():
    """Builds models under ``mixed_float16`` inside the test; float32 again afterwards."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


def load_script(name: str):
    """``scripts/{name}.py`` imported as a module (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
