"""``model.fit`` under ``mixed_float16``: loss scaling and float16-safe curvature products
(natgrad.keras_mixed_precision).

A loss weighted by 1e-6 makes every float16 gradient fall below float16's smallest subnormal
(2⁻²⁴ ≈ 6e-8): without loss scaling the step sees a zero gradient. The global dtype policy is
set only while models are built (``mixed_float16`` fixture) and always restored to float32.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import natgrad
from natgrad import distributions as D
from natgrad.keras_mixed_precision import float16_gauss_newton, power_of_two_scale

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
TINY = 1e-6  # the loss weight that makes float16 gradients underflow


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    x, y = (data.data / 16.0).astype("float32"), data.target.astype("int32")
    return x[:1024], y[:1024]  # 8 full batches of 128: no small batch whose gradient survives


def _mlp(seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="tanh"),
                             keras.layers.Dense(10)])


def _tiny_loss_model(**compile_options) -> keras.Model:
    """The digits MLP with its loss weighted by :data:`TINY`, and ``max_kl`` and ``damping``
    weighted alike: the same problem as weight 1, with gradients 1e6 times smaller."""
    model = _mlp()
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01 * TINY, damping=1e-3 * TINY),
                  loss=LOGITS_CE, loss_weights=TINY, metrics=["accuracy"], **compile_options)
    return natgrad.enable_natural_gradient(model)


def _raw(variables) -> list[bytes]:
    return [np.asarray(v.numpy()).tobytes() for v in variables]


# Loss scaling in fit ---------------------------------------------------------------------------


def test_loss_scaling_trains_where_float16_gradients_underflow(digits, mixed_float16):
    x, y = digits
    unscaled = _tiny_loss_model(auto_scale_loss=False)  # no LossScaleOptimizer: scale 1
    scaled = _tiny_loss_model()
    assert isinstance(scaled.optimizer, keras.optimizers.LossScaleOptimizer)
    assert scaled.layers[0].compute_dtype == "float16"
    start = _raw(unscaled.trainable_variables)

    history = unscaled.fit(x, y, batch_size=128, epochs=1, shuffle=False, verbose=0).history
    assert history["accepted"] == [0.0]  # a zero gradient: no step
    assert _raw(unscaled.trainable_variables) == start

    history = scaled.fit(x, y, batch_size=128, epochs=2, shuffle=False, verbose=0).history
    assert history["accepted"] == [1.0, 1.0], history
    assert history["loss"][1] < history["loss"][0]
    assert history["accuracy"][-1] > 0.85, history
    assert float(scaled.optimizer.dynamic_scale.numpy()) == 2.0**15  # never overflowed


@pytest.mark.slow
def test_scaled_tiny_loss_trains_like_the_float32_model(digits, mixed_float16):
    """The 1e-6-weighted float16 model, scaled, takes the steps of the same model in float32
    (to float16's precision): the scaled gradient and curvature products are the true ones."""
    x, y = digits
    scaled = _tiny_loss_model(jit_compile=True)
    keras.mixed_precision.set_global_policy("float32")
    reference = _tiny_loss_model()
    histories = [model.fit(x, y, batch_size=128, epochs=2, shuffle=False, verbose=0).history
                 for model in (scaled, reference)]
    np.testing.assert_allclose(histories[0]["accuracy"], histories[1]["accuracy"], atol=0.02)
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=0.02)
    assert histories[0]["accepted"] == [1.0, 1.0]


def _one_batch_fit(model, x, y) -> dict:
    return model.fit(x[:128], y[:128], batch_size=128, epochs=1, shuffle=False,
                     verbose=0).history


