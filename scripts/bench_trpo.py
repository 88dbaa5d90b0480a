"""Benchmark natgrad's TRPO agent: returns over seeds against targets, and training speed.

Returns mode (the default) trains every ``(env, seed)`` pair for its budget (``--steps`` or the
env's preset), each into its own run directory ``OUT_DIR/runs/<env>-seed<s>``, sequentially or
on a small process pool (``--workers``, one TensorFlow thread per worker when there are
several). Each run is then evaluated deterministically on fresh environments (seeded apart from
training, as ``natgrad-trpo train`` does; the result is also the run's ``eval.json``). Written:

* ``OUT_DIR/summary.json``: per env the budget, the seeds, each seed's evaluation mean return
  and training wall time, the mean and (population) std over seeds, and the target check —
  the mean over seeds must reach CartPole-v1 >= 475, Pendulum-v1 >= -200, Acrobot-v1 >= -90;
* ``OUT_DIR/learning_curves.png``: return against steps and wall time, seeds averaged
  (:func:`agents.plotting.plot_learning_curves`);
* a table on stdout.

Speed mode (``--speed``) times 100k CartPole-v1 steps with the preset (2 envs x 512 steps per
update) in this process. The clock starts when this script starts running, before TensorFlow is
imported, and stops when ``learn`` returns: imports, environment construction, graph tracing,
logging and checkpoints all count; only the interpreter's own start-up does not. The time is
compared with sb3-contrib's TRPO on the same task and machine type (65 s); the target is a third
of it (<= 22 s). Results go to ``OUT_DIR/speed.json``.

Usage::

    python scripts/bench_trpo.py                                  # 3 envs x 5 seeds, presets
    python scripts/bench_trpo.py --envs CartPole-v1 --seeds 2 --steps 20000 --workers 2
    python scripts/bench_trpo.py --speed
"""

from __future__ import annotations

import time

SCRIPT_START = time.perf_counter()  # first statement: the speed clock excludes only start-up

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from multiprocessing import get_context  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1")
TARGETS = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0, "Acrobot-v1": -90.0,
           "MiniGrid-Empty-5x5-v0": 0.9}
SPEED_ENV = "CartPole-v1"
SPEED_STEPS = 100_000
SB3_CONTRIB_SECONDS = 65.0  # sb3-contrib TRPO, same task, measured on these machines
SPEED_TARGET_SECONDS = 22.0  # a third of the reference


def _limit_threads() -> None:
    """Pool initializer: one TensorFlow thread per worker, so workers do not oversubscribe."""
    os.environ["TF_NUM_INTRAOP_THREADS"] = "1"
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def train_and_evaluate(env_id: str, seed: int, steps: int | None, run_dir: str,
                       eval_episodes: int | None) -> dict:
    """Trains one seed into ``run_dir``, evaluates it deterministically; returns the record."""
    from agents import TRPO
    from agents.evaluation import evaluation_record, write_evaluation

    overrides = {"seed": seed} if steps is None else {"seed": seed, "total_steps": steps}
    agent = TRPO(env_id, run_dir=run_dir, **overrides)
    started = time.perf_counter()
    agent.learn(steps)
    wall_time = time.perf_counter() - started
    episodes = eval_episodes or agent.config.eval_episodes
    record = evaluation_record(agent, Path(run_dir), episodes, None, wall_time)
    write_evaluation(Path(run_dir), record)
    record["train_seconds"] = wall_time
    record["run_dir"] = run_dir
    return record


def summarize(records: list[dict], envs: list[str]) -> dict:
    """Per env: budget, seeds, per-seed returns and wall times, mean/std, target check."""
    summary = {}
    for env_id in envs:
        runs = sorted((r for r in records if r["env_id"] == env_id), key=lambda r: r["seed"])
        returns = [r["mean_return"] for r in runs]
        mean = statistics.fmean(returns) if returns else math.nan
        std = statistics.pstdev(returns) if returns else math.nan
        target = TARGETS.get(env_id)
        summary[env_id] = {
            "steps": sorted({r["steps"] for r in runs}),
            "seeds": [r["seed"] for r in runs],
            "eval_mean_return_per_seed": returns,
            "eval_episodes": sorted({r["episodes"] for r in runs}),
            "mean_return": mean,
            "std_return": std,
            "wall_time_per_run": [r["train_seconds"] for r in runs],
            "run_dirs": [r["run_dir"] for r in runs],
            "target": target,
            "passed": None if target is None else bool(mean >= target),
            "seeds_at_target": None if target is None else sum(x >= target for x in returns),
        }
    return summary


def print_table(summary: dict) -> None:
    """One row per env: budget, seeds, returns over seeds, wall time, target check."""
    header = (f"{'env':<26}{'steps':>10}{'seeds':>6}{'mean':>10}{'std':>9}{'min':>10}"
              f"{'max':>10}{'s/run':>8}  target")
    print(header)
    print("-" * len(header))
    for env_id, row in summary.items():
        returns = row["eval_mean_return_per_seed"]
        steps = "/".join(f"{s:,}" for s in row["steps"])
        target = ("n/a" if row["target"] is None else
                  f">= {row['target']:g}: {'PASS' if row['passed'] else 'FAIL'} "
                  f"({row['seeds_at_target']}/{len(returns)} seeds)")
        wall = statistics.fmean(row["wall_time_per_run"]) if returns else math.nan
        print(f"{env_id:<26}{steps:>10}{len(returns):>6}{row['mean_return']:>10.1f}"
              f"{row['std_return']:>9.1f}{min(returns, default=math.nan):>10.1f}"
              f"{max(returns, default=math.nan):>10.1f}{wall:>8.1f}  {target}")


