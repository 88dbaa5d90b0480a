"""Where the time of a distributed natural-gradient step goes: 1 process vs 2 workers.

One ``NaturalGradient.minimize`` step (Fisher in Gauss-Newton form, CG, KL line search) on a
17-64-64-6 tanh policy with a categorical output, the global batch fixed (``--batch``, default
8192 states) and split over the workers. Measured in one invocation, on this machine:

* ``1 process``: the plain step on the whole batch (no strategy);
* ``2 workers``: two processes on localhost under ``MultiWorkerMirroredStrategy``
  (``TF_CONFIG``, gRPC collectives), each on half the batch; the step then runs
  ``1 + cg_iters + line_search_max_tries`` all-reduces (loss and gradient; one per CG product;
  one per line-search trial, all of which run under a strategy, see ``natgrad.distribute``);
* one all-reduce of a parameter-sized float32 vector, alone, between the two workers.

Every time is the median of ``--repeats`` calls after a warm-up (tracing excluded). On a
2-core machine two workers share the two cores that one process had, so the distributed step
is not faster here: the point is what a collective costs and how many a step makes.

``--trpo STEPS`` also times the whole TRPO recipe, ``natgrad-trpo train CartPole-v1 --steps
STEPS`` with ``--workers 2`` and without, one after the other: wall time from process start,
the first update's time (cluster start, tracing) and the env steps per second after it, from
each run's ``progress.csv``.

``--update ENV`` times TRPO updates of ENV's preset (``--updates`` of them), in one process
and on 2 localhost workers, each worker's update timed inside the agent (no process or
cluster start): the first update (tracing included) and the median of the later ones, the
compiled update call alone (``update_fns.both``), and the collectives in that call's graph
(all-reduces and all-gathers; none sits in a loop, so each runs once per update), plus the
per-update agreement of the workers (:mod:`agents.worker_sync`, where this version has it).
With ``PYTHONPATH`` naming another checkout, it measures that version's ``agents``.

``--scaling io cpu`` measures TRPO's env steps per second after the first update (CartPole
preset, ``--n-envs`` per process): 1 process, 2 and 4 workers, and one process with
``vectorization="async"`` and as many envs; ``io``: each env step first sleeps 2 ms (a
simulator behind RPC); ``cpu``: CartPole itself.

Usage::

    python scripts/bench_distributed.py
    python scripts/bench_distributed.py --trpo 20000
    python scripts/bench_distributed.py --update CartPole-v1 --skip-step
    python scripts/bench_distributed.py --skip-step --scaling io cpu --updates 6
    python scripts/bench_distributed.py --batch 2048 --out-json bench_results/distributed_2048.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402
import trpo_recipe_timing  # noqa: E402

CG_ITERS, TRIES = 10, 10


def measure(batch: int, repeats: int) -> dict:
    """This process's measurements (a worker of the cluster in ``TF_CONFIG``, or alone)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from agents.workers import strategy_from_environment

    strategy = strategy_from_environment()
    import numpy as np
    import tensorflow as tf

    import natgrad

    workers = 1 if strategy is None else strategy.num_replicas_in_sync
    index = 0 if strategy is None else strategy.cluster_resolver.task_id
    local = batch // workers
    rng = np.random.default_rng(index)
    x = tf.constant(rng.normal(size=(local, 17)), tf.float32)
    actions = tf.constant(rng.integers(0, 6, size=local), tf.int32)
    advantages = tf.constant(rng.normal(size=local), tf.float32)

    def build():
        model = bench_common.tanh_mlp(17, (64, 64), 6, seed=0)
        optimizer = natgrad.NaturalGradient(max_kl=1e-9, cg_iters=CG_ITERS,
                                            line_search_max_tries=TRIES, damping=0.1)
        optimizer.build(model.trainable_variables)
        return model, optimizer

    scope = strategy.scope() if strategy is not None else None
    if scope is not None:
        with scope:
            model, optimizer = build()
    else:
        model, optimizer = build()
    params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    old_logits = tf.stop_gradient(model(x))
    old_log_prob = natgrad.distributions.categorical_log_prob(old_logits, actions)

    def step():  # max_kl 1e-9: every trial is rejected, so all of them run and nothing moves
        def loss_fn():
            log_prob = natgrad.distributions.categorical_log_prob(model(x), actions)
            return -tf.reduce_mean(tf.exp(log_prob - old_log_prob) * advantages)

        return optimizer.minimize(loss_fn, model.trainable_variables,
                                  outputs_fn=lambda: model(x),
                                  output_distribution=natgrad.distributions.CATEGORICAL)

    vector = tf.ones([params], tf.float32)

    def all_reduce():
        return tf.distribute.get_replica_context().all_reduce("SUM", vector)

    if strategy is None:
        step_fn = tf.function(step)
        reduce_fn = None
    else:
        step_fn = tf.function(lambda: strategy.run(step))
        reduce_fn = tf.function(lambda: strategy.run(all_reduce))

    def median_seconds(fn) -> float:
        def call_and_wait():
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, fn())

        call_and_wait()  # warm-up: tracing
        return bench_common.median_seconds(call_and_wait, repeats=repeats)

    result = {"workers": workers, "worker": index, "local_batch": local, "params": params,
              "step_s": median_seconds(step_fn)}
    if reduce_fn is not None:
        result["all_reduce_s"] = median_seconds(reduce_fn)
        result["collectives_per_step"] = 1 + CG_ITERS + TRIES
    return result


