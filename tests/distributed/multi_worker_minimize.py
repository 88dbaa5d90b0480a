"""One worker of a MultiWorkerMirroredStrategy cluster (``TF_CONFIG`` set by the caller):
``minimize`` steps on this worker's half of the batch. Prints JSON: its weights and losses."""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

import toy  # noqa: E402

steps = int(sys.argv[1])
strategy = tf.distribute.MultiWorkerMirroredStrategy()
worker = strategy.cluster_resolver.task_id
with strategy.scope():
    model, optimizer = toy.model_and_optimizer()
    optimizer.build(model.trainable_variables)
replica_step = toy.step_fn(model, optimizer)


@tf.function
def distributed(x, y):
    return strategy.run(replica_step, args=(x, y))


x, y = toy.data()
half = len(x) // 2
xs, ys = tf.constant(x[half * worker:][:half]), tf.constant(y[half * worker:][:half])
stats = [distributed(xs, ys) for _ in range(steps)]
print(json.dumps({
    "worker": worker,
    "weights": [w.numpy().tolist() for w in model.trainable_variables],
    "losses": [float(strategy.experimental_local_results(s["loss_before"])[0]) for s in stats],
}))
