"""One worker of a 2-worker MultiWorkerMirroredStrategy cluster (``TF_CONFIG`` set by the
caller). In one process, to pay for TensorFlow's start and the cluster's set-up once:

1. ``minimize`` steps of the toy problem on this worker's half of the batch;
2. a short TRPO run on CartPole into ``RUN_DIR`` (argv[1]; the chief writes it), each worker
   stepping its own envs.

Prints JSON: this worker's toy weights and losses, and its TRPO weights and counters.
"""

import json
import os
import sys
import time

START = time.perf_counter()

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from agents.workers import strategy_from_environment  # noqa: E402

strategy = strategy_from_environment()

import tensorflow as tf  # noqa: E402
import toy  # noqa: E402

from agents import TRPO  # noqa: E402

STEPS, UPDATES = 2, 3
TRPO_SETTINGS = {"n_envs": 2, "n_steps": 32, "critic_epochs": 1, "critic_batch_size": 64,
                 "cg_iters": 4, "line_search_max_tries": 4, "policy_hidden": (16,),
                 "value_hidden": (16,), "checkpoint_every": 1, "eval_episodes": 1}

worker = strategy.cluster_resolver.task_id
model, distributed = toy.distributed_step(strategy)
x, y = toy.data()
half = len(x) // 2
xs, ys = tf.constant(x[half * worker:][:half]), tf.constant(y[half * worker:][:half])
stats = [distributed(xs, ys) for _ in range(STEPS)]
print(f"toy done {time.perf_counter() - START:.1f} s", file=sys.stderr)

agent = TRPO("CartPole-v1", run_dir=sys.argv[1], strategy=strategy, **TRPO_SETTINGS)
print(f"agent built {time.perf_counter() - START:.1f} s", file=sys.stderr)
agent.learn(UPDATES * agent.config.batch_size * agent.num_workers)
print(f"learned {time.perf_counter() - START:.1f} s", file=sys.stderr)
print(json.dumps({
    "worker": worker,
    "toy_weights": [w.numpy().tolist() for w in model.trainable_variables],
    "toy_losses": [float(strategy.experimental_local_results(s["loss_before"])[0])
                   for s in stats],
    "trpo_weights": [v.numpy().tolist() for v in (*agent.policy.trainable_variables,
                                                  *agent.value.trainable_variables)],
    "num_timesteps": agent.num_timesteps,
    "kl": [row["kl"] for row in agent.history],
}))
