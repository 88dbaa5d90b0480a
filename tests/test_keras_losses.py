"""Compiled Keras losses as output distributions, one output or several (natgrad.keras_losses)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import natgrad
from natgrad import distributions as D
from natgrad.keras_losses import compiled_output_distribution, output_losses

RNG = np.random.default_rng(0)
LOGITS = tf.constant(RNG.normal(size=(5, 3)))
VALUES = tf.constant(RNG.normal(size=(5, 2)))


def test_two_outputs_kl_and_fisher_are_weighted_sums():
    dist = compiled_output_distribution(
        {"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "b": "mse"},
        {"a": 1.0, "b": 0.5},
        ["a", "b"],
    )
    new = [LOGITS + 0.1, VALUES - 0.2]
    want_kl = D.categorical_kl(LOGITS, new[0]) + 0.5 * D.squared_error_kl(VALUES, new[1])
    np.testing.assert_allclose(dist.kl([LOGITS, VALUES], new), want_kl, rtol=1e-12)
    u = [tf.ones_like(LOGITS), tf.ones_like(VALUES)]
    got = dist.fisher_vector_product([LOGITS, VALUES], u)
    np.testing.assert_allclose(got[0], D.categorical_fisher_vector_product(LOGITS, u[0]))
    np.testing.assert_allclose(got[1], 0.5 * D.squared_error_fisher_vector_product(VALUES, u[1]))


def test_parameter_space_curvature_is_the_sum_of_each_outputs_term():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,), dtype="float64")
    hidden = keras.layers.Dense(5, activation="tanh", dtype="float64")(inputs)
    heads = [keras.layers.Dense(3, dtype="float64")(hidden),
             keras.layers.Dense(2, dtype="float64")(hidden)]
    model = keras.Model(inputs, heads)
    x = tf.constant(RNG.normal(size=(6, 4)))
    variables = model.trainable_variables
    vector = [tf.constant(RNG.normal(size=v.shape)) for v in variables]
    dist = compiled_output_distribution(
        [keras.losses.CategoricalCrossentropy(from_logits=True), "mse"], [2.0, 0.25]
    )
    got = natgrad.gauss_newton_vector_product(lambda: model(x), variables, vector,
                                              dist.fisher_vector_product)
    head_a = natgrad.gauss_newton_vector_product(lambda: model(x)[0], variables, vector,
                                                 D.CATEGORICAL.fisher_vector_product)
    head_b = natgrad.gauss_newton_vector_product(lambda: model(x)[1], variables, vector,
                                                 D.SQUARED_ERROR.fisher_vector_product)
    for g, a, b in zip(got, head_a, head_b, strict=True):
        np.testing.assert_allclose(g, 2.0 * a + 0.25 * b, rtol=1e-10, atol=1e-12)


def test_output_without_a_loss_adds_no_curvature():
    parts = output_losses({"a": "mse", "b": None}, None, [VALUES, VALUES], ["a", "b"])
    assert parts == [(D.SQUARED_ERROR, 1.0), (None, 0.0)]


@pytest.mark.parametrize(
    ("loss", "outputs", "match"),
    [
        ("mse", [VALUES, VALUES], "2 outputs but was compiled with one loss"),
        (["mse"], [VALUES, VALUES], "2 outputs but 1 losses"),
        ({"a": "mse", "c": "mse"}, [VALUES, VALUES], "do not name the model's outputs"),
        (["mse", "mae"], [VALUES, VALUES], "'mae'"),
    ],
)
def test_mismatched_losses_are_refused(loss, outputs, match):
    with pytest.raises(ValueError, match=match):
        output_losses(loss, None, outputs, ["a", "b"])


@pytest.mark.parametrize("reduction", ["mean", "sum_over_batch_size", "mean_with_sample_weight"])
def test_batch_mean_reductions_are_accepted(reduction):
    loss = keras.losses.MeanSquaredError(reduction=reduction)
    assert natgrad.output_distribution_for_loss(loss) is D.SQUARED_ERROR


@pytest.mark.parametrize("reduction", ["sum", None])
def test_other_reductions_are_refused(reduction):
    with pytest.raises(ValueError, match="averaged over the batch"):
        natgrad.output_distribution_for_loss(keras.losses.MeanSquaredError(reduction=reduction))