def run_cluster(workers: int, batch: int, repeats: int, *, extra: tuple = ()) -> dict:
    """Runs ``measure`` (or, with ``extra`` arguments, ``measure_update`` or
    ``measure_throughput``) in ``workers`` processes, each with its ``TF_CONFIG`` (1: a plain
    process); returns the chief's result."""
    from agents.workers import run_cluster

    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", "--batch", str(batch),
            "--repeats", str(repeats), *map(str, extra)]
    results = run_cluster(argv, workers, timeout=1200)
    for code, _, err in results:
        if code:
            raise RuntimeError(err[-2000:])
    return json.loads(results[0][1].strip().splitlines()[-1])


COLLECTIVE_KINDS = {"CollectiveReduceV2": "all-reduce", "CollectiveReduceV3": "all-reduce",
                    "CollectiveGatherV2": "all-gather", "CollectiveBcastSendV2": "broadcast",
                    "CollectiveBcastRecvV2": "broadcast", "CollectiveAllToAllV2": "all-to-all",
                    "CollectiveAllToAllV3": "all-to-all"}


def count_collectives(concrete_function) -> dict:
    """The collective ops in a traced function's graph and the functions it calls, by kind,
    and how many sit in a loop body (those would run once per iteration)."""
    graph = concrete_function.graph.as_graph_def()
    counts: dict = {}
    loop_bodies = {n.attr["body"].func.name for f in [graph, *graph.library.function]
                   for n in (f.node if f is graph else f.node_def) if n.op in (
                       "While", "StatelessWhile")}
    for function in [graph, *graph.library.function]:
        nodes = function.node if function is graph else function.node_def
        for node in nodes:
            kind = COLLECTIVE_KINDS.get(node.op)
            if kind is not None:
                counts[kind] = counts.get(kind, 0) + 1
                in_loop = function is not graph and function.signature.name in loop_bodies
                counts["in a loop"] = counts.get("in a loop", 0) + int(in_loop)
    return counts


