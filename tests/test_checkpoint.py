"""``agents.runs.checkpoint``: the file format (checksummed, atomic writes that a ``kill -9``
cannot tear) and files that must never run code. What an agent stores in one, and how it
resumes from it, is ``test_agent_state.py``."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import TINY_BATCH as BATCH
from conftest import cli_settings

from agents import TRPO
from agents.runs.checkpoint import (
    MAGIC,
    CheckpointError,
    latest_checkpoint,
    read_checkpoint,
)


def _weights(agent):
    return [v.numpy() for v in (*agent.policy.trainable_variables,
                                *agent.value.trainable_variables)]


class Marker:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_corrupt_truncated_and_foreign_files_raise(tmp_path, tiny_config):
    agent = TRPO("CartPole-v1", **tiny_config)
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


def test_a_crafted_pickle_is_never_executed(tmp_path, tiny_config):
    """Old-format pickles, pickled arrays in a resealed file: refused, and no code runs. (A
    pickled env state is ``test_agent_state.py``'s.)"""
    marker = tmp_path / "pwned"
    old = b"NATGRAD-TRPO-v1\n"
    payload = pickle.dumps({"format_version": 1, "env_id": "CartPole-v1", "x": Marker(marker)})
    (tmp_path / "old.ckpt").write_bytes(old + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(CheckpointError, match="older version of natgrad"):
        TRPO.load(tmp_path / "old.ckpt")

    agent = TRPO("CartPole-v1", **tiny_config)
    agent.save(tmp_path / "good.ckpt")
    assert read_checkpoint(tmp_path / "good.ckpt").meta["env_id"] == "CartPole-v1"
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(b'{"format_version": 2}', np.uint8),
             evil=np.array([Marker(marker)], dtype=object))
    (tmp_path / "evil.ckpt").write_bytes(_reseal(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="could not be decoded"):
        TRPO.load(tmp_path / "evil.ckpt")
    assert not marker.exists()


@pytest.mark.slow
def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_config):
    """A real ``kill -9`` of ``natgrad-trpo train`` once its second checkpoint exists (an
    event, not a time); the budget is too large to finish first. ``--resume`` with trusted env
    state then ends bit for bit where a straight run ends."""
    settings = {**tiny_config, "checkpoint_every": 2, "save_env_state": True}
    run_dir = tmp_path / "killed"
    argv = [sys.executable, "-m", "agents", "train", "CartPole-v1", "--steps", "10_000_000",
            "--out", str(run_dir), *cli_settings(settings)]
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

    straight = TRPO("CartPole-v1", total_steps=10_000_000, **settings).learn(total)
    resumed = TRPO.load(latest_checkpoint(run_dir))
    assert resumed.num_timesteps == straight.num_timesteps == total
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))
