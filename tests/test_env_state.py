"""``agents.envs.env_state``: an env's state captured as arrays and JSON continues, restored into
a fresh env, exactly as the original does; a malformed state is refused and changes nothing;
and a ``natgrad-trpo train`` killed with SIGKILL resumes to the uninterrupted run, bit for bit.

The truth each test compares with is the original: the env that was captured, stepped on, or
the run that was never killed.
"""

from __future__ import annotations

import copy
import csv
import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import cli_settings
from test_cli import run_main

from agents.envs.env_state import (
    EnvState,
    EnvStateError,
    EnvStateMismatch,
    UnsupportedEnvState,
    capture_env_state,
    restore_env_state,
)
from agents.envs.factories import make_env


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


MUJOCO = pytest.mark.skipif(not _has("mujoco"), reason="needs gymnasium[mujoco]")
ALE = pytest.mark.skipif(not _has("ale_py"), reason="needs ale-py")
MINIGRID = pytest.mark.skipif(not _has("minigrid"), reason="needs minigrid")


def _play(env, actions) -> list:
    """Steps ``env`` through ``actions``, resetting (unseeded, as the vector env does) where an
    episode ends: ``(obs, reward, terminated, truncated)`` per step, the reset obs after an end."""
    out = []
    for action in actions:
        obs, reward, terminated, truncated, _ = env.step(action)
        out.append((copy.deepcopy(obs), reward, terminated, truncated))
        if terminated or truncated:
            out.append(copy.deepcopy(env.reset()[0]))
    return out


def _assert_identical(ours, theirs) -> None:
    assert len(ours) == len(theirs)
    for step, (a, b) in enumerate(zip(ours, theirs, strict=True)):
        for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,),
                        strict=True):
            for key in (x.keys() if isinstance(x, dict) else [None]):
                u, v = (x[key], y[key]) if key is not None else (x, y)
                assert np.asarray(u).dtype == np.asarray(v).dtype, (step, key)
                np.testing.assert_array_equal(u, v, err_msg=f"step {step} {key or ''}")


# (env id, make kwargs, steps before the capture, steps after it, ends expected after it)
FAMILIES = [
    pytest.param("CartPole-v1", {}, 30, 400, "terminated", id="cartpole"),
    pytest.param("Pendulum-v1", {}, 190, 30, "truncated", id="pendulum-timelimit"),
    pytest.param("Acrobot-v1", {"max_episode_steps": 40}, 10, 60, "truncated", id="acrobot"),
    pytest.param("MountainCar-v0", {"max_episode_steps": 60}, 50, 40, "truncated",
                 id="mountaincar-tuple-state"),
    pytest.param("MountainCarContinuous-v0", {"max_episode_steps": 60}, 50, 40, "truncated",
                 id="mountaincar-continuous"),
    pytest.param("Hopper-v5", {}, 30, 200, "terminated", id="hopper", marks=MUJOCO),
    pytest.param("HalfCheetah-v5", {"max_episode_steps": 25}, 10, 30, "truncated",
                 id="halfcheetah-timelimit", marks=MUJOCO),
    pytest.param("Ant-v5", {"max_episode_steps": 25}, 10, 30, "truncated",
                 id="ant-reads-xpos", marks=MUJOCO),
    pytest.param("ALE/Pong-v5", {"max_episode_steps": 40}, 30, 20, "truncated", id="pong",
                 marks=ALE),
    pytest.param("MiniGrid-Empty-5x5-v0", {}, 20, 200, "truncated", id="minigrid-empty",
                 marks=MINIGRID),
    pytest.param("MiniGrid-DoorKey-5x5-v0", {}, 20, 300, "truncated", id="minigrid-doorkey",
                 marks=MINIGRID),
    pytest.param("natgrad/PixelCartPole-v1", {}, 10, 60, "terminated", id="pixel-cartpole"),
]


