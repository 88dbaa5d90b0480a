"""One worker of a 2-worker MultiWorkerMirroredStrategy cluster (``TF_CONFIG`` set by the
caller). In one process, to pay for TensorFlow's start and the cluster's set-up once:

1. ``minimize`` steps of the toy problem on this worker's half of the batch;
2. a short TRPO run on CartPole into ``RUN_DIR`` (argv[1]; the chief writes it), each worker
   stepping its own envs; then ``TRPO.resume`` of that run for two more updates.

Prints JSON: this worker's toy weights and losses, and its TRPO weights and counters before
and after the resume.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from agents.workers import all_reduce, strategy_from_environment  # noqa: E402

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

agent = TRPO("CartPole-v1", run_dir=sys.argv[1], strategy=strategy, **TRPO_SETTINGS)
agent.learn(UPDATES * agent.config.batch_size * agent.num_workers)
all_reduce(strategy, 0, "SUM")  # a barrier: the chief has written its last checkpoint
resumed = TRPO.resume(sys.argv[1], strategy=strategy)
resumed.learn((UPDATES + 2) * agent.config.batch_size * agent.num_workers)


def weights(trpo):
    return [v.numpy().tolist() for v in (*trpo.policy.trainable_variables,
                                         *trpo.value.trainable_variables)]

print(json.dumps({
    "worker": worker,
    "toy_weights": [w.numpy().tolist() for w in model.trainable_variables],
    "toy_losses": [float(strategy.experimental_local_results(s["loss_before"])[0])
                   for s in stats],
    "trpo_weights": weights(agent),
    "num_timesteps": agent.num_timesteps,
    "kl": [row["kl"] for row in agent.history],
    "resumed_from": resumed.history[UPDATES - 1]["env_steps"],
    "resumed_weights": weights(resumed),
    "resumed_timesteps": resumed.num_timesteps,
}))
