"""Action heads for MultiDiscrete and MultiBinary actions: the TRPO direction they give is the
dense damped natural gradient, and NumPy sampling draws from the distribution they define.

The reference step is built independently: the dense Fisher as ``natgrad.hessian`` of the KL
at the old parameters, the gradient from a plain tape, and ``numpy.linalg.solve``."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import tensorflow as tf
from conftest import mlp_policy, numpy_flat

import natgrad
from agents.nets.heads import BernoulliHead, MultiCategoricalHead, make_head, sample_categorical

OBS_DIM, N, DAMPING = 3, 16, 1e-2


def _policy(head):
    policy = mlp_policy(OBS_DIM, head, hidden=(4,), rng=np.random.default_rng(0),
                        dtype=tf.float64)
    rng = np.random.default_rng(1)
    for v in policy.trainable_variables:  # away from the near-uniform initial output layer
        v.assign(v + rng.normal(0.0, 0.5, v.shape))
    return policy


@pytest.mark.parametrize("head", [MultiCategoricalHead([2, 3]), BernoulliHead(3)],
                         ids=["multi_discrete", "multi_binary"])
def test_cg_step_equals_dense_damped_natural_gradient(head):
    policy = _policy(head)
    variables = list(policy.trainable_variables)
    rng = np.random.default_rng(2)
    obs = tf.constant(rng.normal(size=(N, OBS_DIM)))
    actions = tf.constant(policy.numpy_act(policy.numpy_params(), obs.numpy(), rng))
    advantages = tf.constant(rng.normal(size=N))
    old = tf.nest.map_structure(tf.stop_gradient, policy.outputs(obs))
    log_prob_old = policy.log_prob(old, actions)

    def surrogate():
        ratio = tf.exp(policy.log_prob(policy.outputs(obs), actions) - log_prob_old)
        return -tf.reduce_mean(ratio * advantages)

    fisher = natgrad.hessian(lambda: policy.distribution.kl(old, policy.outputs(obs)),
                             variables).numpy()
    with tf.GradientTape() as tape:
        loss = surrogate()
    grad = numpy_flat(tape.gradient(loss, variables))
    expected = np.linalg.solve(fisher + DAMPING * np.eye(len(grad)), grad)
    theta0 = numpy_flat([v.numpy() for v in variables])

    optimizer = natgrad.NaturalGradient(learning_rate=1.0, damping=DAMPING, cg_iters=200,
                                        cg_tol=1e-15, line_search_max_tries=0)
    stats = optimizer.minimize(surrogate, variables, outputs_fn=lambda: policy.outputs(obs),
                               output_distribution=policy.distribution)
    assert bool(stats["accepted"])
    step = theta0 - numpy_flat([v.numpy() for v in variables])
    assert np.linalg.norm(step - expected) <= 1e-6 * np.linalg.norm(expected)


def test_multi_categorical_sampling_matches_each_component():
    head = MultiCategoricalHead([2, 3])
    z = np.tile([0.0, 1.0, 1.0, 0.0, -1.0], (40_000, 1))
    actions = head.numpy_act(z, {}, np.random.default_rng(3))
    assert actions.shape == (40_000, 2)
    for m, logits in enumerate(([0.0, 1.0], [1.0, 0.0, -1.0])):
        p = np.exp(logits) / np.exp(logits).sum()
        np.testing.assert_allclose(np.bincount(actions[:, m], minlength=len(p)) / len(z), p,
                                   atol=0.01)
    np.testing.assert_array_equal(head.numpy_act(z[:1], {}, None, deterministic=True), [[1, 0]])


def test_categorical_sampling_in_range_and_int64_on_extreme_float32_logits():
    logits = np.array([[0.0, -np.inf, -np.inf], [-np.inf, -np.inf, 0.0], [80.0, -80.0, 80.0],
                       [1e30, 0.0, 0.0]], np.float32)
    actions = np.stack([sample_categorical(logits, np.random.default_rng(s)) for s in range(500)])
    assert actions.dtype == np.int64 and actions.min() >= 0 and actions.max() <= 2
    np.testing.assert_array_equal(actions[:, [0, 1, 3]], np.tile([0, 2, 0], (500, 1)))
    assert set(actions[:, 2]) == {0, 2} and abs((actions[:, 2] == 0).mean() - 0.5) < 0.1


def test_bernoulli_sampling_matches_sigmoid():
    head = BernoulliHead(3)
    z = np.tile([-1.0, 0.0, 2.0], (40_000, 1))
    actions = head.numpy_act(z, {}, np.random.default_rng(4))
    np.testing.assert_allclose(actions.mean(axis=0), 1.0 / (1.0 + np.exp(-z[0])), atol=0.01)
    np.testing.assert_array_equal(head.numpy_act(z[:1], {}, None, deterministic=True),
                                  [[0, 0, 1]])


def test_make_head_follows_the_action_space():
    assert make_head(gym.spaces.Discrete(3)).distribution.name == "categorical"
    assert make_head(gym.spaces.Box(-1, 1, (2,))).distribution.name == "diagonal_gaussian"
    assert make_head(gym.spaces.MultiDiscrete([2, 5])).out_dim == 7
    assert make_head(gym.spaces.MultiBinary(4)).distribution.name == "independent_bernoulli"