@pytest.mark.parametrize("env_id, kwargs, before, after, end", FAMILIES)
def test_a_restored_env_continues_exactly_as_the_original(env_id, kwargs, before, after, end):
    original = make_env(env_id, **kwargs)
    original.reset(seed=3)
    original.action_space.seed(5)
    actions = [original.action_space.sample() for _ in range(before + after)]
    _play(original, actions[:before])
    state = capture_env_state(original)
    json.dumps(state.meta)  # JSON as it is (no NumPy scalars)
    assert all(isinstance(a, np.ndarray) and not a.dtype.hasobject
               for a in state.arrays.values())

    restored = make_env(env_id, **kwargs)
    restored.reset(seed=99)  # another episode entirely, until the restore
    restore_env_state(restored, state)
    ours, theirs = _play(original, actions[before:]), _play(restored, actions[before:])
    _assert_identical(ours, theirs)
    column = {"terminated": 2, "truncated": 3}[end]
    assert any(isinstance(step, tuple) and step[column] for step in ours), (
        f"no episode was {end} after the restore: the test would prove less")


def test_an_unknown_env_or_wrapper_is_not_captured():
    import gymnasium as gym
    from space_envs import multi_discrete_bandit

    wrapped = gym.wrappers.ClipReward(make_env("CartPole-v1"), -1, 1)
    wrapped.reset(seed=0)
    with pytest.raises(UnsupportedEnvState, match="ClipReward"):
        capture_env_state(wrapped)
    custom = multi_discrete_bandit()
    custom.reset(seed=0)
    with pytest.raises(UnsupportedEnvState, match="ContextBandit"):
        capture_env_state(custom)


# Malformed and foreign states ---------------------------------------------------------------

def _cartpole(steps: int = 7):
    env = make_env("CartPole-v1")
    env.reset(seed=1)
    for _ in range(steps):
        env.step(0)
    return env


def _edited(state: EnvState, meta_edit=None, arrays_edit=None) -> EnvState:
    meta, arrays = copy.deepcopy(state.meta), dict(state.arrays)
    if meta_edit is not None:
        meta_edit(meta)
    if arrays_edit is not None:
        arrays_edit(arrays)
    return EnvState(meta, arrays)


def _assert_same_state(a: EnvState, b: EnvState) -> None:
    assert a.meta == b.meta and a.arrays.keys() == b.arrays.keys()
    for name, value in a.arrays.items():
        np.testing.assert_array_equal(value, b.arrays[name], err_msg=name)


def _set(path, value):
    def edit(meta):
        target = meta
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


MALFORMED = [
    ("state as integers", None, lambda a: a.update(state=a["state"].astype(np.int64)),
     "array 'state' is int64"),
    ("state of another length", None, lambda a: a.update(state=np.zeros(5)), r"expected.*\[4\]"),
    ("state with a NaN", None, lambda a: a.update(state=np.array([0, np.nan, 0, 0.0])),
     "NaN or infinite"),
    ("state missing", None, lambda a: a.pop("state"), "missing array 'state'"),
    ("a foreign bit generator", _set(["np_random", "bit_generator"], "os.system"), None,
     "bit generator 'os.system'"),
    ("a broken bit generator state", _set(["np_random", "state"], "x"), None,
     "not a valid PCG64 state"),
    ("a negative step count", _set(["wrappers", 0, "_elapsed_steps"], -1), None,
     "_elapsed_steps"),
    ("a step count as text", _set(["wrappers", 0, "_elapsed_steps"], "7"), None,
     "_elapsed_steps"),
    ("a reset flag that is not a boolean", _set(["wrappers", 1, "_has_reset"], 1), None,
     "_has_reset"),
    ("a counter as text", _set(["base", "steps_beyond_terminated"], {"kind": "int",
                                                                      "value": "x"}),
     None, "value"),
    ("no wrapper list", _set(["wrappers"], "TimeLimit"), None, "wrappers"),
    ("an unknown value kind", _set(["base", "state", "kind"], "pickle"), None, "kind"),
]


