"""Interval estimates for RL results over a few seeds, as Agarwal et al. (2021), "Deep
Reinforcement Learning at the Edge of the Statistical Precipice", recommend: the interquartile
mean (IQM) with a stratified-bootstrap 95% confidence interval.

* :func:`iqm`: the mean of the middle 50% of the scores, the 25% trimmed mean (``n // 4``
  scores cut at each end, as ``scipy.stats.trim_mean(x, 0.25)``): robust to one stalled or
  lucky seed, less noisy than the median.
* :func:`stratified_bootstrap_ci`: resamples the seeds *within* each task (the strata) with
  replacement, recomputes the statistic on each resample, and takes the percentile interval.
  With one task it is the plain percentile bootstrap over seeds.

Small and dependency-free on purpose (NumPy only); ``rliable`` implements the same estimators.
With 5 seeds an interval is wide: that is the honest answer, and the reason to report it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np


def iqm(scores: Sequence[float] | np.ndarray) -> float | np.ndarray:
    """The interquartile mean of ``scores`` (over the last axis): ``n // 4`` cut at each end.

    >>> iqm([1.0, 2.0, 3.0, 4.0, 100.0])
    3.0
    """
    x = np.sort(np.asarray(scores, dtype=np.float64), axis=-1)
    n = x.shape[-1]
    if n == 0:
        return float("nan")
    cut = n // 4
    mean = np.mean(x[..., cut:n - cut], axis=-1)
    return float(mean) if np.ndim(mean) == 0 else mean


def stratified_bootstrap_ci(
        scores: Mapping[str, Sequence[float]],
        statistic: Callable[[np.ndarray], np.ndarray] = iqm, *,
        reps: int = 2000, confidence: float = 0.95, seed: int = 0,
) -> tuple[float, float, float]:
    """``(point, low, high)``: ``statistic`` over all tasks' scores pooled, and its
    stratified-bootstrap percentile interval.

    ``scores`` maps each task to its per-seed scores (the strata; tasks on different scales
    should be normalized first). Each bootstrap replicate draws, for every task, as many seeds
    as it has, with replacement, from that task's own seeds, pools them, and applies
    ``statistic`` (which must accept a ``[reps, n]`` array and reduce the last axis).
    """
    tasks = [np.asarray(v, dtype=np.float64) for v in scores.values() if len(v)]
    if not tasks:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    pooled = np.concatenate(tasks)
    samples = np.concatenate(
        [t[rng.integers(0, len(t), size=(reps, len(t)))] for t in tasks], axis=1)
    values = np.asarray(statistic(samples), dtype=np.float64)
    if values.shape != (reps,):
        raise ValueError(f"statistic must reduce the last axis of a [reps, n] array to [reps]; "
                         f"it gave shape {values.shape}")
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(statistic(pooled)), float(low), float(high)


def summary(scores: Sequence[float], *, reps: int = 2000, seed: int = 0) -> dict:
    """Per-seed scores with mean, population std, IQM and its bootstrap 95% interval."""
    values = [float(s) for s in scores]
    if not values:
        nan = float("nan")
        return {"per_seed": [], "mean": nan, "std": nan, "iqm": nan, "iqm_ci95": [nan, nan]}
    point, low, high = stratified_bootstrap_ci({"task": values}, reps=reps, seed=seed)
    return {"per_seed": values, "mean": float(np.mean(values)), "std": float(np.std(values)),
            "iqm": point, "iqm_ci95": [low, high]}


def permutation_test(a: Sequence[float], b: Sequence[float], *, reps: int = 20000,
                     seed: int = 0) -> float:
    """Two-sided p-value of ``mean(a) − mean(b)`` under the null that the two sets of seeds
    come from one distribution: the share of relabellings of the pooled scores whose difference
    of means is at least as far from 0 as the observed one. Every relabelling is enumerated
    when there are at most ``reps`` of them (the exact test); otherwise ``reps`` random ones.

    >>> permutation_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])  # 2 of the 20 splits are as extreme
    0.1
    """
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    pooled, n = np.concatenate([x, y]), len(x)
    if n == 0 or len(y) == 0:
        return float("nan")
    observed = abs(x.mean() - y.mean())
    total = pooled.sum()

    def differences(first: np.ndarray) -> np.ndarray:  # [k, n] scores labelled ``a``
        sums = first.sum(axis=-1)
        return np.abs(sums / n - (total - sums) / len(y))

    if math.comb(len(pooled), n) <= reps:
        splits = np.array(list(itertools.combinations(range(len(pooled)), n)))
    else:
        rng = np.random.default_rng(seed)
        splits = np.argsort(rng.random((reps, len(pooled))), axis=1)[:, :n]
    extreme = differences(pooled[splits]) >= observed * (1 - 1e-12)
    return float(np.mean(extreme))


def bootstrap_difference_ci(a: Sequence[float], b: Sequence[float], *, reps: int = 20000,
                            confidence: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """``(mean(a) − mean(b), low, high)``: the percentile bootstrap interval of the difference
    of means, each side's seeds resampled with replacement on its own."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) == 0 or len(y) == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = (x[rng.integers(0, len(x), size=(reps, len(x)))].mean(axis=1)
              - y[rng.integers(0, len(y), size=(reps, len(y)))].mean(axis=1))
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(x.mean() - y.mean()), float(low), float(high)
