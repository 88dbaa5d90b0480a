"""``agents.runs.run_dir``: identity checks, the one-writer lock and the agent's
:class:`RunWriter`."""

from __future__ import annotations

import os
import pathlib
import resource
import subprocess
import sys

import pytest

from agents.config import complete_saved_config
from agents.runs.layout import checkpoint_path
from agents.runs.run_dir import (
    RunDirError,
    RunDirLocked,
    RunLock,
    RunWriter,
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
            [sys.executable, "-c", "from agents.runs.run_dir import RunLock\n"
             f"with RunLock({str(tmp_path)!r}): pass"], capture_output=True, text=True,
            timeout=60)
        assert probe.returncode != 0 and "in use by another natgrad-trpo process" in probe.stderr
    probe = subprocess.run([sys.executable, "-c", "from agents.runs.run_dir import RunLock\n"
                            f"with RunLock({str(tmp_path)!r}): pass"], timeout=60)
    assert probe.returncode == 0
    assert issubclass(RunDirLocked, RunDirError)


# RunWriter: what an agent writes, and when it writes nothing ---------------------------------


def test_the_writer_does_nothing_without_a_directory_or_on_a_worker_other_than_the_chief(
        tmp_path):
    saved = []
    for writer in (RunWriter(None), RunWriter(tmp_path / "run", writes=False)):
        assert not writer.writes
        with writer.lock():
            writer.claim("a", CONFIG, 0)
            assert writer.checkpoint(3, saved.append) is None
    assert saved == [] and not (tmp_path / "run").exists()


def test_the_writer_claims_its_run_and_saves_each_update_once(tmp_path):
    writer, saved = RunWriter(tmp_path), []
    with writer.lock():
        writer.claim("a", CONFIG, 0)
        assert read_run_config(tmp_path)[0] == "a"
        path = writer.checkpoint(3, saved.append)
        assert writer.checkpoint(3, saved.append) == path == checkpoint_path(tmp_path, 3)
        assert writer.saved_update == 3 and saved == [path]  # written once
        writer.checkpoint(4, saved.append)
    assert saved == [path, checkpoint_path(tmp_path, 4)]
    with pytest.raises(RunDirError, match="holds another run"):
        RunWriter(tmp_path).claim("b", CONFIG, 0)


def test_a_resumed_writer_refuses_a_run_trained_since_it_was_loaded(tmp_path):
    writer = RunWriter(tmp_path)
    writer.claim("a", CONFIG, 0)
    checkpoint_path(tmp_path, 2).parent.mkdir()
    checkpoint_path(tmp_path, 2).write_bytes(b"x")
    writer.mark_resumed()
    assert writer.newest_at_resume == checkpoint_path(tmp_path, 2)
    checkpoint_path(tmp_path, 4).write_bytes(b"x")  # another process trained it meanwhile
    with pytest.raises(RunDirError, match="written to after it was loaded"):
        writer.claim("a", CONFIG, 256)


# Hostile files: links out of the run, FIFOs, devices ------------------------------------------


def test_a_lock_file_linked_out_of_the_run_is_refused_and_its_target_untouched(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(outside)
    with pytest.raises(RunDirError, match=r"\.lock is a symbolic link; refused"):
        with RunLock(run_dir):
            pass
    assert outside.read_text() == "keep me\n"


def test_a_lock_file_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(RunDirError, match=r"\.lock is not a regular file"):
        with RunLock(tmp_path):
            pass


def _refusal(call: str) -> str:
    """The ``RunDirError`` of ``agents.runs.run_dir.CALL`` on ``path``, run in a fresh Python
    capped at 30 s and 2 GiB of address space, so that a hang or an unbounded read fails this
    test instead of stalling the suite or the machine."""
    code = ("import sys\nfrom agents.runs import run_dir\n"
            f"try:\n    run_dir.{call}\nexcept run_dir.RunDirError as exc:\n"
            "    print(exc)\n    sys.exit(0)\nsys.exit('no RunDirError')\n")
    cap = 2 << 30
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
                          preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def test_checkpoints_that_are_not_regular_files_in_the_run_are_refused_by_name(tmp_path):
    claim_run_dir(tmp_path, "a", CONFIG)
    folder = checkpoint_path(tmp_path, 1).parent
    folder.mkdir()
    outside = tmp_path.parent / f"{tmp_path.name}-outside.ckpt"
    outside.write_bytes(b"x")
    select = f"select_checkpoint({str(tmp_path)!r}, 'a', {CONFIG!r})"
    newest = checkpoint_path(tmp_path, 2)
    for target in (pathlib.Path("/dev/zero"), outside):
        newest.unlink(missing_ok=True)
        newest.symlink_to(target)
        assert _refusal(select) == (
            f"checkpoint {newest} is a symbolic link to {target}, outside the run directory "
            f"{tmp_path}; refused")
    newest.unlink()
    os.mkfifo(newest)  # opened without blocking, then refused
    assert _refusal(select) == (f"checkpoint {newest} is not a regular file (a FIFO); "
                                        "refused")
    assert sorted(p.name for p in folder.iterdir()) == ["update_000002.ckpt"]


def test_config_json_that_is_a_fifo_or_links_out_is_refused(tmp_path):
    config = tmp_path / "config.json"
    os.mkfifo(config)
    assert "is not a regular file (a FIFO)" in _refusal(f"read_run_config({str(tmp_path)!r})")
    config.unlink()
    config.symlink_to("/dev/zero")
    assert "outside the run directory" in _refusal(f"read_run_config({str(tmp_path)!r})")
