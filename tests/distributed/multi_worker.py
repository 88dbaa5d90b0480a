"""One worker of a 2-worker MultiWorkerMirroredStrategy cluster (``TF_CONFIG`` set by the
caller). In one process, to pay for TensorFlow's start and the cluster's set-up once:

1. ``minimize`` steps of the toy problem on this worker's half of the batch;
2. one value fit of a fresh CartPole agent on this worker's ``toy.value_fit_batch``;
3. a short TRPO run of that agent (``toy.TRPO_SETTINGS``: both normalizers on) into ``RUN_DIR``
   (argv[1]; the chief writes it), each worker stepping its own envs and recording every
   sample it feeds its running statistics; then ``TRPO.resume`` of that run for two more
   updates.

Prints JSON: this worker's toy weights and losses, its value weights after part 2, and its
TRPO weights, statistics, samples and counters before and after the resume.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(__file__))

from agents.workers import all_reduce, strategy_from_environment  # noqa: E402

strategy = strategy_from_environment()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import toy  # noqa: E402

from agents import TRPO  # noqa: E402

STEPS, UPDATES = 2, 3

worker = strategy.cluster_resolver.task_id
model, distributed = toy.distributed_step(strategy)
x, y = toy.data()
half = len(x) // 2
xs, ys = tf.constant(x[half * worker:][:half]), tf.constant(y[half * worker:][:half])
stats = [distributed(xs, ys) for _ in range(STEPS)]

agent = TRPO("CartPole-v1", run_dir=sys.argv[1], strategy=strategy, **toy.TRPO_SETTINGS)
agent.update_fns.value(*toy.value_fit_batch(worker, agent.config.batch_size,
                                            agent.config.critic_epochs, dim=4))
value_fit_weights = [v.numpy().tolist() for v in agent.value.trainable_variables]
samples = {"obs": [], "returns": []}


def recording(rms, key):
    """Records every batch ``rms.update`` is given (as rows of numbers)."""
    update = rms.update

    def record(batch):
        samples[key].extend(np.array(batch, np.float64).reshape(len(batch), -1).tolist())
        update(batch)

    rms.update = record


recording(agent.obs_rms, "obs")
recording(agent.reward_scaler.rms, "returns")
agent.learn(UPDATES * agent.config.batch_size * agent.num_workers)
all_reduce(strategy, 0, "SUM")  # a barrier: the chief has written its last checkpoint
resumed = TRPO.resume(sys.argv[1], strategy=strategy)
resumed.learn((UPDATES + 2) * agent.config.batch_size * agent.num_workers)


def weights(trpo):
    return [v.numpy().tolist() for v in (*trpo.policy.trainable_variables,
                                         *trpo.value.trainable_variables)]


def statistics(trpo):
    return {key: {"count": rms.count, "mean": np.ravel(rms.mean).tolist(),
                  "var": np.ravel(rms.var).tolist()}
            for key, rms in (("obs", trpo.obs_rms), ("returns", trpo.reward_scaler.rms))}


print(json.dumps({
    "worker": worker,
    "toy_weights": [w.numpy().tolist() for w in model.trainable_variables],
    "toy_losses": [float(strategy.experimental_local_results(s["loss_before"])[0])
                   for s in stats],
    "value_fit_weights": value_fit_weights,
    "trpo_weights": weights(agent),
    "statistics": statistics(agent),
    "samples": samples,
    "num_timesteps": agent.num_timesteps,
    "kl": [row["kl"] for row in agent.history],
    "resumed_from": resumed.history[UPDATES - 1]["env_steps"],
    "resumed_weights": weights(resumed),
    "resumed_statistics": statistics(resumed),
    "resumed_timesteps": resumed.num_timesteps,
}))
