"""Environments, experience collection and the advantage estimate it feeds.

* :func:`resolve_env`, :func:`check_spaces`, :func:`make_vector_env`: which envs an agent runs.

* :func:`compute_gae`: generalized advantage estimation (Schulman et al., 2016), pure NumPy.
* :class:`RolloutWorker`: steps a Gymnasium vector env (``AutoresetMode.SAME_STEP``) with a
  NumPy copy of the policy, and keeps the unnormalized episode returns. A NaN or infinite
  observation or reward raises :class:`NonFiniteError` before it reaches the normalizer.
"""

from __future__ import annotations

import copy
import functools
import importlib
from collections import deque
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from agents.normalization import RunningMeanStd

RETURN_WINDOW = 20
SUPPORTED_SPACES = "observations: a 1-D gymnasium.spaces.Box; actions: Discrete or a 1-D Box"


class NonFiniteError(RuntimeError):
    """Training met a NaN or infinite quantity; the message names it and the env step."""


def resolve_env(env) -> tuple[str, callable]:
    """``(env_id, factory)`` for an env id string, a ``gymnasium.Env`` or a factory callable.

    An id may name the module that registers it, as ``gymnasium.make`` allows:
    ``"my_package.envs:MyEnv-v0"`` imports ``my_package.envs`` first.
    """
    if isinstance(env, str):
        module, sep, name = env.rpartition(":")
        if sep:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ValueError(f"env id {env!r}: cannot import module {module!r} ({e})") from e
        try:
            gym.spec(name)
        except gym.error.Error as e:
            raise ValueError(f"unknown Gymnasium env id {name!r}: {e}") from e
        return env, functools.partial(gym.make, env)
    if isinstance(env, gym.Env):
        if env.spec is not None:
            return env.spec.id, functools.partial(gym.make, env.spec)
        return type(env).__name__, functools.partial(copy.deepcopy, env)
    if callable(env):
        return getattr(env, "__name__", type(env).__name__), env
    raise ValueError(f"env must be an env id, a gymnasium.Env or a factory; got {type(env)}")


def check_spaces(observation_space, action_space) -> None:
    """Raises ``ValueError`` unless the spaces are ones this agent supports."""
    box = gym.spaces.Box
    if not (isinstance(observation_space, box) and len(observation_space.shape) == 1):
        raise ValueError(f"unsupported observation space {observation_space}; "
                         f"supported: {SUPPORTED_SPACES}")
    discrete = isinstance(action_space, gym.spaces.Discrete)
    if not (discrete or (isinstance(action_space, box) and len(action_space.shape) == 1)):
        raise ValueError(f"unsupported action space {action_space}; supported: {SUPPORTED_SPACES}")


def env_actions(action_space, actions: np.ndarray) -> np.ndarray:
    """Policy actions as the env takes them: ``Discrete`` indices shifted by the space's
    ``start``; ``Box`` actions clipped to its bounds (float32)."""
    if isinstance(action_space, gym.spaces.Discrete):
        return actions + int(action_space.start) if action_space.start else actions
    return np.clip(actions, action_space.low, action_space.high).astype(np.float32)


def check_finite(name: str, values, first_step: int, n_envs: int) -> None:
    """Raises :class:`NonFiniteError` unless every entry of ``values`` is finite.

    ``values`` is ``[N, ...]``, time-major over ``n_envs`` envs: its sample ``k`` was taken at
    env step ``first_step + k + 1`` (counted from the start of training, ``first_step`` a
    multiple of ``n_envs`` at a batch start) by env ``(first_step + k) % n_envs``.
    """
    values = np.asarray(values, np.float64)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(f"{name} is not finite ({values[k]}) at env step "
                             f"{first_step + k + 1:,} (env {(first_step + k) % n_envs})")


def make_vector_env(factory, n_envs: int, vectorization: str) -> gym.vector.VectorEnv:
    """``n_envs`` copies, auto-reset in the same step (final obs in ``infos["final_obs"]``)."""
    cls = gym.vector.SyncVectorEnv if vectorization == "sync" else gym.vector.AsyncVectorEnv
    return cls([factory] * n_envs, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)


def compute_gae(rewards, values, next_values, terminated, truncated, gamma: float, lam: float):
    """Generalized advantage estimates and value targets, all arrays ``[T, E]``.

    ``next_values[t]`` is ``V(s_{t+1})``, or ``V(final_obs)`` where the episode ended at ``t``.
    With ``δ_t = r_t + γ (1 − terminated_t) next_values_t − V(s_t)`` the recursion is

        Â_t = δ_t + γ λ (1 − done_t) Â_{t+1},     done_t = terminated_t ∨ truncated_t,

    and ``Â_T = 0``: termination removes the bootstrap, truncation keeps it (the episode was cut,
    not finished), and either ends the sum. Returns ``(advantages, returns = Â + V)``.
    """
    rewards = np.asarray(rewards, np.float64)
    values = np.asarray(values, np.float64)
    not_terminated = 1.0 - np.asarray(terminated, np.float64)
    not_done = 1.0 - np.maximum(np.asarray(terminated, np.float64),
                                np.asarray(truncated, np.float64))
    deltas = rewards + gamma * not_terminated * np.asarray(next_values, np.float64) - values
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:], np.float64)
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


