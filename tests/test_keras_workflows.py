"""Keras workflows with NaturalGradient in ``model.fit``, written as a user writes them.

One test per workflow: small and ragged batches, dropout, BatchNorm, Embedding, mixed
precision, several outputs, ``reduction="mean"``, re-compiling with Adam, and the step's
statistics in ``History``. Data: scikit-learn's bundled digits (nothing is
downloaded) or small generated arrays.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits

import natgrad

LOGITS_CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def _digits_mlp(seed=0, *middle):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(64, activation="tanh"), *middle,
         keras.layers.Dense(10)]
    )


class FullDataLossChange(keras.callbacks.Callback):
    """The change of the full-training-set loss (inference mode) made by every ``fit`` step."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y, self.changes = x, y, []

    def _loss(self):
        return float(LOGITS_CE(self.y, self.model(self.x, training=False)))

    def on_train_batch_begin(self, batch, logs=None):
        self._before = self._loss()

    def on_train_batch_end(self, batch, logs=None):
        self.changes.append(self._loss() - self._before)


# Any batch size is safe ------------------------------------------------------------------------


def test_ragged_last_batch_of_five_does_not_undo_training(digits):
    """All 1,797 digits at batch 128: the last batch of each epoch has 5 samples. Before the
    fix, that step raised the full-data loss of a trained model by up to 0.9."""
    x, y = digits
    model = _digits_mlp(0)
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    model.fit(x, y, batch_size=128, epochs=6, verbose=0)  # a trained model
    watch = FullDataLossChange(x, y)
    model.fit(x, y, batch_size=128, epochs=2, verbose=0, callbacks=[watch])
    assert len(watch.changes) == 2 * 15
    assert max(watch.changes) <= 0.02, max(watch.changes)


def test_default_batch_size_never_raises_the_full_data_loss(digits):
    """``fit``'s default batch size (32; the last batch of the 1,797 digits has 5 samples)."""
    x, y = digits
    model = _digits_mlp(0)
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2), loss=LOGITS_CE,
                  metrics=["accuracy"])
    natgrad.enable_natural_gradient(model)
    watch = FullDataLossChange(x, y)
    history = model.fit(x, y, epochs=2, verbose=0, callbacks=[watch])
    assert len(watch.changes) == 2 * 57
    assert max(watch.changes) <= 0.02, max(watch.changes)
    accuracy = history.history["accuracy"]
    assert accuracy[-1] > 0.95, accuracy


# Dropout: one consistent model per step --------------------------------------------------------


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_dropout_trains_as_well_as_adam(digits, rate):
    x, y = digits
    val_loss = {}
    for name, optimizer in (
        ("natural_gradient", natgrad.NaturalGradient(max_kl=0.01, damping=1e-2)),
        ("adam", keras.optimizers.Adam()),
    ):
        model = _digits_mlp(0, keras.layers.Dropout(rate))
        model.compile(optimizer=optimizer, loss=LOGITS_CE)
        if name == "natural_gradient":
            natgrad.enable_natural_gradient(model)
        keras.utils.set_random_seed(1)
        history = model.fit(x, y, epochs=2, validation_split=0.25, verbose=0)
        val_loss[name] = history.history["val_loss"][-1]
    assert val_loss["natural_gradient"] <= val_loss["adam"], val_loss


def test_dropout_masks_are_fixed_within_a_step(digits):
    """A tiny step with Dropout(0.5): the loss and the KL are compared under one set of masks,
    so the first trial point is always accepted and the KL is second-order small. With fresh
    masks on every forward pass, half the trials would look like a loss increase."""
    x, y = digits
    model = _digits_mlp(0, keras.layers.Dropout(0.5))
    model.compile(
        optimizer=natgrad.NaturalGradient(learning_rate=1e-3, max_kl=0.01, damping=1e-2),
        loss=LOGITS_CE,
    )
    natgrad.enable_natural_gradient(model)
    history = model.fit(x[:512], y[:512], batch_size=128, epochs=2, verbose=0)
    assert history.history["accepted"] == [1.0, 1.0]
    assert history.history["line_search_tries"] == [1.0, 1.0]
    assert max(history.history["kl"]) < 1e-6


