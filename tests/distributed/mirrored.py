"""Fresh process, two logical CPU devices, MirroredStrategy, each replica on half the batch:

1. ``minimize`` steps of the toy problem;
2. one ``model.fit`` epoch of the toy classifier with the ``enable_natural_gradient`` hook.

Prints JSON: every replica's copy of every weight after each part, the step losses, and the
epoch's logged loss.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf  # noqa: E402

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
sys.path.insert(0, os.path.dirname(__file__))

import toy  # noqa: E402

steps = int(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
model, distributed = toy.distributed_step(strategy)
x, y = toy.data()
half = len(x) // 2


def shard(array):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(array[half * ctx.replica_id_in_sync_group:][:half]))


stats = [distributed(shard(x), shard(y)) for _ in range(steps)]

with strategy.scope():
    fit_model = toy.compiled_classifier()
history = fit_model.fit(*toy.fit_data(), batch_size=toy.FIT_BATCH, epochs=1, shuffle=False,
                        verbose=0)


def copies(variables):
    return [[c.numpy().tolist() for c in w.value.values] for w in variables]


print(json.dumps({
    "copies": copies(model.trainable_variables),
    "losses": [[float(v) for v in strategy.experimental_local_results(s["loss_before"])]
               for s in stats],
    "fit_copies": copies(fit_model.trainable_variables),
    "fit_history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
}))
