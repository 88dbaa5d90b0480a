"""GAE, advantage standardization, running observation statistics and rollout collection."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.normalization import RewardScaler, RunningMeanStd
from agents.policies import CategoricalPolicy
from agents.rollout import (
    RolloutWorker,
    compute_gae,
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


def test_running_mean_std_matches_numpy_over_all_batches():
    rng = np.random.default_rng(2)
    batches = [rng.normal(2.0, 3.0, size=(n, 3)) for n in (1, 7, 50)]
    rms = RunningMeanStd((3,))
    for b in batches:
        rms.update(b)
    data = np.concatenate(batches)
    np.testing.assert_allclose(rms.mean, data.mean(0), rtol=1e-4)
    np.testing.assert_allclose(rms.var, data.var(0), rtol=1e-4)
    z = rms.normalize(np.array([[1e6, 0.0, -1e6]]))
    assert z[0, 0] == 10.0 and z[0, 2] == -10.0


def test_reward_scaler_divides_by_the_std_of_every_discounted_return_so_far():
    rng = np.random.default_rng(4)
    gamma, steps = 0.9, 300
    rewards = rng.normal(1.0, 2.0, size=(steps, 2))
    dones = rng.random((steps, 2)) < 0.05
    scaler = RewardScaler(2, gamma)
    # By hand: G_t = γ G_{t-1} + r_t per env, restarted after an episode ends.
    g, seen = np.zeros(2), []
    for t in range(steps):
        g = gamma * g + rewards[t]
        seen.append(g.copy())
        scaled = scaler.scale(rewards[t], dones[t])
        std = np.sqrt(np.var(np.concatenate(seen)))
        if t >= 20:  # once the tiny prior of the running statistics has washed out
            np.testing.assert_allclose(scaled, rewards[t] / std, rtol=1e-3)
        g = np.where(dones[t], 0.0, g)
        np.testing.assert_array_equal(scaler.returns, g)
    assert np.all(np.sign(scaled) == np.sign(rewards[-1]))  # not centred: signs are kept
    # Clipped at ±10 standard deviations.
    assert scaler.scale(np.array([1e9, -1e9]), np.zeros(2, bool)).tolist() == [10.0, -10.0]


def test_reward_scaler_state_round_trips_and_checks_the_env_count():
    scaler = RewardScaler(3, 0.99)
    for r in np.random.default_rng(0).normal(size=(10, 3)):
        scaler.scale(r, np.zeros(3, bool))
    copy = RewardScaler(3, 0.5)
    copy.load_state(scaler.state())
    r = np.array([0.5, -1.0, 2.0])
    np.testing.assert_array_equal(copy.scale(r, np.zeros(3, bool)),
                                  scaler.scale(r, np.zeros(3, bool)))
    with pytest.raises(ValueError, match="for 3 envs, not 2"):
        RewardScaler(2, 0.99).load_state(scaler.state())


def test_rollout_learns_from_scaled_rewards_and_reports_raw_returns():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")] * 2,
                                    autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rng = np.random.default_rng(0)
    policy = CategoricalPolicy(4, 2, hidden=(8,), rng=rng)
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
    policy = CategoricalPolicy(4, 2, hidden=(8,), rng=rng)
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
