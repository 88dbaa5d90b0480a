"""RolloutVectorEnv against Gymnasium's own SyncVectorEnv (SAME_STEP): same episodes, step by
step, for each kind of space; results that later steps and resets cannot change."""

from __future__ import annotations

import functools

import gymnasium as gym
import numpy as np
import pytest
import space_envs
from conftest import WrongShapeEnv

from agents.envs.factories import make_vector_env
from agents.envs.vector_env import RolloutVectorEnv

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP

FACTORIES = {
    "CartPole-v1 (Box obs, Discrete actions, truncation at 500)": functools.partial(
        gym.make, "CartPole-v1", max_episode_steps=30),
    "Pendulum-v1 (Box actions)": functools.partial(gym.make, "Pendulum-v1",
                                                   max_episode_steps=25),
    "MultiDiscrete actions, every step terminates": space_envs.multi_discrete_bandit,
    "Dict observations, MultiBinary actions": space_envs.multi_binary_dict_bandit,
}


def assert_same(a, b):
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    else:
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(FACTORIES))
def test_steps_like_gymnasium_sync_vector_env(name):
    factory = FACTORIES[name]
    ours = RolloutVectorEnv([factory] * 3)
    theirs = gym.vector.SyncVectorEnv([factory] * 3, autoreset_mode=SAME_STEP)
    assert ours.observation_space == theirs.observation_space
    obs_a, _ = ours.reset(seed=7)
    obs_b, _ = theirs.reset(seed=7)
    assert_same(obs_a, obs_b)
    theirs.action_space.seed(3)
    finals = 0
    for _ in range(80):
        actions = theirs.action_space.sample()
        a = ours.step(actions)
        b = theirs.step(actions)
        for x, y in zip(a[:4], b[:4], strict=True):
            assert_same(x, y)
        assert ("final_obs" in a[4]) == ("final_obs" in b[4])
        if "final_obs" in b[4]:
            np.testing.assert_array_equal(a[4]["_final_obs"], b[4]["_final_obs"])
            for i in np.flatnonzero(b[4]["_final_obs"]):
                assert_same(a[4]["final_obs"][i], b[4]["final_obs"][i])
                finals += 1
    assert finals > 0  # episodes did end within the 80 steps
    ours.close()
    theirs.close()


def test_returned_arrays_are_not_reused():
    envs = RolloutVectorEnv([functools.partial(gym.make, "CartPole-v1")] * 2)
    first, _ = envs.reset(seed=0)
    first_copy = first.copy()
    obs, rewards, terminated, truncated, _ = envs.step(np.array([0, 1]))
    kept = [x.copy() for x in (obs, rewards, terminated, truncated)]
    for _ in range(40):
        envs.step(np.array([1, 1]))
    envs.reset(seed=1)
    np.testing.assert_array_equal(first, first_copy)
    for x, y in zip((obs, rewards, terminated, truncated), kept, strict=True):
        np.testing.assert_array_equal(x, y)
    envs.close()


def test_make_vector_env_uses_it_for_sync_only():
    factory = functools.partial(gym.make, "CartPole-v1")
    assert isinstance(make_vector_env(factory, 2, "sync"), RolloutVectorEnv)
    envs = make_vector_env(factory, 2, "async")
    try:
        assert isinstance(envs, gym.vector.AsyncVectorEnv)
        assert envs.metadata["autoreset_mode"] == SAME_STEP
    finally:
        envs.close()


@pytest.mark.parametrize("bad_at_reset", [True, False])
def test_async_envs_name_the_env_space_and_shape_of_a_wrong_observation(bad_at_reset, capfd):
    from agents.envs.vector_env import ObservationShapeError

    envs = make_vector_env(functools.partial(WrongShapeEnv, bad_at_reset), 2, "async")
    expected = (r"^env 'WrongShapeEnv' returned an observation of shape \(3,\), but its "
                r"observation space is Box\(-1\.0, 1\.0, \(4,\), float32\) \(shape \(4,\)\)")
    try:
        with pytest.raises(ObservationShapeError, match=expected):
            envs.reset(seed=0)
            for _ in range(3):
                envs.step(np.zeros(2, np.int64))
    finally:
        envs.close()
    assert "Traceback" not in capfd.readouterr().err  # no worker traceback on stderr
