"""What the benchmark scripts in ``scripts/`` share.

* the record of where a benchmark ran: :func:`machine`, :func:`cpu_model`;
* its report: :func:`format_table` (plain text), :func:`markdown_table`, :func:`write_json`;
* its timing: :func:`median_seconds`, :func:`train_to_budgets`;
* TRPO config overrides from ``--set KEY=VALUE``: :func:`trpo_overrides`, typed as
  ``natgrad-trpo train --set`` types them;
* the Keras digits problem: :func:`digits`, :func:`digits_split`, :func:`tanh_mlp` and the
  :class:`FullDataLossChange` callback;
* a failed measurement in one line: :func:`error_line`;
* ``--variant NAME=JSON`` options: :func:`name_and_json`; a package's version by content:
  :func:`source_digest`.

Keras training curves timed to a target are in :mod:`keras_curves`.

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


def error_line(exc: BaseException, prefer: Iterable[str] = ()) -> str:
    """``"Type: message"`` in one line (at most 300 characters): the message's first line
    holding one of ``prefer``, else its first non-empty line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    hits = [line for line in lines if any(p in line for p in prefer)]
    return f"{type(exc).__name__}: {(hits or lines or [''])[0][:300]}"


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
