"""natgrad's TRPO against sb3-contrib's, side by side in one invocation: returns and speed.

Every run, on either side, is its own process, started and timed by this script the same way
(interpreter start-up, imports, env construction, tracing, logging and checkpoints all count):

* natgrad: this script re-run with ``--child`` (the preset of the env, ``--set`` overrides);
* sb3-contrib: ``scripts/sb3_peer.py`` under ``--peer-python`` (a virtual environment with
  ``sb3-contrib``, CPU ``torch`` and ``gymnasium[mujoco]``; see README "Benchmarks"), with the
  RL Zoo settings. Without such an interpreter the peer side is skipped, with a message saying
  how to make one, and only natgrad's figures are printed.

**Returns mode** (the default) trains each ``(env, seed)`` to each of ``--budgets`` in turn
(default: 100k, plus 300k and 1M for MuJoCo envs, or each env's preset budget for the others)
and evaluates deterministically after each budget (10 episodes on a fresh env seeded
``seed + 10000``, unnormalized returns, observation statistics frozen), on ``--workers``
processes at a time (one thread each). It prints one row per env and budget: the mean ± std
over seeds of both sides, the difference, and the whole-process wall time per run of both
sides, and writes ``OUT_DIR/summary.json`` (per-seed figures included) and natgrad's learning
curves ``OUT_DIR/learning_curves.png``. Exit status 1 when a classic-control mean misses its
target (CartPole-v1 >= 475, Pendulum-v1 >= -200, Acrobot-v1 >= -90).

**Speed mode** (``--speed``) times 100k steps of CartPole-v1 and Hopper-v5 (``--envs`` to
change), one process at a time so that nothing else shares the cores, natgrad then peer, then
again in the other order (``--repeats``): whole process from ``exec`` to exit, less the final
evaluation, which each side reports. natgrad runs with its preset's TensorFlow threads
(``tf_threads``); sb3-contrib once per ``--peer-threads`` torch thread count (default 1
and 2), and its fastest counts. The target is natgrad <= 1/3 of that time; exit status 1
when it is missed.
Evaluation returns are printed too (speed must not cost returns). Writes ``OUT_DIR/speed.json``.

Absolute seconds depend on the machine (machines of one type differ by up to 2x): compare the
ratio, which both sides share.

Usage::

    python scripts/bench_trpo.py --peer-python .venv-sb3/bin/python --speed
    python scripts/bench_trpo.py --peer-python .venv-sb3/bin/python \\
        --envs Hopper-v5 --seeds 5 --budgets 100000 300000
    python scripts/bench_trpo.py --envs CartPole-v1 Pendulum-v1 Acrobot-v1   # natgrad only
"""

from __future__ import annotations

import time

CHILD_START = time.perf_counter()  # in --child mode: the clock of its own report

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_common, also under -m
import bench_common  # noqa: E402

PEER_SCRIPT = HERE / "sb3_peer.py"
MUJOCO_ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5")
DEFAULT_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1")
SPEED_ENVS = ("CartPole-v1", "Hopper-v5")
SPEED_STEPS = 100_000
SPEED_TARGET_RATIO = 1 / 3
TARGETS = {"CartPole-v1": 475.0, "Pendulum-v1": -200.0, "Acrobot-v1": -90.0,
           "MiniGrid-Empty-5x5-v0": 0.9}
# RL Baselines3 Zoo's published TRPO results at 1M steps (one run, v3 envs).
ZOO_1M = {"Hopper-v5": 3618.0, "HalfCheetah-v5": 1785.0, "Walker2d-v5": 4933.0}
RESULT_PREFIXES = ("NATGRAD_RESULT ", "SB3_RESULT ")
# Envs scripts/sb3_peer.py has RL Zoo settings for; others run natgrad's side only.
PEER_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", *MUJOCO_ENVS)
SB3_PEER_HELP = (
    "make one with: python -m venv .venv-sb3 && .venv-sb3/bin/pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu && .venv-sb3/bin/pip install sb3-contrib "
    "'gymnasium[mujoco]', then pass --peer-python .venv-sb3/bin/python (or set "
    "NATGRAD_PEER_PYTHON)")


