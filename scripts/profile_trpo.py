"""Where a TRPO run's time goes: start-up, then each update split into its parts.

Trains one env for ``--steps`` steps (default 100k) with its preset, timers wrapped around
the agent's public parts (``update_fns``, ``policy.numpy_act``, ``estimate_advantages``,
``worker``, ``ValueFitOverlap.fit_while_collecting``), without changing what they do:

* ``import``: importing TensorFlow, Keras and the agent (measured from this script's start);
* ``build``: constructing the agent (networks, optimizers, the probe env);
* per update: ``env.step`` (the vector env's ``step``, autoreset included), ``policy forward``
  (the NumPy action sampling), ``rollout other`` (the rest of ``collect``: normalization,
  buffers, finiteness checks), ``advantages`` (value predictions and GAE), ``TF update`` (the
  compiled policy step and value fit; the first call of each compiled function, which traces
  it, is counted apart as ``TF tracing``; with ``--overlap``, the main thread's wait for the
  value fit on the second thread), ``log + checkpoint`` (the rest of ``learn``: its time
  outside ``agent.wall_time``, the updates' own). The parts are the main thread's time and add
  up to the whole; with ``--overlap`` the value fit's own time is printed below them.
  ``--overlap`` turns ``overlap_value_fit`` on.

Prints a table (seconds and share of the whole process) and writes
``OUT_DIR/profile_ENV.json`` (``profile_ENV_overlap.json`` with ``--overlap``).

Usage::

    python scripts/profile_trpo.py                       # CartPole-v1, 100k steps
    python scripts/profile_trpo.py --env Hopper-v5 --steps 20000
"""

from __future__ import annotations

import time

SCRIPT_START = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PARTS = ("import", "build", "env.step", "policy forward", "rollout other", "advantages",
         "TF tracing", "TF update", "log + checkpoint")


class Timers:
    """Accumulated seconds per part, and a wrapper that times a callable into a part."""

    def __init__(self):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)

    def wrap(self, part: str, fn):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.calls[part] += 1
        return timed

    def wrap_compiled(self, name: str, fn):
        """Times a compiled update function: all its calls into ``TF {name} (all)``; those on
        the main thread also into ``TF tracing`` (the first, which traces it) or ``TF
        update``."""
        first = True

        def call(*args):
            nonlocal first
            tracing, first = first, False
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                seconds = time.perf_counter() - start
                self.seconds[f"TF {name} (all)"] += seconds
                if threading.current_thread() is threading.main_thread():
                    self.seconds["TF tracing" if tracing else "TF update"] += seconds
        return call

    def wrap_overlap_wait(self, fit_while_collecting):
        """Times :meth:`agents.overlap.ValueFitOverlap.fit_while_collecting` less the
        collection inside it (timed as ``collect``): the main thread's wait for the value fit,
        which counts as ``TF update``."""
        def timed(overlap, *args, **kwargs):
            start, collected = time.perf_counter(), self.seconds["collect"]
            try:
                return fit_while_collecting(overlap, *args, **kwargs)
            finally:
                self.seconds["TF update"] += (time.perf_counter() - start
                                              - (self.seconds["collect"] - collected))
        return timed


def profile(env_id: str, steps: int | None, overrides: dict, sequential: bool) -> dict:
    """Trains ``env_id`` for ``steps`` steps with the parts timed; returns the profile."""
    timers = Timers()
    from agents import TRPO
    from agents.overlap import ValueFitOverlap

    timers.seconds["import"] = time.perf_counter() - SCRIPT_START
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        agent = TRPO(env_id, run_dir=run_dir, **{"overlap_value_fit": not sequential,
                                                 **overrides})
        timers.seconds["build"] = time.perf_counter() - start
        fns = agent.update_fns
        agent.update_fns = fns._replace(**{name: timers.wrap_compiled(name, getattr(fns, name))
                                           for name in ("policy", "value", "both")})
        agent.policy.numpy_act = timers.wrap("policy forward", agent.policy.numpy_act)
        agent.estimate_advantages = timers.wrap("advantages", agent.estimate_advantages)
        worker = agent.worker
        worker.envs.step = timers.wrap("env.step", worker.envs.step)
        worker.collect = timers.wrap("collect", worker.collect)
        fit_while_collecting = ValueFitOverlap.fit_while_collecting
        ValueFitOverlap.fit_while_collecting = timers.wrap_overlap_wait(fit_while_collecting)
        try:
            learn_start = time.perf_counter()
            agent.learn(steps)
            learn = time.perf_counter() - learn_start
        finally:
            ValueFitOverlap.fit_while_collecting = fit_while_collecting
    total = time.perf_counter() - SCRIPT_START
    s = timers.seconds
    s["rollout other"] = s["collect"] - s["env.step"] - s["policy forward"]
    s["log + checkpoint"] = learn - agent.wall_time  # learn() outside the iterations
    updates = agent.updates
    rows = {part: {"seconds": s[part], "share": s[part] / total,
                   "per_update_ms": 1e3 * s[part] / max(updates, 1)} for part in PARTS}
    accounted = sum(s[p] for p in PARTS)
    return {"env_id": env_id, "steps": int(agent.num_timesteps), "updates": updates,
            "batch": agent.config.batch_size, "total_seconds": total,
            "overlapped": not sequential,
            "value_fit_seconds": s["TF value (all)"] if not sequential else None,
            "unaccounted_seconds": total - accounted, "parts": rows,
            **bench_common.machine()}


def print_table(result: dict) -> None:
    print(f"{result['env_id']}: {result['steps']:,} steps, {result['updates']} updates of "
          f"{result['batch']} samples, {result['total_seconds']:.1f} s whole process")
    rows = [[part, f"{row['seconds']:.2f}", f"{row['share']:.1%}", f"{row['per_update_ms']:.1f}"]
            for part, row in result["parts"].items()]
    rows.append(["(unaccounted)", f"{result['unaccounted_seconds']:.2f}", "", ""])
    print(bench_common.format_table(["part", "seconds", "share", "ms/update"], rows,
                                    align="lrrr"))
    if result["overlapped"]:
        print(f"value fit, all of it (on a second thread, beside the rollout): "
              f"{result['value_fit_seconds']:.2f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, as natgrad-trpo train --set (e.g. n_envs=8)")
    parser.add_argument("--overlap", action="store_true",
                        help="overlap_value_fit=true: the value fit beside the next rollout")
    parser.add_argument("--out-dir", default="bench_results/profile")
    args = parser.parse_args(argv)
    overrides = bench_common.trpo_overrides(args.set, parser)
    result = profile(args.env, args.steps, overrides, not args.overlap)
    result["overrides"] = overrides
    print_table(result)
    name = args.env.replace("/", "_") + ("_overlap" if args.overlap else "")
    bench_common.write_json(Path(args.out_dir) / f"profile_{name}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
