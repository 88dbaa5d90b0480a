"""``model.fit`` with NaturalGradient through natgrad.enable_natural_gradient.

Small generated problems only (two Gaussian blobs, a linear regression), nothing downloaded.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import natgrad
from natgrad import distributions as D
from natgrad import keras_adapter
from natgrad.keras_mixed_precision import LossScale

N, DIM, CLASSES = 240, 2, 3


def _blobs(classes=CLASSES, seed=0):
    rng = np.random.default_rng(seed)
    centers = np.array([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.5]])[:classes]
    y = np.repeat(np.arange(classes), N // classes)
    x = (centers[y] + rng.normal(scale=1.0, size=(len(y), DIM))).astype("float32")
    perm = rng.permutation(len(y))
    return x[perm], y[perm].astype("int32")


def _mlp(out_units, activation=None, seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((DIM,)),
            keras.layers.Dense(16, activation="tanh"),
            keras.layers.Dense(out_units, activation=activation),
        ]
    )


def _raw(model):
    return [np.asarray(v.numpy()).tobytes() for v in model.variables]


def test_fit_lowers_loss_every_epoch_with_callbacks(tmp_path):
    x, y = _blobs()
    x_val, y_val = _blobs(seed=1)
    model = _mlp(CLASSES)
    model.compile(
        optimizer=natgrad.NaturalGradient(max_kl=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    assert natgrad.enable_natural_gradient(model) is model
    ckpt = tmp_path / "best.keras"
    logs = tmp_path / "logs"
    history = model.fit(
        x,
        y,
        batch_size=60,
        epochs=5,
        shuffle=False,
        verbose=0,
        validation_data=(x_val, y_val),
        callbacks=[
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=3),
            keras.callbacks.ModelCheckpoint(ckpt, monitor="val_loss", save_best_only=True),
            keras.callbacks.TensorBoard(log_dir=str(logs)),
        ],
    )
    assert set(history.history) == {
        "loss", "accuracy", "val_loss", "val_accuracy", "kl", "accepted", "line_search_tries"
    }
    losses = history.history["loss"]
    assert len(losses) == 5
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses
    assert history.history["val_accuracy"][-1] > 0.8
    assert int(model.optimizer.iterations) == 5 * (N // 60)
    assert ckpt.exists()
    assert any(p.is_file() for p in logs.rglob("*"))
    reloaded = keras.models.load_model(ckpt)
    assert isinstance(reloaded.optimizer, natgrad.NaturalGradient)


def test_early_stopping_stops_training():
    x, y = _blobs()
    model = _mlp(CLASSES)
    model.compile(
        optimizer=natgrad.NaturalGradient(max_kl=0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    natgrad.enable_natural_gradient(model)
    # min_delta larger than any improvement: stops after patience + 1 epochs.
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1, min_delta=10.0)
    history = model.fit(x, y, batch_size=N, epochs=20, verbose=0, callbacks=[stop])
    assert len(history.history["loss"]) == 2


def _one_hot(y, k):
    return np.eye(k, dtype="float32")[y]


CASES = {
    "sparse_ce_logits": (
        lambda: _mlp(CLASSES),
        lambda: keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        lambda y: y,
        D.CATEGORICAL,
    ),
    "sparse_ce_softmax": (
        lambda: _mlp(CLASSES, "softmax"),
        lambda: "sparse_categorical_crossentropy",
        lambda y: y,
        D.CATEGORICAL_PROBS,
    ),
    "categorical_ce_one_hot": (
        lambda: _mlp(CLASSES, "softmax"),
        lambda: keras.losses.CategoricalCrossentropy(),
        lambda y: _one_hot(y, CLASSES),
        D.CATEGORICAL_PROBS,
    ),
    "categorical_ce_logits": (
        lambda: _mlp(CLASSES),
        lambda: keras.losses.CategoricalCrossentropy(from_logits=True),
        lambda y: _one_hot(y, CLASSES),
        D.CATEGORICAL,
    ),
    "binary_ce_sigmoid": (
        lambda: _mlp(1, "sigmoid"),
        lambda: "binary_crossentropy",
        lambda y: (y == 0).astype("float32")[:, None],
        D.BERNOULLI_PROBS,
    ),
    "binary_ce_logits": (
        lambda: _mlp(1),
        lambda: keras.losses.BinaryCrossentropy(from_logits=True),
        lambda y: (y == 0).astype("float32")[:, None],
        D.BERNOULLI,
    ),
    "mse_regression": (
        lambda: _mlp(2),
        lambda: "mse",
        None,
        D.SQUARED_ERROR,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_supported_loss_trains(case):
    make_model, make_loss, make_targets, distribution = CASES[case]
    x, y = _blobs()
    if make_targets is None:  # a smooth regression target
        w = np.array([[1.0, -0.5], [0.3, 0.8]], dtype="float32")
        targets = np.tanh(x @ w) + 0.1
    else:
        targets = make_targets(y)
    model = make_model()
    loss = make_loss()
    assert natgrad.output_distribution_for_loss(loss) is distribution
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01), loss=loss)
    natgrad.enable_natural_gradient(model)
    before = float(model.evaluate(x, targets, verbose=0))
    history = model.fit(x, targets, batch_size=80, epochs=3, verbose=0)
    after = float(model.evaluate(x, targets, verbose=0))
    assert np.isfinite(history.history["loss"]).all()
    assert after < 0.9 * before, (before, after)


@pytest.mark.parametrize(
    "loss",
    ["mae", keras.losses.Huber(), "kl_divergence", keras.losses.MeanAbsoluteError()],
    ids=["mae", "huber", "kld", "mae_object"],
)
def test_unsupported_loss_raises(loss):
    model = _mlp(CLASSES)
    model.compile(optimizer=natgrad.NaturalGradient(), loss=loss)
    with pytest.raises(ValueError, match="supported losses: categorical_crossentropy") as info:
        natgrad.enable_natural_gradient(model)
    for name in ("sparse_categorical_crossentropy", "binary_crossentropy", "mean_squared_error"):
        assert name in str(info.value)


def test_enable_needs_natural_gradient_optimizer():
    model = _mlp(CLASSES)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="natgrad.NaturalGradient"):
        natgrad.enable_natural_gradient(model)


def test_loss_reduction_sum_rejected():
    model = _mlp(CLASSES)
    model.compile(
        optimizer=natgrad.NaturalGradient(),
        loss=keras.losses.SparseCategoricalCrossentropy(reduction="sum"),
    )
    with pytest.raises(ValueError, match="sum_over_batch_size"):
        natgrad.enable_natural_gradient(model)


def test_fit_without_enable_raises_runtime_error():
    x, y = _blobs()
    model = _mlp(CLASSES)
    model.compile(
        optimizer=natgrad.NaturalGradient(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.build((None, DIM))
    before = _raw(model)
    with pytest.raises(RuntimeError, match="enable_natural_gradient"):
        model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    assert _raw(model) == before


def test_save_load_round_trips_config_and_state(tmp_path):
    x, y = _blobs()
    model = _mlp(CLASSES)
    opt = natgrad.NaturalGradient(
        max_kl=0.02, damping=0.01, adaptive_damping=True, cg_iters=7, line_search_shrink=0.7
    )
    model.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    natgrad.enable_natural_gradient(model)
    model.fit(x, y, batch_size=80, epochs=2, verbose=0)
    assert int(opt.iterations) == 6
    assert opt.damping != 0.01  # adaptive damping moved
    path = tmp_path / "m.keras"
    model.save(path)

    loaded = keras.models.load_model(path)
    lopt = loaded.optimizer
    assert isinstance(lopt, natgrad.NaturalGradient)
    assert lopt.get_config() == opt.get_config()
    assert int(lopt.iterations) == 6
    assert lopt.damping == opt.damping
    for a, b in zip(loaded.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    # The config in the archive names the registered class.
    assert json.dumps(keras.optimizers.serialize(lopt)).count("NaturalGradient") >= 1

    natgrad.enable_natural_gradient(loaded)
    before = float(loaded.evaluate(x, y, verbose=0)[0])
    loaded.fit(x, y, batch_size=80, epochs=2, verbose=0)
    assert int(lopt.iterations) == 12
    assert float(loaded.evaluate(x, y, verbose=0)[0]) < before


def test_loaded_model_without_enable_cannot_train(tmp_path):
    x, y = _blobs()
    model = _mlp(CLASSES)
    model.compile(
        optimizer=natgrad.NaturalGradient(),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    natgrad.enable_natural_gradient(model)
    model.fit(x, y, batch_size=N, epochs=1, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    with pytest.raises(RuntimeError, match="enable_natural_gradient"):
        loaded.fit(x, y, batch_size=N, epochs=1, verbose=0)


def test_curvature_batch_fraction():
    x, y = _blobs()
    model = _mlp(CLASSES)
    model.compile(
        optimizer=natgrad.NaturalGradient(max_kl=0.01, curvature_batch_fraction=0.25),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, y, batch_size=60, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    assert np.isfinite(losses).all()


def test_dropout_does_not_break_the_trust_region_test():
    """Every forward pass of a step runs in training mode with the step's one set of dropout
    masks: fresh masks would make the KL at the start of the step non-zero and larger than a
    small max_kl, so every step would be rejected."""
    x, y = _blobs()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((DIM,)),
        keras.layers.Dense(32, activation="tanh"),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(CLASSES),
    ])
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=1e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    natgrad.enable_natural_gradient(model)
    before = [v.numpy().copy() for v in model.trainable_variables]
    model.fit(x, y, batch_size=len(x), epochs=3, verbose=0)
    after = model.trainable_variables
    changed = [not np.array_equal(b, v.numpy()) for b, v in zip(before, after, strict=True)]
    assert all(changed)


# natgrad.keras_adapter: the Keras internals the fit hook reads, checked on this Keras -----------


def test_keras_adapter_reads_what_keras_train_step_uses():
    x, y = _blobs()
    two_outputs = keras.Input((DIM,))
    hidden = keras.layers.Dense(4, activation="tanh")(two_outputs)
    model = keras.Model(two_outputs, [keras.layers.Dense(CLASSES)(hidden),
                                      keras.layers.Dense(1)(hidden)])
    assert keras_adapter.compiled_loss_weights(model) is None  # not compiled
    assert keras_adapter.compiled_loss_variables(model) == []
    model.compile(
        optimizer=natgrad.NaturalGradient(),
        loss=[keras.losses.SparseCategoricalCrossentropy(from_logits=True), "mse"],
        loss_weights=[1.0, 0.5],
    )
    assert keras_adapter.compiled_loss_weights(model) == [1.0, 0.5]
    y_pred = keras_adapter.call_model(model, x[:8])
    targets = (y[:8], x[:8, :1])
    loss = keras_adapter.compiled_loss(model, x[:8], targets, y_pred, None)
    expected = model.compute_loss(x[:8], targets, y_pred, training=True)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
    assert keras_adapter.compiled_loss_variables(model)  # per-output loss metrics, once built

    tracker = keras_adapter.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"
    tracker.update_state(2.0, sample_weight=3)
    assert float(tracker.count) == 3.0 and float(tracker.result()) == 2.0

    model.make_train_function()
    assert model.train_function is not None
    traced = []

    def train_step(data):
        traced.append(data)
        return {"marker": 7.0}

    keras_adapter.install_train_step(model, train_step)
    assert model.train_function is None  # so the next fit compiles the new step
    history = model.fit(x[:8], targets, batch_size=4, epochs=1, verbose=0)
    assert traced and history.history["marker"] == [7.0]


def test_keras_adapter_calls_models_without_a_training_argument():
    class NoTrainingArg(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = NoTrainingArg()
    out = keras_adapter.call_model(model, np.ones((3, DIM), "float32"), training=True)
    assert tuple(out.shape) == (3, 2)


def test_keras_adapter_loss_scale_moves_as_keras_loss_scale_optimizer():
    """The dynamic scale the fit hook reads is the one Keras' own train step scales the loss
    by, and natgrad's update moves it as ``LossScaleOptimizer.apply`` does (the truth here)."""
    assert keras_adapter.loss_scale_state(keras.optimizers.SGD(), []) is None
    weight = keras.Variable(np.ones(2, "float32"))

    def wrapped():
        return keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.0), initial_scale=8.0,
                                                   dynamic_growth_steps=2)

    keras_optimizer, ours = wrapped(), wrapped()
    keras_optimizer.build([weight])
    state = keras_adapter.loss_scale_state(ours, [weight])  # builds it
    assert float(ours.scale_loss(1.0)) == float(state.scale.numpy()) == 8.0
    for finite in (True, True, True, False, True, True):
        keras_optimizer.apply([tf.constant([1.0, 1.0 if finite else np.inf])], [weight])
        LossScale(state).update(tf.constant(finite))
        assert float(state.scale.numpy()) == float(keras_optimizer.dynamic_scale.numpy())
        assert int(state.counter.numpy()) == int(keras_optimizer.step_counter.numpy())
    assert float(state.scale.numpy()) == 16.0  # 8 -> 16 -> 8 (overflow) -> 16
