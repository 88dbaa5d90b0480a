"""The layout of a run directory, in one place: every file name and path natgrad uses in it.

::

    RUN/
      config.json            {"run_id": "<32 hex digits>", "config": {TRPOConfig fields}}
      .lock                  held (flock) by the one process writing the run; its pid
      progress.csv           one row per update (agents.runs.progress)
      tb/                    TensorBoard scalars
      checkpoints/           update_NNNNNN.ckpt (agents.runs.checkpoint); .NAME.*.tmp while written
      eval.json              the latest deterministic evaluation (agents.runs.evaluation)
      learning_curve.png     natgrad-trpo's plot after training
      videos/                mp4 episodes (natgrad-trpo eval --video)
"""

from __future__ import annotations

import re
from pathlib import Path

CONFIG_FILE = "config.json"
LOCK_FILE = ".lock"
PROGRESS_FILE = "progress.csv"
TENSORBOARD_DIR = "tb"
CHECKPOINT_DIR = "checkpoints"
EVAL_FILE = "eval.json"
CURVE_FILE = "learning_curve.png"
VIDEO_DIR = "videos"

_CHECKPOINT_NAME = re.compile(r"update_(\d+)\.ckpt$")
_TEMPORARY = ".*.tmp"  # what agents.runs.files.atomic_write_bytes leaves after a crash


def checkpoint_path(run_dir: str | Path, update: int) -> Path:
    """``run_dir/checkpoints/update_NNNNNN.ckpt``: the checkpoint after ``update`` updates."""
    return Path(run_dir) / CHECKPOINT_DIR / f"update_{update:06d}.ckpt"


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """``run_dir/checkpoints/update_*.ckpt``, newest (highest update number) first."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.glob("update_*.ckpt")
             if (m := _CHECKPOINT_NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def remove_temporary_files(run_dir: str | Path) -> list[Path]:
    """Deletes temporary files a crash left in ``run_dir/checkpoints``; returns them."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    removed = sorted(folder.glob(_TEMPORARY)) if folder.is_dir() else []
    for path in removed:
        path.unlink(missing_ok=True)
    return removed
