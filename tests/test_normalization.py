"""``agents.envs.normalization``: running observation statistics and reward scaling, against
NumPy over everything seen so far."""

from __future__ import annotations

import numpy as np
import pytest

from agents.envs.normalization import (
    RewardScaler,
    RunningMeanStd,
    load_normalizer_state,
    normalizer_state,
)


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


def test_normalizer_state_round_trips_and_leaves_what_is_off_alone():
    rms, scaler = RunningMeanStd((2,)), RewardScaler(2, 0.9)
    rms.update(np.array([[1.0, 2.0], [3.0, 5.0]]))
    scaler.scale(np.array([1.0, -2.0]), np.array([False, False]))
    state = normalizer_state(rms, scaler)
    rms.update(np.full((3, 2), 100.0))
    scaler.scale(np.array([50.0, 50.0]), np.array([True, False]))
    load_normalizer_state(rms, scaler, state)
    np.testing.assert_equal(normalizer_state(rms, scaler), state)
    assert normalizer_state(None, None) == (None, None)
    load_normalizer_state(None, None, (None, None))  # both off: nothing to load
    load_normalizer_state(rms, scaler, (None, None))  # a state without them: kept as they are
    np.testing.assert_equal(normalizer_state(rms, scaler), state)
