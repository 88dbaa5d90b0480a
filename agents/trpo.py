"""``TRPO``: trust region policy optimization (Schulman et al., 2015) on Gymnasium.

One update (:meth:`TRPO._update`) follows Algorithm 1 of the paper:

1. **Collect** ``n_envs × n_steps`` transitions with the current policy (NumPy forward passes).
2. **Advantages** by GAE, bootstrapping ``V(final_obs)`` at time-limit truncations; standardized.
3. **Policy step** with :meth:`natgrad.NaturalGradient.minimize` on the surrogate
   ``L(θ) = −mean_n[π_θ(a_n|s_n) / π_old(a_n|s_n) · Â_n]``: CG on the Fisher (its Gauss-Newton
   form ``Jᵀ F_out J``, on every ``fisher_subsample``-th state), step to the edge of
   ``KL(π_old‖π_θ) ≤ max_kl``, backtracking line search, exact restore when it fails.
4. **Value fit**: ``critic_epochs`` passes of Adam on ``mean (V(s) − R̂)²`` in minibatches.
5. **Log** the row described in :mod:`agents.logger`; checkpoint every ``checkpoint_every``.

Steps 3 and 4 run in one ``tf.function`` with a fixed input signature (traced once per agent).
All randomness (initial weights, action sampling, minibatch order) comes from one seeded NumPy
``Generator``, whose state is checkpointed; no ``tf.random`` generator is used.
"""

from __future__ import annotations

import json
import math
import pickle
import time
from pathlib import Path

import gymnasium as gym
import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

import natgrad
from agents.checkpoint import checkpoint_path, latest_checkpoint, read_checkpoint, write_checkpoint
from agents.config import TRPOConfig, resolve_config
from agents.logger import ProgressLogger
from agents.normalization import RunningMeanStd
from agents.policies import CategoricalPolicy, GaussianPolicy, ValueFunction
from agents.rollout import (
    RolloutWorker,
    check_spaces,
    compute_gae,
    explained_variance,
    make_vector_env,
    normalize_advantages,
    resolve_env,
)


