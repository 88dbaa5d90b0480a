"""``agents.envs.normalization``: running observation statistics and reward scaling, against
NumPy over everything seen so far."""

from __future__ import annotations

import numpy as np
import pytest

from agents.envs.normalization import (
    Moments,
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


def _with_prior(x: np.ndarray, prior_count: float = 1e-4) -> tuple:
    """``(count, mean, var)`` of the rows of ``x`` with RunningMeanStd's prior (weight
    ``prior_count`` at mean 0, variance 1), by NumPy over all rows at once."""
    count = len(x) + prior_count
    mean = x.sum(axis=0) / count
    m2 = np.square(x - mean).sum(axis=0) + prior_count * (1.0 + np.square(mean))
    return count, mean, m2 / count


def test_moments_combine_as_numpy_over_both_sets():
    rng = np.random.default_rng(5)
    a, b = rng.normal(1.0, 2.0, size=(30, 2)), rng.normal(-3.0, 0.5, size=(7, 2))

    def moments(x):
        return Moments(float(len(x)), x.mean(0), np.square(x - x.mean(0)).sum(0))

    both = moments(a).combine(moments(b))
    data = np.concatenate([a, b])
    assert both.count == 37
    np.testing.assert_allclose(both.mean, data.mean(0), rtol=1e-13)
    np.testing.assert_allclose(both.m2 / both.count, data.var(0), rtol=1e-13)
    empty = Moments.empty((2,))
    assert empty.combine(moments(a)).count == moments(a).combine(empty).count == 30


def test_workers_statistics_merged_equal_one_process_over_the_union_of_their_samples():
    """Two workers' statistics, each fed its own samples and merged at every update, are
    identical to each other and to NumPy over every sample either saw."""
    rng = np.random.default_rng(6)
    workers = [RunningMeanStd((3,)), RunningMeanStd((3,))]
    for rms in workers:
        rms.track_unmerged()
    seen = []
    for update in range(3):
        for k, rms in enumerate(workers):
            for rows in (1, 2, 5):  # a few vector steps of different sizes
                batch = rng.normal(k + update, 1.0 + k, size=(rows, 3))
                rms.update(batch)
                seen.append(batch)
        assert workers[0].mean.tolist() != workers[1].mean.tolist()  # apart until merged
        parts = [rms.unmerged for rms in workers]
        for rms in workers:
            rms.merge(parts)
        assert [rms.unmerged.count for rms in workers] == [0.0, 0.0]
        count, mean, var = _with_prior(np.concatenate(seen))
        for rms in workers:
            np.testing.assert_array_equal(rms.mean, workers[0].mean)
            np.testing.assert_array_equal(rms.var, workers[0].var)
            assert rms.count == pytest.approx(count, rel=1e-14)
            np.testing.assert_allclose(rms.mean, mean, rtol=1e-12)
            np.testing.assert_allclose(rms.var, var, rtol=1e-12)


def test_loading_a_state_drops_the_samples_not_merged_yet():
    rms = RunningMeanStd((2,))
    rms.track_unmerged()
    saved = rms.state()
    rms.update(np.ones((4, 2)))
    assert rms.unmerged.count == 4
    rms.load_state(saved)
    assert rms.unmerged.count == 0
    rms.merge([Moments(2.0, np.array([1.0, 3.0]), np.array([2.0, 0.0]))])
    count, mean, var = _with_prior(np.array([[0.0, 3.0], [2.0, 3.0]]))
    np.testing.assert_allclose([rms.count, *rms.mean, *rms.var], [count, *mean, *var],
                               rtol=1e-12)
    plain = RunningMeanStd((2,))  # without track_unmerged nothing more is kept
    plain.update(np.ones((4, 2)))
    assert plain.unmerged is None
