"""The networks (``agents.nets``): ``Policy(trunk, head)`` against NumPy formulas, its NumPy
rollout pass against its TensorFlow pass for every head and both trunks, its Fisher products
against the dense KL Hessian, and ``ValueFunction``."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import tensorflow as tf
from conftest import mlp_policy

import natgrad
from agents.envs.spaces import ObservationEncoder
from agents.nets import VALUE_OUTPUT_GAIN, Policy, ValueFunction, build_networks, make_trunk
from agents.nets.cnn import KerasTrunk
from agents.nets.heads import (
    BernoulliHead,
    CategoricalHead,
    GaussianHead,
    MultiCategoricalHead,
)
from agents.nets.mlp import MLP, mlp_forward

OBS_DIM, N = 3, 6


def _obs(dtype=np.float32, seed=0):
    return np.random.default_rng(seed).normal(size=(N, OBS_DIM)).astype(dtype)


def _np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_categorical_log_prob_entropy_kl_match_numpy():
    policy = mlp_policy(OBS_DIM, CategoricalHead(4), hidden=(5,), rng=np.random.default_rng(0),
                        dtype=tf.float64)
    obs = _obs(np.float64)
    logits = policy.outputs(obs).numpy()
    np.testing.assert_allclose(logits, mlp_forward(policy.trunk.numpy_params(), obs, "tanh"),
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
    policy = mlp_policy(OBS_DIM, GaussianHead(2, log_std_init=-0.3, dtype=tf.float64),
                        hidden=(5,), rng=np.random.default_rng(0), dtype=tf.float64)
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
        return mlp_policy(OBS_DIM, CategoricalHead(3), hidden=(4,), rng=rng, dtype=tf.float64)
    return mlp_policy(OBS_DIM, GaussianHead(2, log_std_init=-0.2, dtype=tf.float64),
                      hidden=(4,), rng=rng, dtype=tf.float64)


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
    matvec = optimizer.curvature_operator(
        lambda: tf.constant(0.0, tf.float64), variables,
        outputs_fn=lambda: policy.outputs(obs), output_distribution=policy.distribution)
    rng = np.random.default_rng(6)
    vector = [tf.constant(rng.normal(size=v.shape), tf.float64) for v in variables]
    product = natgrad.flatten(matvec(vector)).numpy()
    expected = dense.numpy() @ natgrad.flatten(vector).numpy()
    np.testing.assert_allclose(product, expected, rtol=1e-8, atol=1e-12)
    if kind == "gaussian":  # the log_std block is 2·I (shared across the batch)
        assert any(v is policy.head.log_std for v in variables)


def test_gaussian_log_std_is_a_trainable_variable():
    policy = _make_policy("gaussian")
    assert any(v is policy.head.log_std for v in policy.trainable_variables)
    obs = tf.constant(_obs(np.float64))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(policy.log_prob(policy.outputs(obs), tf.zeros([N, 2], tf.float64)))
    assert tape.gradient(loss, policy.head.log_std) is not None


def test_numpy_sampling_matches_probabilities():
    policy = mlp_policy(OBS_DIM, CategoricalHead(3), hidden=(4,), rng=np.random.default_rng(7))
    policy.trunk.biases[-1].assign([0.0, 1.0, -1.0])
    obs = np.zeros((20000, OBS_DIM), np.float32)
    actions = policy.numpy_act(policy.numpy_params(), obs, np.random.default_rng(8))
    p = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    np.testing.assert_allclose(np.bincount(actions, minlength=3) / len(obs), p, atol=0.015)
    greedy = policy.numpy_act(policy.numpy_params(), obs[:3], None, deterministic=True)
    np.testing.assert_array_equal(greedy, [1, 1, 1])


def test_value_function_numpy_and_tf_agree():
    value = ValueFunction(MLP(OBS_DIM, (8, 8), 1, activation="tanh",
                              rng=np.random.default_rng(9), output_gain=VALUE_OUTPUT_GAIN))
    obs = _obs()
    np.testing.assert_allclose(value.numpy_values(value.numpy_params(), obs), value(obs).numpy(),
                               rtol=1e-5, atol=1e-6)


# Every head on both trunks -------------------------------------------------------------------

# Images and a vector part: the Keras trunk's CNN and its MLP both run.
IMAGE_SPACE = gym.spaces.Dict({"cam": gym.spaces.Box(0, 255, (36, 36, 1), np.uint8),
                               "v": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})
HEADS = {"categorical": lambda: CategoricalHead(3),
         "gaussian": lambda: GaussianHead(2, log_std_init=-0.5),
         "multi_categorical": lambda: MultiCategoricalHead([2, 3]),
         "bernoulli": lambda: BernoulliHead(3)}


def _trunk_and_obs(kind, out_dim, batch=8):
    """A trunk of ``kind`` and a batch of its encoded observations (weights perturbed away
    from the near-uniform initial output layer)."""
    rng = np.random.default_rng(11)
    if kind == "mlp":
        trunk = MLP(OBS_DIM, (8,), out_dim, activation="tanh", rng=rng, output_gain=0.01)
        obs = rng.normal(size=(batch, OBS_DIM)).astype(np.float32)
    else:
        encoder = ObservationEncoder(IMAGE_SPACE)
        trunk = make_trunk(encoder, out_dim, hidden=(8,), activation="tanh", output_gain=0.01,
                           rng=rng, name="policy")
        assert isinstance(trunk, KerasTrunk)
        raw = {"cam": rng.integers(0, 256, (batch, 36, 36, 1)).astype(np.uint8),
               "v": rng.uniform(-1, 1, (batch, 2)).astype(np.float32)}
        obs = encoder.encode(raw)
    for v in trunk.trainable_variables:
        v.assign(v + rng.normal(0.0, 0.05, v.shape).astype(np.float32))
    return trunk, obs


def _deterministic(kind, outputs):
    """The deterministic action by hand, from the TensorFlow outputs."""
    if kind == "categorical":
        return np.argmax(outputs, axis=-1)
    if kind == "gaussian":
        return outputs[0]
    if kind == "multi_categorical":
        return np.stack([np.argmax(outputs[:, :2], -1), np.argmax(outputs[:, 2:], -1)], -1)
    return (outputs > 0).astype(np.int64)


@pytest.mark.parametrize("trunk_kind", ["mlp", "keras"])
@pytest.mark.parametrize("head_kind", list(HEADS))
def test_numpy_forward_and_deterministic_action_match_tensorflow(trunk_kind, head_kind):
    head = HEADS[head_kind]()
    trunk, obs = _trunk_and_obs(trunk_kind, head.out_dim)
    policy = Policy(trunk, head)
    params = policy.numpy_params()
    z_numpy = trunk.numpy_forward(params["trunk"], obs)
    z_tf = trunk(obs).numpy()
    assert z_numpy.shape == z_tf.shape == (8, head.out_dim)
    np.testing.assert_allclose(z_numpy, z_tf, rtol=1e-5, atol=1e-6)
    outputs = tf.nest.map_structure(np.asarray, policy.outputs(obs))
    greedy = policy.numpy_act(params, obs, None, deterministic=True)
    expected = _deterministic(head_kind, outputs)
    if head_kind == "gaussian":
        np.testing.assert_allclose(greedy, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(greedy, expected)
    # Every variable trains: the head's (log_std) and the trunk's, each once.
    assert len({id(v) for v in policy.trainable_variables}) == len(policy.trainable_variables)
    assert len(policy.trainable_variables) == (len(head.trainable_variables)
                                               + len(trunk.trainable_variables))


@pytest.mark.parametrize("trunk_kind", ["mlp", "keras"])
@pytest.mark.parametrize("head_kind", list(HEADS))
def test_sampled_actions_follow_the_heads_distribution(trunk_kind, head_kind):
    """Many draws for one observation: their frequencies are the probabilities the head's
    ``log_prob`` gives (a discrete head), their mean and std the Gaussian's."""
    head = HEADS[head_kind]()
    trunk, obs = _trunk_and_obs(trunk_kind, head.out_dim, batch=1)
    policy = Policy(trunk, head)
    draws = 20_000
    many = tf.nest.map_structure(lambda x: np.repeat(x, draws, axis=0), obs)
    actions = policy.numpy_act(policy.numpy_params(), many, np.random.default_rng(12))
    outputs = policy.outputs(obs)
    if head_kind == "gaussian":
        mean, log_std = (np.asarray(t) for t in outputs)
        np.testing.assert_allclose(actions.mean(0), mean[0], atol=0.02)
        np.testing.assert_allclose(actions.std(0), np.exp(log_std), rtol=0.02)
        return
    values, counts = np.unique(actions, axis=0, return_counts=True)
    for value, count in zip(values, counts, strict=True):
        log_p = policy.log_prob(outputs, value[None]).numpy()[0]
        assert count / draws == pytest.approx(np.exp(log_p), abs=0.015), value
    support = {"categorical": 3, "multi_categorical": 6, "bernoulli": 8}[head_kind]
    total = sum(np.exp(policy.log_prob(outputs, v[None]).numpy()[0]) for v in values)
    assert len(values) <= support and total == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("space", [gym.spaces.Box(-1.0, 1.0, (OBS_DIM,)), IMAGE_SPACE],
                         ids=["vector", "images"])
def test_build_networks_picks_the_trunk_and_sizes_the_heads(space):
    from agents.config import resolve_config

    cfg = resolve_config("CartPole-v1", policy_hidden=(8,), value_hidden=(6,))
    encoder = ObservationEncoder(space)
    policy, value = build_networks(encoder, gym.spaces.MultiDiscrete([2, 3]), cfg,
                                   np.random.default_rng(0))
    trunk_type = KerasTrunk if encoder.has_images else MLP
    assert isinstance(policy.trunk, trunk_type) and isinstance(value.trunk, trunk_type)
    assert isinstance(policy.head, MultiCategoricalHead)
    obs = encoder.encode(encoder.stack([space.sample() for _ in range(4)]))
    assert policy.trunk(obs).shape == (4, 5) and value(obs).shape == (4,)
    np.testing.assert_allclose(value.numpy_values(value.numpy_params(), obs), value(obs).numpy(),
                               rtol=1e-5, atol=1e-6)
