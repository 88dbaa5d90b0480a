"""Where a TRPO run's time goes: start-up, then each update split into its parts.

Trains one env for ``--steps`` steps (default 100k) with its preset, timers
wrapped around the agent's parts, without changing them:

* ``import``: importing TensorFlow, Keras and the agent (measured from this script's start);
* ``build``: constructing the agent (networks, optimizers, the probe env);
* per update: ``env.step`` (the vector env's ``step``, autoreset included), ``policy forward``
  (the NumPy action sampling), ``rollout other`` (the rest of ``collect``: normalization,
  buffers, finiteness checks), ``advantages`` (value predictions and GAE), ``TF update``
  (the compiled policy step and value fit; the first call of each compiled function, which
  traces it, is counted apart as ``TF tracing``; with ``--overlap``, the main thread's wait for
  the value fit on the second thread), ``log + checkpoint`` (the remainder of the loop). The
  parts are the main thread's time and add up to the whole; with ``--overlap`` the value fit's
  own time is printed below them. ``--overlap`` turns ``overlap_value_fit`` on.

Prints a table (seconds and share of the whole process) and writes ``OUT_DIR/profile.json``.

Usage::

    python scripts/profile_trpo.py                       # CartPole-v1, 100k steps
    python scripts/profile_trpo.py --env Hopper-v5 --steps 20000
"""

from __future__ import annotations

import time

SCRIPT_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections import defaultdict  # noqa: E402
from pathlib import Path  # noqa: E402

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


def profile(env_id: str, steps: int | None, overrides: dict, sequential: bool) -> dict:
    timers = Timers()
    import threading

    import agents.trpo as trpo_module
    from agents import TRPO

    timers.seconds["import"] = time.perf_counter() - SCRIPT_START
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        agent = TRPO(env_id, run_dir=run_dir, **{"overlap_value_fit": not sequential,
                                                 **overrides})
        timers.seconds["build"] = time.perf_counter() - start

        fns, first = agent._update_fns, {"policy": True, "value": True, "both": True}

        def timed(name, fn):
            def call(*args):
                tracing, first[name] = first[name], False
                start = time.perf_counter()
                try:
                    return fn(*args)
                finally:
                    seconds = time.perf_counter() - start
                    timers.seconds[f"TF {name} (all)"] += seconds
                    if threading.current_thread() is threading.main_thread():
                        timers.seconds["TF tracing" if tracing else "TF update"] += seconds
            return call

        agent._update_fns = fns._replace(policy=timed("policy", fns.policy),
                                         value=timed("value", fns.value),
                                         both=timed("both", fns.both))
        overlap = agent._overlap.fit_while_collecting

        def fit_while_collecting(*args):  # the main thread's wait counts as "TF update"
            start, collected = time.perf_counter(), timers.seconds["collect"]
            try:
                return overlap(*args)
            finally:
                timers.seconds["TF update"] += (time.perf_counter() - start
                                               - (timers.seconds["collect"] - collected))

        agent._overlap.fit_while_collecting = fit_while_collecting
        policy = agent.policy
        policy.numpy_act = timers.wrap("policy forward", policy.numpy_act)
        gae = trpo_module.compute_gae
        trpo_module.compute_gae = timers.wrap("advantages", gae)
        worker = agent._ensure_worker()
        worker.envs.step = timers.wrap("env.step", worker.envs.step)
        worker.collect = timers.wrap("collect", worker.collect)
        agent._iteration = timers.wrap("iteration", agent._iteration)
        agent.value.numpy_values = timers.wrap("advantages", agent.value.numpy_values)
        try:
            learn_start = time.perf_counter()
            agent.learn(steps)
            learn = time.perf_counter() - learn_start
        finally:
            trpo_module.compute_gae = gae
    total = time.perf_counter() - SCRIPT_START
    s = timers.seconds
    s["rollout other"] = s["collect"] - s["env.step"] - s["policy forward"]
    s["log + checkpoint"] = learn - s["iteration"]  # learn() outside the iterations
    updates = agent.updates
    rows = {part: {"seconds": s[part], "share": s[part] / total,
                   "per_update_ms": 1e3 * s[part] / max(updates, 1)} for part in PARTS}
    accounted = sum(s[p] for p in PARTS)
    return {"env_id": env_id, "steps": int(agent.num_timesteps), "updates": updates,
            "batch": agent.config.batch_size, "total_seconds": total,
            "overlapped": not sequential,
            "value_fit_seconds": s["TF value (all)"] if not sequential else None,
            "unaccounted_seconds": total - accounted, "parts": rows,
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "python": sys.version.split()[0]}


def print_table(result: dict) -> None:
    print(f"{result['env_id']}: {result['steps']:,} steps, {result['updates']} updates of "
          f"{result['batch']} samples, {result['total_seconds']:.1f} s whole process")
    print(f"{'part':<18}{'seconds':>9}{'share':>8}{'ms/update':>11}")
    for part, row in result["parts"].items():
        print(f"{part:<18}{row['seconds']:>9.2f}{row['share']:>8.1%}"
              f"{row['per_update_ms']:>11.1f}")
    print(f"{'(unaccounted)':<18}{result['unaccounted_seconds']:>9.2f}")
    if result["overlapped"]:
        print(f"value fit, all of it (on a second thread, beside the rollout): "
              f"{result['value_fit_seconds']:.2f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="config overrides, JSON values (e.g. n_envs=8)")
    parser.add_argument("--overlap", action="store_true",
                        help="overlap_value_fit=true: the value fit beside the next rollout")
    parser.add_argument("--out-dir", default="bench_results/profile")
    args = parser.parse_args(argv)
    overrides = {}
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = json.loads(value)
    result = profile(args.env, args.steps, overrides, not args.overlap)
    result["overrides"] = overrides
    print_table(result)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = args.env.replace("/", "_")
    name += "_overlap" if args.overlap else ""
    (out / f"profile_{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
