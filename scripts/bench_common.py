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
  :func:`first_reaching`, :func:`curve_summary`, :func:`time_ratio`, :func:`mean_std`,
  :func:`time_to_target_table`, :func:`plot_mean_band` and :func:`plot_curves` (mean over
  seeds with a min-max band);
* timing pieces of a step: :func:`first_and_median` (first call apart, failures recorded with
  :func:`error_line`), :func:`keras_restorer` (the same start for every timed step);
* ``--variant NAME=JSON`` options: :func:`name_and_json`.

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
import itertools
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
    """Writes ``document`` to ``path`` (parents created) as indented JSON, atomically (a
    process killed meanwhile leaves the old file or none, never half of one); returns the
    path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(document, indent=2, default=_jsonable) + "\n")
    os.replace(temporary, path)
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
                     num_timesteps: Callable[[], int], *, previous: dict | None = None,
                     after_each: Callable[[dict], object] | None = None) -> dict:
    """Trains to each of ``budgets`` (env steps) in turn with ``learn(budget)``, calling
    ``evaluate()`` (returns of a deterministic evaluation, ``[]`` for none) after each, and
    times the two apart. Both sides of ``bench_trpo.py`` (natgrad, and sb3-contrib in
    ``sb3_peer.py``) run through it, so they are timed alike.

    ``previous`` (a return value of an earlier, interrupted call) continues it: its budgets are
    not trained again and its seconds count on. ``after_each(document)`` is called with the
    document so far after each budget (to save it, so that a killed run loses no finished
    budget).

    Returns ``{"results": [{"budget", "steps", "eval_returns", "learn_seconds_so_far"}, ...],
    "learn_seconds", "eval_seconds"}``.
    """
    previous = previous or {}
    results = list(previous.get("results", []))
    learn_seconds = float(previous.get("learn_seconds", 0.0))
    eval_seconds = float(previous.get("eval_seconds", 0.0))
    done = {r["budget"] for r in results}
    for budget in sorted(set(budgets) - done):
        start = time.perf_counter()
        learn(budget)
        learn_seconds += time.perf_counter() - start
        start = time.perf_counter()
        returns = evaluate()
        eval_seconds += time.perf_counter() - start
        results.append({"budget": budget, "steps": int(num_timesteps()),
                        "eval_returns": returns, "learn_seconds_so_far": learn_seconds})
        if after_each is not None:
            after_each({"results": results, "learn_seconds": learn_seconds,
                        "eval_seconds": eval_seconds})
    return {"results": sorted(results, key=lambda r: r["budget"]),
            "learn_seconds": learn_seconds, "eval_seconds": eval_seconds}


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


def error_line(exc: BaseException, prefer: Iterable[str] = ()) -> str:
    """``"Type: message"`` in one line (at most 300 characters): the message's first line
    holding one of ``prefer``, else its first non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    hits = [line for line in lines if any(p in line for p in prefer)]
    return f"{type(exc).__name__}: {(hits or lines or [''])[0][:300]}"


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


def name_and_json(text: str) -> tuple[str, dict]:
    """``"NAME=JSON"`` (a JSON object) as ``(name, dict)``: an ``argparse`` type (its errors
    are the parser's usage errors)."""
    name, _, spec = text.partition("=")
    try:
        value = json.loads(spec)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: not NAME=JSON ({exc})") from None
    if not name or not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: not NAME=JSON-object")
    return name, value


def source_digest(directory: str | Path, pattern: str = "*.py") -> str:
    """The first 12 hex digits of a SHA-256 over the files ``pattern`` under ``directory``
    (relative paths and contents, sorted): which version of a package, committed or not, a
    result was measured with."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(directory).rglob(pattern)):
        digest.update(str(path.relative_to(directory)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]
