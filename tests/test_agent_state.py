"""``agents.runs.agent_state``: an agent saved and loaded, resumed exactly (the envs' state as
arrays and JSON, or a trusted pickle for envs without one) or with re-seeded envs, and never
with non-finite weights or a malformed env state."""

from __future__ import annotations

import csv
import json
import pickle

import numpy as np
import pytest
from conftest import TINY_BATCH as BATCH
from test_checkpoint import Marker

from agents import TRPO
from agents.config import ADDED_FIELDS
from agents.envs.factories import make_vector_env
from agents.runs.checkpoint import (
    ENV_STATE_KEY,
    ENV_STATES_PREFIX,
    CheckpointError,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)


def _rows(run_dir):
    with open(run_dir / "progress.csv") as f:
        return [{k: v for k, v in r.items() if k not in ("wall_time", "steps_per_second")}
                for r in csv.DictReader(f)]


def _weights(agent):
    return [v.numpy() for v in (*agent.policy.trainable_variables,
                                *agent.value.trainable_variables)]


def _without_env_states(checkpoint) -> tuple[dict, dict]:
    """``(meta, arrays)`` of ``checkpoint`` as natgrad wrote them before env states existed."""
    meta = {k: v for k, v in checkpoint.meta.items() if k != "env_states"}
    return meta, {k: v for k, v in checkpoint.arrays.items()
                  if not k.startswith(ENV_STATES_PREFIX)}


def _stepped_agent(settings, steps: int = 40):
    """A CartPole agent whose envs took ``steps`` steps (episodes ended and in progress)."""
    agent = TRPO("CartPole-v1", **settings)
    agent.worker.collect(agent.policy.numpy_params(), steps, np.random.default_rng(1))
    return agent


@pytest.fixture
def settings(tiny_config):
    """The tiny config, checkpointing every second update."""
    return {**tiny_config, "checkpoint_every": 2}


@pytest.mark.slow
@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {"normalize_obs": True}),
                                           ("Pendulum-v1", {"normalize_reward": True})])
def test_trusted_env_state_resumes_bit_for_bit(tmp_path, settings, env_id, extra):
    settings = {**settings, **extra, "save_env_state": True}
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


@pytest.mark.slow
def test_default_resume_keeps_the_envs_without_pickles_and_is_deterministic(tmp_path,
                                                                            settings):
    run = tmp_path / "run"
    TRPO("CartPole-v1", run_dir=run, **settings).learn(4 * BATCH)
    rows_at_checkpoint = _rows(run)
    ckpt = read_checkpoint(latest_checkpoint(run))
    assert ENV_STATE_KEY not in ckpt.arrays  # no pickled envs unless asked for
    assert len(ckpt.meta["env_states"]) == settings["n_envs"]  # but their state as arrays
    assert ckpt.arrays[f"{ENV_STATES_PREFIX}0/state"].shape == (4,)

    first = TRPO.resume(run).learn(6 * BATCH)
    assert first.num_timesteps == 6 * BATCH
    assert _rows(run)[:4] == rows_at_checkpoint and len(_rows(run)) == 6
    # The same checkpoint resumed again gives the same run.
    (run / "checkpoints" / "update_000006.ckpt").unlink()
    second = TRPO.resume(run).learn(6 * BATCH)
    for a, b in zip(_weights(first), _weights(second), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_loaded_agent_continues_from_the_saved_envs_or_reseeds_them(tmp_path, settings):
    """The first rollout of a loaded agent starts where the saved one stopped (the envs' state
    as arrays, nothing trusted), or, from a file without env state (an older natgrad), from
    envs re-seeded ``seed + updates`` with the episode counts kept."""
    agent = _stepped_agent(settings)
    agent.save(tmp_path / "agent.ckpt")
    loaded = TRPO.load(tmp_path / "agent.ckpt")
    np.testing.assert_array_equal(loaded.worker.last_obs, agent.worker.last_obs)
    np.testing.assert_array_equal(loaded.worker.running_returns, agent.worker.running_returns)
    saved_episodes, saved_returns = agent.worker.episodes, list(agent.worker.episode_returns)
    assert loaded.worker.episodes == saved_episodes > 0
    params = agent.policy.numpy_params()
    ours = agent.worker.collect(params, 200, np.random.default_rng(0))
    theirs = loaded.worker.collect(params, 200, np.random.default_rng(0))
    assert ours.terminated.any()  # across episode ends too
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)

    write_checkpoint(tmp_path / "old.ckpt",
                     *_without_env_states(read_checkpoint(tmp_path / "agent.ckpt")))
    reseeded = TRPO.load(tmp_path / "old.ckpt")
    fresh = make_vector_env(agent.env_factory, agent.config.n_envs, "sync")
    first_obs, _ = fresh.reset(seed=agent.config.seed + agent.updates)
    fresh.close()
    np.testing.assert_array_equal(reseeded.worker.last_obs, first_obs)
    np.testing.assert_array_equal(reseeded.worker.running_returns, 0.0)
    assert reseeded.worker.episodes == saved_episodes
    assert list(reseeded.worker.episode_returns) == saved_returns


