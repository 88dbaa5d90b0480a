"""``model.fit`` with NaturalGradient compiled by XLA (``compile(jit_compile=True)``).

XLA needs every shape to follow from the batch's shape. The curvature batch is the batch topped
up with recent inputs (natgrad.recent_inputs), whose size used to depend on how full the ring
was: ``fit`` failed with "Input 1 to node range_1 with op Range must be a compile-time
constant". Under XLA the curvature batch now has a fixed size, and the rows beyond what
``top_up`` gives are masked out of the KL and the Fisher (``mean_over_leading_rows``), so an
XLA step is the graph-mode step up to the order of float operations.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import natgrad
from natgrad import distributions as D
from natgrad.keras_losses import mean_over_leading_rows
from natgrad.recent_inputs import RecentInputs, top_up, top_up_to_fixed_size

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def _compiled_mlp(jit_compile, **options) -> keras.Model:
    """digits' ``Dense(64, tanh) -> Dense(10)`` with NaturalGradient and the fit hook."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="tanh"),
                              keras.layers.Dense(10)])
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, **options), loss=LOGITS_CE,
                  metrics=["accuracy"], jit_compile=jit_compile)
    return natgrad.enable_natural_gradient(model)


def _weights(model) -> list[np.ndarray]:
    return [v.numpy() for v in model.trainable_variables]


def _compiled_as_on_a_gpu(jit_compile, monkeypatch) -> keras.Model:
    """:func:`_compiled_mlp`, with ``jit_compile="auto"`` resolved as on a GPU machine (Keras
    turns XLA off on CPU-only ones): ``compile`` is shown a GPU; the step runs on the CPU."""
    if jit_compile == "auto":
        gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
        real = tf.config.list_physical_devices
        monkeypatch.setattr(tf.config, "list_physical_devices",
                            lambda kind=None: real(kind) + ([gpu] if kind in (None, "GPU") else []))
    model = _compiled_mlp(jit_compile)
    monkeypatch.undo()
    return model


# fit ---------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("jit_compile", [True, "auto"])
def test_xla_fit_trains_with_small_and_ragged_batches(digits, jit_compile, monkeypatch):
    """Batches of 32 < 128 (topped up from the ring, which fills over the first steps) and a
    ragged last batch of 8; the crash was at the first step."""
    x, y = digits
    x, y = x[:1000], y[:1000]
    model = _compiled_as_on_a_gpu(jit_compile, monkeypatch)
    assert model.jit_compile is True
    history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0).history
    losses = history["loss"]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert history["accuracy"][-1] > 0.9, history
    assert min(history["accepted"]) > 0.9, history


@pytest.mark.parametrize("batch_size, n", [
    pytest.param(30, 30, id="small_first_batch"),
    pytest.param(128, 133, id="full_then_ragged_batch", marks=pytest.mark.slow)])
def test_xla_step_equals_graph_mode_step(digits, batch_size, n):
    """One epoch of one or two steps, with and without XLA: the same weights up to float
    reordering. 30 samples: the ring is still empty, XLA's curvature batch is 128 rows of which
    30 count. 133 samples: a full batch, then 5 samples topped up from the ring."""
    x, y = digits
    before = _weights(_compiled_mlp(False))
    results = {}
    for jit_compile in (False, True):
        model = _compiled_mlp(jit_compile)
        model.fit(x[:n], y[:n], batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
        results[jit_compile] = _weights(model)
    for graph, xla, start in zip(results[False], results[True], before, strict=True):
        assert not np.array_equal(graph, start)  # the step was taken
        np.testing.assert_allclose(xla, graph, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_xla_matches_graph_mode_while_the_ring_fills(digits):
    """200 samples at batch 32: the ring holds 0, 32, 64, 96, 128 rows at the first five
    steps (the curvature batch is partly padding under XLA), then a ragged batch of 8."""
    x, y = digits
    results = {}
    for jit_compile in (False, True):
        model = _compiled_mlp(jit_compile, curvature_batch_fraction=0.5)
        history = model.fit(x[:200], y[:200], batch_size=32, epochs=1, shuffle=False,
                            verbose=0).history
        results[jit_compile] = (_weights(model), history)
    for graph, xla in zip(results[False][0], results[True][0], strict=True):
        np.testing.assert_allclose(xla, graph, rtol=1e-3, atol=1e-5)
    assert results[True][1]["line_search_tries"] == results[False][1]["line_search_tries"]


# The pieces: a fixed-size top-up, a ring written under XLA, a mean over the leading rows --------


def _rows(start, n):
    return {"a": tf.range(start, start + n, dtype=tf.float32)[:, None] * [1.0, -1.0],
            "b": tf.range(start, start + n)}


def test_fixed_size_top_up_is_top_up_then_repeats_under_xla():
    ring = RecentInputs(6)

    @tf.function(jit_compile=True)
    def step(x, enabled):
        padded, real = top_up_to_fixed_size(x, ring, 6)
        ring.add(x, enabled=enabled)
        return padded, real

    @tf.function
    def plain(x):
        return top_up(x, ring, 6)

    cases = [(_rows(0, 2), True, [0, 1, 0, 1, 0, 1], 2),     # empty ring: x repeated
             (_rows(10, 2), False, [10, 11, 0, 1, 10, 11], 4),  # 2 stored rows; not added
             (_rows(20, 2), True, [20, 21, 0, 1, 20, 21], 4),   # still 2: disabled wrote none
             (_rows(30, 1), True, [30, 0, 1, 20, 21, 30], 5),
             (_rows(40, 7), True, list(range(40, 47)), 7)]      # n > target: x itself
    for x, enabled, expected, expected_real in cases:
        topped = plain(x)["b"].numpy().tolist()
        padded, real = step(x, tf.constant(enabled))
        assert padded["b"].numpy().tolist() == expected
        np.testing.assert_array_equal(padded["a"][:, 0].numpy(), padded["b"].numpy())
        assert int(real) == expected_real
        assert padded["b"].numpy().tolist()[:expected_real] == topped


def test_mean_over_leading_rows_is_the_distribution_on_those_rows():
    rng = np.random.default_rng(0)
    old, new, u = (tf.constant(rng.normal(size=(7, 3)), tf.float32) for _ in range(3))
    masked = mean_over_leading_rows(D.CATEGORICAL, tf.constant(4))
    np.testing.assert_allclose(masked.kl(old, new), D.CATEGORICAL.kl(old[:4], new[:4]),
                               rtol=1e-6)
    product = masked.fisher_vector_product(old, u).numpy()
    np.testing.assert_allclose(product[:4], D.CATEGORICAL.fisher_vector_product(old[:4], u[:4]),
                               rtol=1e-6)
    np.testing.assert_array_equal(product[4:], 0.0)
