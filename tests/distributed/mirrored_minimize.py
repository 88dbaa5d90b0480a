"""Fresh process: ``minimize`` steps under MirroredStrategy on two logical CPU devices, each
replica on half the batch. Prints JSON: every replica's copy of every weight, and the losses."""

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
print(json.dumps({
    "copies": [[c.numpy().tolist() for c in w.value.values] for w in model.trainable_variables],
    "losses": [[float(v) for v in strategy.experimental_local_results(s["loss_before"])]
               for s in stats],
}))
