"""The report of ``scripts/bench_trpo.py``'s returns mode: per-env, per-budget statistics over
seeds (per-seed returns, mean ± std, IQM with its 95% interval from ``rl_stats.py``), the
whole-process time per run and its ratio to the bare simulator's, the published figures beside
them, the table, and one learning-curve PNG per env.
"""

from __future__ import annotations

import math
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402
import rl_stats  # noqa: E402

TARGETS = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0, "Acrobot-v1": -90.0,
           "MiniGrid-Empty-5x5-v0": 0.9}
# Published TRPO figures at 1M steps: sb3-contrib's docs (v3 envs, 3 seeds, mean ± std) and
# the RL Baselines3 Zoo benchmark (v3, one run). See ../shared/ANCHORS.md.
PUBLISHED_1M = {
    "Hopper-v5": {"sb3-contrib docs": (3372.0, 215.0), "RL Zoo": (3618.0, None)},
    "HalfCheetah-v5": {"sb3-contrib docs": (1803.0, 46.0), "RL Zoo": (1785.0, None)},
    "Walker2d-v5": {"sb3-contrib docs": (4502.0, 234.0), "RL Zoo": (4933.0, None)},
    "Ant-v5": {"sb3-contrib docs": (3554.0, 591.0), "RL Zoo": (4982.0, None)},
    "Swimmer-v5": {"sb3-contrib docs": (359.0, 2.0), "RL Zoo": (366.0, None)},
    # No sb3-contrib figure for the cheap tasks: Tianshou's (v3, 10 seeds, the best average
    # during training, not the final one) and OpenAI baselines' trpo_mpi, both at 1M.
    "InvertedPendulum-v5": {"Tianshou": (1000.0, None), "baselines": (905.0, None)},
    "InvertedDoublePendulum-v5": {"Tianshou": (8435.0, None), "baselines": (6732.0, None)},
    "Reacher-v5": {"Tianshou": (-5.1, None), "baselines": (-4.8, None)},
}


def plot_curves(jobs: list, out_dir: Path, args) -> list[Path]:
    """One PNG per env: natgrad's return against steps and time, mean with min-max band."""
    from agents.runs.plotting import plot_learning_curves

    paths = []
    for env_id in args.envs:
        dirs = [str(job[4]) for job in jobs
                if job[0] == "natgrad" and job[1] == env_id and job[4].exists()]
        if dirs:
            paths.append(plot_learning_curves(
                dirs, out_dir / f"{env_id.replace('/', '_')}.png",
                title=f"natgrad TRPO {env_id}, seeds {args.first_seed}-"
                      f"{args.first_seed + args.seeds - 1} ({len(dirs)} runs)"))
    return paths


def print_run(r: dict) -> None:
    returns = " / ".join(f"{statistics.fmean(x['eval_returns']):.1f}" if x["eval_returns"]
                         else "-" for x in r["results"])
    steps = " / ".join(f"{x['steps']:,}" for x in r["results"])
    how = (f" (cached: {r['cache']})" if r.get("cache") else " (finished earlier, reused)"
           if r.get("reused") else f" (in {r['segments']} processes)"
           if r.get("segments", 1) > 1 else "")
    print(f"  {r['side']:<8}{r['env_id']:<18} seed {r['seed']}: eval {returns} at {steps} "
          f"steps; {r['process_seconds']:.1f} s process{how}", flush=True)