# The natgrad side: one run in this process (--child) --------------------------------------

def child(args) -> int:
    """Trains one seed to each budget in turn, evaluates after each; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from agents import TRPO
    from agents.runs.evaluation import evaluation_record, write_evaluation

    agent = TRPO(args.child, run_dir=args.run_dir, seed=args.seed,
                 **bench_common.trpo_overrides(args.set))

    def evaluate() -> list[float]:
        if args.eval_episodes <= 0:
            return []
        record = evaluation_record(agent, Path(args.run_dir), args.eval_episodes, None)
        write_evaluation(Path(args.run_dir), record)
        return record["returns"]

    runs = bench_common.train_to_budgets(args.budgets or [agent.config.total_steps],
                                         agent.learn, evaluate, lambda: agent.num_timesteps)
    print("NATGRAD_RESULT " + json.dumps({
        "env_id": args.child, "seed": args.seed, "settings": agent.config.to_dict(), **runs,
        "process_seconds_in_child": time.perf_counter() - CHILD_START}), flush=True)
    return 0


# Running either side as a timed process ----------------------------------------------------

def run_process(side: str, env_id: str, seed: int, budgets: list[int], args, run_dir: Path,
                threads: int) -> dict:
    """Runs one side's process; returns its JSON report plus ``process_seconds``."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
                   OMP_NUM_THREADS=str(threads))
    if side == "natgrad":
        command = [sys.executable, str(Path(__file__).resolve()), "--child", env_id,
                   "--seed", str(seed), "--run-dir", str(run_dir),
                   "--eval-episodes", str(args.eval_episodes), "--budgets",
                   *map(str, budgets), *(["--set", *args.set] if args.set else [])]
    else:
        command = [args.peer_python, str(PEER_SCRIPT), env_id, "--seed", str(seed),
                   "--eval-episodes", str(args.eval_episodes), "--threads",
                   str(threads or 1), "--budgets", *map(str, budgets)]
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    (run_dir / f"{side}.log").write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIXES)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{side} run {env_id} seed {seed} failed (exit {done.returncode}); "
                           f"log {run_dir / f'{side}.log'}:\n{tail}")
    report = json.loads(lines[-1].split(" ", 1)[1])
    report["side"] = side
    report["process_seconds"] = seconds
    report.setdefault("eval_seconds", 0.0)
    return report


def find_peer(requested: str | None) -> tuple[str | None, str]:
    """``(python, why)``: an interpreter that can import sb3_contrib, or None and the reason."""
    candidates = [requested] if requested else [os.environ.get("NATGRAD_PEER_PYTHON"),
                                                sys.executable]
    for python in filter(None, candidates):
        if requested == "none":
            return None, "--peer-python none"
        try:
            probe = subprocess.run([python, "-c", "import sb3_contrib, torch"],
                                   capture_output=True, text=True, timeout=120)
        except OSError as exc:
            why = f"{python}: {exc}"
            continue
        if probe.returncode == 0:
            return python, ""
        why = f"{python} cannot import sb3_contrib and torch"
    return None, why


# Returns mode -----------------------------------------------------------------------------

def default_budgets(env_id: str) -> list[int] | None:
    """100k/300k/1M for MuJoCo; ``None`` (the preset's budget) for the others."""
    return [100_000, 300_000, 1_000_000] if env_id in MUJOCO_ENVS else None


def preset_budget(env_id: str) -> int:
    from agents.config import PRESET_NAMES, load_preset

    return int(load_preset(env_id).get("total_steps", 100_000)) if env_id in PRESET_NAMES \
        else 100_000


