"""``agents.rollback``: an update that meets a NaN or infinity is undone whole, then training
stops at the last good checkpoint or skips the batch."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from space_envs import scripted

from agents import TRPO
from agents.envs.normalization import normalizer_state
from agents.rollback import Snapshot, skipped_row
from agents.rollout import NonFiniteError
from agents.runs.agent_state import all_variables
from agents.runs.checkpoint import latest_checkpoint, read_checkpoint
from agents.runs.progress import PROGRESS_KEYS


def _values(agent):
    return [v.numpy().tobytes() for v in all_variables(agent)]


def test_snapshot_restores_every_variable_and_the_normalizers_bit_for_bit(tiny_config):
    agent = TRPO("Pendulum-v1", normalize_obs=True, normalize_reward=True, **tiny_config)
    rng = np.random.default_rng(0)
    agent.obs_rms.update(rng.normal(size=(5, 3)))
    agent.reward_scaler.scale(rng.normal(size=2), np.array([False, True]))
    variables = all_variables(agent)
    before, normalizers = _values(agent), normalizer_state(agent.obs_rms, agent.reward_scaler)
    snapshot = Snapshot.take(variables, agent.obs_rms, agent.reward_scaler)
    # Everything changes, some of it to NaN, as in a failed update.
    for i, variable in enumerate(variables):
        current = np.asarray(variable.numpy())
        if current.dtype.kind == "f":
            value = rng.normal(size=current.shape) * (np.nan if i % 2 else 1.0)
        else:  # an optimizer's step counter
            value = current + 7
        variable.assign(value.astype(current.dtype))
    agent.obs_rms.update(rng.normal(size=(4, 3)))
    agent.reward_scaler.scale(np.array([1e6, -1e6]), np.array([False, False]))
    assert _values(agent) != before
    snapshot.restore(variables, agent.obs_rms, agent.reward_scaler)
    assert _values(agent) == before
    np.testing.assert_equal(normalizer_state(agent.obs_rms, agent.reward_scaler), normalizers)


def test_a_snapshot_can_hold_normalizers_from_before_a_batch_collected_early(tiny_config):
    agent = TRPO("CartPole-v1", normalize_obs=True, **tiny_config)
    earlier = normalizer_state(agent.obs_rms, agent.reward_scaler)
    agent.obs_rms.update(np.ones((3, 4)))
    snapshot = Snapshot.take(all_variables(agent), agent.obs_rms, agent.reward_scaler, earlier)
    snapshot.restore(all_variables(agent), agent.obs_rms, agent.reward_scaler)
    np.testing.assert_equal(normalizer_state(agent.obs_rms, agent.reward_scaler), earlier)


def test_a_skipped_row_has_its_counters_and_nan_statistics():
    row = skipped_row(384, 2.5, 17.0, 1)
    assert tuple(row) == PROGRESS_KEYS
    assert (row["env_steps"], row["wall_time"], row["mean_return"], row["accepted"],
            row["skipped_batches"]) == (384, 2.5, 17.0, 0, 1)
    assert all(math.isnan(row[k]) for k in ("kl", "entropy", "value_loss", "cg_residual"))


@pytest.mark.slow
@pytest.mark.parametrize("fault, quantity", [("nan_obs", "the observation"),
                                             ("inf_reward", "the reward"),
                                             ("huge_reward", "value loss")])
def test_non_finite_training_stops_at_the_last_good_checkpoint(tmp_path, tiny_config, fault,
                                                               quantity):
    agent = TRPO(scripted(fault=fault, fault_at=150), run_dir=tmp_path, checkpoint_every=100,
                 **tiny_config)  # per env 64 steps an update: the fault comes in update 3
    with pytest.raises(NonFiniteError, match=quantity) as caught:
        agent.learn(10 * 128)
    assert "update 3 (env steps 257-384)" in str(caught.value)
    assert agent.num_timesteps == 256 and agent.updates == 2
    saved = read_checkpoint(latest_checkpoint(tmp_path))
    assert saved.path.name == "update_000002.ckpt"
    for variable in (*agent.policy.trainable_variables, *agent.value.trainable_variables):
        assert np.all(np.isfinite(variable.numpy()))
    assert all(np.all(np.isfinite(a)) for a in saved.arrays.values() if a.dtype.kind == "f")
    with open(tmp_path / "progress.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


@pytest.mark.slow
def test_non_finite_batches_can_be_skipped_and_counted(tmp_path, tiny_config):
    agent = TRPO(scripted(fault="nan_obs", fault_at=150), run_dir=tmp_path,
                 on_non_finite="skip", **tiny_config).learn(5 * 128)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["skipped_batches"]) for r in rows] == [0, 0, 1, 1, 1]
    assert rows[2]["accepted"] == "0" and rows[3]["accepted"] == "1"
    for variable in (*agent.policy.trainable_variables, *agent.value.trainable_variables):
        assert np.all(np.isfinite(variable.numpy()))
