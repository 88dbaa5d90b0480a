"""``agents.config``: presets, overrides and the checks that refuse a bad configuration before
any training."""

from __future__ import annotations

import dataclasses

import pytest

import agents
from agents import TRPO, TRPOConfig, load_preset
from agents.config import resolve_config


def test_every_preset_resolves_to_a_valid_config():
    assert set(agents.PRESET_NAMES) >= {"CartPole-v1", "Acrobot-v1", "Pendulum-v1",
                                        "MountainCarContinuous-v0", "Hopper-v5",
                                        "HalfCheetah-v5", "Walker2d-v5"}
    for name in agents.PRESET_NAMES:
        assert "total_steps" in load_preset(name)
        resolve_config(name)
    cartpole = resolve_config("CartPole-v1")
    assert (cartpole.n_envs, cartpole.n_steps, cartpole.gae_lambda, cartpole.cg_damping,
            cartpole.critic_epochs, cartpole.total_steps) == (2, 512, 0.98, 1e-3, 20, 100_000)
    hopper = resolve_config("Hopper-v5")
    assert hopper.normalize_obs and hopper.cg_iters == 25 and hopper.total_steps == 1_000_000
    # The MuJoCo presets fit the value beside the next rollout (the same run, bit for bit:
    # tests/test_overlap.py); the others run the update as one graph.
    assert hopper.overlap_value_fit and not cartpole.overlap_value_fit


def test_overrides_win_over_presets_and_config_fields_have_help():
    assert resolve_config("CartPole-v1", n_steps=256).n_steps == 256
    assert resolve_config("Walker2d-v5", preset="Hopper-v5").normalize_obs
    assert all(f.metadata.get("help") for f in dataclasses.fields(TRPOConfig))


@pytest.mark.parametrize("bad", [
    {"max_kl": -0.01}, {"n_steps": 0}, {"total_steps": 0}, {"gamma": 1.5}, {"gae_lambda": -0.1},
    {"activation": "swish"}, {"vectorization": "threads"}, {"cg_iters": 0},
    {"line_search_shrink": 1.0}, {"policy_hidden": (64, 0)}, {"n_envs": 1.5},
    {"entropy_coef": -0.01}, {"entropy_coef": float("nan")},
])
def test_bad_config_values_raise_before_training(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        TRPO("CartPole-v1", **bad)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="known presets: .*CartPole-v1"):
        load_preset("NoSuchPreset")
    with pytest.raises(ValueError, match="learning_rate"):
        TRPO("CartPole-v1", learning_rate=0.1)
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        TRPO("NoSuchEnv-v0")


def test_settings_that_make_every_update_a_no_op_are_refused(tiny_config):
    with pytest.raises(ValueError, match="fisher_subsample=2000 leaves 1 of the batch's 128"):
        TRPO("CartPole-v1", fisher_subsample=2000, **tiny_config)
    with pytest.raises(ValueError, match="fisher_subsample"):
        resolve_config("CartPole-v1", **tiny_config, fisher_subsample=5)
    assert resolve_config("CartPole-v1", **tiny_config, fisher_subsample=4)



@pytest.mark.parametrize("setting, fragment", [
    ({"n_steps": 10**12}, "n_steps=1000000000000 with n_envs=2 makes a batch of"),
    ({"n_envs": 10**6}, "n_envs=1000000 (limit: 4,096 environments)"),
    ({"policy_hidden": (10**8,)}, "policy_hidden=(100000000,) (limit: 65,536 units"),
    ({"value_hidden": (60000, 60000)}, "hidden weights, about 26.8 GiB (limit: 2.0 GiB)"),
])
def test_sizes_no_machine_can_hold_are_refused_in_one_line(setting, fragment):
    with pytest.raises(ValueError) as raised:
        resolve_config("CartPole-v1", **setting)
    assert fragment in str(raised.value) and "\n" not in str(raised.value)


def test_rollout_buffers_larger_than_memory_are_refused_with_the_spaces(monkeypatch):
    import agents.config

    config = resolve_config("CartPole-v1", n_envs=8, n_steps=1 << 20)
    need = agents.config.rollout_bytes(8, 1 << 20, 100_000, 2)
    monkeypatch.setattr(agents.config, "physical_memory_bytes", lambda: need - 1)
    with pytest.raises(ValueError, match=r"n_envs=8, n_steps=1048576 need about 12,500\.5 GiB .*"
                                         r"observations of 100000 .*limit: this machine's"):
        agents.config.check_memory(config, 100_000, 2)
    agents.config.check_memory(config, 4, 2)  # CartPole's observations fit