def normalize_advantages(advantages: np.ndarray, epsilon: float = 1e-8) -> np.ndarray:
    """``(Â − mean Â) / (std Â + ε)``."""
    return (advantages - advantages.mean()) / (advantages.std() + epsilon)


def explained_variance(predictions: np.ndarray, targets: np.ndarray) -> float:
    """``1 − Var[y − ŷ] / Var[y]``: 1 is a perfect value function, 0 predicts the mean."""
    var_y = np.var(targets)
    return float("nan") if var_y == 0 else float(1.0 - np.var(targets - predictions) / var_y)


class Rollout(NamedTuple):
    """One batch, time-major. ``obs``/``bootstrap_obs`` ``[T, E, obs_dim]`` (normalized when
    observation normalization is on), ``actions`` ``[T, E]`` or ``[T, E, D]`` (unclipped),
    ``rewards``/``terminated``/``truncated`` ``[T, E]`` (unnormalized env rewards).
    ``bootstrap_obs[t]`` is ``s_{t+1}``, or the final observation where an episode ended."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    bootstrap_obs: np.ndarray


class RolloutWorker:
    """Steps ``envs`` with a policy's NumPy snapshot and tracks finished-episode returns."""

    def __init__(self, envs: gym.vector.VectorEnv, policy, obs_rms: RunningMeanStd | None):
        self.envs = envs
        self.policy = policy
        self.obs_rms = obs_rms
        self.action_space = envs.single_action_space
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self.episode_returns: deque = deque(maxlen=RETURN_WINDOW)
        self.episodes = 0
        self.running_returns = np.zeros(envs.num_envs)
        self.last_obs = None

    def reset(self, seed: int) -> None:
        """Resets every env (env ``i`` gets ``seed + i``)."""
        self.last_obs, _ = self.envs.reset(seed=seed)
        self._observe(self.last_obs)

    def _observe(self, raw_obs: np.ndarray) -> None:
        if self.obs_rms is not None:
            self.obs_rms.update(raw_obs)

    def normalize(self, raw_obs: np.ndarray) -> np.ndarray:
        if self.obs_rms is None:
            return np.asarray(raw_obs, np.float32)
        return self.obs_rms.normalize(raw_obs)

    def collect(self, params: dict, n_steps: int, rng: np.random.Generator,
                first_step: int = 0) -> Rollout:
        """``n_steps`` steps of every env with the policy ``params`` (see ``numpy_params``).

        Raises :class:`NonFiniteError` for a NaN or infinite observation or reward, naming the
        env step (``first_step`` is the number of env steps taken before this call), before it
        reaches the normalizer.
        """
        n_envs = self.envs.num_envs
        obs = self.normalize(self.last_obs)
        obs_buf = np.zeros((n_steps, n_envs, *obs.shape[1:]), np.float32)
        boot_buf = np.zeros_like(obs_buf)
        actions_buf = None
        rewards = np.zeros((n_steps, n_envs))
        terminated = np.zeros((n_steps, n_envs), bool)
        truncated = np.zeros((n_steps, n_envs), bool)
        for t in range(n_steps):
            actions = self.policy.numpy_act(params, obs, rng)
            if actions_buf is None:
                dtype = np.int32 if self.discrete else np.float32
                actions_buf = np.zeros((n_steps, *actions.shape), dtype)
            raw_obs, reward, term, trunc, infos = self.envs.step(
                env_actions(self.action_space, actions))
            step = first_step + t * n_envs
            check_finite("the observation", raw_obs, step, n_envs)
            check_finite("the reward", reward, step, n_envs)
            self._observe(raw_obs)
            next_obs = self.normalize(raw_obs)
            obs_buf[t], actions_buf[t] = obs, actions
            rewards[t], terminated[t], truncated[t] = reward, term, trunc
            boot_buf[t] = next_obs
            self.running_returns += reward
            done = term | trunc
            if done.any():
                for i in np.flatnonzero(done):
                    check_finite("the final observation", infos["final_obs"][i][None],
                                 step + i, n_envs)
                    boot_buf[t, i] = self.normalize(infos["final_obs"][i][None])[0]
                    self.episode_returns.append(float(self.running_returns[i]))
                    self.episodes += 1
                    self.running_returns[i] = 0.0
            obs = next_obs
            self.last_obs = raw_obs
        return Rollout(obs_buf, actions_buf, rewards, terminated, truncated, boot_buf)

    def mean_return(self) -> float:
        """Mean unnormalized return of the last up-to-20 finished episodes (NaN if none)."""
        return float(np.mean(self.episode_returns)) if self.episode_returns else float("nan")

    def state(self) -> dict:
        return {"episode_returns": list(self.episode_returns), "episodes": self.episodes,
                "running_returns": self.running_returns.copy(), "last_obs": self.last_obs.copy()}

    def load_state(self, state: dict) -> None:
        self.episode_returns = deque(state["episode_returns"], maxlen=RETURN_WINDOW)
        self.episodes = int(state["episodes"])
        self.running_returns = np.array(state["running_returns"])
        self.last_obs = np.array(state["last_obs"])
