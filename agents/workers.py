"""TRPO on several worker processes with ``tf.distribute.MultiWorkerMirroredStrategy``.

Each worker steps its own envs (seeded apart) and every update is one step on all workers'
batches together (:mod:`agents.update`, :mod:`natgrad.distribute`): all workers hold identical
weights after each update. Before it, the workers agree (:mod:`agents.worker_sync`): their
normalizers' statistics are merged, so they stay identical too, and if one worker's batch is
not finite, every worker stops at that update. Worker 0, the chief, writes the run directory
(config, progress, checkpoints, evaluation); the others only read it (a resume loads the
chief's checkpoint).

A worker learns its place from ``TF_CONFIG``, TensorFlow's cluster description::

    {"cluster": {"worker": ["host0:port", "host1:port"]}, "task": {"type": "worker", "index": 0}}

On several machines, set ``TF_CONFIG`` on each host (same cluster, its own index) and run the
same ``natgrad-trpo train ... --out DIR`` on each, ``DIR`` on a shared file system.
``natgrad-trpo train --workers N`` does this on one machine: :func:`launch` picks N free
loopback ports and starts N copies of the command, each with its ``TF_CONFIG``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

TF_CONFIG = "TF_CONFIG"


def cluster_size() -> int:
    """Workers named by ``TF_CONFIG`` (1 without one)."""
    try:
        config = json.loads(os.environ.get(TF_CONFIG) or "{}")
        return max(1, len(config.get("cluster", {}).get("worker", [])))
    except (ValueError, AttributeError):
        raise ValueError(f"{TF_CONFIG} is not a valid cluster description: "
                         f"{os.environ.get(TF_CONFIG)!r}") from None


def strategy_from_environment():
    """A ``MultiWorkerMirroredStrategy`` when ``TF_CONFIG`` names several workers, else None.

    Call it before TensorFlow runs any op: the strategy sets up the collectives.
    """
    if cluster_size() < 2:
        return None
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def task_index() -> int:
    """This process's worker index in ``TF_CONFIG`` (0 without one)."""
    try:
        return int(json.loads(os.environ.get(TF_CONFIG) or "{}").get("task", {}).get("index", 0))
    except (ValueError, AttributeError):
        return 0


def worker_position(strategy) -> tuple[int, int]:
    """``(index, count)`` of this worker; ``(0, 1)`` without a multi-worker strategy."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if strategy is None or resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    return int(resolver.task_id), int(strategy.num_replicas_in_sync)


def all_reduce(strategy, value: float, op: str) -> float:
    """``value`` reduced (``"SUM"`` or ``"MEAN"``) over every worker: a collective, so also a
    barrier (each worker returns once all have called it)."""
    import tensorflow as tf

    def reduce():
        context = tf.distribute.get_replica_context()
        return context.all_reduce(op, tf.constant(float(value), tf.float64))

    result = tf.function(lambda: strategy.run(reduce))()
    return float(strategy.experimental_local_results(result)[0])


def check_worker_settings(cfg, num_workers: int) -> None:
    """Raises ``ValueError`` for a setting several workers do not support yet:
    ``on_non_finite="skip"``. (Every worker does stop at the same update when one meets a NaN,
    :mod:`agents.worker_sync`; but a skipped batch is counted and its envs re-seeded as one
    process's, which would make the workers' counts and envs wrong.)"""
    if num_workers > 1 and cfg.on_non_finite == "skip":
        raise ValueError(
            "with several workers, on_non_finite must be 'stop' (every worker then stops at "
            "the update where one met a NaN or infinity): 'skip' is not supported yet")


def check_same_start(strategy, updates: int) -> None:
    """Raises ``RuntimeError`` unless every worker starts training at ``updates`` updates
    (a worker that loaded an older checkpoint would wait forever in a collective)."""
    mean = all_reduce(strategy, updates, "MEAN")
    if all_reduce(strategy, (updates - mean) ** 2, "SUM") != 0.0:  # exact for such integers
        raise RuntimeError(f"the workers start from different updates (this one {updates}, "
                           f"their mean {mean:g}): the run directory changed while they "
                           "loaded it; start them again")


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports free on 127.0.0.1 right now."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def cluster_configs(workers: int) -> list[str]:
    """``TF_CONFIG`` for each of ``workers`` processes on this machine (free loopback ports)."""
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(workers)]}
    return [json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
            for index in range(workers)]


def run_cluster(command: list[str], workers: int, *,
                timeout: float) -> list[tuple[int, str, str]]:
    """Runs ``command`` as ``workers`` processes on this machine, each with its ``TF_CONFIG``
    (none for a single process), waits for all of them, and returns each one's ``(exit
    status, stdout, stderr)`` in worker order. Processes still running after ``timeout``
    seconds are killed (``subprocess.TimeoutExpired`` is raised)."""
    envs = ([{**os.environ, TF_CONFIG: config} for config in cluster_configs(workers)]
            if workers > 1 else [dict(os.environ)])
    procs = []
    try:
        for env in envs:
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
        outputs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs, strict=True)]


def launch(argv: list[str], workers: int, *, timeout: float | None = None) -> int:
    """Runs ``python -m agents ARGV`` as ``workers`` processes on this machine; returns the
    exit status (the first failure's, else the chief's).

    The chief's output goes to this terminal, the others' is discarded unless they fail. If a
    worker fails, the rest are stopped (they would wait for it forever); Ctrl-C and SIGTERM
    are passed on to every worker, so the chief checkpoints before they exit.
    """
    procs, logs = [], [None] + [tempfile.TemporaryFile() for _ in range(1, workers)]
    for index, tf_config in enumerate(cluster_configs(workers)):
        env = {**os.environ, TF_CONFIG: tf_config}
        quiet = {} if index == 0 else {"stdout": subprocess.DEVNULL, "stderr": logs[index]}
        procs.append(subprocess.Popen([sys.executable, "-m", "agents", *argv], env=env,
                                      **quiet))

    def forward(signum, frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            p.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    for index, (p, log) in enumerate(zip(procs, logs, strict=True)):
        if log is not None:
            if p.returncode not in (0, -signal.SIGKILL):
                log.seek(0)
                sys.stderr.write(f"worker {index}: {log.read().decode(errors='replace')}")
            log.close()
    codes = [p.returncode for p in procs]
    return next((c for c in codes if c not in (0, -signal.SIGKILL)), codes[0])
