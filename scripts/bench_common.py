"""What the benchmark scripts in ``scripts/`` share.

* the record of where a benchmark ran: :func:`machine`, :func:`cpu_model`;
* its report: :func:`format_table` (plain text), :func:`markdown_table`, :func:`write_json`;
* its timing: :func:`median_seconds`, :func:`train_to_budgets`;
* TRPO config overrides from ``--set KEY=VALUE``: :func:`trpo_overrides`, typed as
  ``natgrad-trpo train --set`` types them;
* the Keras digits problem: :func:`digits`, :func:`digits_split`, :func:`tanh_mlp` and the
  :class:`FullDataLossChange` callback;
* Keras training curves timed to a target: :func:`seeded_batches` (the same batches for every
  optimizer), :func:`epoch_clock` (per-epoch measurements outside the timed region),
  :func:`first_reaching`, :func:`mean_std` and :func:`plot_mean_band` (mean over seeds with a
  min-max band).

Importing this module imports only the standard library (Keras, scikit-learn and ``agents``
are imported by the functions that use them), so a script's parent process, ``--help`` and
the sb3-contrib peer interpreter do not pay for TensorFlow.

The scripts are run as ``python scripts/NAME.py`` (or ``python -m scripts.NAME``) and import
this module as a sibling: ``sys.path.insert(0, str(Path(__file__).resolve().parent))``, then
``import bench_common``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# The machine ------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(*, libraries: Iterable[str] = (), cpus_key: str = "cpus") -> dict:
    """Where a benchmark ran: ``platform``, ``processor`` (:func:`cpu_model`), the CPU count
    (under ``cpus_key``: some scripts' files call it ``cpu_count``), ``python``, and the
    ``__version__`` of each module named in ``libraries`` (e.g. ``("tensorflow", "keras")``)."""
    import importlib

    info = {"platform": platform.platform(), "processor": cpu_model(),
            cpus_key: os.cpu_count(), "python": platform.python_version()}
    info.update({name: importlib.import_module(name).__version__ for name in libraries})
    return info


# Reports ----------------------------------------------------------------------------------


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *,
                 align: str | None = None) -> str:
    """A plain-text table: a header, a rule of dashes, one line per row, columns two spaces
    apart. ``align`` gives each column's alignment, ``"l"`` or ``"r"`` (e.g. ``"lrr"``); by
    default a column of numbers (``1,024`` counts) is right-aligned and any other left."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    if align is None:
        align = "".join("r" if rows and all(_is_number(r[i]) for r in rows) else "l"
                        for i in range(len(headers)))
    if len(align) != len(headers):
        raise ValueError(f"align {align!r} has {len(align)} columns, the headers "
                         f"{len(headers)}")

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if a == "r" else c.ljust(w)
                         for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths),
                      *(line(r) for r in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table (for pasting into the README)."""
    return "\n".join([f"| {' | '.join(headers)} |", "|" + "---|" * len(headers),
                      *(f"| {' | '.join(r)} |" for r in rows)])


def _jsonable(value):
    """What ``json`` cannot write itself: NumPy scalars and arrays as numbers and lists,
    anything else (a path, a dtype) as its ``str``."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def write_json(path: str | Path, document) -> Path:
    """Writes ``document`` to ``path`` (parents created) as indented JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    return path


# Timing -----------------------------------------------------------------------------------


def median_seconds(fn: Callable[[], object], *, repeats: int, calls: int = 1) -> float:
    """Seconds per call of ``fn()``: the median over ``repeats`` samples, each the mean of
    ``calls`` back-to-back calls. Warm-up (tracing) is the caller's."""
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls)
    return statistics.median(samples)


def train_to_budgets(budgets: Iterable[int], learn: Callable[[int], object],
                     evaluate: Callable[[], list[float]],
                     num_timesteps: Callable[[], int]) -> dict:
    """Trains to each of ``budgets`` (env steps) in turn with ``learn(budget)``, calling
    ``evaluate()`` (returns of a deterministic evaluation, ``[]`` for none) after each, and
    times the two apart. Both sides of ``bench_trpo.py`` (natgrad, and sb3-contrib in
    ``sb3_peer.py``) run through it, so they are timed alike.

    Returns ``{"results": [{"budget", "steps", "eval_returns", "learn_seconds_so_far"}, ...],
    "learn_seconds", "eval_seconds"}``.
    """
    results, learn_seconds, eval_seconds = [], 0.0, 0.0
    for budget in sorted(budgets):
        start = time.perf_counter()
        learn(budget)
        learn_seconds += time.perf_counter() - start
        start = time.perf_counter()
        returns = evaluate()
        eval_seconds += time.perf_counter() - start
        results.append({"budget": budget, "steps": int(num_timesteps()),
                        "eval_returns": returns, "learn_seconds_so_far": learn_seconds})
    return {"results": results, "learn_seconds": learn_seconds, "eval_seconds": eval_seconds}


