"""Per-update progress: ``progress.csv``, TensorBoard scalars and a progress bar.

Logged quantities (one row per update):

* ``env_steps``: environment steps so far, summed over envs; ``wall_time``: seconds of training.
* ``mean_return``: mean unnormalized return of the last up-to-20 finished episodes.
* ``kl``: measured mean ``KL(π_old‖π_new)`` of the accepted step (0 if rejected).
* ``entropy``: mean policy entropy on the batch, before the step.
* ``value_loss``: mean squared error of ``V`` against the GAE returns after the value fit.
* ``explained_variance``: ``1 − Var[R − V] / Var[R]`` of the values used for the advantages.
* ``line_search_tries``, ``accepted``: backtracking points tried, and whether one was taken.
* ``cg_iterations``, ``cg_residual``: conjugate-gradient work and final residual norm.
* ``surrogate_improvement``: ``L(θ_old) − L(θ_new)`` of the surrogate loss (≥ 0 when accepted).
* ``steps_per_second``: env steps of this update / its wall time (collection + update).
* ``skipped_batches``: batches dropped so far for a non-finite quantity
  (``on_non_finite="skip"``; such a row has NaN statistics).

Each row is written with one ``write`` call and flushed, so a crash can tear at most the last
line; :meth:`ProgressLogger.truncate_after` (run on resume) drops torn or malformed lines.
TensorBoard is optional at run time: without it, one warning, and the CSV alone.

Both files are opened as :mod:`agents.runs.files` opens a run's files: ``progress.csv`` is
appended to only when it is a regular file in the run (a FIFO, a device or a link out of the
run is refused, naming it, before it is opened), and each TensorBoard event file is created
new (``O_EXCL``) in a ``tb/`` that must be a folder of the run.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import os
import socket
import time
from pathlib import Path

from tqdm.auto import tqdm

from agents.runs.files import (
    UnsafeFileError,
    atomic_write_bytes,
    check_run_path,
    create_new_file,
    open_for_append,
    read_regular_file,
)
from agents.runs.layout import PROGRESS_FILE, TENSORBOARD_DIR

log = logging.getLogger("agents")

_EVENT_FILES = itertools.count()  # event files this process opened: each name is new
MAX_PROGRESS_BYTES = 1 << 30  # about five million rows

PROGRESS_KEYS = (
    "env_steps", "wall_time", "mean_return", "kl", "entropy", "value_loss",
    "explained_variance", "line_search_tries", "accepted", "cg_iterations", "cg_residual",
    "surrogate_improvement", "steps_per_second", "skipped_batches",
)


def progress_row(stats: dict, *, env_steps: int, wall_time: float, mean_return: float,
                 explained_variance: float, steps_per_second: float,
                 skipped_batches: int) -> dict:
    """One update's row (the keys above, in order) from the compiled update's ``stats``."""
    return {
        "env_steps": env_steps,
        "wall_time": wall_time,
        "mean_return": mean_return,
        "kl": float(stats["kl"]),
        "entropy": float(stats["entropy"]),
        "value_loss": float(stats["value_loss"]),
        "explained_variance": explained_variance,
        "line_search_tries": int(stats["line_search_tries"]),
        "accepted": int(stats["accepted"]),
        "cg_iterations": int(stats["cg_iterations"]),
        "cg_residual": float(stats["cg_residual"]),
        "surrogate_improvement": float(stats["loss_before"] - stats["loss_after"]),
        "steps_per_second": steps_per_second,
        "skipped_batches": skipped_batches,
    }


class ProgressLogger:
    """Appends rows to ``run_dir/progress.csv`` and ``run_dir/tb``; no-op without a run dir."""

    def __init__(self, run_dir: str | Path | None):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._writer = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.csv_path = self.run_dir / PROGRESS_FILE

    def log(self, row: dict) -> None:
        if self.run_dir is None:
            return
        line = io.StringIO()
        writer = csv.DictWriter(line, fieldnames=PROGRESS_KEYS, lineterminator="\n")
        fd = open_for_append(self.csv_path, inside=self.run_dir, what=PROGRESS_FILE)
        try:
            if os.fstat(fd).st_size == 0:
                writer.writeheader()
            writer.writerow({k: row[k] for k in PROGRESS_KEYS})
            os.write(fd, line.getvalue().encode())
        except OSError as exc:  # a write error (disk full) has no file name of its own
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror or str(exc), str(self.csv_path)) from exc
            raise
        finally:
            os.close(fd)
        self._log_tensorboard(row)

    def _log_tensorboard(self, row: dict) -> None:
        if self._writer is False:
            return
        try:  # TensorBoard may be missing: creating the writer then fails
            if self._writer is None:
                self._writer = TensorBoardScalars(self.run_dir / TENSORBOARD_DIR,
                                                  inside=self.run_dir)
            self._writer.write(int(row["env_steps"]),
                               {key: float(row[key]) for key in PROGRESS_KEYS[1:]})
        except UnsafeFileError:  # a FIFO or a link out of the run planted in tb/: refused
            self._writer = False
            raise
        except Exception as exc:  # noqa: BLE001 - TensorBoard missing or broken
            log.warning("TensorBoard logging is off (%s); progress.csv is still written",
                        " ".join(str(exc).split()) or type(exc).__name__)
            self._writer = False

    def truncate_after(self, env_steps: int) -> None:
        """Keeps the csv rows up to ``env_steps`` (those of the checkpoint a resume starts from);
        drops later ones, and lines a crash tore or that are not progress rows (with a warning
        naming the file and line).

        Raises:
          agents.runs.files.UnsafeFileError: ``progress.csv`` is not a regular file (a FIFO),
            links out of the run, or is larger than :data:`MAX_PROGRESS_BYTES`.
        """
        if self.run_dir is None or not self.csv_path.exists():
            return
        kept = []
        text = read_regular_file(self.csv_path, limit=MAX_PROGRESS_BYTES, inside=self.run_dir,
                                 what=PROGRESS_FILE).decode(errors="replace")
        rows = csv.DictReader(io.StringIO(text, newline=""))
        for number, row in enumerate(rows, start=2):
            try:
                if None in row or any(row.get(k) is None for k in PROGRESS_KEYS):
                    raise ValueError("wrong number of fields")
                steps = float(row["env_steps"])
            except (TypeError, ValueError) as exc:
                log.warning("%s line %d dropped: not a whole progress row (%s)",
                            self.csv_path, number, exc)
                continue
            if steps <= env_steps:
                kept.append(row)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=PROGRESS_KEYS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
        atomic_write_bytes(self.csv_path, text.getvalue().encode(), inside=self.run_dir,
                           what=PROGRESS_FILE)

    def close(self) -> None:
        if self._writer:
            self._writer.close()
            self._writer = None


class ProgressBar:
    """A ``tqdm`` bar over env steps showing the latest return, KL and steps per second
    (disabled: does nothing)."""

    def __init__(self, total: int, initial: int, *, enabled: bool):
        self.total = total
        self._bar = tqdm(total=total, initial=min(initial, total), unit="step",
                         disable=not enabled, dynamic_ncols=True)

    def update(self, row: dict) -> None:
        self._bar.update(min(int(row["env_steps"]), self.total) - self._bar.n)
        self._bar.set_postfix(ret=f"{row['mean_return']:.1f}", kl=f"{row['kl']:.4f}",
                              sps=f"{row['steps_per_second']:.0f}")

    def close(self) -> None:
        self._bar.close()


class TensorBoardScalars:
    """Scalars written as ``tf.summary.scalar`` writes them (float32 tensors of the "scalars"
    plugin) into an event file, ``logdir/events.out.tfevents.<time>.<host>.<pid>.natgrad``,
    framed by TensorBoard's own ``RecordWriter``: protocol buffers and a file, no TensorFlow
    ops, so a row costs a small fraction of what ``tf.summary`` ops cost. Each event is
    flushed as it is written.

    The file is created new (``O_CREAT | O_EXCL``, :func:`agents.runs.files.create_new_file`),
    so nothing already at its path (a FIFO, a link) is ever opened, and ``logdir`` must be a
    folder (with ``inside``, one in that run directory).

    Raises:
      agents.runs.files.UnsafeFileError: ``logdir`` or the event file is refused.
    """

    def __init__(self, logdir: Path, *, inside: Path | None = None):
        from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2, types_pb2
        from tensorboard.summary.writer.record_writer import RecordWriter

        self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
        self._tensor_pb2, self._dt_float = tensor_pb2, types_pb2.DT_FLOAT
        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
            data_class=summary_pb2.DATA_CLASS_SCALAR)
        logdir = Path(logdir)
        check_run_path(logdir, inside=inside, what="TensorBoard folder", directory=True)
        logdir.mkdir(parents=True, exist_ok=True)
        self.path = logdir / (f"events.out.tfevents.{int(time.time()):010d}."
                              f"{socket.gethostname()}.{os.getpid()}.{next(_EVENT_FILES)}.natgrad")
        fd = create_new_file(self.path, inside=inside, what="TensorBoard event file")
        self._file = os.fdopen(fd, "wb")
        self._records = RecordWriter(self._file)
        self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def write(self, step: int, values: dict) -> None:
        """One event at ``step`` with a scalar per finite entry of ``values``."""
        summary = self._summary_pb2.Summary(value=[
            self._summary_pb2.Summary.Value(
                tag=key, metadata=self._metadata,
                tensor=self._tensor_pb2.TensorProto(dtype=self._dt_float, float_val=[value]))
            for key, value in values.items() if math.isfinite(value)])
        self._add(self._event_pb2.Event(wall_time=time.time(), step=step, summary=summary))

    def _add(self, event) -> None:
        try:
            self._records.write(event.SerializeToString())
            self._file.flush()
        except OSError as exc:  # disk full: name the file
            raise OSError(exc.errno, exc.strerror or str(exc), str(self.path)) from exc

    def close(self) -> None:
        self._file.close()
