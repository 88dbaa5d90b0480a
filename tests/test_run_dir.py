"""Run directories: identity checks and the one-writer lock."""

from __future__ import annotations

import subprocess
import sys

import pytest

from agents.config import complete_saved_config
from agents.run_dir import (
    RunDirError,
    RunDirLocked,
    RunLock,
    claim_run_dir,
    describe_mismatch,
    read_run_config,
)

CONFIG = {"env_id": "CartPole-v1", "seed": 0, "policy_hidden": [64, 64]}


def test_mismatches_are_named():
    meta = {"env_id": "CartPole-v1", "run_id": "a", "config": dict(CONFIG)}
    assert describe_mismatch(meta, "a", CONFIG) is None
    assert "written for env 'Pendulum-v1'" in describe_mismatch(
        {**meta, "env_id": "Pendulum-v1"}, "a", CONFIG)
    assert "seed 3 (this run: 0)" in describe_mismatch(
        {**meta, "config": {**CONFIG, "seed": 3}}, "a", CONFIG)
    assert "another run of the same settings" in describe_mismatch(meta, "b", CONFIG)


def test_claim_writes_the_config_once_and_refuses_another_run(tmp_path):
    claim_run_dir(tmp_path, "a", CONFIG)
    assert read_run_config(tmp_path) == ("a", complete_saved_config(CONFIG))
    claim_run_dir(tmp_path, "a", CONFIG)  # the same run again: fine
    with pytest.raises(RunDirError, match="holds another run"):
        claim_run_dir(tmp_path, "b", CONFIG)
    with pytest.raises(RunDirError, match="holds another run"):
        claim_run_dir(tmp_path, "a", {**CONFIG, "seed": 1})


def test_the_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    with RunLock(tmp_path), RunLock(tmp_path):
        probe = subprocess.run(
            [sys.executable, "-c", "from agents.run_dir import RunLock\n"
             f"with RunLock({str(tmp_path)!r}): pass"], capture_output=True, text=True,
            timeout=60)
        assert probe.returncode != 0 and "in use by another natgrad-trpo process" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", "from agents.run_dir import RunLock\n"
                            f"with RunLock({str(tmp_path)!r}): pass"], timeout=60)
    assert probe.returncode == 0
    assert issubclass(RunDirLocked, RunDirError)
