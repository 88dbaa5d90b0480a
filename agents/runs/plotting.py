"""Learning curves of TRPO runs: read ``progress.csv``, average seeds, draw the figure.

A run directory (as :meth:`agents.TRPO.learn` writes it) holds ``config.json`` (its ``env_id``)
and ``progress.csv`` (one row per policy update; the columns used here are ``env_steps``,
``wall_time`` and ``mean_return``). Runs of the same environment are seeds of one experiment:
their curves are interpolated onto a common grid and drawn as the mean over seeds with a shaded
min–max band, one line per environment, in two panels: return against environment steps and
return against wall-clock seconds.

Everything here is a small pure function except :func:`plot_learning_curves`, which writes a
PNG. The figure is built on :class:`matplotlib.figure.Figure` (Agg canvas), never through
``pyplot``, so no global backend state is touched and no display is needed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from agents.runs.files import (
    UnsafeFileError,
    atomic_write_bytes,
    check_run_path,
    read_regular_file,
)
from agents.runs.layout import CONFIG_FILE, PROGRESS_FILE
from agents.runs.progress import MAX_PROGRESS_BYTES
from agents.runs.run_dir import MAX_CONFIG_BYTES

log = logging.getLogger("agents")

GRID_POINTS = 200


def read_progress(run_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads ``run_dir/progress.csv`` into one float64 array per column.

    Empty cells and cells that are not numbers (``True``/``False`` become 1/0) read as NaN, so
    every array has one entry per logged update, in file order.

    Raises:
        FileNotFoundError: when the run has no ``progress.csv``.
        agents.runs.files.UnsafeFileError: ``progress.csv`` is not a regular file (a FIFO),
          links out of the run, or is larger than ``MAX_PROGRESS_BYTES``.
    """
    path = Path(run_dir) / PROGRESS_FILE
    text = read_regular_file(path, limit=MAX_PROGRESS_BYTES, inside=run_dir,
                             what=PROGRESS_FILE).decode(errors="replace")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns: dict[str, list[float]] = {name: [] for name in reader.fieldnames or ()}
    for row in reader:
        for name in columns:
            columns[name].append(_to_float(row.get(name)))
    return {name: np.asarray(values, dtype=np.float64) for name, values in columns.items()}


def _to_float(cell: str | None) -> float:
    """One CSV cell as a float: booleans as 1/0, empty or unparsable as NaN."""
    if cell is None:
        return math.nan
    text = cell.strip()
    if text.lower() in ("true", "false"):
        return float(text.lower() == "true")
    try:
        return float(text)
    except ValueError:
        return math.nan


def read_env_id(run_dir: str | os.PathLike) -> str:
    """The ``env_id`` a run was trained on, from its ``config.json``.

    Accepts the config at the top level or nested under ``"config"``. A run without a readable
    config is labelled by its directory name, so a plot of stray runs still draws.
    """
    path = Path(run_dir) / CONFIG_FILE
    try:
        config = json.loads(read_regular_file(path, limit=MAX_CONFIG_BYTES, inside=run_dir,
                                              what=CONFIG_FILE))
    except UnsafeFileError as exc:
        log.warning("%s", exc)
        return Path(run_dir).name
    except (OSError, ValueError):
        return Path(run_dir).name
    for candidate in (config, config.get("config") if isinstance(config, dict) else None):
        if isinstance(candidate, dict) and isinstance(candidate.get("env_id"), str):
            return candidate["env_id"]
    return Path(run_dir).name


def group_runs_by_env(run_dirs: Iterable[str | os.PathLike]) -> dict[str, list[Path]]:
    """Groups run directories by the ``env_id`` in their ``config.json``.

    Returns:
        ``{env_id: [run_dir, ...]}``, environments in first-seen order, runs in input order.
    """
    groups: dict[str, list[Path]] = {}
    for run_dir in run_dirs:
        groups.setdefault(read_env_id(run_dir), []).append(Path(run_dir))
    return groups


def curve(progress: dict[str, np.ndarray], x_key: str, y_key: str = "mean_return"):
    """``(x, y)`` of one run with the rows where either is NaN dropped, sorted by ``x``."""
    x, y = progress[x_key], progress[y_key]
    keep = np.isfinite(x) & np.isfinite(y)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


def common_grid(curves: Sequence[tuple[np.ndarray, np.ndarray]], num: int = GRID_POINTS, *,
                span: str = "overlap") -> np.ndarray:
    """``num`` evenly spaced points for averaging ``curves``.

    ``span="overlap"``: over ``[max_i x_i[0], min_i x_i[-1]]``, the range every curve covers, so
    the average never extrapolates (the natural choice for env steps, where seeds share a
    budget). When the curves do not overlap there, the grid is the sorted union of their ``x``.
    ``span="union"``: over ``[min_i x_i[0], max_i x_i[-1]]`` (for wall time, where seeds finish
    at different times; see ``hold_last`` of :func:`average_curves`).
    """
    curves = [(x, y) for x, y in curves if len(x)]
    if not curves:
        return np.zeros(0)
    if span not in ("overlap", "union"):
        raise ValueError(f"span must be 'overlap' or 'union', got {span!r}")
    if span == "union":
        lo = min(float(x[0]) for x, _ in curves)
        hi = max(float(x[-1]) for x, _ in curves)
    else:
        lo = max(float(x[0]) for x, _ in curves)
        hi = min(float(x[-1]) for x, _ in curves)
    if hi > lo:
        return np.linspace(lo, hi, num)
    return np.unique(np.concatenate([x for x, _ in curves]))


