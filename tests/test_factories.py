"""agents.envs.factories: the pixel CartPole shows what render() draws, and a missing optional
package is named with the extra that installs it."""

from __future__ import annotations

import importlib

import gymnasium as gym
import numpy as np
import pytest

from agents.envs.factories import PIXEL_CARTPOLE_ID, make_env, register_env_family


def test_pixel_cartpole_observation_is_the_block_mean_of_the_rendered_frame():
    env = make_env(PIXEL_CARTPOLE_ID)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 40, 60) and obs.dtype == np.uint8
    for _ in range(3):
        obs, reward, *_ = env.step(1)
    frame = env.render()[..., 1].astype(np.float64)  # the green channel, 160 x 240
    assert frame.shape == (160, 240) and reward == 1.0
    expected = frame.reshape(40, 4, 60, 4).mean(axis=(1, 3)).astype(np.uint8)
    np.testing.assert_array_equal(obs[-1], expected)
    assert not np.array_equal(obs[0], obs[1])  # two consecutive frames, the cart has moved
    env.close()


def test_a_missing_family_package_names_its_extra(monkeypatch):
    real_import = importlib.import_module

    def no_ale(name, *args, **kwargs):
        if name == "ale_py":
            raise ImportError("No module named 'ale_py'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", no_ale)
    with pytest.raises(ValueError, match=r"'ALE/Pong-v5' needs the 'ale_py' package: "
                                         r"pip install -e \"\.\[atari\]\""):
        register_env_family("ALE/Pong-v5")
    register_env_family("CartPole-v1")  # no family: nothing to import


def test_other_ids_are_plain_gymnasium_make():
    env = make_env("CartPole-v1")
    assert env.spec.id == "CartPole-v1" and isinstance(env.observation_space, gym.spaces.Box)
    env.close()