def run_returns_benchmark(args) -> int:
    """Trains and evaluates every (env, seed), writes summary.json and the learning curves."""
    out_dir = Path(args.out_dir)
    jobs = []
    for env_id in args.envs:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            run_dir = out_dir / "runs" / f"{env_id}-seed{seed}"
            if run_dir.exists():
                shutil.rmtree(run_dir)  # a benchmark run is always trained afresh
            jobs.append((env_id, seed, args.steps, str(run_dir), args.eval_episodes))
    print(f"{len(jobs)} runs ({', '.join(args.envs)} x {args.seeds} seeds, "
          f"{'preset budgets' if args.steps is None else f'{args.steps:,} steps'}) on "
          f"{args.workers} worker(s) -> {out_dir}", flush=True)
    started = time.perf_counter()
    records = []
    if args.workers == 1:
        for job in jobs:
            records.append(train_and_evaluate(*job))
            _report(records[-1])
    else:
        with ProcessPoolExecutor(args.workers, mp_context=get_context("spawn"),
                                 initializer=_limit_threads) as pool:
            futures = [pool.submit(train_and_evaluate, *job) for job in jobs]
            for future in futures:
                records.append(future.result())
                _report(records[-1])
    total = time.perf_counter() - started

    from agents.plotting import plot_learning_curves

    summary = summarize(records, list(args.envs))
    curves = plot_learning_curves([r["run_dir"] for r in records],
                                  out_dir / "learning_curves.png",
                                  title=f"natgrad TRPO, {args.seeds} seeds")
    document = {"benchmark": "trpo_returns", "total_seconds": total, "workers": args.workers,
                "platform": platform.platform(), "python": sys.version.split()[0],
                "envs": summary}
    (out_dir / "summary.json").write_text(json.dumps(document, indent=2) + "\n")
    print()
    print_table(summary)
    print(f"\ntotal {total:.0f} s; summary {out_dir / 'summary.json'}; curves {curves}")
    failed = [env for env, row in summary.items() if row["passed"] is False]
    return 1 if failed else 0


def _report(record: dict) -> None:
    print(f"  {record['env_id']:<24} seed {record['seed']}: eval {record['mean_return']:9.2f} "
          f"± {record['std_return']:7.2f}  ({record['steps']:,} steps, "
          f"{record['train_seconds']:.1f} s)", flush=True)


def run_speed_benchmark(args) -> int:
    """Times 100k CartPole-v1 steps with the preset; compares with sb3-contrib's 65 s."""
    from agents import TRPO

    out_dir = Path(args.out_dir)
    with tempfile.TemporaryDirectory() as run_dir:
        train_start = time.perf_counter()
        agent = TRPO(SPEED_ENV, run_dir=run_dir)
        agent.learn(SPEED_STEPS)
        seconds = time.perf_counter() - SCRIPT_START
        train_seconds = time.perf_counter() - train_start
        config = agent.config
        evaluation = agent.evaluate(seed=config.seed + 10_000)
    ratio = seconds / SB3_CONTRIB_SECONDS
    result = {
        "benchmark": "trpo_speed", "env_id": SPEED_ENV, "steps": int(agent.num_timesteps),
        "n_envs": config.n_envs, "n_steps": config.n_steps,
        "vectorization": config.vectorization, "seconds": seconds,
        "train_seconds": train_seconds,
        "steps_per_second": agent.num_timesteps / seconds,
        "sb3_contrib_seconds": SB3_CONTRIB_SECONDS, "ratio_to_sb3_contrib": ratio,
        "target_seconds": SPEED_TARGET_SECONDS, "passed": seconds <= SPEED_TARGET_SECONDS,
        "eval_mean_return_after": float(evaluation["mean_return"]),
        "platform": platform.platform(), "cpus": os.cpu_count(),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "speed.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"{SPEED_ENV}: {result['steps']:,} steps ({config.n_envs} envs x {config.n_steps} "
          f"steps per update, {config.vectorization}) in {seconds:.1f} s "
          f"({result['steps_per_second']:,.0f} steps/s, imports and setup included); "
          f"agent construction + learn() alone: {train_seconds:.1f} s")
    print(f"sb3-contrib reference {SB3_CONTRIB_SECONDS:.0f} s: ratio {ratio:.2f} "
          f"({1 / ratio:.1f}x faster); target <= {SPEED_TARGET_SECONDS:.0f} s: "
          f"{'PASS' if result['passed'] else 'FAIL'}")
    print(f"deterministic eval afterwards: mean return {result['eval_mean_return_after']:.1f}; "
          f"written {out_dir / 'speed.json'}")
    return 0 if result["passed"] else 1


def parse_args(argv=None):
    """Command-line arguments of the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=list(DEFAULT_ENVS), metavar="ENV_ID")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one")
    parser.add_argument("--steps", type=int, default=None,
                        help="env steps per run (default: each env's preset budget)")
    parser.add_argument("--eval-episodes", type=int, default=None,
                        help="evaluation episodes per run (default: the config's)")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="parallel runs (default: 2, or 1 on a single core)")
    parser.add_argument("--out-dir", default="bench_results/trpo")
    parser.add_argument("--speed", action="store_true",
                        help="time 100k CartPole-v1 steps instead (vs sb3-contrib's 65 s)")
    args = parser.parse_args(argv)
    for name in ("seeds", "workers"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    return args


def main(argv=None) -> int:
    """Runs the speed or the returns benchmark."""
    args = parse_args(argv)
    return run_speed_benchmark(args) if args.speed else run_returns_benchmark(args)


if __name__ == "__main__":
    sys.exit(main())
