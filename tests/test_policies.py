"""Policies against NumPy formulas, and their Fisher products against the dense KL Hessian."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

import natgrad
from agents.policies import CategoricalPolicy, GaussianPolicy, ValueFunction, mlp_forward

OBS_DIM, N = 3, 6


def _obs(dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=(N, OBS_DIM)).astype(dtype)


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_categorical_log_prob_entropy_kl_match_numpy():
    policy = CategoricalPolicy(OBS_DIM, 4, hidden=(5,), rng=np.random.default_rng(0),
                               dtype=tf.float64)
    obs = _obs(np.float64)
    logits = policy.outputs(obs).numpy()
    np.testing.assert_allclose(logits, mlp_forward(policy.logits_net.numpy_params(), obs, "tanh"),
                               rtol=1e-12)
    actions = np.array([0, 1, 2, 3, 0, 1])
    log_p = _np_log_softmax(logits)
    np.testing.assert_allclose(policy.log_prob(logits, actions), log_p[np.arange(N), actions],
                               rtol=1e-10)
    np.testing.assert_allclose(policy.entropy(logits), -(np.exp(log_p) * log_p).sum(-1),
                               rtol=1e-10)
    other = logits + np.random.default_rng(1).normal(size=logits.shape)
    log_q = _np_log_softmax(other)
    expected_kl = np.mean((np.exp(log_p) * (log_p - log_q)).sum(-1))
    np.testing.assert_allclose(policy.distribution.kl(logits, other), expected_kl, rtol=1e-10)


def test_gaussian_log_prob_entropy_kl_match_numpy():
    policy = GaussianPolicy(OBS_DIM, 2, hidden=(5,), log_std_init=-0.3,
                            rng=np.random.default_rng(0), dtype=tf.float64)
    obs = _obs(np.float64)
    mean, log_std = (t.numpy() if hasattr(t, "numpy") else t for t in policy.outputs(obs))
    assert log_std.shape == (2,) and np.allclose(log_std, -0.3)
    x = np.random.default_rng(2).normal(size=(N, 2))
    std = np.exp(log_std)
    expected = np.sum(-0.5 * ((x - mean) / std) ** 2 - log_std - 0.5 * math.log(2 * math.pi), -1)
    np.testing.assert_allclose(policy.log_prob((mean, log_std), x), expected, rtol=1e-10)
    entropy = np.sum(log_std + 0.5 * math.log(2 * math.pi * math.e)) * np.ones(N)
    np.testing.assert_allclose(policy.entropy((mean, log_std)), entropy, rtol=1e-10)
    mean2, log_std2 = mean + 0.3, log_std + np.array([0.1, -0.2])
    std2 = np.exp(log_std2)
    kl = np.mean(np.sum(log_std2 - log_std + (std**2 + (mean - mean2) ** 2) / (2 * std2**2) - 0.5,
                        -1))
    np.testing.assert_allclose(policy.distribution.kl((mean, log_std), (mean2, log_std2)), kl,
                               rtol=1e-10)


def _make_policy(kind):
    rng = np.random.default_rng(3)
    if kind == "categorical":
        return CategoricalPolicy(OBS_DIM, 3, hidden=(4,), rng=rng, dtype=tf.float64)
    return GaussianPolicy(OBS_DIM, 2, hidden=(4,), log_std_init=-0.2, rng=rng, dtype=tf.float64)


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_fisher_product_used_by_minimize_equals_dense_kl_hessian(kind):
    policy = _make_policy(kind)
    variables = list(policy.trainable_variables)
    obs = tf.constant(_obs(np.float64, seed=4))
    # Perturb the output layer so the categorical logits are not nearly uniform.
    for v in variables:
        v.assign(v + tf.constant(np.random.default_rng(5).normal(0, 0.5, v.shape), v.dtype))
    old = tf.nest.map_structure(tf.stop_gradient, policy.outputs(obs))
    dense = natgrad.hessian(lambda: policy.distribution.kl(old, policy.outputs(obs)), variables)
    optimizer = natgrad.NaturalGradient(max_kl=0.01)
    matvec = optimizer.curvature_product(
        lambda: tf.constant(0.0, tf.float64), variables,
        outputs_fn=lambda: policy.outputs(obs), output_distribution=policy.distribution)
    rng = np.random.default_rng(6)
    vector = [tf.constant(rng.normal(size=v.shape), tf.float64) for v in variables]
    product = natgrad.flatten(matvec(vector)).numpy()
    expected = dense.numpy() @ natgrad.flatten(vector).numpy()
    np.testing.assert_allclose(product, expected, rtol=1e-8, atol=1e-12)
    if kind == "gaussian":  # the log_std block is 2·I (shared across the batch)
        assert any(v is policy.log_std for v in variables)


def test_gaussian_log_std_is_a_trainable_variable():
    policy = _make_policy("gaussian")
    assert any(v is policy.log_std for v in policy.trainable_variables)
    obs = tf.constant(_obs(np.float64))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(policy.log_prob(policy.outputs(obs), tf.zeros([N, 2], tf.float64)))
    assert tape.gradient(loss, policy.log_std) is not None


def test_numpy_sampling_matches_probabilities():
    policy = CategoricalPolicy(OBS_DIM, 3, hidden=(4,), rng=np.random.default_rng(7))
    policy.logits_net.biases[-1].assign([0.0, 1.0, -1.0])
    obs = np.zeros((20000, OBS_DIM), np.float32)
    actions = policy.numpy_act(policy.numpy_params(), obs, np.random.default_rng(8))
    p = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / len(obs), p, atol=0.015)
    greedy = policy.numpy_act(policy.numpy_params(), obs[:3], None, deterministic=True)
    np.testing.assert_array_equal(greedy, [1, 1, 1])


def test_value_function_numpy_and_tf_agree():
    value = ValueFunction(OBS_DIM, hidden=(8, 8), rng=np.random.default_rng(9))
    obs = _obs()
    np.testing.assert_allclose(value.numpy_values(value.numpy_params(), obs), value(obs).numpy(),
                               rtol=1e-5, atol=1e-6)