@pytest.mark.parametrize("what, meta_edit, arrays_edit, message", MALFORMED,
                         ids=[case[0] for case in MALFORMED])
def test_a_malformed_state_is_refused_and_changes_nothing(what, meta_edit, arrays_edit,
                                                          message):
    env = _cartpole()
    good = capture_env_state(env)
    target = _cartpole(steps=2)
    before = capture_env_state(target)
    with pytest.raises(EnvStateError, match=message) as refused:
        restore_env_state(target, _edited(good, meta_edit, arrays_edit))
    assert not isinstance(refused.value, EnvStateMismatch)
    _assert_same_state(capture_env_state(target), before)


FOREIGN = [
    ("a later format", _set(["format"], 2), "format is 2"),
    ("another env", _set(["env"], "PendulumEnv"), "PendulumEnv"),
    ("another wrapper chain", lambda m: m["wrappers"].pop(0), "wrappers"),
    ("another time limit", _set(["wrappers", 0, "_max_episode_steps"], 200),
     "_max_episode_steps is 200"),
]


@pytest.mark.parametrize("what, meta_edit, message", FOREIGN, ids=[c[0] for c in FOREIGN])
def test_a_state_of_another_env_or_version_is_a_mismatch(what, meta_edit, message):
    target = _cartpole(steps=2)
    before = capture_env_state(target)
    with pytest.raises(EnvStateMismatch, match=message):
        restore_env_state(target, _edited(capture_env_state(_cartpole()), meta_edit))
    _assert_same_state(capture_env_state(target), before)


@MUJOCO
def test_a_mujoco_state_of_the_wrong_size_is_refused():
    env, target = make_env("Hopper-v5"), make_env("Hopper-v5")
    env.reset(seed=0)
    target.reset(seed=1)
    before = capture_env_state(target)
    good = capture_env_state(env)
    short = _edited(good, arrays_edit=lambda a: a.update(integration=a["integration"][:-1]))
    with pytest.raises(EnvStateError, match="array 'integration'"):
        restore_env_state(target, short)
    with pytest.raises(EnvStateMismatch, match="nq is 99"):
        restore_env_state(target, _edited(good, _set(["base", "nq"], 99)))
    _assert_same_state(capture_env_state(target), before)


@ALE
def test_ale_bytes_it_cannot_load_are_refused_and_the_emulator_is_untouched():
    env, target = make_env("ALE/Pong-v5"), make_env("ALE/Pong-v5")
    env.reset(seed=0)
    target.reset(seed=1)
    before = capture_env_state(target)
    for blob in (b"garbage", bytes(100)):  # unreadable; read, but not as ALE wrote it
        bad = _edited(capture_env_state(env), arrays_edit=lambda a, b=blob: a.update(
            ale_state=np.frombuffer(b, np.uint8)))
        with pytest.raises(EnvStateError, match="ALE cannot load"):
            restore_env_state(target, bad)
        _assert_same_state(capture_env_state(target), before)


@MINIGRID
def test_a_minigrid_grid_with_an_unknown_object_is_refused():
    env = make_env("MiniGrid-Empty-5x5-v0")
    env.reset(seed=0)
    good = capture_env_state(env)
    grid = good.arrays["grid"].copy()
    grid[2, 2, 0] = 200
    with pytest.raises(EnvStateError, match="unknown object"):
        restore_env_state(env, _edited(good, arrays_edit=lambda a: a.update(grid=grid)))
    with pytest.raises(EnvStateError, match="agent_pos"):
        restore_env_state(env, _edited(good, _set(["base", "agent_pos"], [9, 9])))
    _assert_same_state(capture_env_state(env), good)


# A run killed with SIGKILL, resumed with `natgrad-trpo train --resume` --------------------

#: Only the size is changed from each env's preset (which keeps e.g. Hopper's normalizers).
SIZE = {"n_steps": 64, "critic_epochs": 1, "policy_hidden": (16,), "value_hidden": (16,),
        "checkpoint_every": 1, "eval_episodes": 1}
