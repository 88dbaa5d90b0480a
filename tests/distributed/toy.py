"""The toy problem every distributed check shares: data, a float64 classifier, its step.

Imported by the scripts here (each run in a fresh process, since a ``tf.distribute`` setup
must come before TensorFlow starts) and by ``tests/test_distribute.py`` for the single-device
reference.
"""

import keras
import numpy as np
import tensorflow as tf

import natgrad

N, DIM, CLASSES = 64, 4, 3
FIT_N, FIT_BATCH = 512, 128  # fit: whole batches of the reference size (no ring top-up)


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(N, DIM)), rng.integers(0, CLASSES, size=N).astype("int32")


def model_and_optimizer():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((DIM,), dtype="float64"),
                              keras.layers.Dense(8, activation="tanh", dtype="float64"),
                              keras.layers.Dense(CLASSES, dtype="float64")])
    return model, natgrad.NaturalGradient(max_kl=0.01, damping=1e-3, cg_iters=6,
                                          cg_preconditioner="diagonal",
                                          line_search_max_tries=5)


def step_fn(model, optimizer):
    """``step(x, y)``: one ``minimize`` call on the batch (or the replica's shard of it)."""

    def step(x, y):
        def loss_fn():
            return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, model(x), from_logits=True))

        return optimizer.minimize(loss_fn, model.trainable_variables,
                                  outputs_fn=lambda: model(x),
                                  output_distribution=natgrad.distributions.CATEGORICAL)

    return step


def fit_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(FIT_N, DIM))
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32") + (x[:, 2] > 1).astype("int32")


def compiled_classifier():
    """The toy classifier compiled for ``fit`` with NaturalGradient and the hook."""
    model, optimizer = model_and_optimizer()
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(
        from_logits=True), metrics=["accuracy"])
    return natgrad.enable_natural_gradient(model)


def distributed_step(strategy):
    """``(model, step)``: the model and optimizer built in ``strategy``'s scope, and
    ``step(x, y)`` under ``strategy.run``, compiled: each replica on its own ``x, y``."""
    with strategy.scope():
        model, optimizer = model_and_optimizer()
        optimizer.build(model.trainable_variables)
    replica_step = step_fn(model, optimizer)

    @tf.function
    def step(x, y):
        return strategy.run(replica_step, args=(x, y))

    return model, step


def single_device_run(steps: int) -> tuple[list, list]:
    """Weights and losses after ``steps`` steps on the whole batch, one device."""
    model, optimizer = model_and_optimizer()
    step = tf.function(step_fn(model, optimizer))
    x, y = data()
    losses = [float(step(tf.constant(x), tf.constant(y))["loss_before"]) for _ in range(steps)]
    return [np.asarray(w) for w in model.trainable_variables], losses


# The short TRPO run of multi_worker.py: CartPole with both normalizers on, ragged value-fit
# minibatches (64 = 24 + 24 + 16).
TRPO_SETTINGS = {"n_envs": 2, "n_steps": 32, "critic_epochs": 3, "critic_batch_size": 24,
                 "cg_iters": 4, "line_search_max_tries": 4, "policy_hidden": (16,),
                 "value_hidden": (16,), "checkpoint_every": 1, "eval_episodes": 1,
                 "normalize_obs": True, "normalize_reward": True}


def value_fit_batch(worker: int, n: int, epochs: int, dim: int) -> tuple:
    """Worker ``worker``'s inputs of one value fit: ``(obs [n, dim], returns [n], order
    [epochs, n])``."""
    rng = np.random.default_rng(10 + worker)
    obs = rng.standard_normal((n, dim)).astype(np.float32)
    returns = (3.0 * obs[:, 0] - obs[:, -1] + rng.standard_normal(n)).astype(np.float32)
    order = np.stack([rng.permutation(n) for _ in range(epochs)]).astype(np.int32)
    return obs, returns, order
