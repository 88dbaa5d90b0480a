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


def test_permutation_test_exact_against_hand_counts(stats):
    # [1,2,3] vs [4,5,6]: of the C(6,3) = 20 splits only it and its mirror are as extreme.
    assert stats.permutation_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    # [1,2] vs [3]: splits {1,2} |1.5-3| and {2,3} |2.5-1| reach 1.5, {1,3} gives 0.
    assert stats.permutation_test([1.0, 2.0], [3.0]) == pytest.approx(2 / 3)
    assert stats.permutation_test([5.0, 1.0], [1.0, 5.0]) == 1.0  # same scores: no evidence
    assert np.isnan(stats.permutation_test([], [1.0]))


def test_permutation_test_sampled_agrees_with_the_exact_one(stats):
    rng = np.random.default_rng(3)
    a, b = rng.normal(0.0, 1.0, 8), rng.normal(0.8, 1.0, 8)  # C(16, 8) = 12,870 splits
    exact = stats.permutation_test(a, b, reps=20000)
    sampled = stats.permutation_test(a, b, reps=4000, seed=1)
    assert 0.0 < exact < 1.0
    assert sampled == pytest.approx(exact, abs=0.025)  # ~4 binomial standard errors


def test_bootstrap_difference_interval(stats):
    point, low, high = stats.bootstrap_difference_ci([3.0, 3.0, 3.0], [1.0, 1.0])
    assert (point, low, high) == (2.0, 2.0, 2.0)  # no spread: the interval is the point
    rng = np.random.default_rng(0)
    a, b = rng.normal(10.0, 1.0, 400), rng.normal(7.0, 1.0, 400)
    point, low, high = stats.bootstrap_difference_ci(a, b)
    assert point == pytest.approx(a.mean() - b.mean())
    assert low < 3.0 < high and low > 2.6 and high < 3.4  # se ~0.07: width ~0.28
    se = np.sqrt(a.var() / 400 + b.var() / 400)  # the normal approximation's interval
    assert high - low == pytest.approx(2 * 1.96 * se, rel=0.15)


def test_compare_sides_pools_seeds_across_summaries(tmp_path):
    compare_sides = load_script("compare_sides")

    def summary(natgrad, sb3):
        side = lambda d: {"seeds": list(d), "per_seed": list(d.values())}  # noqa: E731
        return {"overrides": [], "envs": {"Swimmer-v5": [
            {"budget": 300000, "natgrad": side(natgrad), "sb3": side(sb3)},
            {"budget": 100000, "natgrad": side({0: -1.0}), "sb3": side({})}]}}

    files = [("a", summary({0: 100.0, 1: 300.0}, {0: 350.0})),
             ("b", summary({2: 140.0}, {0: 350.0, 2: 120.0}))]
    pooled = compare_sides.side_scores(files, "Swimmer-v5", 300000)
    assert pooled == {"natgrad": {0: 100.0, 1: 300.0, 2: 140.0}, "sb3": {0: 350.0, 2: 120.0}}
    result = compare_sides.compare(pooled, threshold=250.0)
    assert result["natgrad"]["at_threshold"] == 1 and result["sb3"]["at_threshold"] == 1
    assert result["natgrad"]["mean"] == pytest.approx(180.0)
    assert result["difference"]["natgrad_minus_sb3"] == pytest.approx(180.0 - 235.0)
    with pytest.raises(ValueError, match="sb3 seed 0"):
        compare_sides.side_scores(files + [("c", summary({}, {0: 1.0}))], "Swimmer-v5", 300000)
    with pytest.raises(ValueError, match="no Swimmer-v5 results at budget 1,000,000"):
        compare_sides.side_scores(files, "Swimmer-v5", 1_000_000)