# BatchNorm: statistics updated once per step ---------------------------------------------------


def _batchnorm_model(seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [keras.Input((64,)), keras.layers.BatchNormalization(momentum=0.9),
         keras.layers.Dense(10)]
    )


@pytest.mark.parametrize("rejected", [False, True], ids=["accepted", "rejected"])
def test_batchnorm_statistics_move_once_per_step(digits, rejected):
    """The BatchNorm layer sees the inputs themselves, so after one step from zero mean and unit
    variance the moving statistics must be ``0.1·mean(x)`` and ``0.9 + 0.1·var(x)``, accepted
    step or not. (Before: one update per forward pass, including rejected trial weights.)"""
    x, y = digits
    x, y = x[:256], y[:256]
    model = _batchnorm_model()
    # A huge learning rate without a trust region: every trial raises the loss, all rejected.
    optimizer = (
        natgrad.NaturalGradient(learning_rate=1e4, line_search_max_tries=3)
        if rejected
        else natgrad.NaturalGradient(max_kl=0.01)
    )
    model.compile(optimizer=optimizer, loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    bn = model.layers[0]
    trainable_before = [v.numpy().tobytes() for v in model.trainable_variables]
    history = model.fit(x, y, batch_size=256, epochs=1, verbose=0)
    assert history.history["accepted"] == [0.0 if rejected else 1.0]
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.1 * x.mean(0), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 + 0.1 * x.var(0), atol=1e-5)
    trainable_after = [v.numpy().tobytes() for v in model.trainable_variables]
    assert (trainable_after == trainable_before) == rejected
    # What `iterations` counts: steps attempted, rejected ones included.
    assert int(model.optimizer.iterations) == 1


# Embedding: IndexedSlices gradients -----------------------------------------------------------


def test_embedding_model_trains():
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 30, size=(300, 6)).astype("int32")
    labels = (tokens < 15).sum(axis=1) >= 3  # majority of "low" tokens
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((6,), dtype="int32"),
        keras.layers.Embedding(30, 4),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(1),
    ])
    model.compile(
        optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2),
        loss=keras.losses.BinaryCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    natgrad.enable_natural_gradient(model)
    history = model.fit(tokens, labels.astype("float32"), batch_size=100, epochs=4, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]
    assert history.history["accepted"][-1] > 0.5


# Mixed precision ---------------------------------------------------------------------------


def test_mixed_float16_with_default_compile(digits):
    x, y = digits
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = _digits_mlp(0)
        model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2),
                      loss=LOGITS_CE, metrics=["accuracy"])
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        natgrad.enable_natural_gradient(model)
        history = model.fit(x, y, batch_size=256, epochs=3, verbose=0)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.layers[0].compute_dtype == "float16"
    assert history.history["accepted"] == [1.0, 1.0, 1.0]
    assert history.history["accuracy"][-1] > 0.85, history.history


# Several outputs -------------------------------------------------------------------------------


def _two_output_data(digits):
    x, y = digits
    x, y = x[:600], y[:600]
    ink = x.mean(axis=1, keepdims=True)  # a regression target: how much ink
    return x, y, (ink - ink.mean()) / ink.std()


