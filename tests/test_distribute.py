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
    the whole batch; a 3-update TRPO run keeps both workers bit-identical, and its checkpoint
    resumes (``TRPO.resume`` on every worker) for two more updates, still identical."""
    run_dir = tmp_path / "run"
    results = run_cluster([sys.executable, str(SCRIPTS / "multi_worker.py"), str(run_dir)], 2,
                          timeout=240)
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
    for a, b in zip(first["trpo_weights"], second["trpo_weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert first["num_timesteps"] == second["num_timesteps"] == 3 * 2 * 64
    assert first["kl"] == second["kl"] and all(k > 0 for k in first["kl"])
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").glob("*.ckpt"))
    assert checkpoints == [f"update_00000{k}.ckpt" for k in range(1, 6)]
    # TRPO.resume of the chief's checkpoint: both workers continue, still identical.
    assert first["resumed_from"] == second["resumed_from"] == 3 * 2 * 64
    assert first["resumed_timesteps"] == 5 * 2 * 64
    for a, b in zip(first["resumed_weights"], second["resumed_weights"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert len((run_dir / "progress.csv").read_text().splitlines()) == 1 + 5


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