def summarize(reports: list[dict], envs: list[str], floors: dict | None = None) -> dict:
    """Per env, per budget: both sides' returns over seeds (:func:`rl_stats.summary`: per
    seed, mean ± std, IQM and its 95% interval) and the whole-process time per run; at an
    env's last budget, the median run's time over the bare simulator's (``floor``)."""
    summary = {}
    for env_id in envs:
        rows = []
        budgets = sorted({x["budget"] for r in reports if r["env_id"] == env_id
                          for x in r["results"]})
        for budget in budgets:
            last = budget == budgets[-1]
            row = {"budget": budget,  # a target is checked at the final budget only
                   "target": TARGETS.get(env_id) if last else None,
                   "published": PUBLISHED_1M.get(env_id) if budget == 1_000_000 else None}
            for side in ("natgrad", "sb3"):
                runs = sorted((r for r in reports if r["env_id"] == env_id and r["side"] == side),
                              key=lambda r: r["seed"])
                at = [(r, x) for r in runs for x in r["results"] if x["budget"] == budget]
                scored = [(r, x) for r, x in at if x["eval_returns"]]
                row[side] = {**rl_stats.summary([statistics.fmean(x["eval_returns"])
                                                 for _, x in scored]),
                             "seeds": [r["seed"] for r, _ in scored],
                             "steps": sorted({x["steps"] for _, x in at}),
                             "learn_seconds": [x["learn_seconds_so_far"] for _, x in at],
                             # timing only from runs done in one process
                             "process_seconds": [_process_seconds_at(r, x) for r, x in at
                                                 if r.get("segments", 1) == 1]}
            floor = (floors or {}).get(env_id)
            if last and floor and floor.get("steps", 0) >= budget * 0.99:
                # the median run: one run slowed by other load on the machine moves it least
                seconds = _median(row["natgrad"]["process_seconds"])
                row["floor"] = {"process_seconds": floor["process_seconds"],
                                "loop_seconds": floor["loop_seconds"],
                                "run_process_seconds": seconds,
                                "ratio": seconds / floor["process_seconds"]}
            rows.append(row)
        summary[env_id] = rows
    return summary


def _process_seconds_at(report: dict, result: dict) -> float:
    """Whole-process seconds up to one budget: start-up (the process less its learning and
    evaluation) plus the learning up to that budget."""
    startup = report["process_seconds"] - report["eval_seconds"] - report["learn_seconds"]
    return startup + result["learn_seconds_so_far"]


def _returns_cell(side: dict) -> str:
    if not side["per_seed"]:
        return "-"
    low, high = side["iqm_ci95"]
    return (f"{side['mean']:.0f} ± {side['std']:.0f}; IQM {side['iqm']:.0f} "
            f"[{low:.0f}, {high:.0f}]")


def print_returns_table(summary: dict, with_peer: bool) -> None:
    headers = ["env", "steps", "seeds", "natgrad mean ± std; IQM [95% CI]"]
    headers += ["sb3-contrib (same run)", "diff"] if with_peer else []
    headers += ["s/run", "/floor"] + (["sb3 s/run"] if with_peer else []) + ["published, ref"]
    rows = []
    for env_id, env_rows in summary.items():
        for row in env_rows:
            ours, peer = row["natgrad"], row["sb3"]
            cells = [env_id, f"{row['budget']:,}", str(len(ours["per_seed"])),
                     _returns_cell(ours)]
            if with_peer:
                cells += [_returns_cell(peer), f"{ours['mean'] - peer['mean']:+.0f}"]
            cells.append(_seconds(ours["process_seconds"]))
            cells.append(f"{row['floor']['ratio']:.2f}" if row.get("floor") else "-")
            if with_peer:
                cells.append(_seconds(peer["process_seconds"]))
            ref = []
            if row["target"] is not None:
                ref.append(f"target >= {row['target']:g}: "
                           f"{'met' if ours['mean'] >= row['target'] else 'MISSED'}")  # NaN too
            for source, (mean, std) in (row.get("published") or {}).items():
                ref.append(f"{source} {mean:g}" + (f" ± {std:g}" if std is not None else ""))
            rows.append([*cells, "; ".join(ref)])
    print(bench_common.format_table(headers, rows, align="l" + "r" * (len(headers) - 2) + "l"))
    for env_id, env_rows in summary.items():
        for row in env_rows:
            per_seed = " / ".join(f"{x:.0f}" for x in row["natgrad"]["per_seed"])
            print(f"  {env_id} {row['budget']:,} natgrad per seed "
                  f"{row['natgrad']['seeds']}: {per_seed}")
    print("s/run: whole process to that budget, less evaluation (runs done in one process); "
          "/floor: the median run's over the bare simulator's process for the same steps; "
          "with several processes at a time they share the cores (see --speed for timing)")


def _seconds(values: list[float]) -> str:
    return f"{statistics.fmean(values):.0f}" if values else "-"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else math.nan
