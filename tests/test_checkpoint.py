"""Checkpoints: exact and re-seeded resume, atomic writes, and files that must never run code."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from agents import TRPO
from agents.checkpoint import (
    ENV_STATE_KEY,
    MAGIC,
    CheckpointError,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from agents.config import ADDED_FIELDS

SMALL = {"n_envs": 2, "n_steps": 64, "critic_epochs": 2, "policy_hidden": (16,),
         "value_hidden": (16,), "checkpoint_every": 2}
SMALL_CLI = ["--set", "n_envs=2", "--set", "n_steps=64", "--set", "critic_epochs=2",
             "--set", "policy_hidden=16", "--set", "value_hidden=16",
             "--set", "checkpoint_every=2"]
BATCH = 128


def _rows(run_dir):
    with open(run_dir / "progress.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_second")}
                for r in csv.DictReader(f)]


def _weights(agent):
    return [v.numpy() for v in (*agent.policy.trainable_variables,
                                *agent.value.trainable_variables)]


class Marker:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {"normalize_obs": True}),
                                           ("Pendulum-v1", {"normalize_reward": True})])
def test_trusted_env_state_resumes_bit_for_bit(tmp_path, env_id, extra):
    settings = {**SMALL, **extra, "save_env_state": True}
    straight = TRPO(env_id, run_dir=tmp_path / "straight", **settings).learn(8 * BATCH)

    interrupted = tmp_path / "interrupted"
    TRPO(env_id, run_dir=interrupted, **settings).learn(5 * BATCH)
    # A kill after update 5 was logged but before its checkpoint was written:
    (interrupted / "checkpoints" / "update_000005.ckpt").unlink()
    resumed = TRPO.resume(interrupted, trust_env_state=True)
    assert resumed.num_timesteps == 4 * BATCH
    resumed.learn(8 * BATCH)

    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _rows(tmp_path / "straight") == _rows(interrupted)
    assert len(_rows(interrupted)) == 8 and len(resumed.history) == 8


def test_default_resume_reseeds_the_envs_deterministically(tmp_path):
    run = tmp_path / "run"
    TRPO("CartPole-v1", run_dir=run, **SMALL).learn(4 * BATCH)
    rows_at_checkpoint = _rows(run)
    ckpt = read_checkpoint(latest_checkpoint(run))
    assert ENV_STATE_KEY not in ckpt.arrays  # no pickled envs unless asked for

    first = TRPO.resume(run).learn(6 * BATCH)
    assert first.num_timesteps == 6 * BATCH
    assert _rows(run)[:4] == rows_at_checkpoint and len(_rows(run)) == 6
    # The same checkpoint resumed again gives the same run.
    (run / "checkpoints" / "update_000006.ckpt").unlink()
    second = TRPO.resume(run).learn(6 * BATCH)
    for a, b in zip(_weights(first), _weights(second), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_run_saved_before_later_config_fields_resumes_with_the_values_it_used(tmp_path):
    run = tmp_path / "run"
    TRPO("CartPole-v1", run_dir=run, **SMALL, critic_epsilon=1e-7, tf_threads=0).learn(4 * BATCH)
    # As an older natgrad wrote it: neither config.json nor the checkpoints name these fields.
    data = json.loads((run / "config.json").read_text())
    data["config"] = {k: v for k, v in data["config"].items() if k not in ADDED_FIELDS}
    (run / "config.json").write_text(json.dumps(data))
    for path in (run / "checkpoints").glob("*.ckpt"):
        old = read_checkpoint(path)
        meta = {**old.meta, "config": {k: v for k, v in old.meta["config"].items()
                                       if k not in ADDED_FIELDS}}
        write_checkpoint(path, meta, old.arrays)

    resumed = TRPO.resume(run)
    assert resumed.config.critic_epsilon == 1e-7 and resumed.config.tf_threads == 0
    assert resumed.value_optimizer.epsilon == pytest.approx(1e-7)
    resumed.learn(6 * BATCH)  # the run directory still takes it as its own
    assert resumed.num_timesteps == 6 * BATCH and len(_rows(run)) == 6
    assert TRPO.load(latest_checkpoint(run)).config == resumed.config


def test_save_load_round_trip_predicts_the_same(tmp_path):
    agent = TRPO("CartPole-v1", normalize_obs=True, **SMALL).learn(256)
    agent.save(tmp_path / "agent.ckpt")
    loaded = TRPO.load(tmp_path / "agent.ckpt")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    assert loaded.num_timesteps == 256 and loaded.config == agent.config
    assert loaded.run_id == agent.run_id
    np.testing.assert_array_equal(agent.obs_rms.mean, loaded.obs_rms.mean)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_corrupt_truncated_and_foreign_files_raise(tmp_path):
    agent = TRPO("CartPole-v1", **SMALL)
    path = tmp_path / "agent.ckpt"
    agent.save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    (tmp_path / "flipped.ckpt").write_bytes(bytes(flipped))
    (tmp_path / "other.ckpt").write_bytes(b"not a checkpoint at all")
    for name, message in [("truncated", "truncated or corrupt"), ("flipped", "corrupt"),
                          ("other", "not a natgrad TRPO checkpoint"), ("missing", "cannot read")]:
        with pytest.raises(CheckpointError, match=message):
            TRPO.load(tmp_path / f"{name}.ckpt")
    with pytest.raises(ValueError, match="'CartPole-v1', not 'Acrobot-v1'"):
        TRPO.load(path, env="Acrobot-v1")


def _reseal(payload: bytes) -> bytes:
    """A checkpoint file around ``payload`` with a correct header and SHA-256."""
    return MAGIC + hashlib.sha256(payload).digest() + payload


def test_a_crafted_pickle_is_never_executed(tmp_path):
    """Old-format pickles, pickled arrays in a resealed file: refused, and no code runs."""
    marker = tmp_path / "pwned"
    old = b"NATGRAD-TRPO-v1\n"
    payload = pickle.dumps({"format_version": 1, "env_id": "CartPole-v1", "x": Marker(marker)})
    (tmp_path / "old.ckpt").write_bytes(old + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(CheckpointError, match="older version of natgrad"):
        TRPO.load(tmp_path / "old.ckpt")

    agent = TRPO("CartPole-v1", **SMALL)
    agent.save(tmp_path / "good.ckpt")
    good = read_checkpoint(tmp_path / "good.ckpt")
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(b'{"format_version": 2}', np.uint8),
             evil=np.array([Marker(marker)], dtype=object))
    (tmp_path / "evil.ckpt").write_bytes(_reseal(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="could not be decoded"):
        TRPO.load(tmp_path / "evil.ckpt")
    assert not marker.exists()

    # An env-state pickle (what save_env_state writes) is not unpickled unless trusted.
    arrays = {**good.arrays,
              ENV_STATE_KEY: np.frombuffer(pickle.dumps(Marker(marker)), np.uint8)}
    write_checkpoint(tmp_path / "env.ckpt", good.meta, arrays)
    loaded = TRPO.load(tmp_path / "env.ckpt")
    assert not marker.exists()
    assert loaded._pending_env_state is None or loaded._pending_env_state["sub_envs"] is None


def test_non_finite_weights_are_never_saved_or_loaded(tmp_path):
    agent = TRPO("CartPole-v1", **SMALL)
    agent.save(tmp_path / "good.ckpt")
    good = read_checkpoint(tmp_path / "good.ckpt")
    kernel = agent.policy.trainable_variables[0]
    kernel.assign(np.full(kernel.shape, np.nan, np.float32))
    with pytest.raises(ValueError, match="NaN or infinite"):
        agent.save(tmp_path / "bad.ckpt")
    assert not (tmp_path / "bad.ckpt").exists()
    arrays = dict(good.arrays)
    arrays["value/000"] = np.full_like(arrays["value/000"], np.inf)
    write_checkpoint(tmp_path / "inf.ckpt", good.meta, arrays)
    with pytest.raises(CheckpointError, match="value/000 holds NaN or infinite"):
        TRPO.load(tmp_path / "inf.ckpt")


def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real ``kill -9`` of ``natgrad-trpo train`` once its second checkpoint exists (an
    event, not a time); the budget is too large to finish first. ``--resume`` with trusted env
    state then ends bit for bit where a straight run ends."""
    run_dir = tmp_path / "killed"
    argv = [sys.executable, "-m", "agents", "train", "CartPole-v1", "--steps", "10_000_000",
            "--out", str(run_dir), *SMALL_CLI, "--set", "save_env_state=true"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "checkpoints" / "update_000004.ckpt").exists():
            assert proc.poll() is None, "the run died before its second checkpoint"
            assert time.monotonic() < deadline, "no second checkpoint within 240 s"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=60)
    killed_at = read_checkpoint(latest_checkpoint(run_dir)).meta["num_timesteps"]
    assert killed_at >= 4 * BATCH
    total = killed_at + 3 * BATCH

    resume = subprocess.run([sys.executable, "-m", "agents", "train", "--resume", str(run_dir),
                             "--trust-env-state", "--steps", str(total)],
                            capture_output=True, text=True, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]

    straight = TRPO("CartPole-v1", total_steps=10_000_000, save_env_state=True,
                    **SMALL).learn(total)
    resumed = TRPO.load(latest_checkpoint(run_dir))
    assert resumed.num_timesteps == straight.num_timesteps == total
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
