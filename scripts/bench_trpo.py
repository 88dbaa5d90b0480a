"""natgrad's TRPO against sb3-contrib's, side by side in one invocation: returns and speed.

Every run, on either side, is its own process, started and timed by this script the same way
(interpreter start-up, imports, env construction, tracing, logging and checkpoints all count):

* natgrad: this script re-run with ``--child`` (the preset of the env, ``--set`` overrides);
* sb3-contrib: ``scripts/sb3_peer.py`` under ``--peer-python`` (a virtual environment with
  ``sb3-contrib``, CPU ``torch`` and ``gymnasium[mujoco]``; see README "Benchmarks"), with the
  RL Zoo settings. Without such an interpreter the peer side is skipped, with a message saying
  how to make one, and only natgrad's figures are printed.

**Returns mode** (the default) trains each ``(env, seed)`` to each of ``--budgets`` in turn
(default: 100k, 300k and 1M for MuJoCo envs, or each env's preset budget for the others)
and evaluates deterministically after each budget (10 episodes on a fresh env seeded
``seed + 10000``, unnormalized returns, observation statistics frozen), on ``--workers``
processes at a time (one thread each). It prints one row per env and budget: per-seed
returns, mean ± std and the interquartile mean with its stratified-bootstrap 95% interval
(``rl_stats.py``) for both sides, the published figures at 1M, the whole-process time per
run, and (``--floor``, on by default) that time divided by the bare simulator's
(``sim_floor.py``: the same envs stepped with random actions, nothing else). Writes
``OUT_DIR/summary.json`` (per-seed figures included) and learning curves with min-max bands,
one PNG per env, in ``OUT_DIR/curves/``. Exit status 1 when a classic-control mean misses its
target (CartPole-v1 >= 475, Pendulum-v1 >= -200, Acrobot-v1 >= -90).

**Resumable** (``bench_processes.py``): finished runs are reused, stopped ones resume from
their checkpoints, and sb3-contrib's reports are cached by (env, seed, budgets, version) in
``--peer-cache``; a stopped sweep is continued by running the same command again, and
``--report-only`` prints what is finished ("k of n runs done") without starting anything.

**Speed mode** (``--speed``, ``bench_trpo_speed.py``) times 100k steps of CartPole-v1 and
Hopper-v5, one process at a time, natgrad against sb3-contrib's fastest thread count.

Absolute seconds depend on the machine (machines of one type differ by up to 2x): compare the
ratio, which both sides share.

Usage::

    python scripts/bench_trpo.py --peer-python .venv-sb3/bin/python --speed
    python scripts/bench_trpo.py --peer-python .venv-sb3/bin/python \\
        --envs Hopper-v5 --seeds 5 --budgets 100000 300000
    python scripts/bench_trpo.py --peer-python none --envs Hopper-v5 HalfCheetah-v5 \\
        Walker2d-v5 Ant-v5 Swimmer-v5 --first-seed 3 --seeds 5 --workers 1 \\
        --out-dir bench_results/trpo_1m_heldout    # hours: run again to continue
    python scripts/bench_trpo.py --envs CartPole-v1 Pendulum-v1 Acrobot-v1   # natgrad only
"""

from __future__ import annotations

import time

CHILD_START = time.perf_counter()  # in --child mode: the clock of its own report

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # bench_common, also under -m
import bench_common  # noqa: E402
import bench_processes  # noqa: E402
import bench_trpo_report  # noqa: E402

MUJOCO_ENVS = ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5", "Ant-v5", "Swimmer-v5",
               "InvertedPendulum-v5", "InvertedDoublePendulum-v5", "Reacher-v5")
DEFAULT_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1")
SPEED_ENVS = ("CartPole-v1", "Hopper-v5")
# Envs scripts/sb3_peer.py has RL Zoo settings for; others run natgrad's side only.
PEER_ENVS = ("CartPole-v1", "Pendulum-v1", "Acrobot-v1", *MUJOCO_ENVS)


# The natgrad side: one run in this process (--child) --------------------------------------

