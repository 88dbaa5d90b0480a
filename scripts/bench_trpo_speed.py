"""Speed mode of ``scripts/bench_trpo.py`` (``--speed``): 100k steps of natgrad and of
sb3-contrib, one process at a time so that nothing else shares the cores, then again in the
other order (``--repeats``); whole process from ``exec`` to exit, less the final evaluation,
which each side reports. natgrad runs with its preset's TensorFlow threads; sb3-contrib once
per ``--peer-threads`` torch thread count, and its fastest counts. The target is natgrad <=
1/3 of that time. Writes ``OUT_DIR/speed.json``.
"""

from __future__ import annotations

import math
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402
import bench_processes  # noqa: E402

SPEED_STEPS = 100_000
SPEED_TARGET_RATIO = 1 / 3


def run_speed(args, peer: str | None, peer_version: str, peer_envs) -> int:
    out_dir = Path(args.out_dir)
    unknown = sorted(set(args.envs) - set(peer_envs))
    if peer and unknown:
        print(f"sb3-contrib has no settings here for {', '.join(unknown)}: natgrad only")
        peer = None
    sides = [("natgrad", 0)] + ([("sb3", t) for t in args.peer_threads] if peer else [])
    rows = {}
    for env_id in args.envs:
        times = {side: [] for side in sides}
        returns = {side: [] for side in sides}
        for repeat in range(args.repeats):
            order = sides if repeat % 2 == 0 else list(reversed(sides))
            for side, threads in order:
                label = side if side == "natgrad" else f"sb3-{threads}t"
                run_dir = out_dir / "speed_runs" / f"{env_id.replace('/', '_')}-{repeat}" / label
                if run_dir.exists():
                    shutil.rmtree(run_dir)
                if side == "natgrad":
                    report = bench_processes.run_natgrad(env_id, args.first_seed, [SPEED_STEPS],
                                                         args, run_dir, threads)
                else:
                    report = bench_processes.run_peer(env_id, args.first_seed, [SPEED_STEPS],
                                                      args, run_dir, threads,
                                                      version=peer_version, cache_dir=None)
                times[side, threads].append(report["process_seconds"] - report["eval_seconds"])
                evals = report["results"][-1]["eval_returns"]
                returns[side, threads].append(statistics.fmean(evals) if evals else math.nan)
                print(f"  {label:<9}{env_id:<14} {times[side, threads][-1]:6.1f} s whole "
                      f"process, eval {returns[side, threads][-1]:.1f}", flush=True)
        row = {("natgrad" if side == "natgrad" else f"sb3_{threads}_threads"): {
            "seconds": times[side, threads],
            "median_seconds": statistics.median(times[side, threads]),
            "eval_mean_return": returns[side, threads]} for side, threads in sides}
        if peer:
            best = min((row[f"sb3_{t}_threads"]["median_seconds"], t) for t in args.peer_threads)
            row["sb3_best"] = {"median_seconds": best[0], "threads": best[1]}
            row["ratio"] = row["natgrad"]["median_seconds"] / best[0]
            row["passed"] = row["ratio"] <= SPEED_TARGET_RATIO
        rows[env_id] = row
    info = bench_common.machine()
    document = {"benchmark": "trpo_speed", "steps": SPEED_STEPS, "repeats": args.repeats,
                "target_ratio": SPEED_TARGET_RATIO, "peer": peer, "machine": info,
                "envs": rows}
    bench_common.write_json(out_dir / "speed.json", document)
    print(f"\n{SPEED_STEPS:,} steps, whole process less the final evaluation, median of "
          f"{args.repeats}; {info['cpus']} CPUs ({info['processor']}); natgrad with "
          f"its preset's tf_threads, sb3-contrib at its fastest of "
          f"{'/'.join(map(str, args.peer_threads))} torch thread(s)")
    table = []
    for env_id, row in rows.items():
        ours = row["natgrad"]
        our_eval = f"{statistics.fmean(ours['eval_mean_return']):.1f}"
        if not peer:
            table.append([env_id, f"{ours['median_seconds']:.1f}", "-", "-", "(no peer)",
                          f"{our_eval} / -"])
            continue
        best = row["sb3_best"]
        theirs = row[f"sb3_{best['threads']}_threads"]
        verdict = "met" if row["passed"] else f"MISSED by {row['ratio'] * 3 - 1:.0%}"
        table.append([env_id, f"{ours['median_seconds']:.1f}", f"{best['median_seconds']:.1f}",
                      f"{row['ratio']:.2f}", verdict,
                      f"{our_eval} / {statistics.fmean(theirs['eval_mean_return']):.1f}"])
    print(bench_common.format_table(
        ["env", "natgrad s", "sb3 s", "ratio", "target <= 1/3", "eval natgrad / sb3"], table,
        align="lrrrll"))
    print(f"written {out_dir / 'speed.json'}")
    return 0 if all(row.get("passed", True) for row in rows.values()) else 1
