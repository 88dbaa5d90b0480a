"""The vector env a rollout steps: Gymnasium's ``SyncVectorEnv`` with a leaner ``step``.

:class:`RolloutVectorEnv` steps its envs one after another and resets a finished one in the
same step (``AutoresetMode.SAME_STEP``), exactly as ``SyncVectorEnv`` does: the same calls in
the same order, so the same seeds give the same episodes. Its ``step`` returns only the infos
a rollout reads: ``final_obs`` (and its mask ``_final_obs``) where an episode ended. The envs'
own per-step infos are not merged into batched arrays, which on MuJoCo's reward terms costs
a noticeable part of the env step. Everything else (``reset``, spaces, ``call``, ``close``)
is ``SyncVectorEnv``'s.

An env whose observation does not have its observation space's shape fails in ``reset`` or
``step`` with :class:`ObservationShapeError`, naming the env, the space and the shape received
(instead of NumPy's or Gymnasium's bare "wrong shape"); the check runs only once that error
has happened, so stepping costs nothing more.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate

SAME_STEP = gym.vector.AutoresetMode.SAME_STEP


class ObservationShapeError(ValueError):
    """An env returned an observation of another shape than its observation space's."""


class RolloutVectorEnv(gym.vector.SyncVectorEnv):
    """``SyncVectorEnv(env_fns, autoreset_mode=SAME_STEP)`` whose ``step`` skips the envs'
    infos (see the module docstring)."""

    def __init__(self, env_fns):
        super().__init__(env_fns, autoreset_mode=SAME_STEP)
        # Actions split per env by indexing: Box/Discrete/MultiDiscrete/MultiBinary batches
        # are arrays; other spaces go through Gymnasium's generic ``iterate``.
        space = self.single_observation_space
        self._box_obs = isinstance(space, gym.spaces.Box)
        self._array_actions = isinstance(
            self.single_action_space,
            (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete,
             gym.spaces.MultiBinary))

    def step(self, actions):
        if self._array_actions:
            per_env = actions
        else:
            per_env = list(gym.vector.utils.iterate(self.action_space, actions))
        n = self.num_envs
        rewards, terminations, truncations = self._rewards, self._terminations, self._truncations
        final_obs = None
        batch = None
        if self._box_obs:
            space = self.single_observation_space
            batch = np.empty((n, *space.shape), space.dtype)
        obs = None
        try:
            for i, env in enumerate(self.envs):
                obs, reward, terminated, truncated, _ = env.step(per_env[i])
                rewards[i], terminations[i], truncations[i] = reward, terminated, truncated
                if terminated or truncated:
                    if final_obs is None:
                        final_obs = np.full(n, None, dtype=object)
                    final_obs[i] = obs
                    obs, _ = env.reset()
                self._env_obs[i] = obs
                if batch is not None:
                    batch[i] = obs
            if batch is None:
                batch = _copy(concatenate(self.single_observation_space, self._env_obs,
                                          self._observations))
        except ValueError as exc:
            raise self._shape_error([obs, *self._env_obs], exc) from None
        self._autoreset_envs = terminations | truncations
        infos = {}
        if final_obs is not None:
            infos = {"final_obs": final_obs,
                     "_final_obs": np.array([x is not None for x in final_obs])}
        return (batch, rewards.copy(), terminations.copy(),
                truncations.copy(), infos)


    def reset(self, *, seed=None, options=None):
        try:
            return super().reset(seed=seed, options=options)
        except ValueError as exc:
            raise self._shape_error(self._env_obs, exc) from None

    def _shape_error(self, observations, exc: ValueError) -> ValueError:
        """:class:`ObservationShapeError` for the first of ``observations`` whose shape is not
        the observation space's, or ``exc`` itself when none is (another ``ValueError``)."""
        space = self.single_observation_space
        expected = _shapes(space)
        for obs in observations:
            if obs is not None and _shapes(obs, like=space) != expected:
                env = self.envs[0]
                name = env.spec.id if env.spec is not None else type(env.unwrapped).__name__
                return ObservationShapeError(
                    f"env {name!r} returned an observation of shape "
                    f"{_shapes(obs, like=space)}, but its observation space is {space} "
                    f"(shape {expected}); fix the env's observation_space or its observations")
        return exc


def _shapes(value, like=None):
    """The shape of an observation or space; a dict/tuple of them for Dict/Tuple spaces."""
    like = value if like is None else like
    if isinstance(like, gym.spaces.Dict) and isinstance(value, (dict, gym.spaces.Dict)):
        return {k: _shapes(value[k], like[k]) if k in value else None for k in like}
    if isinstance(like, gym.spaces.Tuple) and isinstance(value, (tuple, gym.spaces.Tuple)):
        return tuple(_shapes(v, s) for v, s in zip(value, like, strict=False))
    if isinstance(value, gym.Space):
        return value.shape
    return np.shape(value)


def _copy(obs):
    """A copy of a batched observation (an array, or a dict/tuple of them)."""
    if isinstance(obs, np.ndarray):
        return obs.copy()
    if isinstance(obs, dict):
        return {key: _copy(value) for key, value in obs.items()}
    if isinstance(obs, tuple):
        return tuple(_copy(value) for value in obs)
    return obs
