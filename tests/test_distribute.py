"""NaturalGradient under tf.distribute: the distributed step equals the single-device step.

Each distributed run happens in fresh processes (``tests/distributed/*.py``): a strategy's
devices and collectives must be set up before TensorFlow starts, which this process did long
ago. The single-device reference runs here, on the same toy problem (``distributed/toy.py``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import natgrad
from agents.workers import run_cluster
from natgrad.distribute import check_strategy

SCRIPTS = Path(__file__).parent / "distributed"
sys.path.insert(0, str(SCRIPTS))

import toy  # noqa: E402

STEPS = 2


def _json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def _relative_error(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def single_device():
    return toy.single_device_run(STEPS)


def test_mirrored_step_and_fit_epoch_equal_the_single_device_ones(single_device):
    done = subprocess.run([sys.executable, str(SCRIPTS / "mirrored.py"), str(STEPS)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = _json_line(done.stdout)
    weights, losses = single_device
    for copies, reference in zip(result["copies"], weights, strict=True):
        first, second = (np.asarray(c) for c in copies)
        np.testing.assert_array_equal(first, second)  # the replicas stay identical
        assert _relative_error(first, reference) <= 1e-5
    for replica_losses, loss in zip(result["losses"], losses, strict=True):
        assert replica_losses == pytest.approx([loss, loss], rel=1e-12)

    model = toy.compiled_classifier()
    history = model.fit(*toy.fit_data(), batch_size=toy.FIT_BATCH, epochs=1, shuffle=False,
                        verbose=0)
    for copies, reference in zip(result["fit_copies"], model.trainable_variables, strict=True):
        first, second = (np.asarray(c) for c in copies)
        np.testing.assert_array_equal(first, second)
        assert _relative_error(first, reference.numpy()) <= 1e-5
    for key in ("loss", "accuracy", "kl", "accepted"):
        assert result["fit_history"][key] == pytest.approx(history.history[key], rel=1e-5), key


def test_two_workers_match_one_process_and_trpo_workers_stay_identical(single_device, tmp_path):
    """Two localhost workers (``TF_CONFIG``, two processes): the toy step equals one process on
    the whole batch; so does the value fit, on both workers' batches together; a 3-update TRPO
    run with both normalizers on keeps the workers' weights and statistics bit-identical, the
    statistics those of every sample either worker saw; its checkpoint resumes
    (``TRPO.resume`` on every worker) for two more updates, still identical."""
    run_dir = tmp_path / "run"
    results = run_cluster([sys.executable, str(SCRIPTS / "multi_worker.py"), str(run_dir)], 2,
                          timeout=300)
    for code, _, err in results:
        assert code == 0, err[-3000:]
    outputs = [(out, err) for _, out, err in results]
    first, second = sorted((_json_line(out) for out, _ in outputs), key=lambda r: r["worker"])
    weights, losses = single_device
    for a, b, reference in zip(first["toy_weights"], second["toy_weights"], weights,
                               strict=True):
        np.testing.assert_array_equal(a, b)
        assert _relative_error(a, reference) <= 1e-5
    assert first["toy_losses"] == pytest.approx(losses, rel=1e-12)
    # The value fit: one process's Adam loop on the union batch.
    start, reference = _value_fit_on_the_union_batch(workers=2)
    for a, b, r, s in zip(first["value_fit_weights"], second["value_fit_weights"], reference,
                          start, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, r, rtol=1e-5, atol=1e-6)
        assert not np.allclose(a, s)  # the fit moved every weight
    for key in ("trpo_weights", "resumed_weights"):
        for a, b in zip(first[key], second[key], strict=True):
            np.testing.assert_array_equal(a, b)
    assert first["statistics"] == second["statistics"]
    assert first["resumed_statistics"] == second["resumed_statistics"]
    for key in ("obs", "returns"):  # every sample of both workers (resets + 3 batches each)
        count, mean, var = _running_statistics(first["samples"][key] + second["samples"][key])
        stats = first["statistics"][key]
        assert stats["count"] == pytest.approx(count, rel=1e-12)
        np.testing.assert_allclose(stats["mean"], mean, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(stats["var"], var, rtol=1e-9)
    assert len(first["samples"]["obs"]) == len(second["samples"]["obs"]) == 2 + 3 * 64
    assert first["num_timesteps"] == second["num_timesteps"] == 3 * 2 * 64
    assert first["kl"] == second["kl"] and all(k > 0 for k in first["kl"])
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints == [f"update_00000{k}.ckpt" for k in range(1, 6)]
    # TRPO.resume of the chief's checkpoint: both workers continue, still identical.
    assert first["resumed_from"] == second["resumed_from"] == 3 * 2 * 64
    assert first["resumed_timesteps"] == 5 * 2 * 64
    assert len((run_dir / "progress.csv").read_text().splitlines()) == 1 + 5


def _value_fit_on_the_union_batch(workers: int) -> tuple[list, list]:
    """``(initial, fitted)`` value weights of one process (a plain Keras Adam loop) on the
    ``workers`` batches of ``toy.value_fit_batch`` together, its minibatch ``b`` every
    worker's minibatch ``b``; from the weights a CartPole agent with ``toy.TRPO_SETTINGS``
    starts with."""
    from agents import TRPO

    agent = TRPO("CartPole-v1", **toy.TRPO_SETTINGS)
    cfg, value = agent.config, agent.value
    n, size = cfg.batch_size, cfg.critic_batch_size
    batches = [toy.value_fit_batch(w, n, cfg.critic_epochs, dim=4) for w in range(workers)]
    obs = np.concatenate([b[0] for b in batches])
    returns = np.concatenate([b[1] for b in batches])
    start = [v.numpy() for v in value.trainable_variables]
    adam = keras.optimizers.Adam(learning_rate=cfg.critic_lr, epsilon=cfg.critic_epsilon)
    for epoch in range(cfg.critic_epochs):
        for first in range(0, n, size):
            idx = np.concatenate([w * n + order[epoch, first:first + size]
                                  for w, (_, _, order) in enumerate(batches)])
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(value(obs[idx]) - returns[idx]))
            grads = tape.gradient(loss, value.trainable_variables)
            adam.apply_gradients(zip(grads, value.trainable_variables, strict=True))
    return start, [v.numpy() for v in value.trainable_variables]


def _running_statistics(samples, prior_count: float = 1e-4) -> tuple:
    """``(count, mean, var)`` of ``samples`` ``[n, d]`` with ``RunningMeanStd``'s prior (a
    weight of ``prior_count`` at mean 0, variance 1), by NumPy over all of them at once."""
    x = np.asarray(samples, np.float64)
    count = len(x) + prior_count
    mean = x.sum(axis=0) / count
    m2 = np.square(x - mean).sum(axis=0) + prior_count * (1.0 + np.square(mean))
    return count, mean, m2 / count


def test_unsupported_strategies_are_refused_before_any_work():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with pytest.raises(ValueError, match="does not support CentralStorageStrategy.*"
                                         "MirroredStrategy, MultiWorkerMirroredStrategy"):
        check_strategy(strategy)
    model, optimizer = toy.model_and_optimizer()
    x, y = toy.data()
    before = [w.numpy().copy() for w in model.trainable_variables]
    with strategy.scope(), pytest.raises(ValueError, match="CentralStorageStrategy"):
        toy.step_fn(model, optimizer)(tf.constant(x), tf.constant(y))
    for w, b in zip(model.trainable_variables, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)
    with strategy.scope():
        fit_model = keras.Sequential([keras.Input((toy.DIM,)), keras.layers.Dense(3)])
        fit_model.compile(optimizer=natgrad.NaturalGradient(), loss="mse")
    with pytest.raises(ValueError, match="CentralStorageStrategy"):
        natgrad.enable_natural_gradient(fit_model)
    check_strategy(tf.distribute.OneDeviceStrategy("/cpu:0"))
    check_strategy(tf.distribute.get_strategy())
    assert natgrad.NaturalGradient  # the public optimizer is what the toy uses