def measure_update(env_id: str, updates: int) -> dict:
    """``updates`` TRPO updates of ``env_id``'s preset in this process (a worker of the cluster
    in ``TF_CONFIG``, or alone): the seconds of each update and of each compiled update call,
    and the collectives of that call."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from agents.workers import strategy_from_environment

    strategy = strategy_from_environment()
    import agents
    from agents import TRPO

    agent = TRPO(env_id, strategy=strategy)
    both, calls, cpu = agent.update_fns.both, [], []

    def timed_both(*args):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = both(*args)
        for value in result.values():
            value.numpy()  # (done: a compiled call returns once it has run)
        calls.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        return result

    agent.update_fns = agent.update_fns._replace(both=timed_both)
    agent.learn(updates * agent.config.batch_size * agent.num_workers)
    ends = [0.0] + [row["wall_time"] for row in agent.history]
    seconds = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    collectives = count_collectives(both.get_concrete_function()) if strategy else {}
    agreement = int(strategy is not None and (Path(agents.__file__).parent
                                              / "worker_sync.py").is_file())
    return {"env_id": env_id, "workers": agent.num_workers, "updates": updates,
            "batch_per_worker": agent.config.batch_size,
            "value_fit_steps": agent.config.critic_epochs * -(
                -agent.config.batch_size // agent.config.critic_batch_size),
            "first_update_s": seconds[0], "later_update_s": statistics.median(seconds[1:]),
            "first_call_s": calls[0], "later_call_s": statistics.median(calls[1:]),
            "first_call_cpu_s": cpu[0], "later_call_cpu_s": statistics.median(cpu[1:]),
            "collectives": collectives, "agreement_all_reduces": agreement,
            "collectives_per_update": sum(v for k, v in collectives.items() if k != "in a loop")
            + agreement}


def update_table(runs: list[dict]) -> str:
    """A markdown table of :func:`measure_update` results."""
    def kinds(run):
        parts = [f"{v} {k}" for k, v in sorted(run["collectives"].items()) if k != "in a loop"]
        if run["agreement_all_reduces"]:
            parts.append(f"{run['agreement_all_reduces']} agreement")
        return ", ".join(parts) or "-"

    return bench_common.markdown_table(
        ["setup", "first update", "later updates (median)", "compiled update: first call "
         "(its CPU time)", "later calls (median)", "collectives per update"],
        [[f"{run['workers']} worker{'s' if run['workers'] > 1 else ''}",
          f"{run['first_update_s']:.2f} s", f"{run['later_update_s']:.2f} s",
          f"{run['first_call_s']:.2f} s ({run['first_call_cpu_s']:.2f} s)",
          f"{run['later_call_s']:.3f} s",
          f"{run['collectives_per_update']} ({kinds(run)})" if run["workers"] > 1 else "0"]
         for run in runs])


SLEEP_S = 0.002  # the I/O-bound env's wait in each step


def sleepy_cartpole():
    """CartPole-v1 whose ``step`` first sleeps ``SLEEP_S``, as a simulator behind RPC waits."""
    import gymnasium as gym

    class SleepyStep(gym.Wrapper):
        def step(self, action):
            time.sleep(SLEEP_S)
            return self.env.step(action)

    return SleepyStep(gym.make("CartPole-v1"))


def measure_throughput(case: str, n_envs: int, vectorization: str, updates: int) -> dict:
    """``updates`` TRPO updates of the CartPole-v1 preset with ``n_envs`` envs on this worker
    (``case`` "io": :func:`sleepy_cartpole`; "cpu": CartPole-v1 itself); the env steps per
    second over all workers after the first update, from the agent's history."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from agents.workers import strategy_from_environment

    strategy = strategy_from_environment()
    from agents import TRPO

    agent = TRPO(sleepy_cartpole if case == "io" else "CartPole-v1", preset="CartPole-v1",
                 strategy=strategy, n_envs=n_envs, vectorization=vectorization)
    agent.learn(updates * agent.config.batch_size * agent.num_workers)
    first, last = agent.history[0], agent.history[-1]
    return {"case": case, "workers": agent.num_workers, "vectorization": vectorization,
            "envs": n_envs * agent.num_workers, "updates": updates,
            "first_update_s": first["wall_time"],
            "steps_per_s": (last["env_steps"] - first["env_steps"])
            / (last["wall_time"] - first["wall_time"])}