def average_curves(
    curves: Sequence[tuple[np.ndarray, np.ndarray]], grid: np.ndarray, *, hold_last: bool = False
) -> dict[str, np.ndarray]:
    """Mean, std, min and max over seeds of piecewise-linear curves sampled on ``grid``.

    Each curve ``(x, y)`` (``x`` increasing) is linearly interpolated at the grid points inside
    ``[x[0], x[-1]]``; before ``x[0]`` it is missing (NaN), and after ``x[-1]`` it is missing too,
    or keeps its last value with ``hold_last`` (a finished run keeps its final return). A
    statistic at a grid point uses the seeds present there. With
    ``Y[i, j] = interp(grid[j]; x_i, y_i)``:

        mean_j = (1/n_j) Σ_i Y[i, j],   std_j = sqrt((1/n_j) Σ_i (Y[i, j] - mean_j)²)

    (population std, so one seed gives 0), where ``n_j`` counts the seeds present at ``grid[j]``.

    Returns:
        ``{"grid", "mean", "std", "min", "max", "count"}``, each of shape ``[len(grid)]``;
        statistics are NaN where ``count == 0``.
    """
    grid = np.asarray(grid, dtype=np.float64)
    samples = np.full((len(curves), grid.size), np.nan)
    for i, (x, y) in enumerate(curves):
        x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
        if x.size:
            right = y[-1] if hold_last else np.nan
            samples[i] = np.interp(grid, x, y, left=np.nan, right=right)
    count = np.sum(np.isfinite(samples), axis=0)
    stats = {"grid": grid, "count": count}
    covered = count > 0
    for name, reduce in (("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max)):
        values = np.full(grid.size, np.nan)
        for j in np.flatnonzero(covered):
            column = samples[:, j]
            values[j] = reduce(column[np.isfinite(column)])
        stats[name] = values
    return stats


def plot_learning_curves(
    run_dirs: Sequence[str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    title: str | None = None,
    inside: str | os.PathLike | None = None,
) -> Path:
    """Draws return against env steps (left) and wall time (right) for ``run_dirs``; saves PNG.

    Runs are grouped by environment (:func:`group_runs_by_env`); each environment is one line,
    the mean over its seeds on a common grid (:func:`common_grid`, :func:`average_curves`),
    with the min–max band over seeds shaded when there are several. Against steps the grid is
    the range all seeds cover; against wall time it spans all of them, each finished seed
    keeping its final return, since seeds finish at different times. Runs without any logged
    return are skipped; if none has one the panels say so instead of failing.

    The image is written atomically (:func:`agents.runs.files.atomic_write_bytes`): a FIFO, a
    device or a folder at ``out_png`` is refused before anything is written, a link there is
    replaced, not written through, and with ``inside`` (the run directory it belongs to) a
    path leading out of that directory is refused.

    Returns:
        The path of the written image, ``out_png`` itself (parent directories are created; a
        path without suffix gets a PNG under exactly that name).

    Raises:
        ValueError: ``out_png``'s suffix is no image format matplotlib writes.
        agents.runs.files.UnsafeFileError: ``out_png`` (or a run's file read) is refused.
    """
    from matplotlib.figure import Figure

    groups = group_runs_by_env(run_dirs)
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_steps, ax_time = fig.subplots(1, 2)
    drawn = False
    for color_index, (env_id, dirs) in enumerate(groups.items()):
        progresses = [read_progress(d) for d in dirs]
        color = f"C{color_index % 10}"
        for ax, x_key in ((ax_steps, "env_steps"), (ax_time, "wall_time")):
            curves = [curve(p, x_key) for p in progresses if x_key in p and "mean_return" in p]
            curves = [c for c in curves if len(c[0])]
            if not curves:
                continue
            by_time = x_key == "wall_time"
            grid = common_grid(curves, span="union" if by_time else "overlap")
            stats = average_curves(curves, grid, hold_last=by_time)
            label = env_id if len(curves) == 1 else f"{env_id} ({len(curves)} seeds)"
            ax.plot(stats["grid"], stats["mean"], color=color, label=label,
                    marker="o" if stats["grid"].size == 1 else None)
            if len(curves) > 1:
                ax.fill_between(stats["grid"], stats["min"], stats["max"], color=color,
                                alpha=0.2, linewidth=0)
            drawn = True
    for ax, xlabel in ((ax_steps, "environment steps"), (ax_time, "wall time [s]")):
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean episode return")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(loc="best", fontsize="small")
    if not drawn:
        ax_steps.text(0.5, 0.5, "no episode returns logged yet", ha="center",
                      transform=ax_steps.transAxes)
    if title:
        fig.suptitle(title)
    out_png = Path(out_png)
    # Without a suffix, matplotlib would append ".png" and write another path than asked.
    image_format = out_png.suffix[1:].lower() or "png"
    if image_format not in fig.canvas.get_supported_filetypes():
        raise ValueError(f"{out_png}: matplotlib writes no {image_format!r} images; use "
                         "a .png (or .pdf, .svg) file name")
    check_run_path(out_png, inside=inside, what="plot")  # before the figure is drawn
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format=image_format)
    atomic_write_bytes(out_png, image.getvalue(), inside=inside, what="plot")
    return out_png
