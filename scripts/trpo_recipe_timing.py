"""``bench_distributed.py --trpo STEPS``: the whole TRPO recipe timed with 2 workers and 1.

``natgrad-trpo train CartPole-v1 --steps STEPS`` with ``--workers 2`` and without, one after
the other: wall time from process start, the first update's time (cluster start, tracing) and
the env steps per second after it, from each run's ``progress.csv``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402


def time_trpo(steps: int, workers: int, out: Path) -> dict:
    """Wall time of ``natgrad-trpo train CartPole-v1`` (from process start) and, from its
    progress.csv, the first update's seconds and the env steps per second after it."""
    import csv

    argv = [sys.executable, "-m", "agents", "train", "CartPole-v1", "--steps", str(steps),
            "--out", str(out)] + (["--workers", str(workers)] if workers > 1 else [])
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True, timeout=1800)
    wall = time.perf_counter() - start
    with open(out / "progress.csv") as f:
        rows = [(float(r["env_steps"]), float(r["wall_time"])) for r in csv.DictReader(f)]
    if len(rows) < 2:
        raise SystemExit(f"--trpo {steps}: {workers} worker(s) made {len(rows)} update(s); the "
                         "rate after the first needs two (give at least 4096 steps)")
    (first_steps, first_time), (last_steps, last_time) = rows[0], rows[-1]
    return {"workers": workers, "wall_s": wall, "first_update_s": first_time,
            "steps_per_s_after_first": (last_steps - first_steps) / (last_time - first_time),
            "eval": json.loads((out / "eval.json").read_text())["mean_return"]}


def print_trpo(steps: int) -> list[dict]:
    """:func:`time_trpo` with 2 workers and 1, printed as a table."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        runs = [time_trpo(steps, w, Path(tmp) / f"w{w}") for w in (2, 1)]
    print(f"\nnatgrad-trpo train CartPole-v1 --steps {steps}:\n")
    print(bench_common.markdown_table(
        ["workers", "wall time", "first update", "env steps/s after it", "eval return"],
        [[str(run["workers"]), f"{run['wall_s']:.1f} s", f"{run['first_update_s']:.1f} s",
          f"{run['steps_per_s_after_first']:,.0f}", f"{run['eval']:.1f}"] for run in runs]))
    return runs
