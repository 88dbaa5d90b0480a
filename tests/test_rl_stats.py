"""Interval estimates of scripts/rl_stats.py against hand-computed values and NumPy."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def stats():
    return load_script("rl_stats")


def test_iqm_is_the_mean_of_the_middle_half(stats):
    assert stats.iqm([1.0, 2.0, 3.0, 4.0, 100.0]) == 3.0  # one cut at each end
    assert stats.iqm([4.0, 1.0, 3.0, 2.0, 8.0, 7.0, 6.0, 5.0]) == 4.5  # 3..6
    assert stats.iqm([7.0, 9.0]) == 8.0  # fewer than 4: nothing to cut
    rows = np.array([[1.0, 2.0, 3.0, 4.0, 100.0], [0.0, 0.0, 3.0, 3.0, 3.0]])
    np.testing.assert_allclose(stats.iqm(rows), [3.0, 2.0])


def test_iqm_matches_scipy_trim_mean(stats):
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in (4, 5, 7, 10, 13):
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(scipy_stats.trim_mean(x, 0.25))


def test_bootstrap_interval_brackets_the_point_and_collapses_for_equal_scores(stats):
    point, low, high = stats.stratified_bootstrap_ci({"a": [1.0, 2.0, 3.0, 4.0, 10.0]})
    assert low <= point <= high and low >= 1.0 and high <= 10.0 and high > low
    assert stats.stratified_bootstrap_ci({"a": [5.0] * 5}) == (5.0, 5.0, 5.0)


def test_bootstrap_resamples_within_each_task(stats):
    # Two tasks far apart: a stratified resample always holds 3 scores of each, so the pooled
    # mean can only move within each task's own spread, never to all-of-one-task.
    scores = {"low": [0.0, 0.0, 1.0], "high": [100.0, 100.0, 101.0]}
    def mean(x):
        return np.mean(x, axis=-1)

    point, low, high = stats.stratified_bootstrap_ci(scores, mean, reps=500)
    assert point == pytest.approx(np.mean([0, 0, 1, 100, 100, 101]))
    assert 50.0 <= low <= point <= high <= 51.0


def test_a_statistic_that_does_not_reduce_per_replicate_is_refused(stats):
    with pytest.raises(ValueError, match="last axis"):
        stats.stratified_bootstrap_ci({"a": [1.0, 2.0]}, np.mean)


def test_summary_has_per_seed_scores_beside_the_estimates(stats):
    out = stats.summary([3.0, 1.0, 2.0])
    assert out["per_seed"] == [3.0, 1.0, 2.0]
    assert out["mean"] == 2.0 and out["std"] == pytest.approx(np.std([1, 2, 3]))
    assert out["iqm"] == 2.0 and out["iqm_ci95"][0] <= 2.0 <= out["iqm_ci95"][1]
    assert np.isnan(stats.summary([])["mean"])
