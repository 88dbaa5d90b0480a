"""Small envs with a known optimal policy, one per space this agent takes beyond flat vectors.

Each is a contextual bandit: a context ``c`` is drawn, shown in the observation, the episode
ends after one action with the reward below, so the optimal policy is a function of ``c`` that
the tests can state exactly. Registered on import; ``natgrad-trpo`` reaches them as
``space_envs:<id>`` (``tests/`` is on the path of the test session).

:class:`ScriptedEnv` (through :func:`scripted`) is a flat-vector env that can be made to emit a
NaN or an infinity, to start its actions at 1, or never to end.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

IMAGE = 36  # the smallest image side the Nature CNN takes


class ContextBandit(gym.Env):
    """``c ~ U{0..n_contexts-1}``; observation ``observe(c)``; one step; reward ``reward(c, a)``."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, observation_space, action_space, n_contexts, observe, reward,
                 render_mode=None):
        self.observation_space, self.action_space = observation_space, action_space
        self.n_contexts, self.observe, self.reward = n_contexts, observe, reward
        self.render_mode = render_mode
        self.c = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.c = int(self.np_random.integers(self.n_contexts))
        return self.observe(self.c), {}

    def step(self, action):
        reward = float(self.reward(self.c, action))
        self.c = int(self.np_random.integers(self.n_contexts))
        return self.observe(self.c), reward, True, False, {}

    def render(self):
        return np.full((64, 64, 3), 80 * self.c, np.uint8)


# MultiDiscrete([3, 4], start=[1, 0]) from a one-hot context c in {0, 1, 2}:
# reward = [a₀ = c + 1] + [a₁ = c + 1]; optimal action (c + 1, c + 1), return 2.
def multi_discrete_bandit(render_mode=None):
    return ContextBandit(
        gym.spaces.Box(0.0, 1.0, (3,), np.float32),
        gym.spaces.MultiDiscrete([3, 4], start=[1, 0]), 3,
        lambda c: np.eye(3, dtype=np.float32)[c],
        lambda c, a: int(a[0] == c + 1) + int(a[1] == c + 1), render_mode)


def multi_discrete_optimum(c: int):
    return [c + 1, c + 1]


# MultiBinary(2) from a Dict {"context": Discrete(4), "noise": Box(2)}: reward = number of
# bits equal to c's binary digits; optimal action (c & 1, c >> 1), return 2.
def multi_binary_dict_bandit(render_mode=None):
    def observe(c):
        return {"context": c, "noise": np.zeros(2, np.float32)}

    return ContextBandit(
        gym.spaces.Dict({"context": gym.spaces.Discrete(4),
                         "noise": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)}),
        gym.spaces.MultiBinary(2), 4, observe,
        lambda c, a: int(a[0] == (c & 1)) + int(a[1] == (c >> 1)), render_mode)


def multi_binary_optimum(c: int):
    return [c & 1, c >> 1]


# A Dict with a channels-first image and a vector, MultiDiscrete([2, 2]): c in {0..3}; the
# image's left half is bright when c & 1, the vector's sign is c >> 1; reward = [a₀ = c & 1]
# + [a₁ = c >> 1]. Only the CNN sees bit 0 and only the MLP bit 1.
def image_dict_observation(c: int) -> dict:
    image = np.zeros((2, IMAGE, IMAGE), np.uint8)
    image[:, :, : IMAGE // 2] = 255 * (c & 1)
    return {"camera": image, "speed": np.array([1.0 if c >> 1 else -1.0], np.float32)}


def image_dict_bandit(render_mode=None):
    return ContextBandit(
        gym.spaces.Dict({"camera": gym.spaces.Box(0, 255, (2, IMAGE, IMAGE), np.uint8),
                         "speed": gym.spaces.Box(-1.0, 1.0, (1,), np.float32)}),
        gym.spaces.MultiDiscrete([2, 2]), 4, image_dict_observation,
        lambda c, a: int(a[0] == (c & 1)) + int(a[1] == (c >> 1)), render_mode)


class ScriptedEnv(gym.Env):
    """3-D observations, two actions (``Discrete(2, start=action_start)``), reward 1 for the
    higher action. ``fault`` makes env step ``fault_at`` (counted per env instance) emit a NaN
    observation (``"nan_obs"``), an infinite reward (``"inf_reward"``), or rewards of 1e30
    from then on (``"huge_reward"``). Episodes last ``episode_length`` steps (``None``: never
    end). Any action outside the space raises."""

    def __init__(self, fault=None, fault_at=10**9, action_start=0, episode_length=20):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2, start=action_start)
        self.fault, self.fault_at, self.episode_length = fault, fault_at, episode_length
        self.steps = self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=3).astype(np.float32), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        self.t += 1
        self.steps += 1
        obs = self.np_random.normal(size=3).astype(np.float32)
        reward = float(action == self.action_space.start + 1)
        if self.steps >= self.fault_at:
            if self.fault == "nan_obs" and self.steps == self.fault_at:
                obs[1] = np.nan
            elif self.fault == "inf_reward" and self.steps == self.fault_at:
                reward = np.inf
            elif self.fault == "huge_reward":
                reward = 1e30
        ended = self.episode_length is not None and self.t >= self.episode_length
        return obs, reward, ended, False, {}


def scripted(**kwargs):
    def make_scripted_env():
        return ScriptedEnv(**kwargs)

    return make_scripted_env


ENVS = {
    "MultiDiscreteBandit-v0": multi_discrete_bandit,
    "MultiBinaryDictBandit-v0": multi_binary_dict_bandit,
    "ImageDictBandit-v0": image_dict_bandit,
}
for _id, _factory in ENVS.items():
    if _id not in gym.registry:
        gym.register(_id, entry_point=_factory)
