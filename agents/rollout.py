"""Experience collection and the advantage estimate it feeds.

* :func:`compute_gae`: generalized advantage estimation (Schulman et al., 2016), pure NumPy.
* :class:`RolloutWorker`: steps a Gymnasium vector env (``AutoresetMode.SAME_STEP``) with a
  NumPy copy of the policy, and keeps the unnormalized episode returns. A NaN or infinite
  observation or reward raises :class:`NonFiniteError` before it reaches the normalizer;
  :func:`start_worker` makes one on new envs, reset or restored from a checkpoint.
"""

from __future__ import annotations

from collections import deque
from typing import NamedTuple

import gymnasium as gym
import numpy as np

from agents.envs.env_state import restore_env_state
from agents.envs.factories import make_vector_env
from agents.envs.normalization import (
    RewardScaler,
    RunningMeanStd,
    load_normalizer_state,
    normalizer_state,
)
from agents.envs.spaces import (
    ObservationEncoder,
    action_layout,
    env_actions,
    flatten_time,
    map_obs,
    obs_leaves,
)

RETURN_WINDOW = 20


class NonFiniteError(RuntimeError):
    """Training met a NaN or infinite quantity; the message names it and the env step."""


def check_finite(name: str, values, first_step: int, n_envs: int) -> None:
    """Raises :class:`NonFiniteError` unless every entry of ``values`` is finite.

    ``values`` is ``[N, ...]``, time-major over ``n_envs`` envs: its sample ``k`` was taken at
    env step ``first_step + k + 1`` (counted from the start of training, ``first_step`` a
    multiple of ``n_envs`` at a batch start) by env ``(first_step + k) % n_envs``.
    """
    values = np.asarray(values)
    if values.dtype.kind in "biu" or np.isfinite(values).all():  # the every-step fast path
        return
    values = values.astype(np.float64)
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise NonFiniteError(f"{name} is not finite ({values[k]}) at env step "
                             f"{first_step + k + 1:,} (env {(first_step + k) % n_envs})")


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