# TRPO config overrides --------------------------------------------------------------------


def trpo_overrides(pairs: Iterable[str] | None,
                   parser: argparse.ArgumentParser | None = None) -> dict:
    """``["max_kl=0.02", "policy_hidden=64,64"]`` as typed :class:`agents.TRPOConfig`
    overrides (:func:`agents.cli.overrides.parse_overrides`, as ``natgrad-trpo train --set``).

    A bad pair (no ``=``, an unknown key, a value of the wrong type) is ``parser``'s usage
    error (exit status 2) when a parser is given, else a ``ValueError``.
    """
    from agents.cli.overrides import parse_overrides
    from agents.config import TRPOConfig

    try:
        return parse_overrides(list(pairs or ()), TRPOConfig)
    except ValueError as exc:
        if parser is None:
            raise
        parser.error(str(exc))


# The Keras digits problem -----------------------------------------------------------------


def digits():
    """scikit-learn's bundled digits (1,797 8x8 images, nothing downloaded): ``(x, y)``,
    ``x [1797, 64]`` float32 scaled by ``1/16`` to [0, 1], ``y [1797]`` int32 labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def digits_split(seed: int):
    """:func:`digits` split 75/25, stratified, by ``seed``: ``x_train, x_val, y_train,
    y_val``."""
    from sklearn.model_selection import train_test_split

    x, y = digits()
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=seed)


def tanh_mlp(in_dim: int, hidden: Sequence[int], out_dim: int, *, seed: int,
             dtype: str = "float32", dropout: float = 0.0):
    """``in_dim -> Dense(h, tanh) for h in hidden [-> Dropout(dropout)] -> Dense(out_dim)``
    (logits), a ``keras.Sequential`` built after ``keras.utils.set_random_seed(seed)``, so
    the same arguments give the same initial weights."""
    import keras

    keras.utils.set_random_seed(seed)
    # Dropout draws its seed when it is made: first, as when the recorded results were made.
    middle = [keras.layers.Dropout(dropout)] if dropout else []
    return keras.Sequential([keras.Input((in_dim,), dtype=dtype),
                             *(keras.layers.Dense(h, activation="tanh", dtype=dtype)
                               for h in hidden),
                             *middle, keras.layers.Dense(out_dim, dtype=dtype)])


@functools.cache
def _full_data_loss_change_class():
    import keras

    class FullDataLossChange(keras.callbacks.Callback):
        """The change of the full-training-set loss (inference mode) made by every ``fit``
        step: ``changes``, one float per step. ``loss(y, logits)`` defaults to sparse
        categorical cross-entropy from logits."""

        def __init__(self, x, y, loss=None):
            super().__init__()
            self.x, self.y, self.changes = x, y, []
            self.loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
            self.before = None

        def full_loss(self) -> float:
            return float(self.loss(self.y, self.model(self.x, training=False)))

        def on_train_batch_begin(self, batch, logs=None):
            self.before = self.full_loss()

        def on_train_batch_end(self, batch, logs=None):
            self.changes.append(self.full_loss() - self.before)

    return FullDataLossChange


def __getattr__(name: str):
    # Classes built on Keras are made on first use (PEP 562): importing this module must not
    # import TensorFlow.
    if name == "FullDataLossChange":
        return _full_data_loss_change_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# Keras training curves --------------------------------------------------------------------


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
    ax.plot(stats["grid"], stats["mean"], color=color, label=f"{label} ({len(curves)} seeds)",
            marker="o" if stats["grid"].size == 1 else None)
    if len(curves) > 1:
        ax.fill_between(stats["grid"], stats["min"], stats["max"], color=color, alpha=0.2,
                        linewidth=0)
