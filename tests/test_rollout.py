"""``agents.rollout``: GAE, advantage standardization and rollout collection. (The running
statistics it normalizes with are ``test_normalization.py``'s.)"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from conftest import WrongShapeEnv, mlp_policy

from agents.envs.normalization import RewardScaler
from agents.envs.spaces import flatten_time
from agents.nets import VALUE_OUTPUT_GAIN, ValueFunction
from agents.nets.heads import CategoricalHead
from agents.nets.mlp import MLP
from agents.rollout import (
    RolloutWorker,
    compute_gae,
    estimate_advantages,
    explained_variance,
    normalize_advantages,
)


def test_gae_hand_example_with_truncation_and_termination():
    # env 0: step 1 is truncated (bootstrap from V(final_obs) = 7), step 2 terminates.
    # env 1: no episode end; the last step bootstraps from V(s_3) = 2.
    gamma, lam = 0.9, 0.8
    rewards = np.array([[1.0, 0.0], [2.0, 0.0], [3.0, 1.0]])
    values = np.array([[0.5, 0.0], [1.0, 0.0], [1.5, 0.0]])
    next_values = np.array([[1.0, 0.0], [7.0, 0.0], [2.0, 2.0]])
    terminated = np.array([[0, 0], [0, 0], [1, 0]], bool)
    truncated = np.array([[0, 0], [1, 0], [0, 0]], bool)
    advantages, returns = compute_gae(rewards, values, next_values, terminated, truncated,
                                      gamma, lam)
    # env 0: δ = (1 + .9·1 − .5, 2 + .9·7 − 1, 3 − 1.5) = (1.4, 7.3, 1.5); the sum is cut at t=1.
    # env 1: δ = (0, 0, 1 + .9·2) = (0, 0, 2.8); Â_t = (γλ)^(2−t) · 2.8.
    expected = np.array([[1.4 + 0.72 * 7.3, 0.72**2 * 2.8], [7.3, 0.72 * 2.8], [1.5, 2.8]])
    np.testing.assert_allclose(advantages, expected, rtol=1e-12)
    np.testing.assert_allclose(returns, expected + values, rtol=1e-12)


def test_gae_lambda_one_gives_discounted_returns_minus_values():
    rng = np.random.default_rng(0)
    rewards, values = rng.normal(size=(5, 1)), rng.normal(size=(5, 1))
    done = np.zeros((5, 1), bool)
    next_values = np.concatenate([values[1:], [[123.0]]])  # the last one is never used
    advantages, returns = compute_gae(rewards, values, next_values,
                                      done | np.eye(5, 1, -4, dtype=bool), done, 0.9, 1.0)
    discounted = [sum(0.9**k * rewards[t + k, 0] for k in range(5 - t)) for t in range(5)]
    np.testing.assert_allclose(returns[:, 0], discounted, rtol=1e-12)


def test_normalize_advantages_and_explained_variance():
    a = np.random.default_rng(1).normal(3.0, 5.0, size=1000)
    z = normalize_advantages(a)
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1.0) < 1e-6
    assert explained_variance(a, a) == pytest.approx(1.0)
    assert explained_variance(np.full_like(a, a.mean()), a) == pytest.approx(0.0)


def test_rollout_learns_from_scaled_rewards_and_reports_raw_returns():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rng = np.random.default_rng(0)
    policy = mlp_policy(4, CategoricalHead(2), hidden=(8,), rng=rng)
    scaler = RewardScaler(2, 0.99)
    worker = RolloutWorker(envs, policy, None, reward_scaler=scaler)
    worker.reset(seed=0)
    rollout = worker.collect(policy.numpy_params(), 200, rng)
    np.testing.assert_array_equal(rollout.rewards, 1.0)  # CartPole's raw reward
    assert np.all(rollout.train_rewards > 0.0)  # scaled, never centred
    assert np.all(rollout.train_rewards[-50:] < 0.5)  # by the std of returns of ~10-100
    # Episode returns are counted in raw rewards: whole episode lengths.
    assert worker.episode_returns and all(float(r).is_integer() for r in worker.episode_returns)
    worker.reset(seed=1)
    np.testing.assert_array_equal(scaler.returns, 0.0)  # a reset restarts every episode
    envs.close()


def test_rollout_bootstraps_from_next_or_final_observation():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rng = np.random.default_rng(0)
    policy = mlp_policy(4, CategoricalHead(2), hidden=(8,), rng=rng)
    worker = RolloutWorker(envs, policy, None)
    worker.reset(seed=0)
    rollout = worker.collect(policy.numpy_params(), 200, rng)
    done = rollout.terminated | rollout.truncated
    assert done.any() and worker.episodes == done.sum()
    same = ~done[:-1]
    np.testing.assert_array_equal(rollout.bootstrap_obs[:-1][same], rollout.obs[1:][same])
    # After a termination the next observation is a fresh reset, not the final state.
    t, i = np.argwhere(done[:-1])[0]
    assert not np.allclose(rollout.bootstrap_obs[t, i], rollout.obs[t + 1, i])
    assert np.abs(rollout.bootstrap_obs[t, i]).max() > 0.05  # a failed pole, not a reset state
    assert len(worker.episode_returns) == min(done.sum(), 20)
    envs.close()


def test_estimate_advantages_is_gae_on_the_values_of_the_batch_and_its_bootstrap_states():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=15)] * 2,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rng = np.random.default_rng(0)
    policy = mlp_policy(4, CategoricalHead(2), hidden=(8,), rng=rng)
    value = ValueFunction(MLP(4, (8,), 1, activation="tanh", rng=rng,
                              output_gain=VALUE_OUTPUT_GAIN))
    worker = RolloutWorker(envs, policy, None)
    worker.reset(seed=0)
    rollout = worker.collect(policy.numpy_params(), 60, rng)
    assert rollout.truncated.any() and rollout.terminated.any()
    values, advantages, returns = estimate_advantages(value, rollout, 0.9, 0.8)

    def tf_values(obs):  # V(s) by the TensorFlow forward pass, [T, E]
        return value(flatten_time(obs)).numpy().reshape(rollout.rewards.shape)

    np.testing.assert_allclose(values, tf_values(rollout.obs), rtol=1e-5, atol=1e-6)
    expected, _ = compute_gae(rollout.train_rewards, tf_values(rollout.obs),
                              tf_values(rollout.bootstrap_obs), rollout.terminated,
                              rollout.truncated, 0.9, 0.8)
    np.testing.assert_allclose(advantages, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(returns, advantages + values)
    envs.close()


@pytest.mark.parametrize("bad_at_reset", [True, False])
def test_an_observation_of_the_wrong_shape_names_the_env_space_and_shape(bad_at_reset):
    from agents.envs.factories import make_vector_env
    from agents.envs.vector_env import ObservationShapeError

    envs = make_vector_env(lambda: WrongShapeEnv(bad_at_reset), 2, "sync")
    expected = (r"env 'WrongShapeEnv' returned an observation of shape \(3,\), but its "
                r"observation space is Box\(-1\.0, 1\.0, \(4,\), float32\) \(shape \(4,\)\)")
    with pytest.raises(ObservationShapeError, match=expected):
        envs.reset(seed=0)
        for _ in range(3):
            envs.step(np.zeros(2, np.int64))
    envs.close()