def estimate_advantages(value, rollout: Rollout, gamma: float,
                        lam: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(values, advantages, returns)``, each ``[T, E]``: ``V(s)`` by ``value``
    (:class:`agents.nets.ValueFunction`), GAE advantages (:func:`compute_gae`, unstandardized)
    that bootstrap ``V(final_obs)`` at truncation, and the targets ``advantages + values``."""
    value_params = value.numpy_params()
    shape = rollout.rewards.shape
    values = value.numpy_values(value_params, flatten_time(rollout.obs)).reshape(shape)
    next_values = value.numpy_values(value_params,
                                     flatten_time(rollout.bootstrap_obs)).reshape(shape)
    advantages, returns = compute_gae(rollout.train_rewards, values, next_values,
                                      rollout.terminated, rollout.truncated, gamma, lam)
    return values, advantages, returns


def normalize_advantages(advantages: np.ndarray, epsilon: float = 1e-8) -> np.ndarray:
    """``(Â − mean Â) / (std Â + ε)``."""
    return (advantages - advantages.mean()) / (advantages.std() + epsilon)


def update_targets(advantages: np.ndarray, returns: np.ndarray, standardize: bool,
                   first_step: int) -> tuple[np.ndarray, np.ndarray]:
    """The compiled update's ``(advantages, returns)`` of ``[T, E]`` ones: flattened to
    ``[T E]`` float32, the advantages standardized if ``standardize``; raises
    :class:`NonFiniteError` if either is not finite (env steps from ``first_step + 1``)."""
    if standardize:
        advantages = normalize_advantages(advantages)
    update_advantages = flatten_time(advantages).astype(np.float32)
    update_returns = flatten_time(returns).astype(np.float32)
    n_envs = returns.shape[1]
    check_finite("the return", update_returns, first_step, n_envs)
    check_finite("the advantage", update_advantages, first_step, n_envs)
    return update_advantages, update_returns


def explained_variance(predictions: np.ndarray, targets: np.ndarray) -> float:
    """``1 − Var[y − ŷ] / Var[y]``: 1 is a perfect value function, 0 predicts the mean."""
    var_y = np.var(targets)
    return float("nan") if var_y == 0 else float(1.0 - np.var(targets - predictions) / var_y)


class Rollout(NamedTuple):
    """One batch, time-major. ``obs``/``bootstrap_obs`` ``[T, E, obs_dim]``, or a dict of such
    arrays with images (:class:`agents.envs.spaces.ObservationEncoder`; the vector part normalized
    when observation normalization is on), ``actions`` ``[T, E]`` or ``[T, E, D]`` (unclipped),
    ``rewards``/``terminated``/``truncated`` ``[T, E]`` (unnormalized env rewards),
    ``train_rewards`` ``[T, E]`` (the rewards to learn from: scaled by the worker's
    :class:`RewardScaler` when it has one, else ``rewards``). ``bootstrap_obs[t]`` is
    ``s_{t+1}``, or the final observation where an episode ended."""

    obs: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    bootstrap_obs: np.ndarray
    train_rewards: np.ndarray


class RolloutWorker:
    """Steps ``envs`` with a policy's NumPy snapshot and tracks finished-episode returns."""

    def __init__(self, envs: gym.vector.VectorEnv, policy, obs_rms: RunningMeanStd | None,
                 encoder: ObservationEncoder | None = None,
                 reward_scaler: RewardScaler | None = None):
        self.envs = envs
        self.policy = policy
        self.obs_rms = obs_rms
        self.reward_scaler = reward_scaler
        self.encoder = encoder or ObservationEncoder(envs.single_observation_space)
        self.action_space = envs.single_action_space
        self.action_dtype = action_layout(self.action_space)[1]
        self.episode_returns: deque = deque(maxlen=RETURN_WINDOW)
        self.episodes = 0
        self.running_returns = np.zeros(envs.num_envs)
        self.last_obs = None

    def reset(self, seed: int) -> None:
        """Resets every env (env ``i`` gets ``seed + i``)."""
        self.last_obs, _ = self.envs.reset(seed=seed)
        self._observe(self.last_obs)
        self.running_returns = np.zeros(self.envs.num_envs)  # every episode starts again
        if self.reward_scaler is not None:
            self.reward_scaler.returns[:] = 0.0

    def _observe(self, raw_obs) -> None:
        if self.obs_rms is not None:
            self.obs_rms.update(self.encoder.vector_part(raw_obs))

    def normalize(self, raw_obs):
        """The networks' input for a raw batch (:meth:`ObservationEncoder.encode`)."""
        return self.encoder.encode(raw_obs, self.obs_rms)

    def collect(self, params: dict, n_steps: int, rng: np.random.Generator,
                first_step: int = 0) -> Rollout:
        """``n_steps`` steps of every env with the policy ``params`` (see ``numpy_params``).

        Raises :class:`NonFiniteError` for a NaN or infinite observation or reward, naming the
        env step (``first_step`` is the number of env steps taken before this call), before it
        reaches the normalizer.
        """
        n_envs = self.envs.num_envs
        obs = self.normalize(self.last_obs)
        obs_buf = self.encoder.zeros((n_steps, n_envs))
        boot_buf = self.encoder.zeros((n_steps, n_envs))
        actions_buf = None
        rewards = np.zeros((n_steps, n_envs))
        train_rewards = rewards if self.reward_scaler is None else np.zeros((n_steps, n_envs))
        terminated = np.zeros((n_steps, n_envs), bool)
        truncated = np.zeros((n_steps, n_envs), bool)
        for t in range(n_steps):
            actions = self.policy.numpy_act(params, obs, rng)
            if actions_buf is None:
                actions_buf = np.zeros((n_steps, *actions.shape), self.action_dtype)
            raw_obs, reward, term, trunc, infos = self.envs.step(
                env_actions(self.action_space, actions))
            step = first_step + t * n_envs
            _check_obs("the observation", raw_obs, step, n_envs)
            check_finite("the reward", reward, step, n_envs)
            self._observe(raw_obs)
            next_obs = self.normalize(raw_obs)
            _store(obs_buf, t, obs)
            _store(boot_buf, t, next_obs)
            actions_buf[t] = actions
            rewards[t], terminated[t], truncated[t] = reward, term, trunc
            self.running_returns += reward
            done = term | trunc
            if self.reward_scaler is not None:
                train_rewards[t] = self.reward_scaler.scale(reward, done)
            if done.any():
                for i in np.flatnonzero(done):
                    final = self.encoder.stack([infos["final_obs"][i]])
                    _check_obs("the final observation", final, step + i, n_envs)
                    _store(boot_buf, (t, i), map_obs(lambda x: x[0], self.normalize(final)))
                    self.episode_returns.append(float(self.running_returns[i]))
                    self.episodes += 1
                    self.running_returns[i] = 0.0
            obs = next_obs
            self.last_obs = raw_obs
        return Rollout(obs_buf, actions_buf, rewards, terminated, truncated, boot_buf,
                       train_rewards)

    def mean_return(self) -> float:
        """Mean unnormalized return of the last up-to-20 finished episodes (NaN if none)."""
        return float(np.mean(self.episode_returns)) if self.episode_returns else float("nan")

    def state(self) -> dict:
        return {"episode_returns": list(self.episode_returns), "episodes": self.episodes,
                "running_returns": self.running_returns.copy(),
                "last_obs": map_obs(np.copy, self.last_obs)}

    def restore(self, saved: dict, reseed: int) -> None:
        """Puts this (new) worker into a saved state: ``saved["worker"]`` (:meth:`state`) and
        the sync envs' own state, ``saved["env_states"]``
        (:func:`agents.envs.env_state.restore_env_state`, into envs first reset with
        ``reseed``) or ``saved["sub_envs"]`` (pickled envs, given only when trusted). Without
        either, the envs are reset with ``reseed`` and the episodes in progress are lost. The
        normalizers keep their saved state either way.

        Raises:
          agents.envs.env_state.EnvStateError: an env state that does not fit these envs
            (checked for all of them before any is written).
        """
        # A reset feeds the first observations to the normalizers: keep their saved state.
        obs_state, reward_state = normalizer_state(self.obs_rms, self.reward_scaler)
        sync = isinstance(self.envs, gym.vector.SyncVectorEnv)
        if saved.get("sub_envs") is not None and sync:
            self.envs.envs = saved["sub_envs"]
            self.load_state(saved["worker"])
        elif saved.get("env_states") is not None and sync:
            self.envs.reset(seed=reseed)  # every env made and reset, then put into its state
            pairs = list(zip(self.envs.envs, saved["env_states"], strict=True))
            for env, state in pairs:  # all checked before any is written
                restore_env_state(env, state, check_only=True)
            for env, state in pairs:
                restore_env_state(env, state)
            self.load_state(saved["worker"])
        else:
            self.reset(reseed)
            n_envs = self.envs.num_envs
            self.load_state({**saved["worker"], "last_obs": self.last_obs,
                             "running_returns": np.zeros(n_envs)})
            if reward_state is not None:
                reward_state["returns"] = np.zeros(n_envs)
        load_normalizer_state(self.obs_rms, self.reward_scaler, (obs_state, reward_state))

    def load_state(self, state: dict) -> None:
        self.episode_returns = deque(state["episode_returns"], maxlen=RETURN_WINDOW)
        self.episodes = int(state["episodes"])
        self.running_returns = np.array(state["running_returns"])
        self.last_obs = map_obs(np.array, state["last_obs"])


def start_worker(env_factory, cfg, policy, obs_rms: RunningMeanStd | None,
                 encoder: ObservationEncoder, reward_scaler: RewardScaler | None, *, seed: int,
                 env_state: dict | None = None, reseed: int | None = None) -> RolloutWorker:
    """A :class:`RolloutWorker` on ``cfg.n_envs`` new envs of ``env_factory``
    (``cfg.vectorization``): reset with ``seed``, or put in a checkpoint's ``env_state``
    (:meth:`RolloutWorker.restore`, which re-seeds with ``reseed`` what it cannot restore)."""
    envs = make_vector_env(env_factory, cfg.n_envs, cfg.vectorization)
    worker = RolloutWorker(envs, policy, obs_rms, encoder, reward_scaler)
    if env_state is None:
        worker.reset(seed)
    else:
        worker.restore(env_state, reseed)
    return worker


def _store(buffer, index, value) -> None:
    """``buffer[index] = value`` leaf by leaf (arrays or dicts of arrays)."""
    if isinstance(buffer, dict):
        for key, leaf in buffer.items():
            leaf[index] = value[key]
    else:
        buffer[index] = value


def _check_obs(name: str, raw_obs, first_step: int, n_envs: int) -> None:
    """:func:`check_finite` on every floating leaf of a raw observation batch (integer leaves,
    such as uint8 frames, cannot be NaN and are not copied to float64 for nothing)."""
    for key, leaf in obs_leaves(raw_obs):
        leaf = np.asarray(leaf)
        if leaf.dtype.kind == "f":
            check_finite(f"{name} {key!r}" if key else name, leaf, first_step, n_envs)
