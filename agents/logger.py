"""Per-update progress: ``progress.csv``, TensorBoard scalars and the in-memory history.

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
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import tensorflow as tf

PROGRESS_KEYS = (
    "env_steps", "wall_time", "mean_return", "kl", "entropy", "value_loss",
    "explained_variance", "line_search_tries", "accepted", "cg_iterations", "cg_residual",
    "surrogate_improvement", "steps_per_second",
)


class ProgressLogger:
    """Appends rows to ``run_dir/progress.csv`` and ``run_dir/tb``; no-op without a run dir."""

    def __init__(self, run_dir: str | Path | None):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self._writer = None
        if self.run_dir is not None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self.csv_path = self.run_dir / "progress.csv"

    def log(self, row: dict) -> None:
        if self.run_dir is None:
            return
        new_file = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PROGRESS_KEYS)
            if new_file:
                writer.writeheader()
            writer.writerow({k: row[k] for k in PROGRESS_KEYS})
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.run_dir / "tb"))
        with self._writer.as_default(step=int(row["env_steps"])):
            for key in PROGRESS_KEYS[1:]:
                value = float(row[key])
                if math.isfinite(value):
                    tf.summary.scalar(key, value)

    def truncate_after(self, env_steps: int) -> None:
        """Drops csv rows past ``env_steps`` (written after the checkpoint a resume starts from)."""
        if self.run_dir is None or not self.csv_path.exists():
            return
        with open(self.csv_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["env_steps"]) <= env_steps]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=PROGRESS_KEYS)
            writer.writeheader()
            writer.writerows(rows)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()
            self._writer = None