def run_returns(args, peer: str | None) -> int:
    out_dir = Path(args.out_dir)
    jobs = []
    for env_id in args.envs:
        budgets = args.budgets or default_budgets(env_id) or [preset_budget(env_id)]
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for side in ("natgrad", "sb3") if peer and env_id in PEER_ENVS else ("natgrad",):
                run_dir = out_dir / "runs" / f"{env_id.replace('/', '_')}-seed{seed}" / side
                if run_dir.exists():
                    shutil.rmtree(run_dir)  # a benchmark run is always trained afresh
                jobs.append((side, env_id, seed, budgets, run_dir))
    if peer and set(args.envs) - set(PEER_ENVS):
        print(f"sb3-contrib side only for {', '.join(PEER_ENVS)}: "
              f"{', '.join(sorted(set(args.envs) - set(PEER_ENVS)))} run natgrad's side only")
    print(f"{len(jobs)} runs ({', '.join(args.envs)} x {args.seeds} seeds, "
          f"{'natgrad and sb3-contrib' if peer else 'natgrad only'}) on {args.workers} "
          f"process(es) at a time -> {out_dir}", flush=True)
    threads = 1 if args.workers > 1 else 0
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        futures = [pool.submit(run_process, side, env_id, seed, budgets, args, run_dir,
                               threads) for side, env_id, seed, budgets, run_dir in jobs]
        reports, failures = [], []
        for future in futures:
            try:
                reports.append(future.result())
            except RuntimeError as exc:  # one failed run does not lose the others
                failures.append(str(exc))
                print(f"  FAILED: {exc}", flush=True)
                continue
            _report(reports[-1])
    summary = summarize(reports, list(args.envs))
    document = {"benchmark": "trpo_returns", "total_seconds": time.perf_counter() - started,
                "failed_runs": failures,
                "processes_at_a_time": args.workers, "peer": peer, "overrides": args.set,
                "machine": bench_common.machine(), "envs": summary}
    bench_common.write_json(out_dir / "summary.json", document)
    from agents.runs.plotting import plot_learning_curves

    curves = plot_learning_curves(
        [str(job[4]) for job in jobs if job[0] == "natgrad"], out_dir / "learning_curves.png",
        title=f"natgrad TRPO, {args.seeds} seeds")
    print()
    print_returns_table(summary, peer is not None)
    print(f"\n{document['total_seconds']:.0f} s in all; {out_dir / 'summary.json'}; {curves}")
    failed = [f"{env} {row['budget']:,}" for env, rows in summary.items() for row in rows
              if row["target"] is not None and not row["natgrad"]["mean"] >= row["target"]]
    if failed:
        print("below target (or no result): " + ", ".join(failed))
    if failures:
        print(f"{len(failures)} run(s) failed; see their logs")
    return 1 if failed or failures else 0


def _report(r: dict) -> None:
    returns = " / ".join(f"{statistics.fmean(x['eval_returns']):.1f}" if x["eval_returns"]
                         else "-" for x in r["results"])
    steps = " / ".join(f"{x['steps']:,}" for x in r["results"])
    print(f"  {r['side']:<8}{r['env_id']:<18} seed {r['seed']}: eval {returns} at {steps} "
          f"steps; {r['process_seconds']:.1f} s process", flush=True)


def _stats(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values) if values else math.nan,
            "std": statistics.pstdev(values) if values else math.nan,
            "per_seed": values}


def summarize(reports: list[dict], envs: list[str]) -> dict:
    """Per env, per budget: both sides' returns over seeds, and wall time per run."""
    summary = {}
    for env_id in envs:
        rows = []
        budgets = sorted({x["budget"] for r in reports if r["env_id"] == env_id
                          for x in r["results"]})
        for budget in budgets:
            row = {"budget": budget,  # a target is checked at the final budget only
                   "target": TARGETS.get(env_id) if budget == budgets[-1] else None,
                   "zoo_1m": ZOO_1M.get(env_id) if budget == 1_000_000 else None}
            for side in ("natgrad", "sb3"):
                runs = sorted((r for r in reports if r["env_id"] == env_id and r["side"] == side),
                              key=lambda r: r["seed"])
                at = [(r, x) for r in runs for x in r["results"] if x["budget"] == budget]
                row[side] = {**_stats([statistics.fmean(x["eval_returns"])
                                       for _, x in at if x["eval_returns"]]),
                             "seeds": [r["seed"] for r, _ in at],
                             "steps": sorted({x["steps"] for _, x in at}),
                             "learn_seconds": [x["learn_seconds_so_far"] for _, x in at],
                             "process_seconds": [_process_seconds_at(r, x) for r, x in at]}
            rows.append(row)
        summary[env_id] = rows
    return summary