BATCH = 2 * SIZE["n_steps"]  # the presets' 2 envs
TOTAL = 6 * BATCH
KILLED_ENVS = ["CartPole-v1", "Pendulum-v1",
               pytest.param("Hopper-v5", marks=MUJOCO)]


def _rows(run_dir) -> list[dict]:
    with open(run_dir / "progress.csv") as f:
        return [{k: v for k, v in row.items() if k not in ("wall_time", "steps_per_second")}
                for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def killed_runs(tmp_path_factory) -> dict:
    """A ``natgrad-trpo train`` per env, started together with a budget too large to finish,
    each killed with SIGKILL at a random moment (0-0.3 s) after its second checkpoint was
    written (an event, not a time): ``{env_id: run_dir}``."""
    root = tmp_path_factory.mktemp("killed")
    envs = ["CartPole-v1", "Pendulum-v1"] + (["Hopper-v5"] if _has("mujoco") else [])
    delays = random.Random(19)
    running = {}
    for env_id in envs:
        run_dir = root / env_id
        log = open(root / f"{env_id}.log", "w")  # closed below
        argv = [sys.executable, "-m", "agents", "train", env_id, "--steps", "10_000_000",
                "--out", str(run_dir), *cli_settings(SIZE)]
        running[env_id] = [run_dir, subprocess.Popen(argv, stdout=log, stderr=log), log, None]
    deadline = time.monotonic() + 300
    try:
        while any(proc.poll() is None for _, proc, _, _ in running.values()):
            for entry in running.values():
                run_dir, proc, _, kill_at = entry
                if proc.poll() is not None:
                    continue
                if kill_at is None and (run_dir / "checkpoints" / "update_000002.ckpt").exists():
                    entry[3] = kill_at = time.monotonic() + delays.uniform(0.0, 0.3)
                if kill_at is not None and time.monotonic() >= kill_at:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=60)
            assert time.monotonic() < deadline, "no second checkpoint within 300 s"
            time.sleep(0.02)
    finally:
        for _, proc, log, _ in running.values():
            proc.kill()
            proc.wait(timeout=60)
            log.close()
    for env_id, (_, proc, _, _) in running.items():
        assert proc.returncode == -signal.SIGKILL, (
            env_id, (root / f"{env_id}.log").read_text()[-2000:])
    return {env_id: entry[0] for env_id, entry in running.items()}


@pytest.mark.slow
@pytest.mark.parametrize("env_id", KILLED_ENVS)
def test_a_run_killed_by_sigkill_resumes_bit_for_bit(killed_runs, tmp_path, env_id):
    """Default settings (no pickles, nothing trusted): ``train --resume`` continues the envs
    from their saved state, so progress.csv and the final weights equal a run never killed."""
    from agents import TRPO
    from agents.runs.checkpoint import latest_checkpoint, read_checkpoint

    run_dir = killed_runs[env_id]
    killed_at = read_checkpoint(latest_checkpoint(run_dir)).meta["num_timesteps"]
    assert killed_at >= 2 * BATCH
    # at least two updates after the kill, however many the kill's delay let through
    total = max(TOTAL, killed_at + 2 * BATCH)
    status, _, err = run_main(["train", "--resume", run_dir, "--steps", total])
    assert status == 0, err
    assert "re-seed" not in err, err

    straight = TRPO(env_id, run_dir=tmp_path / "straight", total_steps=10_000_000,
                    **SIZE).learn(total)
    assert _rows(run_dir) == _rows(tmp_path / "straight")
    assert len(_rows(run_dir)) == total // BATCH
    resumed = TRPO.load(latest_checkpoint(run_dir))
    assert resumed.num_timesteps == straight.num_timesteps == total
    for a, b in zip(straight.policy.trainable_variables + straight.value.trainable_variables,
                    resumed.policy.trainable_variables + resumed.value.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not list((run_dir / "checkpoints").glob(".*.tmp"))  # the kill tore no file