class TRPO:
    """A TRPO agent: ``TRPO("CartPole-v1").learn()``; see the module docstring for the update.

    Args:
      env: Gymnasium env id (its preset in ``presets.toml`` is applied), a ``gymnasium.Env``
        or a zero-argument factory returning one.
      preset: name of a preset to use instead of the env id's own.
      run_dir: folder for ``config.json``, ``progress.csv``, ``tb/`` and ``checkpoints/``.
      **overrides: any :class:`TRPOConfig` field.

    Raises:
      ValueError: bad config values, unknown env id or preset, unsupported spaces; all checked
        here, before any training.

    Checkpoints (``save``, and ``run_dir/checkpoints/update_NNNNNN.ckpt``) hold the weights, both
    optimizers' states, the observation normalizer, the NumPy RNG state, step and update counts,
    the return window and history, and the sub-envs of a ``"sync"`` vector env pickled. So on
    CPU ``learn(N)`` equals ``learn(k)``, kill, ``TRPO.resume(run_dir).learn(N)`` bit for bit.
    With ``"async"`` envs, or envs that cannot be pickled, a resume re-resets the envs (seed
    ``seed + updates``) and the episodes in progress are lost; training otherwise continues.
    A resume drops ``progress.csv`` rows written after its checkpoint; TensorBoard keeps them.
    """

    def __init__(self, env, *, preset: str | None = None, run_dir=None, **overrides):
        env_id, self._env_factory = resolve_env(env)
        if "env_id" in overrides:  # names a factory's env; must agree with an env id string
            if isinstance(env, str) and overrides["env_id"] != env:
                raise ValueError(f"env_id={overrides['env_id']!r} contradicts env={env!r}")
            env_id = overrides.pop("env_id")
        self.config: TRPOConfig = resolve_config(env_id, preset, **overrides)
        probe = self._env_factory()
        try:
            check_spaces(probe.observation_space, probe.action_space)
            self.observation_space, self.action_space = probe.observation_space, probe.action_space
        finally:
            probe.close()
        cfg = self.config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.rng = np.random.default_rng(cfg.seed)
        self._predict_rng = np.random.default_rng([cfg.seed, 1])
        obs_dim = self.observation_space.shape[0]
        if isinstance(self.action_space, gym.spaces.Discrete):
            self.policy = CategoricalPolicy(obs_dim, int(self.action_space.n),
                                            hidden=cfg.policy_hidden, activation=cfg.activation,
                                            rng=self.rng)
        else:
            self.policy = GaussianPolicy(obs_dim, self.action_space.shape[0],
                                         hidden=cfg.policy_hidden, activation=cfg.activation,
                                         log_std_init=cfg.log_std_init, rng=self.rng)
        self.value = ValueFunction(obs_dim, hidden=cfg.value_hidden, activation=cfg.activation,
                                   rng=self.rng)
        self.obs_rms = RunningMeanStd((obs_dim,)) if cfg.normalize_obs else None
        self.policy_optimizer = natgrad.NaturalGradient(
            learning_rate=1.0, max_kl=cfg.max_kl, damping=cfg.cg_damping, cg_iters=cfg.cg_iters,
            line_search_shrink=cfg.line_search_shrink,
            line_search_max_tries=cfg.line_search_max_tries)
        self.policy_optimizer.build(self.policy.trainable_variables)
        self.value_optimizer = keras.optimizers.Adam(learning_rate=cfg.critic_lr)
        self.value_optimizer.build(self.value.trainable_variables)
        self._update_fn = self._make_update_fn()
        self.num_timesteps = 0
        self.updates = 0
        self.wall_time = 0.0
        self.history: list[dict] = []
        self._worker: RolloutWorker | None = None
        self._pending_env_state: dict | None = None

    # Training ---------------------------------------------------------------------------

    def learn(self, total_steps: int | None = None, *, progress_bar: bool = False) -> TRPO:
        """Trains until ``num_timesteps >= total_steps`` (default ``config.total_steps``).

        Steps already taken count, so a resumed agent continues to the same total. Each update
        takes ``n_envs × n_steps`` steps.
        """
        total = self.config.total_steps if total_steps is None else int(total_steps)
        worker = self._ensure_worker()
        logger = ProgressLogger(self.run_dir)
        if self.run_dir is not None:
            (self.run_dir / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2))
        bar = tqdm(total=total, initial=min(self.num_timesteps, total), unit="step",
                   disable=not progress_bar, dynamic_ncols=True)
        try:
            while self.num_timesteps < total:
                row = self._update(worker)
                self.history.append(row)
                logger.log(row)
                bar.update(min(self.config.batch_size, total - bar.n))
                bar.set_postfix(ret=f"{row['mean_return']:.1f}", kl=f"{row['kl']:.4f}",
                                sps=f"{row['steps_per_second']:.0f}")
                if self.run_dir is not None and self.updates % self.config.checkpoint_every == 0:
                    self.save(checkpoint_path(self.run_dir, self.updates))
            if (self.run_dir is not None and self.updates > 0
                    and self.updates % self.config.checkpoint_every != 0):
                self.save(checkpoint_path(self.run_dir, self.updates))  # the final state
        finally:
            bar.close()
            logger.close()
        return self

    def _update(self, worker: RolloutWorker) -> dict:
        """One TRPO iteration (Algorithm 1); returns its progress row."""
        cfg, start = self.config, time.perf_counter()
        # 1. Collect a batch with the current policy.
        rollout = worker.collect(self.policy.numpy_params(), cfg.n_steps, self.rng)
        # 2. Advantages by GAE, bootstrapping V(final_obs) at truncation.
        value_params = self.value.numpy_params()
        values = self.value.numpy_values(value_params, _flat(rollout.obs)).reshape(
            rollout.rewards.shape)
        next_values = self.value.numpy_values(value_params, _flat(rollout.bootstrap_obs)).reshape(
            rollout.rewards.shape)
        advantages, returns = compute_gae(rollout.rewards, values, next_values,
                                          rollout.terminated, rollout.truncated,
                                          cfg.gamma, cfg.gae_lambda)
        policy_advantages = (normalize_advantages(advantages) if cfg.normalize_advantages
                             else advantages)
        critic_order = np.stack([self.rng.permutation(cfg.batch_size)
                                 for _ in range(cfg.critic_epochs)]).astype(np.int32)
        # 3 + 4. Natural-gradient policy step and value fit, in one compiled call.
        stats = self._update_fn(
            _flat(rollout.obs), _flat(rollout.actions),
            _flat(policy_advantages).astype(np.float32), _flat(returns).astype(np.float32),
            critic_order)
        # 5. Log.
        elapsed = time.perf_counter() - start
        self.num_timesteps += cfg.batch_size
        self.updates += 1
        self.wall_time += elapsed
        stats = {k: v.numpy() for k, v in stats.items()}
        return {
            "env_steps": self.num_timesteps,
            "wall_time": self.wall_time,
            "mean_return": worker.mean_return(),
            "kl": float(stats["kl"]),
            "entropy": float(stats["entropy"]),
            "value_loss": float(stats["value_loss"]),
            "explained_variance": explained_variance(values.ravel(), returns.ravel()),
            "line_search_tries": int(stats["line_search_tries"]),
            "accepted": int(stats["accepted"]),
            "cg_iterations": int(stats["cg_iterations"]),
            "cg_residual": float(stats["cg_residual"]),
            "surrogate_improvement": float(stats["loss_before"] - stats["loss_after"]),
            "steps_per_second": cfg.batch_size / elapsed,
        }

    def _make_update_fn(self):
        """The compiled policy step + value fit, traced once for this batch size."""
        cfg, policy, value = self.config, self.policy, self.value
        n, obs_dim = cfg.batch_size, self.observation_space.shape[0]
        if isinstance(policy, CategoricalPolicy):
            action_spec = tf.TensorSpec([n], tf.int32)
        else:
            action_spec = tf.TensorSpec([n, self.action_space.shape[0]], tf.float32)
        batches_per_epoch = math.ceil(n / cfg.critic_batch_size)
        value_vars = list(value.trainable_variables)

        def policy_step(obs, actions, advantages):
            old_outputs = tf.nest.map_structure(tf.stop_gradient, policy.outputs(obs))
            log_prob_old = policy.log_prob(old_outputs, actions)

            def surrogate_loss():
                ratio = tf.exp(policy.log_prob(policy.outputs(obs), actions) - log_prob_old)
                return -tf.reduce_mean(ratio * advantages)

            def kl():
                return policy.distribution.kl(old_outputs, policy.outputs(obs))

            stats = self.policy_optimizer.minimize(
                surrogate_loss, policy.trainable_variables, kl_fn=kl,
                outputs_fn=lambda: policy.outputs(obs[:: cfg.fisher_subsample]),
                output_distribution=policy.distribution)
            stats["entropy"] = tf.reduce_mean(policy.entropy(old_outputs))
            return stats

        def value_loss(obs, returns):
            return tf.reduce_mean(tf.square(value(obs) - returns))

        def fit_value(obs, returns, critic_order):
            for epoch in tf.range(cfg.critic_epochs):
                for b in tf.range(batches_per_epoch):
                    idx = critic_order[epoch, b * cfg.critic_batch_size:
                                       (b + 1) * cfg.critic_batch_size]
                    with tf.GradientTape() as tape:
                        loss = value_loss(tf.gather(obs, idx), tf.gather(returns, idx))
                    grads = tape.gradient(loss, value_vars)
                    self.value_optimizer.apply_gradients(zip(grads, value_vars, strict=True))
            return value_loss(obs, returns)

        @tf.function(input_signature=[
            tf.TensorSpec([n, obs_dim], tf.float32), action_spec, tf.TensorSpec([n], tf.float32),
            tf.TensorSpec([n], tf.float32), tf.TensorSpec([cfg.critic_epochs, n], tf.int32)])
        def update(obs, actions, advantages, returns, critic_order):
            stats = policy_step(obs, actions, advantages)
            stats["value_loss"] = fit_value(obs, returns, critic_order)
            return stats

        return update

    def _ensure_worker(self) -> RolloutWorker:
        """Creates the vector env (restoring a checkpoint's env state if one is pending)."""
        if self._worker is not None:
            return self._worker
        cfg = self.config
        envs = make_vector_env(self._env_factory, cfg.n_envs, cfg.vectorization)
        worker = RolloutWorker(envs, self.policy, self.obs_rms)
        pending, self._pending_env_state = self._pending_env_state, None
        if pending is None:
            worker.reset(cfg.seed)
        else:
            saved_obs_rms = None if self.obs_rms is None else self.obs_rms.state()
            if pending["sub_envs"] is not None and isinstance(envs, gym.vector.SyncVectorEnv):
                envs.envs = pickle.loads(pending["sub_envs"])
                worker.load_state(pending["worker"])
            else:  # not picklable (e.g. async or MuJoCo): re-reset; partial episodes are lost
                worker.reset(cfg.seed + self.updates)
                worker.load_state({**pending["worker"], "last_obs": worker.last_obs,
                                   "running_returns": np.zeros(cfg.n_envs)})
            if saved_obs_rms is not None:
                self.obs_rms.load_state(saved_obs_rms)
        self._worker = worker
        return worker

    # Using a trained agent -----------------------------------------------------------------

    def _normalize(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, np.float32)
        return obs if self.obs_rms is None else self.obs_rms.normalize(obs)

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Env-ready actions for one observation ``[obs_dim]`` or a batch ``[B, obs_dim]``."""
        obs = np.asarray(obs, np.float32)
        single = obs.ndim == 1
        batch = self._normalize(obs[None] if single else obs)
        actions = self.policy.numpy_act(self.policy.numpy_params(), batch, self._predict_rng,
                                        deterministic=deterministic)
        if isinstance(self.action_space, gym.spaces.Box):
            actions = np.clip(actions, self.action_space.low, self.action_space.high)
            actions = actions.astype(np.float32)
        return actions[0] if single else actions

    def evaluate(self, episodes: int | None = None, *, seed: int | None = None) -> dict:
        """Deterministic-policy returns on a fresh env (unnormalized env rewards)."""
        episodes = self.config.eval_episodes if episodes is None else int(episodes)
        seed = self.config.seed + 10_000 if seed is None else int(seed)
        env = self._env_factory()
        params = self.policy.numpy_params()
        returns = []
        try:
            for episode in range(episodes):
                obs, _ = env.reset(seed=seed + episode)
                total, done = 0.0, False
                while not done:
                    action = self.policy.numpy_act(params, self._normalize(obs[None]), None,
                                                   deterministic=True)[0]
                    if isinstance(self.action_space, gym.spaces.Box):
                        action = np.clip(action, self.action_space.low,
                                         self.action_space.high).astype(np.float32)
                    obs, reward, terminated, truncated, _ = env.step(action)
                    total += float(reward)
                    done = terminated or truncated
                returns.append(total)
        finally:
            env.close()
        return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
                "episodes": episodes, "returns": returns}

    # Saving and loading --------------------------------------------------------------------

    def _state(self) -> dict:
        worker = self._worker
        sub_envs = None
        if worker is not None and isinstance(worker.envs, gym.vector.SyncVectorEnv):
            try:
                sub_envs = pickle.dumps(worker.envs.envs)
            except Exception:  # unpicklable env: resume re-resets the envs
                sub_envs = None
        return {
            "env_id": self.config.env_id,
            "config": self.config.to_dict(),
            "num_timesteps": self.num_timesteps,
            "updates": self.updates,
            "wall_time": self.wall_time,
            "policy": [v.numpy() for v in self.policy.trainable_variables],
            "value": [v.numpy() for v in self.value.trainable_variables],
            "policy_optimizer": [v.numpy() for v in self.policy_optimizer.variables],
            "value_optimizer": [v.numpy() for v in self.value_optimizer.variables],
            "obs_rms": None if self.obs_rms is None else self.obs_rms.state(),
            "rng": self.rng.bit_generator.state,
            "worker": None if worker is None else worker.state(),
            "sub_envs": sub_envs,
            "history": [dict(row) for row in self.history],
        }

    def _load_state(self, state: dict) -> None:
        if state["env_id"] != self.config.env_id:
            raise ValueError(f"checkpoint is for env {state['env_id']!r}, "
                             f"this agent is for {self.config.env_id!r}")
        try:
            for group, values in (
                (self.policy.trainable_variables, state["policy"]),
                (self.value.trainable_variables, state["value"]),
                (self.policy_optimizer.variables, state["policy_optimizer"]),
                (self.value_optimizer.variables, state["value_optimizer"]),
            ):
                if len(group) != len(values):
                    raise ValueError("variable count mismatch")
                for variable, value in zip(group, values, strict=True):
                    if tuple(variable.shape) != np.shape(value):
                        raise ValueError(f"shape mismatch for {variable.name}")
                    variable.assign(value)
        except (KeyError, ValueError) as e:
            raise ValueError(f"checkpoint does not match this agent's networks: {e}") from e
        if self.obs_rms is not None and state["obs_rms"] is not None:
            self.obs_rms.load_state(state["obs_rms"])
        self.rng.bit_generator.state = state["rng"]
        self.num_timesteps = int(state["num_timesteps"])
        self.updates = int(state["updates"])
        self.wall_time = float(state["wall_time"])
        self.history = [dict(row) for row in state["history"]]
        self._worker = None
        if state["worker"] is not None:
            self._pending_env_state = {"worker": state["worker"], "sub_envs": state["sub_envs"]}

    def save(self, path) -> None:
        """Writes the whole agent (weights, optimizers, normalizer, RNG, envs) atomically."""
        write_checkpoint(path, self._state())

    @classmethod
    def load(cls, path, *, env=None, run_dir=None) -> TRPO:
        """Rebuilds an agent from ``save``/a checkpoint; ``env`` defaults to the saved env id.

        Raises ``ValueError`` for a corrupt or truncated file, or one written for another env.
        """
        expected = resolve_env(env)[0] if isinstance(env, str) else None
        state = read_checkpoint(path, expected_env_id=expected)
        settings = dict(state["config"])
        env_id = settings.pop("env_id")
        if env is None:
            agent = cls(env_id, run_dir=run_dir, **settings)
        else:  # a gymnasium.Env or factory keeps the saved env id
            agent = cls(env, run_dir=run_dir, env_id=env_id if expected is None else expected,
                        **settings)
        agent._load_state(state)
        return agent

    @classmethod
    def resume(cls, run_dir, *, env=None) -> TRPO:
        """Loads ``run_dir``'s last checkpoint; ``.learn()`` then continues the run."""
        agent = cls.load(latest_checkpoint(run_dir), env=env, run_dir=run_dir)
        ProgressLogger(run_dir).truncate_after(agent.num_timesteps)
        return agent


def _flat(x: np.ndarray) -> np.ndarray:
    """``[T, E, ...] -> [T·E, ...]`` (time-major order)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])