def _process_seconds_at(report: dict, result: dict) -> float:
    """Whole-process seconds up to one budget: start-up (the process less its learning and
    evaluation) plus the learning up to that budget."""
    startup = report["process_seconds"] - report["eval_seconds"] - report["learn_seconds"]
    return startup + result["learn_seconds_so_far"]


def print_returns_table(summary: dict, with_peer: bool) -> None:
    headers = ["env", "steps", "seeds", "natgrad"]
    headers += ["sb3-contrib", "diff"] if with_peer else []
    headers += ["natgrad s/run"] + (["sb3 s/run", "ratio"] if with_peer else []) + ["ref"]
    rows = []
    for env_id, env_rows in summary.items():
        for row in env_rows:
            ours, peer = row["natgrad"], row["sb3"]
            cells = [env_id, f"{row['budget']:,}", str(len(ours["per_seed"])),
                     f"{ours['mean']:.1f} ± {ours['std']:.1f}"]
            if with_peer:
                cells += [f"{peer['mean']:.1f} ± {peer['std']:.1f}",
                          f"{ours['mean'] - peer['mean']:+.1f}"]
            cells.append(f"{_last_mean(ours['process_seconds']):.1f}")
            if with_peer:
                ratio = _last_mean(ours["process_seconds"]) / _last_mean(peer["process_seconds"])
                cells += [f"{_last_mean(peer['process_seconds']):.1f}", f"{ratio:.2f}"]
            ref = []
            if row["target"] is not None:
                ref.append(f"target >= {row['target']:g}: "
                           f"{'met' if ours['mean'] >= row['target'] else 'MISSED'}")  # NaN too
            if row["zoo_1m"] is not None:
                ref.append(f"RL Zoo 1M {row['zoo_1m']:g}")
            rows.append([*cells, "; ".join(ref)])
    print(bench_common.format_table(headers, rows, align="l" + "r" * (len(headers) - 2) + "l"))
    print("s/run: whole process to that budget, less evaluation; with several processes at a "
          "time they share the cores (see --speed for timing)")


def _last_mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else math.nan


# Speed mode -------------------------------------------------------------------------------

def run_speed(args, peer: str | None) -> int:
    out_dir = Path(args.out_dir)
    unknown = sorted(set(args.envs) - set(PEER_ENVS))
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
                report = run_process(side, env_id, args.first_seed, [SPEED_STEPS], args,
                                     run_dir, threads=threads)
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=None, metavar="ENV_ID",
                        help=f"default: {' '.join(DEFAULT_ENVS)} (speed: "
                             f"{' '.join(SPEED_ENVS)})")
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds (default 5)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run from this one")
    parser.add_argument("--budgets", type=int, nargs="+", default=None,
                        help="env steps at which to evaluate (default: 100k 300k 1M for "
                             "MuJoCo, the preset's budget otherwise)")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1),
                        help="returns mode: processes at a time (default 2)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="speed mode: runs per side, alternating which goes first")
    parser.add_argument("--peer-threads", type=int, nargs="+", default=[1, 2],
                        help="speed mode: torch thread counts to time sb3-contrib with; its "
                             "fastest counts (default 1 2)")
    parser.add_argument("--peer-python", default=None,
                        help="a Python with sb3-contrib and torch ('none': natgrad only)")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="natgrad config overrides, as natgrad-trpo train --set (e.g. "
                             "max_kl=0.02 policy_hidden=64,64)")
    parser.add_argument("--out-dir", default="bench_results/trpo")
    parser.add_argument("--speed", action="store_true", help="time 100k steps per side")
    parser.add_argument("--child", metavar="ENV_ID", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("seeds", "workers", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.budgets is not None and min(args.budgets) < 1:
        parser.error("--budgets must be >= 1")
    if args.envs is None:
        args.envs = list(SPEED_ENVS if args.speed else DEFAULT_ENVS)
    bench_common.trpo_overrides(args.set, parser)  # a bad --set stops here, not in each run
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    peer, why = find_peer(args.peer_python)
    if peer is None:
        print(f"sb3-contrib side skipped ({why}); {SB3_PEER_HELP}", flush=True)
    return run_speed(args, peer) if args.speed else run_returns(args, peer)


if __name__ == "__main__":
    sys.exit(main())
