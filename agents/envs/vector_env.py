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

:class:`RolloutAsyncVectorEnv` (``vectorization="async"``) is Gymnasium's ``AsyncVectorEnv``
with the same check: each worker process compares its env's observation's shape with the
space's before writing it to shared memory (where a wrong shape would fail with Gymnasium's
bare error and a worker traceback, or be silently reshaped), and the main process raises
:class:`ObservationShapeError` naming the env, the space and the shape.
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


_SHAPE_ERROR_KEY = "natgrad_observation_shape_error"


class ObservationShapeCheck(gym.Wrapper):
    """Replaces an observation of the wrong shape by a valid one (the space's ``sample`` of
    zeros shape) and reports it in the info under :data:`_SHAPE_ERROR_KEY`, for
    :class:`RolloutAsyncVectorEnv` to raise in the main process."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self._expected = _shapes(env.observation_space)

    def _checked(self, obs, info):
        space = self.observation_space
        if _shapes(obs, like=space) == self._expected:
            return obs, info
        name = self.env.spec.id if self.env.spec is not None else type(self.unwrapped).__name__
        message = (f"env {name!r} returned an observation of shape "
                   f"{_shapes(obs, like=space)}, but its observation space is {space} "
                   f"(shape {self._expected}); fix the env's observation_space or its "
                   "observations")
        return space.sample(), {**info, _SHAPE_ERROR_KEY: message}

    def reset(self, **kwargs):
        return self._checked(*self.env.reset(**kwargs))

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs, info = self._checked(obs, info)
        return obs, reward, terminated, truncated, info


class _CheckedFactory:
    """``factory`` whose env is wrapped in :class:`ObservationShapeCheck` (picklable, for the
    worker processes)."""

    def __init__(self, factory):
        self.factory = factory

    def __call__(self) -> gym.Env:
        return ObservationShapeCheck(self.factory())


class RolloutAsyncVectorEnv(gym.vector.AsyncVectorEnv):
    """``AsyncVectorEnv(env_fns, autoreset_mode=SAME_STEP)`` whose envs' observations are
    checked for shape in their worker processes (see the module docstring).

    Raises:
      ObservationShapeError: from ``reset``/``step``, naming the env, space and shape.
    """

    def __init__(self, env_fns):
        super().__init__([_CheckedFactory(fn) for fn in env_fns], autoreset_mode=SAME_STEP)

    def reset_wait(self, *args, **kwargs):
        obs, infos = super().reset_wait(*args, **kwargs)
        _raise_shape_error(infos)
        return obs, infos

    def step_wait(self, *args, **kwargs):
        result = super().step_wait(*args, **kwargs)
        _raise_shape_error(result[-1])
        return result


def _raise_shape_error(infos: dict) -> None:
    """Raises the first :class:`ObservationShapeCheck` report in a vector env's ``infos``
    (a reset's, a step's, or an ended episode's ``final_info``)."""
    for where in (infos, infos.get("final_info") or {}):
        if _SHAPE_ERROR_KEY in where:
            found = np.flatnonzero(where[f"_{_SHAPE_ERROR_KEY}"])[0]
            raise ObservationShapeError(str(where[_SHAPE_ERROR_KEY][found]))


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
