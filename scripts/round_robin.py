"""Round-robin timing: paired samples of several functions, and their drift-cancelling ratio.

Used by ``scripts/bench_curvature.py``; each function returns a scalar tensor (or anything
with ``.numpy()``), forced before its clock stops.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def force(value) -> float:
    return float(value.numpy())


def time_round_robin(fns: dict, repeats: int, min_seconds: float,
                     slow_seconds: float = 1.0) -> dict[str, list[float]]:
    """Seconds per call of each zero-argument ``fn`` (returning a scalar tensor), per repeat.

    Every function is first called once to trace/compile it, then once more, timed, to
    calibrate: each sample of a function averages ``inner`` back-to-back calls, enough for the
    sample to last at least ``min_seconds``. Each repeat then times every function once, in a
    rotating order, so that sample ``r`` of every function comes from the same stretch of time.
    If one call of some function takes over ``slow_seconds``, the calibration call counts as
    the first sample and only ``min(repeats, 3)`` samples are taken in all, to keep the run
    short.
    """
    names = list(fns)
    for name in names:
        force(fns[name]())
    calibration = {}
    for name in names:
        start = time.perf_counter()
        force(fns[name]())
        calibration[name] = max(time.perf_counter() - start, 1e-7)
    inner = {name: max(1, int(np.ceil(min_seconds / t))) for name, t in calibration.items()}
    samples: dict[str, list[float]] = {name: [] for name in names}
    if max(calibration.values()) > slow_seconds:
        for name in names:
            samples[name].append(calibration[name])
        repeats = max(1, min(repeats, 3) - 1)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = fns[name]
            start = time.perf_counter()
            for _ in range(inner[name]):
                force(fn())
            samples[name].append((time.perf_counter() - start) / inner[name])
    return samples


def paired_ratio(samples: list[float], reference: list[float]) -> float:
    """Median over repeats of ``samples[r] / reference[r]`` (same-round pairs cancel drift)."""
    return statistics.median(a / b for a, b in zip(samples, reference, strict=True))