def _two_output_functional(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((64,))
    hidden = keras.layers.Dense(32, activation="tanh")(inputs)
    digit = keras.layers.Dense(10, name="digit")(hidden)
    ink = keras.layers.Dense(1, name="ink")(hidden)
    return keras.Model(inputs, [digit, ink])


def test_functional_model_with_two_outputs_and_weighted_losses(digits):
    x, y, ink = _two_output_data(digits)
    model = _two_output_functional()
    model.compile(
        optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2),
        loss={"digit": LOGITS_CE, "ink": "mse"},
        loss_weights={"digit": 1.0, "ink": 0.5},
    )
    natgrad.enable_natural_gradient(model)
    before = model.evaluate(x, {"digit": y, "ink": ink}, verbose=0, return_dict=True)
    model.fit(x, {"digit": y, "ink": ink}, batch_size=100, epochs=3, verbose=0)
    after = model.evaluate(x, {"digit": y, "ink": ink}, verbose=0, return_dict=True)
    for key in ("digit_loss", "ink_loss"):
        assert after[key] < 0.5 * before[key], (key, before, after)


class TwoHeads(keras.Model):
    def __init__(self):
        super().__init__()
        self.hidden = keras.layers.Dense(32, activation="tanh")
        self.digit = keras.layers.Dense(10)
        self.ink = keras.layers.Dense(1)

    def call(self, x):
        h = self.hidden(x)
        return self.digit(h), self.ink(h)


def test_subclassed_model_returning_two_tensors_with_a_list_of_losses(digits):
    x, y, ink = _two_output_data(digits)
    keras.utils.set_random_seed(0)
    model = TwoHeads()
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2),
                  loss=[LOGITS_CE, "mse"], loss_weights=[1.0, 2.0])
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, (y, ink), batch_size=100, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0], losses


def test_one_loss_for_two_outputs_is_refused_before_any_step(digits):
    x, y, ink = _two_output_data(digits)
    model = _two_output_functional()
    model.compile(optimizer=natgrad.NaturalGradient(), loss="mse")
    with pytest.raises(ValueError, match="one loss per output"):
        natgrad.enable_natural_gradient(model)

    keras.utils.set_random_seed(0)
    model = TwoHeads()
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01), loss="mse")
    natgrad.enable_natural_gradient(model)  # a subclassed model's outputs are known only in fit
    with pytest.raises(ValueError, match="one loss per output"):
        model.fit(x, (y, ink), batch_size=100, epochs=1, verbose=0)
    assert int(model.optimizer.iterations) == 0


def test_unsupported_loss_on_one_output_is_named():
    model = _two_output_functional()
    model.compile(optimizer=natgrad.NaturalGradient(), loss={"digit": LOGITS_CE, "ink": "mae"})
    with pytest.raises(ValueError, match="'mae'.*supported losses"):
        natgrad.enable_natural_gradient(model)


# Reduction "mean", re-compiling ----------------------------------------------------------------


def test_reduction_mean_is_the_batch_mean(digits):
    x, y = digits
    model = _digits_mlp(0)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean")
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2), loss=loss)
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, y, batch_size=256, epochs=2, verbose=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


def test_recompile_with_adam_after_the_hook(digits):
    x, y = digits
    model = _digits_mlp(0)
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    model.fit(x, y, batch_size=600, epochs=1, verbose=0)
    adam = keras.optimizers.Adam()
    model.compile(optimizer=adam, loss=LOGITS_CE)
    history = model.fit(x, y, batch_size=600, epochs=2, verbose=0)
    assert int(adam.iterations) == 2 * 3
    assert set(history.history) == {"loss"}
    assert history.history["loss"][1] < history.history["loss"][0]
    # ...and back to NaturalGradient with the hook still in place.
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01), loss=LOGITS_CE)
    history = model.fit(x, y, batch_size=600, epochs=1, verbose=0)
    assert "kl" in history.history


# Visible steps -------------------------------------------------------------------------------