@pytest.mark.slow
def test_a_run_saved_before_later_config_fields_resumes_with_the_values_it_used(tmp_path,
                                                                                 settings):
    run = tmp_path / "run"
    TRPO("CartPole-v1", run_dir=run, **settings, critic_epsilon=1e-7,
         tf_threads=0).learn(4 * BATCH)
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


def test_save_load_round_trip_predicts_the_same(tmp_path, settings):
    agent = TRPO("CartPole-v1", normalize_obs=True, **settings).learn(256)
    agent.save(tmp_path / "agent.ckpt")
    loaded = TRPO.load(tmp_path / "agent.ckpt")
    obs = np.random.default_rng(0).normal(size=(32, 4)).astype(np.float32)
    np.testing.assert_array_equal(agent.predict(obs), loaded.predict(obs))
    assert loaded.num_timesteps == 256 and loaded.config == agent.config
    assert loaded.run_id == agent.run_id
    np.testing.assert_array_equal(agent.obs_rms.mean, loaded.obs_rms.mean)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left no temp file


def test_pickled_env_state_is_unpickled_only_when_trusted(tmp_path, settings):
    marker = tmp_path / "pwned"
    agent = TRPO("CartPole-v1", **settings)
    assert agent.worker.episodes == 0  # the envs exist: the checkpoint holds their state
    agent.save(tmp_path / "good.ckpt")
    good = read_checkpoint(tmp_path / "good.ckpt")
    pickled = np.frombuffer(pickle.dumps(Marker(marker)), np.uint8)
    # Beside the envs' state as arrays, a pickle is never unpickled, trusted or not.
    write_checkpoint(tmp_path / "both.ckpt", good.meta, {**good.arrays, ENV_STATE_KEY: pickled})
    TRPO.load(tmp_path / "both.ckpt", trust_env_state=True).worker  # noqa: B018
    assert not marker.exists()
    # Alone (what save_env_state writes for envs without array state), it is not unpickled
    # unless trusted: not on load, nor when the loaded agent makes its envs.
    meta, arrays = _without_env_states(good)
    write_checkpoint(tmp_path / "env.ckpt", meta, {**arrays, ENV_STATE_KEY: pickled})
    loaded = TRPO.load(tmp_path / "env.ckpt")
    assert loaded.worker.envs.num_envs == settings["n_envs"]
    assert not marker.exists()
    TRPO.load(tmp_path / "env.ckpt", trust_env_state=True)
    assert marker.exists()  # trusted: unpickled (so only for files you wrote)


