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

Usage::

    python scripts/bench_distributed.py
    python scripts/bench_distributed.py --trpo 20000
    python scripts/bench_distributed.py --batch 2048 --out-json bench_results/distributed_2048.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402

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


def run_cluster(workers: int, batch: int, repeats: int) -> dict:
    """Runs ``measure`` in ``workers`` processes, each with its ``TF_CONFIG`` (1: a plain
    process); returns the chief's result."""
    from agents.workers import run_cluster

    argv = [sys.executable, str(Path(__file__).resolve()), "--measure", "--batch", str(batch),
            "--repeats", str(repeats)]
    results = run_cluster(argv, workers, timeout=600)
    for code, _, err in results:
        if code:
            raise RuntimeError(err[-2000:])
    return json.loads(results[0][1].strip().splitlines()[-1])


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
    (first_steps, first_time), (last_steps, last_time) = rows[0], rows[-1]
    return {"workers": workers, "wall_s": wall, "first_update_s": first_time,
            "steps_per_s_after_first": (last_steps - first_steps) / (last_time - first_time),
            "eval": json.loads((out / "eval.json").read_text())["mean_return"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192, help="global batch (states)")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--trpo", type=int, default=0, metavar="STEPS",
                        help="also time the TRPO recipe for STEPS env steps, 2 workers vs 1")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out-json", default="bench_results/distributed.json")
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.batch, args.repeats)))
        return 0

    single = run_cluster(1, args.batch, args.repeats)
    double = run_cluster(2, args.batch, args.repeats)
    collectives = double["collectives_per_step"]
    communication = collectives * double["all_reduce_s"]
    machine = bench_common.machine()
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
    record = {"batch": args.batch, "single": single, "two_workers": double, "machine": machine}
    if args.trpo:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            runs = [time_trpo(args.trpo, w, Path(tmp) / f"w{w}") for w in (2, 1)]
        print(f"\nnatgrad-trpo train CartPole-v1 --steps {args.trpo}:\n")
        print(bench_common.markdown_table(
            ["workers", "wall time", "first update", "env steps/s after it", "eval return"],
            [[str(run["workers"]), f"{run['wall_s']:.1f} s", f"{run['first_update_s']:.1f} s",
              f"{run['steps_per_s_after_first']:,.0f}", f"{run['eval']:.1f}"] for run in runs]))
        record["trpo"] = runs
    bench_common.write_json(args.out_json, record)
    print(f"\nJSON: {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