def test_history_shows_each_epochs_step_statistics(digits):
    x, y = digits
    model = _digits_mlp(0)
    max_kl = 0.01
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=max_kl, damping=1e-2), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)

    steps = []

    class Steps(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            steps.append(dict(logs))

    history = model.fit(x[:1024], y[:1024], batch_size=256, epochs=2, verbose=0,
                        callbacks=[Steps()])
    assert int(model.optimizer.iterations) == 8
    for epoch in range(2):
        last = steps[4 * epoch + 3]
        for key in ("kl", "accepted", "line_search_tries"):
            assert history.history[key][epoch] == pytest.approx(last[key])
    assert 0.0 < max(history.history["kl"]) <= max_kl
    assert all(1.0 <= t <= 10.0 for t in history.history["line_search_tries"])


def test_step_statistics_are_per_epoch_means(digits):
    """Epoch 1 all accepted, epoch 2 all rejected (NaN sample weights make the loss NaN): the
    epoch means do not carry over from one epoch to the next."""
    x, y = digits
    x, y = x[:512], y[:512]
    model = _digits_mlp(0)
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, y, batch_size=256, epochs=1, verbose=0)
    assert history.history["accepted"] == [1.0]
    assert history.history["kl"][0] > 0.0
    before = [v.numpy().tobytes() for v in model.trainable_variables]
    history = model.fit(x, y, sample_weight=np.full(len(y), np.nan, "float32"), batch_size=256,
                        epochs=1, verbose=0)
    assert history.history["accepted"] == [0.0]
    assert history.history["kl"] == [0.0]
    assert [v.numpy().tobytes() for v in model.trainable_variables] == before
    assert int(model.optimizer.iterations) == 4


# Regularizers, add_loss, datasets, float64 ---------------------------------------------------


def test_logged_loss_includes_regularizers_and_activity_losses(digits):
    """The step's loss is Keras' loss: weight and activity regularization included. One step on
    the whole batch logs the loss at the start weights, which ``evaluate`` also computes."""
    x, y = digits
    x, y = x[:256], y[:256]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,)),
        keras.layers.Dense(32, activation="tanh", kernel_regularizer=keras.regularizers.L2(0.1),
                           activity_regularizer=keras.regularizers.L2(0.05)),
        keras.layers.Dense(10),
    ])
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    before = model.evaluate(x, y, batch_size=256, verbose=0)
    plain = float(LOGITS_CE(y, model(x)))
    assert before > plain + 0.1  # the regularization terms are there
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(256)
    history = model.fit(dataset, epochs=2, verbose=0)
    assert history.history["loss"][0] == pytest.approx(before, rel=1e-5)
    assert history.history["loss"][1] < history.history["loss"][0]


def test_float64_model_trains(digits):
    x, y = digits
    x, y = x[:256].astype("float64"), y[:256]
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((64,), dtype="float64"),
        keras.layers.Dense(32, activation="tanh", dtype="float64"),
        keras.layers.Dense(10, dtype="float64"),
    ])
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, y, batch_size=64, epochs=2, verbose=0)
    assert history.history["accepted"] == [1.0, 1.0]
    assert history.history["loss"][1] < history.history["loss"][0]


@pytest.mark.parametrize("reference", [128, 0])
def test_small_batches_get_a_proportionally_smaller_kl_bound(digits, reference):
    """Batches of 32 with ``reference_batch_size=128`` are bounded by ``max_kl · 32 / 128``;
    with 0 each batch has the whole ``max_kl``. Steps land near their bound."""
    x, y = digits
    model = _digits_mlp(0)
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, damping=1e-2), loss=LOGITS_CE)
    natgrad.enable_natural_gradient(model, reference_batch_size=reference)
    history = model.fit(x[:256], y[:256], batch_size=32, epochs=1, verbose=0)
    bound = 0.01 * 32 / 128 if reference else 0.01
    assert 0.5 * bound < history.history["kl"][0] <= bound


@pytest.mark.parametrize("bad", [-1, 1.5, True, None])
def test_reference_batch_size_must_be_a_non_negative_integer(bad):
    model = _digits_mlp(0)
    model.compile(optimizer=natgrad.NaturalGradient(), loss=LOGITS_CE)
    with pytest.raises(ValueError, match="reference_batch_size"):
        natgrad.enable_natural_gradient(model, reference_batch_size=bad)