def test_env_state_pickled_before_the_modules_moved_still_loads(tmp_path, settings,
                                                                monkeypatch):
    """A trusted env-state pickle written by natgrad 0.2 names agents.env_factories (now
    agents.envs.factories): it loads; one naming a class that no longer exists is refused
    with a message saying how to resume without it."""
    import sys

    import agents.envs.factories as factories

    agent = TRPO("CartPole-v1", **settings)
    agent.worker  # noqa: B018 - the envs exist: the checkpoint holds their state
    agent.save(tmp_path / "good.ckpt")
    meta, good_arrays = _without_env_states(read_checkpoint(tmp_path / "good.ckpt"))
    with monkeypatch.context() as patch:  # pickle as 0.2 did, under the old module name
        patch.setitem(sys.modules, "agents.env_factories", factories)
        patch.setattr(factories.make_pixel_cartpole, "__module__", "agents.env_factories")
        blob = pickle.dumps([factories.make_pixel_cartpole])
    assert b"agents.env_factories" in blob
    arrays = {**good_arrays, ENV_STATE_KEY: np.frombuffer(blob, np.uint8)}
    write_checkpoint(tmp_path / "old.ckpt", meta, arrays)
    loaded = TRPO.load(tmp_path / "old.ckpt", trust_env_state=True)
    assert loaded.worker.envs.envs == [factories.make_pixel_cartpole]  # what was pickled

    gone = blob.replace(b"make_pixel_cartpole", b"make_pixel_cartpolX")
    arrays = {**good_arrays, ENV_STATE_KEY: np.frombuffer(gone, np.uint8)}
    write_checkpoint(tmp_path / "gone.ckpt", meta, arrays)
    with pytest.raises(CheckpointError, match="cannot be loaded by this version.*re-seed"):
        TRPO.load(tmp_path / "gone.ckpt", trust_env_state=True)
    assert TRPO.load(tmp_path / "gone.ckpt").worker.envs.num_envs == settings["n_envs"]


def test_non_finite_weights_are_never_saved_or_loaded(tmp_path, settings):
    agent = TRPO("CartPole-v1", **settings)
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


def test_a_malformed_env_state_is_refused_naming_the_file_before_anything_changes(tmp_path,
                                                                                 settings):
    agent = _stepped_agent(settings)
    agent.save(tmp_path / "agent.ckpt")
    good = read_checkpoint(tmp_path / "agent.ckpt")
    arrays = {**good.arrays, f"{ENV_STATES_PREFIX}1/state": np.zeros(4, np.int64)}
    write_checkpoint(tmp_path / "bad.ckpt", good.meta, arrays)
    with pytest.raises(CheckpointError, match=r"bad\.ckpt.*env 1 is malformed.*'state'"):
        TRPO.load(tmp_path / "bad.ckpt")
    meta = {**good.meta, "env_states": good.meta["env_states"][:1]}  # one of its two envs
    write_checkpoint(tmp_path / "short.ckpt", meta, good.arrays)
    with pytest.raises(CheckpointError, match=r"short\.ckpt.*its 2 envs"):
        TRPO.load(tmp_path / "short.ckpt")
    # (TRPO.load builds nothing from a refused file: the restore checks every field first.)


def test_an_env_state_of_another_version_re_seeds_the_envs_with_a_warning(tmp_path, settings,
                                                                           caplog):
    agent = _stepped_agent(settings)
    agent.save(tmp_path / "agent.ckpt")
    good = read_checkpoint(tmp_path / "agent.ckpt")
    meta = {**good.meta, "env_states": [{**s, "format": 99} for s in good.meta["env_states"]]}
    write_checkpoint(tmp_path / "later.ckpt", meta, good.arrays)
    loaded = TRPO.load(tmp_path / "later.ckpt")
    assert "format is 99" in caplog.text and "re-seeded" in caplog.text
    fresh = make_vector_env(agent.env_factory, agent.config.n_envs, "sync")
    np.testing.assert_array_equal(loaded.worker.last_obs,
                                  fresh.reset(seed=agent.config.seed + agent.updates)[0])
    fresh.close()
