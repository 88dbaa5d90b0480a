"""The TRPO agent (``agents.trpo``): the spaces it takes, learning, determinism, prediction and
evaluation. Its configuration, update, checkpoints, rollback and overlap have their own test
modules."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest
from space_envs import scripted

from agents import TRPO


class _SpaceEnv(gym.Env):
    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


_BOX = gym.spaces.Box(-1, 1, (3,))


@pytest.mark.parametrize("obs_space, act_space, which, name", [
    (gym.spaces.Tuple((_BOX, _BOX)), gym.spaces.Discrete(2), "observation", "Tuple"),
    (gym.spaces.Graph(_BOX, None), gym.spaces.Discrete(2), "observation", "Graph"),
    (gym.spaces.Sequence(_BOX), gym.spaces.Discrete(2), "observation", "Sequence"),
    (gym.spaces.Dict({"x": _BOX, "t": gym.spaces.Text(5)}), gym.spaces.Discrete(2),
     "observation", "Text.*'t'"),
    (gym.spaces.Dict({"d": gym.spaces.Dict({"x": _BOX})}), gym.spaces.Discrete(2),
     "observation", "Dict.*'d'"),
    (_BOX, gym.spaces.Box(-1, 1, (2, 2)), "action", "Box"),
    (_BOX, gym.spaces.Tuple((gym.spaces.Discrete(2),)), "action", "Tuple"),
    (_BOX, gym.spaces.MultiDiscrete([[2, 3], [2, 2]]), "action", "MultiDiscrete"),
])
def test_unsupported_spaces_raise(obs_space, act_space, which, name):
    with pytest.raises(ValueError, match=f"unsupported {which} space {name}.*supported"):
        TRPO(lambda: _SpaceEnv(obs_space, act_space), env_id="custom")


# Learning ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_short_cartpole_run_learns_and_writes_its_run_dir(tmp_path):
    agent = TRPO("CartPole-v1", run_dir=tmp_path, total_steps=20_480)
    agent.learn()
    returns = [row["mean_return"] for row in agent.history]
    assert agent.num_timesteps == 20_480
    assert np.mean(returns[-3:]) > np.mean(returns[:3]) + 50, returns
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(agent.history) == 20
    assert set(rows[0]) == set(agent.history[0])
    assert json.loads((tmp_path / "config.json").read_text())["config"]["n_steps"] == 512
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "update_000020.ckpt").exists()
    result = agent.evaluate(episodes=2)
    assert set(result) == {"mean_return", "std_return", "episodes", "returns", "cut_episodes"}
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    batch = agent.predict(np.zeros((5, 4), np.float32))
    assert batch.shape == (5,) and np.asarray(agent.predict(np.zeros(4))).shape == ()


def _without_timing(history):
    return [{k: v for k, v in row.items() if k not in ("wall_time", "steps_per_second")}
            for row in history]


@pytest.mark.slow
def test_same_seed_gives_an_identical_run(tiny_config):
    runs = [TRPO("CartPole-v1", seed=3, normalize_obs=True, **tiny_config).learn(384)
            for _ in range(2)]
    assert _without_timing(runs[0].history) == _without_timing(runs[1].history)
    for a, b in zip(runs[0].policy.trainable_variables, runs[1].policy.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = TRPO("CartPole-v1", seed=4, normalize_obs=True, **tiny_config).learn(384)
    assert _without_timing(other.history) != _without_timing(runs[0].history)


# Environments and settings that used to fail silently (space_envs.ScriptedEnv) ------------


@pytest.mark.slow
def test_discrete_action_space_with_a_start_offset(tiny_config):
    agent = TRPO(scripted(action_start=1), **tiny_config).learn(8 * 128)  # the env raises on 0
    actions = agent.predict(np.zeros((16, 3), np.float32), deterministic=False)
    assert set(np.unique(actions)) <= {1, 2}
    assert agent.evaluate(2)["mean_return"] == 20.0  # always the rewarded action 2


def test_evaluate_caps_episodes_that_never_end(tiny_config):
    agent = TRPO(scripted(episode_length=None), eval_max_episode_steps=50, **tiny_config)
    result = agent.evaluate(3)
    assert result["cut_episodes"] == 3 and len(result["returns"]) == 3
    assert agent.evaluate(1, max_episode_steps=7)["returns"][0] <= 7


def test_predict_checks_the_observation_shape(tiny_config):
    agent = TRPO("CartPole-v1", **tiny_config)
    for bad in (np.zeros(3), np.zeros((2, 5)), np.zeros((2, 2, 4))):
        with pytest.raises(ValueError, match=r"shape \(4,\) or a batch \(B, 4\)"):
            agent.predict(bad)


def test_a_custom_env_given_as_module_colon_id(tmp_path, monkeypatch, tiny_config):
    (tmp_path / "my_envs.py").write_text(
        "import gymnasium\n"
        "gymnasium.register('MyCartPole-v0', entry_point="
        "'gymnasium.envs.classic_control:CartPoleEnv', max_episode_steps=50)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    agent = TRPO("my_envs:MyCartPole-v0", **tiny_config).learn(128)
    assert agent.config.env_id == "my_envs:MyCartPole-v0"
    assert max(agent.evaluate(2)["returns"]) <= 50
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        TRPO("no_such_module:Env-v0")
