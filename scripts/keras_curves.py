"""Keras training curves timed to a target, for ``scripts/bench_keras.py``.

* :func:`seeded_batches` (the same batches for every optimizer), :func:`epoch_clock`
  (per-epoch measurements outside the timed region), :func:`first_reaching`,
  :func:`curve_summary`, :func:`time_ratio`, :func:`mean_std`, :func:`time_to_target_table`,
  :func:`plot_mean_band` and :func:`plot_curves` (mean over seeds with a min-max band);
* timing pieces of a step: :func:`first_and_median` (first call apart, failures recorded with
  :func:`bench_common.error_line`), :func:`keras_restorer` (the same start for every timed
  step).

Like :mod:`bench_common`, importing it imports only the standard library.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from bench_common import error_line


def seeded_batches(x, y, batch_size: int, seed: int):
    """A ``tf.data`` dataset of ``(x, y)`` batches, reshuffled every epoch in an order fixed by
    ``seed`` and TensorFlow's global seed: two datasets made with the same arguments after the
    same ``keras.utils.set_random_seed`` yield the same batches epoch after epoch, so make a
    fresh one for each ``fit`` that should see them. The last batch may be smaller."""
    import tensorflow as tf

    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .batch(batch_size).prefetch(tf.data.AUTOTUNE))


@functools.cache
def _epoch_clock_class():
    import keras

    class EpochClock(keras.callbacks.Callback):
        """Records a training curve with a clock that pauses for its own measurements.

        ``seconds`` counts from :meth:`start` (call it just before ``fit``; else ``fit``'s
        ``on_train_begin``) to the end of each epoch, less the time spent in this callback's
        ``on_epoch_end``, where ``evaluate(model)`` (a dict of floats) is measured. ``curve``
        holds one list per key: ``epoch`` (from 1), ``seconds``, the ``log_keys`` found in
        ``fit``'s logs, and ``evaluate``'s keys. ``stop(row)`` (the epoch's row) returns a
        reason to stop (then ``fit`` stops and ``stop_reason`` keeps it) or ``None``.
        """

        def __init__(self, evaluate, stop, log_keys):
            super().__init__()
            self.evaluate, self.stop, self.log_keys = evaluate, stop, log_keys
            self.curve: dict[str, list] = {"epoch": [], "seconds": []}
            self.stop_reason: str | None = None
            self._start: float | None = None
            self._paused = 0.0

        def start(self) -> None:
            self._start, self._paused = time.perf_counter(), 0.0

        def on_train_begin(self, logs=None):
            if self._start is None:
                self.start()

        def on_epoch_end(self, epoch, logs=None):
            now = time.perf_counter()
            logs = logs or {}
            row = {"epoch": epoch + 1, "seconds": now - self._start - self._paused,
                   **{k: float(logs[k]) for k in self.log_keys if k in logs},
                   **self.evaluate(self.model)}
            for key, value in row.items():
                self.curve.setdefault(key, []).append(value)
            reason = self.stop(row) if self.stop else None
            if reason:
                self.stop_reason = reason
                self.model.stop_training = True
            self._paused += time.perf_counter() - now

    return EpochClock


def epoch_clock(evaluate: Callable[[object], dict], *,
                stop: Callable[[dict], str | None] | None = None,
                log_keys: Iterable[str] = ()):
    """A Keras callback (``EpochClock``) recording per-epoch ``evaluate(model)`` with the
    training seconds that led there, its own measuring time excluded; see its docstring."""
    return _epoch_clock_class()(evaluate, stop, tuple(log_keys))


def first_reaching(values: Sequence[float], target: float, *,
                   higher_is_better: bool) -> int | None:
    """The index of the first value at or beyond ``target`` (``>=``, or ``<=`` when lower is
    better), else ``None``."""
    for i, value in enumerate(values):
        if (value >= target) if higher_is_better else (value <= target):
            return i
    return None


def mean_std(values: Sequence[float], digits: int = 2) -> str:
    """``"mean ± std"`` (sample standard deviation; ``± 0`` for one value), ``"-"`` for
    none."""
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.{digits}f} ± {std:.{digits}f}"


def plot_mean_band(ax, curves: Sequence[tuple[Sequence[float], Sequence[float]]], *,
                   label: str, color: str) -> None:
    """Draws ``curves`` (one ``(x, y)`` per seed) on ``ax`` as their mean over a common grid
    with the min-max band shaded (``agents.runs.plotting``): the grid spans all of them and a
    curve that ended keeps its last value."""
    import numpy as np

    from agents.runs.plotting import average_curves, common_grid

    curves = [(np.asarray(x, float), np.asarray(y, float)) for x, y in curves if len(x)]
    if not curves:
        return
    stats = average_curves(curves, common_grid(curves, span="union"), hold_last=True)
    seeds = f"{len(curves)} seed" + ("s" if len(curves) > 1 else "")
    ax.plot(stats["grid"], stats["mean"], color=color, label=f"{label} ({seeds})",
            marker="o" if stats["grid"].size == 1 else None)
    if len(curves) > 1:
        ax.fill_between(stats["grid"], stats["min"], stats["max"], color=color, alpha=0.2,
                        linewidth=0)


def curve_summary(seconds: Sequence[float], values: Sequence[float], target: float | None, *,
                  higher_is_better: bool) -> dict:
    """A time-to-target summary of one training curve (``seconds`` and ``values`` per epoch):
    ``target``, ``reached``, ``seconds_to_target`` and ``epochs_to_target`` (at the first
    epoch reaching it, :func:`first_reaching`; ``None`` if none or no target), ``epochs`` and
    ``seconds`` run, ``final`` and ``best`` value, ``first_epoch_seconds`` and
    ``seconds_per_epoch`` (the mean over the epochs after the first)."""
    i = (None if target is None or not values
         else first_reaching(values, target, higher_is_better=higher_is_better))
    later = [b - a for a, b in itertools.pairwise(seconds)]
    return {"target": target, "reached": i is not None,
            "seconds_to_target": seconds[i] if i is not None else None,
            "epochs_to_target": i + 1 if i is not None else None,
            "epochs": len(seconds), "seconds": seconds[-1] if seconds else None,
            "final": values[-1] if values else None,
            "best": (max if higher_is_better else min)(values) if values else None,
            "first_epoch_seconds": seconds[0] if seconds else None,
            "seconds_per_epoch": statistics.fmean(later) if later else None}


def time_ratio(mine: dict, theirs: dict) -> tuple[float | None, str]:
    """``mine``'s time to target over ``theirs`` (:func:`curve_summary`), and whether it is
    exact (``"="``), a lower bound (``">"``: ``mine`` missed the target, its whole time used),
    an upper bound (``"<"``: ``theirs`` missed it) or unknown (``"?"``, ratio ``None``)."""
    if mine["seconds"] is None or theirs["seconds"] is None or not (
            mine["reached"] or theirs["reached"]):
        return None, "?"
    a = mine["seconds_to_target"] if mine["reached"] else mine["seconds"]
    b = theirs["seconds_to_target"] if theirs["reached"] else theirs["seconds"]
    bound = "=" if mine["reached"] and theirs["reached"] else "<" if mine["reached"] else ">"
    return a / b, bound


def time_to_target_table(summaries: dict[str, list[dict]], metric: str,
                         baseline: str) -> tuple[list[str], list[list[str]]]:
    """``(headers, rows)`` of :func:`format_table`, one row per name of ``summaries`` (its
    :func:`curve_summary` per seed, each with ``ratio`` and ``ratio_bound`` from
    :func:`time_ratio` against ``baseline``): seeds that reached the target, seconds and
    epochs to it per seed (``-``: missed) and their mean ± std over those that reached it,
    the mean ratio (marked ``>``/``<`` if any seed's is a bound, ``?`` if unknown), mean
    first-epoch seconds, mean seconds per later epoch and the mean final ``metric``."""
    headers = ["optimizer", "reached", "s to target per seed", "mean ± std (s)",
               "epochs per seed", "mean ± std", f"time / {baseline}", "1st epoch s", "s/epoch",
               f"final {metric}"]

    def mean(values, spec: str) -> str:
        values = [v for v in values if v is not None]
        return format(statistics.fmean(values), spec) if values else "-"

    rows = []
    for name, ss in summaries.items():
        hit = [s for s in ss if s["reached"]]
        marks = {s["ratio_bound"] for s in ss} - {"="}
        mark = "?" if "?" in marks or len(marks) > 1 else "".join(marks)
        ratio = mean([s["ratio"] for s in ss], ".2f")
        rows.append([
            name, f"{len(hit)}/{len(ss)}",
            " ".join(f"{s['seconds_to_target']:.1f}" if s["reached"] else "-" for s in ss),
            mean_std([s["seconds_to_target"] for s in hit], 1),
            " ".join(str(s["epochs_to_target"]) if s["reached"] else "-" for s in ss),
            mean_std([s["epochs_to_target"] for s in hit], 1),
            "?" if ratio == "-" else mark + ratio,
            mean([s["first_epoch_seconds"] for s in ss], ".2f"),
            mean([s["seconds_per_epoch"] for s in ss], ".3f"),
            mean([s["final"] for s in ss], ".4g")])
    return headers, rows


def plot_curves(path: str | Path, curves: dict[str, list[dict]], metric: str, *,
                target: float | None = None, log: bool = False,
                ylim: tuple[float, float] | None = None, title: str = "") -> Path:
    """Writes a PNG of ``metric`` against ``seconds`` (left) and ``epoch`` (right), one line
    per name of ``curves`` (a list of per-seed curves, dicts of per-epoch lists, as
    :func:`epoch_clock` records them) drawn by :func:`plot_mean_band`; ``target`` as a dashed
    line. A ``matplotlib.figure.Figure`` on the Agg canvas, as ``agents.runs.plotting``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for i, (name, runs) in enumerate(curves.items()):
        runs = [c for c in runs if c.get(metric)]
        for ax, key in zip(axes, ("seconds", "epoch"), strict=True):
            plot_mean_band(ax, [(c[key], c[metric]) for c in runs], label=name,
                           color=f"C{i % 10}")
    for ax, xlabel in zip(axes, ("training wall time [s]", "epoch"), strict=True):
        if target is not None:
            ax.axhline(target, color="gray", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    axes[0].set_ylabel(metric)
    if log:
        axes[0].set_yscale("log")
    if ylim:
        axes[0].set_ylim(*ylim)
    fig.suptitle(title, fontsize="medium")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def first_and_median(first_call: Callable[[], object], call: Callable[[], object], *,
                     repeats: int, before: Callable[[], object] | None = None,
                     prefer: Iterable[str] = ()) -> dict:
    """``{"first_call_s", "ms"}``: the seconds of ``first_call()`` (tracing, compiling) and the
    median milliseconds of ``repeats`` calls of ``call()``, each after an untimed ``before()``
    (e.g. restoring the weights a step changed). Each call returns a scalar that is read back
    with ``float`` (on an accelerator: waits for the result). An exception gives
    ``{"error": error_line(exc, prefer)}`` instead."""
    samples = []
    try:
        for i in range(repeats + 1):
            if before is not None:
                before()
            start = time.perf_counter()
            float((call if i else first_call)())
            samples.append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - a failed measurement is a result
        return {"error": error_line(exc, prefer)}
    return {"first_call_s": samples[0], "ms": 1e3 * statistics.median(samples[1:])}


def keras_restorer(model, optimizer) -> Callable[[], None]:
    """A function that puts ``model``'s weights and ``optimizer``'s variables back as they are
    now: repeated timed steps on one batch then all start alike (else they fit that batch, and
    a line search, for one, needs more trials)."""
    weights = model.get_weights()
    state = [(v, v.numpy()) for v in optimizer.variables]

    def restore() -> None:
        model.set_weights(weights)
        for variable, value in state:
            variable.assign(value)

    return restore