def test_overflowing_scaled_gradient_skips_the_step_and_halves_the_scale(digits,
                                                                         mixed_float16):
    """Scale 2⁴⁰: ``S · ∂L/∂logits`` overflows float16 (65504), the gradient is not finite."""
    x, y = digits
    model = _mlp()
    optimizer = keras.optimizers.LossScaleOptimizer(
        natgrad.NaturalGradient(max_kl=0.01), initial_scale=2.0**40, dynamic_growth_steps=3)
    model.compile(optimizer=optimizer, loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    optimizer.build(model.trainable_variables)
    optimizer.step_counter.assign(2)  # one finite step short of doubling
    start = _raw(model.variables)

    history = _one_batch_fit(model, x, y)
    assert history["accepted"] == [0.0]
    assert _raw(model.variables) == start  # bit for bit
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**39
    assert int(optimizer.step_counter.numpy()) == 0


def test_scale_doubles_after_growth_steps_finite_steps(digits, mixed_float16):
    x, y = digits
    model = _mlp()
    optimizer = keras.optimizers.LossScaleOptimizer(
        natgrad.NaturalGradient(max_kl=0.01), initial_scale=2.0**8, dynamic_growth_steps=2)
    model.compile(optimizer=optimizer, loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    seen = []
    for _ in range(3):
        history = _one_batch_fit(model, x, y)
        assert history["accepted"] == [1.0]
        seen.append((float(optimizer.dynamic_scale.numpy()),
                     int(optimizer.step_counter.numpy())))
    assert seen == [(2.0**8, 1), (2.0**9, 0), (2.0**9, 1)]


# Curvature products through float16 ------------------------------------------------------------


def test_float16_gauss_newton_matches_float32_where_the_plain_product_underflows(
        mixed_float16):
    """A vector of entries ~1e-9 (as small as the tiny loss's gradient): the plain product
    through the float16 model is zero; the scaled one is the float32 model's product."""
    half = _mlp(seed=3)
    keras.mixed_precision.set_global_policy("float32")
    full = _mlp(seed=3)
    full.set_weights(half.get_weights())
    x = tf.constant(np.random.default_rng(0).uniform(size=(32, 64)), tf.float32)
    rng = np.random.default_rng(1)
    vector = [tf.constant(1e-9 * rng.normal(size=v.shape), tf.float32)
              for v in half.trainable_variables]
    curvature = D.CATEGORICAL.fisher_vector_product

    def linearized(model, scaled):
        fn = float16_gauss_newton if scaled else natgrad.linearize_gauss_newton
        return fn(lambda: tf.cast(model(x), tf.float32), model.trainable_variables, curvature)[1]

    truth = natgrad.flatten(linearized(full, False)(vector)).numpy()
    plain = natgrad.flatten(linearized(half, False)(vector)).numpy()
    scaled = natgrad.flatten(linearized(half, True)(vector)).numpy()
    assert np.abs(truth).max() > 0
    assert np.all(plain == 0.0)
    np.testing.assert_allclose(scaled, truth, atol=2e-2 * np.abs(truth).max())


def test_float32_gauss_newton_is_unchanged_by_power_of_two_scaling():
    """In float32 nothing underflows, and scaling by powers of two is exact: bit for bit."""
    model = _mlp(seed=4)
    x = tf.constant(np.random.default_rng(0).uniform(size=(16, 64)), tf.float32)
    vector = [tf.constant(np.random.default_rng(1).normal(size=v.shape), tf.float32)
              for v in model.trainable_variables]
    curvature = D.CATEGORICAL.fisher_vector_product
    plain = natgrad.linearize_gauss_newton(lambda: model(x), model.trainable_variables,
                                           curvature)[1](vector)
    scaled = float16_gauss_newton(lambda: model(x), model.trainable_variables,
                                  curvature)[1](vector)
    for a, b in zip(plain, scaled, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_power_of_two_scale():
    def scale(values, exponent=0):
        return float(power_of_two_scale([tf.constant(v, tf.float32) for v in values], exponent))

    assert scale([[1e-9, -3e-9], [2e-9]]) == 2.0**29  # 3e-9 is in [2^-29, 2^-28)
    assert scale([[5.0]], -8) == 2.0**-10
    assert scale([[0.0]]) == 1.0
    assert scale([[1.0, np.inf]]) == 1.0
    assert scale([[1e30]]) == 2.0**-99
