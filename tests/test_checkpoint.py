"""Checkpoints: atomic writes, exact resume, and clear errors for bad files."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from agents import TRPO
from agents.checkpoint import latest_checkpoint, read_checkpoint, write_checkpoint

SMALL = {"n_envs": 2, "n_steps": 64, "critic_epochs": 2, "policy_hidden": (16,),
         "value_hidden": (16,), "checkpoint_every": 2}


def _rows(run_dir):
    with open(run_dir / "progress.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_second")}
                for r in csv.DictReader(f)]


def _weights(agent):
    return [v.numpy() for v in (*agent.policy.trainable_variables,
                                *agent.value.trainable_variables)]


@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {"normalize_obs": True}),
                                           ("Pendulum-v1", {})])
def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, env_id, extra):
    total, batch = 8 * 128, 128
    straight = TRPO(env_id, run_dir=tmp_path / "straight", **SMALL, **extra).learn(total)

    interrupted = tmp_path / "interrupted"
    TRPO(env_id, run_dir=interrupted, **SMALL, **extra).learn(5 * batch)
    # A kill after update 5 was logged but before its checkpoint was written:
    (interrupted / "checkpoints" / "update_000005.ckpt").unlink()
    assert latest_checkpoint(interrupted).name == "update_000004.ckpt"
    resumed = TRPO.resume(interrupted)
    assert resumed.num_timesteps == 4 * batch
    resumed.learn(total)

    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert _rows(tmp_path / "straight") == _rows(interrupted)
    assert len(_rows(interrupted)) == 8 and len(resumed.history) == 8


def test_save_load_round_trip_predicts_the_same(tmp_path):
    agent = TRPO("CartPole-v1", normalize_obs=True, **SMALL).learn(256)
    agent.save(tmp_path / "agent.ckpt")
    loaded = TRPO.load(tmp_path / "agent.ckpt")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    assert loaded.num_timesteps == 256 and loaded.config == agent.config
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
        with pytest.raises(ValueError, match=message):
            TRPO.load(tmp_path / f"{name}.ckpt")
    with pytest.raises(ValueError, match="'CartPole-v1', not 'Acrobot-v1'"):
        TRPO.load(path, env="Acrobot-v1")
    with pytest.raises(ValueError, match="for env"):
        read_checkpoint(path, expected_env_id="Acrobot-v1")
    state = read_checkpoint(path)
    state["env_id"] = "Acrobot-v1"
    write_checkpoint(tmp_path / "acrobot.ckpt", {k: v for k, v in state.items()
                                                  if k != "format_version"})
    with pytest.raises(ValueError, match="checkpoint is for env 'Acrobot-v1'"):
        agent._load_state(read_checkpoint(tmp_path / "acrobot.ckpt"))
    with pytest.raises(ValueError, match="no checkpoint found"):
        TRPO.resume(tmp_path / "empty")


def test_sigkill_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """A real ``kill -9`` of ``natgrad-trpo train``; ``--resume`` ends where a straight run ends."""
    import os
    import signal
    import subprocess
    import sys
    import time

    settings = ["n_envs=2", "n_steps=64", "critic_epochs=2", "policy_hidden=16",
                "value_hidden=16", "checkpoint_every=2"]
    total = 40 * 128
    run_dir = tmp_path / "killed"
    argv = [sys.executable, "-m", "agents", "train", "CartPole-v1", "--steps", str(total),
            "--out", str(run_dir)] + [a for s in settings for a in ("--set", s)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        checkpoints = list((run_dir / "checkpoints").glob("update_*.ckpt"))
        if len(checkpoints) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run finished before it could be killed"
    killed_at = read_checkpoint(latest_checkpoint(run_dir))["num_timesteps"]
    assert 0 < killed_at < total

    resume = subprocess.run([sys.executable, "-m", "agents", "train", "--resume", str(run_dir)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert resume.returncode == 0, resume.stderr[-2000:]

    straight = TRPO("CartPole-v1", total_steps=total, n_envs=2, n_steps=64, critic_epochs=2,
                    policy_hidden=(16,), value_hidden=(16,), checkpoint_every=2).learn()
    resumed = TRPO.load(latest_checkpoint(run_dir))
    assert resumed.num_timesteps == straight.num_timesteps == total
    for a, b in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