def print_scaling(case: str, n_envs: int, updates: int) -> list[dict]:
    """Env steps per second of 1 process, N = 2 and 4 workers (``n_envs`` envs each, sync)
    and one process with ``vectorization=async`` and as many envs, printed as a table."""
    runs = []
    for n in (1, 2, 4):
        for workers, envs, vectorization in ((n, n_envs, "sync"), (1, n * n_envs, "async")):
            runs.append(run_cluster(workers, 0, 0, extra=(
                "--throughput", case, "--n-envs", envs, "--vectorization", vectorization,
                "--updates", updates)))
            rate = runs[-1]["steps_per_s"]
            print(f"  {case}: {workers} x {envs} {vectorization} envs: {rate:,.0f} steps/s",
                  file=sys.stderr)
    base = runs[0]["steps_per_s"]
    what = (f"CartPole-v1 whose step sleeps {1e3 * SLEEP_S:g} ms (I/O-bound)" if case == "io"
            else "CartPole-v1 (CPU-bound)")
    print(f"\nTRPO env steps/s after the first update, {what}, CartPole preset, {n_envs} "
          f"envs per process, {updates} updates:\n")
    print(bench_common.markdown_table(
        ["N", "envs", "N workers (sync envs)", "vs 1 process", "1 process, async envs",
         "vs 1 process"],
        [[str(n), str(n * n_envs),
          f"{w['steps_per_s']:,.0f}", f"{w['steps_per_s'] / base:.2f}x",
          f"{a['steps_per_s']:,.0f}", f"{a['steps_per_s'] / base:.2f}x"]
         for n, w, a in zip((1, 2, 4), runs[0::2], runs[1::2], strict=True)]))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192, help="global batch (states)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trpo", type=int, default=0, metavar="STEPS",
                        help="also time the TRPO recipe for STEPS env steps, 2 workers vs 1")
    parser.add_argument("--update", metavar="ENV",
                        help="also time TRPO updates of ENV's preset, 1 process vs 2 workers, "
                             "and count each update's collectives")
    parser.add_argument("--updates", type=int, default=4,
                        help="updates to time (--update, --scaling)")
    parser.add_argument("--skip-step", action="store_true",
                        help="skip the natural-gradient step timing (the default part)")
    parser.add_argument("--scaling", nargs="+", choices=("io", "cpu"), default=(),
                        help="also measure env steps/s of 1 process, 2 and 4 workers and "
                             "async envs: io (each env step sleeps 2 ms), cpu (CartPole)")
    parser.add_argument("--n-envs", type=int, default=2, help="envs per process (--scaling)")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--throughput", help=argparse.SUPPRESS)
    parser.add_argument("--vectorization", default="sync", help=argparse.SUPPRESS)
    parser.add_argument("--out-json", default="bench_results/distributed.json")
    args = parser.parse_args()
    if args.measure:
        if args.throughput:
            result = measure_throughput(args.throughput, args.n_envs, args.vectorization,
                                        args.updates)
        elif args.update:
            result = measure_update(args.update, args.updates)
        else:
            result = measure(args.batch, args.repeats)
        print(json.dumps(result))
        return 0
    machine = bench_common.machine()
    record = {"machine": machine}
    if args.update:
        runs = [run_cluster(w, args.batch, args.repeats,
                            extra=("--update", args.update, "--updates", args.updates))
                for w in (1, 2)]
        import agents

        print(f"TRPO updates of the {args.update} preset ({runs[0]['batch_per_worker']:,} "
              f"samples per worker, {runs[0]['value_fit_steps']} Adam steps in the value "
              f"fit), agents from {Path(agents.__file__).parent}; {machine['cpus']} CPU "
              f"cores ({machine['processor']})\n")
        print(update_table(runs))
        record["update"] = runs
    for case in args.scaling:
        record[f"scaling_{case}"] = print_scaling(case, args.n_envs, args.updates)
    if args.skip_step:
        if args.trpo:
            record["trpo"] = trpo_recipe_timing.print_trpo(args.trpo)
        bench_common.write_json(args.out_json, record)
        print(f"\nJSON: {args.out_json}")
        return 0

    single = run_cluster(1, args.batch, args.repeats)
    double = run_cluster(2, args.batch, args.repeats)
    collectives = double["collectives_per_step"]
    communication = collectives * double["all_reduce_s"]
    print(f"natural-gradient step, global batch {args.batch}, {single['params']:,} parameters, "
          f"CG {CG_ITERS} iterations, {TRIES} line-search trials; "
          f"{machine['cpus']} CPU cores ({machine['processor']})\n")
    print(bench_common.markdown_table(
        ["setup", "local batch", "step", "all-reduces per step", "one all-reduce",
         "all-reduce share of the step"],
        [["1 process", str(single["local_batch"]), f"{1e3 * single['step_s']:.1f} ms", "0", "-",
          "-"],
         ["2 workers (localhost, MultiWorkerMirroredStrategy)", str(double["local_batch"]),
          f"{1e3 * double['step_s']:.1f} ms", str(collectives),
          f"{1e3 * double['all_reduce_s']:.2f} ms",
          f"{100 * communication / double['step_s']:.0f}%"]]))
    print(f"\nper CG iteration: one all-reduce of {single['params']:,} floats, "
          f"{1e3 * double['all_reduce_s']:.2f} ms; 2 workers / 1 process step time: "
          f"{double['step_s'] / single['step_s']:.2f}x")
    record.update({"batch": args.batch, "single": single, "two_workers": double})
    if args.trpo:
        record["trpo"] = trpo_recipe_timing.print_trpo(args.trpo)
    bench_common.write_json(args.out_json, record)
    print(f"\nJSON: {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