def child(args) -> int:
    """Trains one seed to each budget in turn, evaluates after each; prints one JSON line.

    A run directory that already holds this run (a stopped bench) is resumed from its newest
    checkpoint, its finished budgets kept; one holding other settings is refused."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from agents import TRPO
    from agents.runs.evaluation import evaluation_record, write_evaluation
    from agents.runs.layout import CONFIG_FILE

    run_dir = Path(args.run_dir)
    overrides = bench_common.trpo_overrides(args.set)
    partial_path = run_dir / bench_processes.PARTIAL_FILE
    earlier = None
    if (run_dir / CONFIG_FILE).exists():
        agent = TRPO.resume(run_dir)
        wanted = bench_processes.wanted_settings(args.child, args.seed, overrides)
        problems = bench_processes.differences(wanted, agent.config.to_dict())
        if problems:
            print(f"error: {run_dir} holds a run with other settings ({'; '.join(problems)}); "
                  "pass --fresh to the bench to train it again", file=sys.stderr)
            return 3
        earlier = bench_processes.read_json(partial_path) or {"segments": 1}
        print(f"resumed {run_dir} at step {agent.num_timesteps:,}", flush=True)
    else:
        agent = TRPO(args.child, run_dir=run_dir, seed=args.seed, **overrides)
    segments = int((earlier or {}).get("segments", 0)) + 1

    def save_partial(document: dict) -> None:
        bench_common.write_json(partial_path, {**document, "segments": segments})

    save_partial({k: v for k, v in (earlier or {}).items() if k != "segments"})

    def evaluate() -> list[float]:
        if args.eval_episodes <= 0:
            return []
        record = evaluation_record(agent, run_dir, args.eval_episodes, None)
        write_evaluation(run_dir, record)
        return record["returns"]

    runs = bench_common.train_to_budgets(
        args.budgets or [agent.config.total_steps], agent.learn, evaluate,
        lambda: agent.num_timesteps, previous=earlier, after_each=save_partial)
    print("NATGRAD_RESULT " + json.dumps({
        "env_id": args.child, "seed": args.seed, "settings": agent.config.to_dict(), **runs,
        "segments": segments,
        "process_seconds_in_child": time.perf_counter() - CHILD_START}), flush=True)
    return 0


# Returns mode -----------------------------------------------------------------------------

def default_budgets(env_id: str) -> list[int] | None:
    """100k/300k/1M for MuJoCo; ``None`` (the preset's budget) for the others."""
    return [100_000, 300_000, 1_000_000] if env_id in MUJOCO_ENVS else None


def preset_budget(env_id: str) -> int:
    from agents.config import PRESET_NAMES, load_preset

    return int(load_preset(env_id).get("total_steps", 100_000)) if env_id in PRESET_NAMES \
        else 100_000


def preset_n_envs(env_id: str) -> int:
    from agents.config import resolve_config

    return resolve_config(env_id).n_envs


def run_returns(args, peer: str | None, peer_version: str = "") -> int:
    out_dir = Path(args.out_dir)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    jobs = []  # (side, env_id, seed, budgets, run_dir), seed-major: every env gets seeds early
    for seed in seeds:
        for env_id in args.envs:
            budgets = args.budgets or default_budgets(env_id) or [preset_budget(env_id)]
            for side in ("natgrad", "sb3") if peer and env_id in PEER_ENVS else ("natgrad",):
                run_dir = out_dir / "runs" / f"{env_id.replace('/', '_')}-seed{seed}" / side
                if args.fresh and run_dir.exists():
                    shutil.rmtree(run_dir)
                jobs.append((side, env_id, seed, budgets, run_dir))
    floors = [(env_id, max(args.budgets or default_budgets(env_id)
                           or [preset_budget(env_id)]), preset_n_envs(env_id))
              for env_id in args.envs] if args.floor else []
    if peer and set(args.envs) - set(PEER_ENVS):
        print(f"sb3-contrib side only for {', '.join(PEER_ENVS)}: "
              f"{', '.join(sorted(set(args.envs) - set(PEER_ENVS)))} run natgrad's side only")
    print(f"{len(jobs)} runs ({', '.join(args.envs)} x seeds {seeds.start}-{seeds.stop - 1}, "
          f"{'natgrad and sb3-contrib ' + peer_version if peer else 'natgrad only'}) on "
          f"{args.workers} process(es) at a time -> {out_dir}; finished runs are reused, "
          "stopped ones resumed", flush=True)
    threads = 1 if args.workers > 1 else 0
    started = time.perf_counter()
    reports, failures, floor_reports = [], [], {}

    def run(job):
        side, env_id, seed, budgets, run_dir = job
        if args.report_only:  # only what is finished; nothing is started
            if side == "sb3":
                cached = bench_processes.peer_cache_path(Path(args.peer_cache), env_id, seed,
                                                         budgets, peer_version)
                report = bench_processes.read_json(cached)
                return None if report is None else {**report, "reused": True}
            settings = bench_processes.wanted_settings(
                env_id, seed, bench_common.trpo_overrides(args.set))
            report = bench_processes.finished_natgrad(run_dir, budgets, settings)
            return None if report is None else {**report, "reused": True}
        if side == "natgrad":
            return bench_processes.run_natgrad(env_id, seed, budgets, args, run_dir, threads)
        return bench_processes.run_peer(env_id, seed, budgets, args, run_dir, threads,
                                        version=peer_version,
                                        cache_dir=Path(args.peer_cache) if args.peer_cache
                                        else None)

    def floor(spec):
        env_id, steps, n_envs = spec
        path = out_dir / "floor" / f"{env_id.replace('/', '_')}-{steps}-x{n_envs}.json"
        if args.report_only:
            return bench_processes.read_json(path)
        return bench_processes.run_floor(env_id, steps, n_envs, out_dir / "floor", threads)

    with ThreadPoolExecutor(args.workers) as pool:
        # The floors go after the first seed's runs, under the same load as the runs.
        first = len(args.envs) * (2 if peer else 1)
        futures = [pool.submit(run, job) for job in jobs[:first]]
        floor_futures = {spec[0]: pool.submit(floor, spec) for spec in floors}
        futures += [pool.submit(run, job) for job in jobs[first:]]
        for future in futures:
            try:
                report = future.result()
            except (RuntimeError, bench_processes.SettingsMismatch) as exc:
                failures.append(str(exc))  # one failed run does not lose the others
                print(f"  FAILED: {exc}", flush=True)
                continue
            if report is not None:
                reports.append(report)
                bench_trpo_report.print_run(report)
        for env_id, future in floor_futures.items():
            try:
                if (report := future.result()) is not None:
                    floor_reports[env_id] = report
            except RuntimeError as exc:
                failures.append(str(exc))
                print(f"  FAILED: {exc}", flush=True)
    summary = bench_trpo_report.summarize(reports, list(args.envs), floor_reports)
    done = len(reports)
    document = {"benchmark": "trpo_returns", "total_seconds": time.perf_counter() - started,
                "runs_done": done, "runs_planned": len(jobs), "failed_runs": failures,
                "processes_at_a_time": args.workers, "peer": peer,
                "peer_version": peer_version, "overrides": args.set,
                "machine": bench_common.machine(), "floors": floor_reports, "envs": summary}
    bench_common.write_json(out_dir / "summary.json", document)
    curves = bench_trpo_report.plot_curves(jobs, out_dir / "curves", args)
    print()
    bench_trpo_report.print_returns_table(summary, peer is not None)
    print(f"\n{done} of {len(jobs)} runs done; {document['total_seconds']:.0f} s in this "
          f"invocation; {out_dir / 'summary.json'}; curves: {', '.join(map(str, curves))}")
    failed = [f"{env} {row['budget']:,}" for env, rows in summary.items() for row in rows
              if row["target"] is not None and not row["natgrad"]["mean"] >= row["target"]]
    if failed:
        print("below target (or no result): " + ", ".join(failed))
    if failures:
        print(f"{len(failures)} run(s) failed; see their logs")
    return 1 if failed or failures else 0


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
    parser.add_argument("--fresh", action="store_true",
                        help="train every natgrad run afresh (default: reuse finished runs "
                             "and resume stopped ones)")
    parser.add_argument("--report-only", action="store_true",
                        help="summarize the runs finished so far; start nothing")
    parser.add_argument("--peer-cache", default="bench_results/sb3_cache",
                        help="where sb3-contrib reports are cached by (env, seed, budgets, "
                             "version) ('' to disable)")
    parser.add_argument("--no-floor", dest="floor", action="store_false",
                        help="skip timing the bare simulator")
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
    peer, version, why = bench_processes.find_peer(args.peer_python)
    if peer is None:
        print(f"sb3-contrib side skipped ({why}); {bench_processes.SB3_PEER_HELP}", flush=True)
    else:
        args.peer_python = peer
    if args.speed:
        import bench_trpo_speed

        return bench_trpo_speed.run_speed(args, peer, version, PEER_ENVS)
    return run_returns(args, peer, version)


if __name__ == "__main__":
    sys.exit(main())
