"""The hostile cases of issue 19 as a user (or a stranger sharing the run directory) meets
them at the command line: each is refused with status 2 and one line naming the file or the
setting, quickly, without unbounded memory, and without writing anything.

Each command runs in a fresh ``python -m agents`` capped at 60 s and a few GiB of address
space, so a hang or an unbounded read fails the test instead of stalling the suite or the
machine. Every refusal here happens before TensorFlow is imported, so each costs about a
second.
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys

import pytest
from conftest import TINY_CONFIG

ADDRESS_SPACE_CAP = 3 << 30  # far below what an unbounded read or a 29 TiB buffer needs


def _cli(*argv, cwd=None) -> subprocess.CompletedProcess:
    """``python -m agents ARGV`` under :data:`ADDRESS_SPACE_CAP` and a 60 s timeout."""
    cap = ADDRESS_SPACE_CAP
    return subprocess.run(
        [sys.executable, "-m", "agents", *map(str, argv)], capture_output=True, text=True,
        timeout=60, cwd=cwd, env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap)))


def _refused(done: subprocess.CompletedProcess, *fragments) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _run_with_checkpoint_slot(run_dir: pathlib.Path) -> pathlib.Path:
    """A run directory (valid ``config.json``, no checkpoint yet) and the path of its next
    checkpoint, ``checkpoints/update_000002.ckpt``."""
    from agents.config import resolve_config
    from agents.runs.run_dir import write_run_config

    config = resolve_config("CartPole-v1", **TINY_CONFIG, eval_episodes=1)
    write_run_config(run_dir, "0123456789abcdef0123456789abcdef", config.to_dict())
    (run_dir / "checkpoints").mkdir()
    return run_dir / "checkpoints" / "update_000002.ckpt"


def _files(folder: pathlib.Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != ".lock")


def test_a_lock_file_linked_out_of_the_run_is_refused_and_the_outside_file_kept(tmp_path):
    run_dir = tmp_path / "run"
    _run_with_checkpoint_slot(run_dir)
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    (run_dir / ".lock").symlink_to(outside)
    _refused(_cli("train", "--resume", run_dir, "--steps", 512), str(run_dir / ".lock"),
             "symbolic link")
    assert outside.read_text() == "keep me\n"


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_linked_to_an_endless_device_is_refused_unread(tmp_path, command):
    run_dir = tmp_path / "run"
    newest = _run_with_checkpoint_slot(run_dir)
    newest.symlink_to("/dev/zero")
    before = _files(tmp_path)
    argv = ["eval", run_dir] if command == "eval" else ["train", "--resume", run_dir]
    _refused(_cli(*argv), str(newest), "/dev/zero", "refused")
    assert _files(tmp_path) == before


@pytest.mark.parametrize(("size", "how"), [
    (100 << 30, "in place"),  # over any checkpoint's cap
    (100 << 30, "linked inside the run"),
    (3 << 30, "in place"),  # under the fixed 4 GiB cap, far over what this agent can need
])
def test_a_checkpoint_replaced_by_a_huge_file_is_refused_before_it_is_read(tmp_path, size, how):
    run_dir = tmp_path / "run"
    newest = _run_with_checkpoint_slot(run_dir)
    big = run_dir / "big.bin" if how == "linked inside the run" else newest
    with open(big, "wb") as f:  # sparse: costs no disk
        f.truncate(size)
    if big != newest:
        newest.symlink_to(big)
    before = _files(tmp_path)
    _refused(_cli("eval", run_dir), str(newest), f"{size:,} bytes", "refused")
    if size > 1 << 32:
        _refused(_cli("train", "--resume", run_dir), str(newest), "refused")
    assert _files(tmp_path) == before


@pytest.mark.parametrize(("field", "value", "fragment"), [
    ("n_steps", 10**12, "n_steps=1000000000000"),
    ("policy_hidden", [10**8], "policy_hidden=(100000000,)"),
    ("policy_hidden", [1e8], "policy_hidden=(100000000.0,)"),
    ("n_envs", 10**6, "n_envs=1000000"),
    ("eval_episodes", 10**12, "eval_episodes=1000000000000"),
])
def test_an_edited_config_json_too_large_is_refused_on_resume(tmp_path, field, value, fragment):
    run_dir = tmp_path / "run"
    _run_with_checkpoint_slot(run_dir)
    data = json.loads((run_dir / "config.json").read_text())
    data["config"][field] = value
    (run_dir / "config.json").write_text(json.dumps(data))
    before = _files(tmp_path)
    _refused(_cli("train", "--resume", run_dir, "--steps", 4096), "config.json", fragment)
    assert _files(tmp_path) == before


@pytest.mark.parametrize(("argv", "fragment"), [
    (["train", "--set", "eval_episodes=1e12"], "eval_episodes=1000000000000 (limit"),
    (["train", "--set", "eval_max_episode_steps=1e15"], "eval_max_episode_steps="),
    (["train", "--set", "n_envs=1e6"], "n_envs=1000000 (limit"),
    (["eval", "RUN", "--episodes", "1e12"], "--episodes"),
])
def test_evaluation_sizes_are_capped_before_anything_runs(tmp_path, argv, fragment):
    run_dir = tmp_path / "run"
    _run_with_checkpoint_slot(run_dir)
    argv = [run_dir if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv += ["--steps", 128, "--out", tmp_path / "new"]
    _refused(_cli(*argv), fragment)
    assert not (tmp_path / "new").exists() and not (run_dir / "eval.json").exists()


def test_an_oversized_preset_is_refused_like_a_set(tmp_path, monkeypatch, capsys):
    import agents.config
    from agents import cli

    original = agents.config.load_preset
    monkeypatch.setattr(agents.config, "load_preset",
                        lambda name: {**original(name), "n_steps": 10**12})
    for argv in (["CartPole-v1"], ["Acrobot-v1", "--preset", "CartPole-v1"]):
        assert cli.main(["train", *argv, "--out", str(tmp_path / "run")]) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and "n_steps=1000000000000" in err[0] and "limit" in err[0], err
    assert not (tmp_path / "run").exists()
