"""``TRPO``: trust region policy optimization (Schulman et al., 2015) on Gymnasium.

One update (:meth:`TRPO._update`) follows Algorithm 1 of the paper:

1. **Collect** ``n_envs × n_steps`` transitions with the current policy (NumPy forward passes;
   a compiled ``tf.function`` for image observations). Spaces: :mod:`agents.spaces`.
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

import contextlib
import logging
import time
import uuid
from pathlib import Path

import keras
import numpy as np
from tqdm.auto import tqdm

import natgrad
from agents.agent_state import (
    agent_checkpoint,
    agent_from_checkpoint,
    load_normalizer_state,
    normalizer_state,
    restore_training_snapshot,
    restore_worker,
    training_snapshot,
)
from agents.checkpoint import (
    checkpoint_path,
    list_checkpoints,
    read_checkpoint,
    write_checkpoint,
)
from agents.config import TRPOConfig, resolve_config
from agents.evaluation import EVAL_SEED_OFFSET, evaluate_policy
from agents.logger import PROGRESS_KEYS, ProgressLogger
from agents.networks import build_networks
from agents.normalization import RewardScaler, RunningMeanStd
from agents.overlap import ValueFitOverlap
from agents.rollout import (
    NonFiniteError,
    Rollout,
    RolloutWorker,
    check_finite,
    check_spaces,
    compute_gae,
    env_actions,
    explained_variance,
    make_vector_env,
    normalize_advantages,
    resolve_env,
)
from agents.run_dir import RunLock, claim_run_dir, resume_point
from agents.spaces import ObservationEncoder, action_layout, map_obs
from agents.stop_signals import StopSignals, TrainingInterrupted
from agents.tf_threads import apply_tf_threads
from agents.update import UpdateFunctions, make_update_fns
from agents.workers import check_same_start, worker_position

log = logging.getLogger("agents")


class TRPO:
    """A TRPO agent: ``TRPO("CartPole-v1").learn()``; see the module docstring for the update.

    Args:
      env: Gymnasium env id (its preset in ``presets.toml`` is applied), a ``gymnasium.Env``
        or a zero-argument factory returning one.
      preset: name of a preset to use instead of the env id's own.
      run_dir: folder for ``config.json``, ``progress.csv``, ``tb/`` and ``checkpoints/``.
      strategy: a ``tf.distribute.MultiWorkerMirroredStrategy`` to train as one worker of a
        cluster (see :mod:`agents.workers`); ``None`` trains in this process alone.
      **overrides: any :class:`TRPOConfig` field.

    Raises:
      ValueError: bad config values, unknown env id or preset, unsupported spaces; all checked
        here, before any training.

    Checkpoints (``save``, and ``run_dir/checkpoints/update_NNNNNN.ckpt``) are arrays plus JSON
    (:mod:`agents.agent_state`): loading one never runs code from it. A resume re-seeds the
    envs (seed ``seed + updates``), so episodes in progress are lost; with
    ``save_env_state=True`` the sync envs are pickled too and ``TRPO.resume(run_dir,
    trust_env_state=True)`` continues bit for bit as if never stopped (on CPU).

    Training with a ``run_dir`` holds its lock (:class:`agents.run_dir.RunLock`); Ctrl-C or
    ``SIGTERM`` stops after the current update with a checkpoint (:class:`TrainingInterrupted`);
    a NaN or infinite observation, reward, return or value loss raises
    :class:`agents.rollout.NonFiniteError` after checkpointing the last good state (or, with
    ``on_non_finite="skip"``, drops that batch), so non-finite weights are never saved.
    """

    def __init__(self, env, *, preset: str | None = None, run_dir=None, strategy=None,
                 **overrides):
        env_id, self._env_factory = resolve_env(env)
        if "env_id" in overrides:  # names a factory's env; must agree with an env id string
            if isinstance(env, str) and overrides["env_id"] != env:
                raise ValueError(f"env_id={overrides['env_id']!r} contradicts env={env!r}")
            env_id = overrides.pop("env_id")
        self.config: TRPOConfig = resolve_config(env_id, preset, **overrides)
        apply_tf_threads(self.config.tf_threads)  # before this agent's first TensorFlow op
        probe = self._env_factory()
        try:
            check_spaces(probe.observation_space, probe.action_space)
            self.observation_space, self.action_space = probe.observation_space, probe.action_space
        finally:
            probe.close()
        cfg = self.config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.strategy = strategy
        self.worker_index, self.num_workers = worker_position(strategy)
        if self.num_workers > 1 and (cfg.normalize_obs or cfg.normalize_reward
                                     or cfg.on_non_finite == "skip"):
            raise ValueError(
                "with several workers, normalize_obs and normalize_reward must be false (each "
                "worker's running statistics would differ) and on_non_finite 'stop' (a "
                "skipped batch on one "
                "worker would leave the others waiting); both are not supported yet")
        self.rng = np.random.default_rng(cfg.seed)
        self._predict_rng = np.random.default_rng([cfg.seed, 1])
        self.encoder = ObservationEncoder(self.observation_space)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._build_networks()
        self.num_timesteps = 0
        self.updates = 0
        self.wall_time = 0.0
        self.history: list[dict] = []
        self.run_id = uuid.uuid4().hex  # names this run in config.json and its checkpoints
        self.skipped_batches = 0
        self._worker: RolloutWorker | None = None
        self._pending_env_state: dict | None = None
        self._resumed = False  # set by resume(): learn() then checks and trims the run dir
        self._newest_at_resume: Path | None = None
        self._saved_update: int | None = None
        self._overlap = ValueFitOverlap()  # the value fit beside the next rollout

    def _build_networks(self) -> None:
        """Policy, value function, both optimizers and the compiled update (in the
        strategy's scope when there is one)."""
        cfg = self.config
        self.policy, self.value = build_networks(self.encoder, self.action_space, cfg, self.rng)
        self.obs_rms = (RunningMeanStd((self.encoder.vector_dim,))
                        if cfg.normalize_obs and self.encoder.vector_dim else None)
        self.reward_scaler = (RewardScaler(cfg.n_envs, cfg.gamma) if cfg.normalize_reward
                              else None)
        self.policy_optimizer = natgrad.NaturalGradient(
            learning_rate=1.0, max_kl=cfg.max_kl, damping=cfg.cg_damping, cg_iters=cfg.cg_iters,
            line_search_shrink=cfg.line_search_shrink,
            line_search_max_tries=cfg.line_search_max_tries)
        self.policy_optimizer.build(self.policy.trainable_variables)
        self.value_optimizer = keras.optimizers.Adam(learning_rate=cfg.critic_lr,
                                                     epsilon=cfg.critic_epsilon)
        self.value_optimizer.build(self.value.trainable_variables)
        self._update_fns = self._make_update_fns()

    # Training ---------------------------------------------------------------------------

    def learn(self, total_steps: int | None = None, *, progress_bar: bool = False) -> TRPO:
        """Trains until ``num_timesteps >= total_steps`` (default ``config.total_steps``).

        Steps already taken count, so a resumed agent continues to the same total. Each update
        takes ``n_envs × n_steps`` steps on each worker (one worker without a strategy).

        Raises:
          RunDirError: ``run_dir`` belongs to another run, or another process is writing it.
          TrainingInterrupted: on ``SIGINT``/``SIGTERM``, after a checkpoint.
          NonFiniteError: with ``on_non_finite="stop"``, after checkpointing the last good state.
        """
        total = self.config.total_steps if total_steps is None else int(total_steps)
        writes = self._writes_run_dir
        lock = RunLock(self.run_dir) if writes else contextlib.nullcontext()
        with lock, StopSignals() as stop:
            self._claim_run_dir()
            if self.num_workers > 1:
                check_same_start(self.strategy, self.updates)
            worker = self._ensure_worker()
            logger = ProgressLogger(self.run_dir if writes else None)
            bar = tqdm(total=total, initial=min(self.num_timesteps, total), unit="step",
                       disable=not progress_bar, dynamic_ncols=True)
            try:
                while self.num_timesteps < total:
                    row = self._update(worker, prefetch=self._may_prefetch(total, stop))
                    self.history.append(row)
                    logger.log(row)
                    bar.update(min(self.num_timesteps, total) - bar.n)
                    bar.set_postfix(ret=f"{row['mean_return']:.1f}", kl=f"{row['kl']:.4f}",
                                    sps=f"{row['steps_per_second']:.0f}")
                    if self.updates % self.config.checkpoint_every == 0:
                        self._checkpoint()
                    if stop.signal is not None and self._overlap.pending is None:
                        raise TrainingInterrupted(stop.signal, self.num_timesteps,
                                                  self._checkpoint())
                    # (a stop with the next batch already collected finishes that update first)
                self._checkpoint()  # the final state (no-op if just written)
            except NonFiniteError:
                self._checkpoint()  # the last good state: the bad batch was undone
                raise
            finally:
                self._unwind_prefetch(worker)  # only after an error can a batch be left
                self._overlap.close()
                bar.close()
                logger.close()
        return self

    def _unwind_prefetch(self, worker: RolloutWorker) -> None:
        """Undoes a batch collected early that will not be trained on: random state, episode
        bookkeeping and normalizers as before it; the envs, which moved on, re-seeded."""
        dropped = self._overlap.take()
        if dropped is None:
            return
        self.rng.bit_generator.state = dropped.rng_state
        load_normalizer_state(self, dropped.normalizers)
        restore_worker(self, worker, {"sub_envs": None, "worker": dropped.worker_state},
                       self.config.seed + self.updates)

    def _may_prefetch(self, total: int, stop: StopSignals) -> bool:
        """Whether the coming update may collect the next batch while its value fit runs
        (``overlap_value_fit``): not with several workers, nor when a checkpoint or the end
        follows it (a checkpoint must not hold a batch already collected), nor once a stop
        was asked for."""
        checkpoint_follows = (self._writes_run_dir
                              and (self.updates + 1) % self.config.checkpoint_every == 0)
        return (self.config.overlap_value_fit and self.num_workers == 1
                and stop.signal is None and not checkpoint_follows
                and self.num_timesteps + self.config.batch_size < total)

    @property
    def _writes_run_dir(self) -> bool:
        """Whether this process writes ``run_dir``: with several workers, only the chief."""
        return self.run_dir is not None and self.worker_index == 0

    def _claim_run_dir(self) -> None:
        """Under the lock: makes ``run_dir`` this run's (or checks it is), clears temp files."""
        if self._writes_run_dir:
            claim_run_dir(self.run_dir, self.run_id, self.config.to_dict(),
                          resumed_at=self.num_timesteps if self._resumed else None,
                          newest_at_resume=self._newest_at_resume)
            self._resumed = False

    def _checkpoint(self) -> Path | None:
        """Saves ``run_dir/checkpoints/update_NNNNNN.ckpt`` unless this update is saved."""
        if not self._writes_run_dir:
            return None
        path = checkpoint_path(self.run_dir, self.updates)
        if self._saved_update != self.updates:
            self.save(path)
            self._saved_update = self.updates
        return path

    def _update(self, worker: RolloutWorker, prefetch: bool = False) -> dict:
        """One TRPO iteration, undone whole (weights, optimizers, normalizers) if a quantity in
        it is not finite; returns its progress row. With ``prefetch``, the next batch is
        collected while the value fit runs (:meth:`_iteration`)."""
        start = time.perf_counter()
        pending = self._overlap.take()
        snapshot = training_snapshot(self, None if pending is None else pending.normalizers)
        try:
            return self._iteration(worker, pending, prefetch)
        except NonFiniteError as exc:
            self._unwind_prefetch(worker)  # collected by a policy that is being undone
            restore_training_snapshot(self, snapshot)
            first, last = self.num_timesteps + 1, self.num_timesteps + self.config.batch_size
            message = f"update {self.updates + 1} (env steps {first:,}-{last:,}): {exc}"
            if self.config.on_non_finite == "stop":
                raise NonFiniteError(f"{message}; stopped at the last good state") from None
            log.warning("%s; batch skipped (on_non_finite='skip')", message)
        self.skipped_batches += 1
        self.num_timesteps += self.config.batch_size
        self.updates += 1
        self.wall_time += time.perf_counter() - start
        worker.reset(self.config.seed + self.updates)  # the envs may be stuck in a bad state
        row = dict.fromkeys(PROGRESS_KEYS, float("nan"))
        row.update(env_steps=self.num_timesteps, wall_time=self.wall_time, accepted=0,
                   mean_return=worker.mean_return(), skipped_batches=self.skipped_batches)
        return row

    def _iteration(self, worker: RolloutWorker, pending, prefetch: bool) -> dict:
        """One TRPO iteration (Algorithm 1); returns its progress row.

        ``pending`` is this update's batch if the previous update collected it
        (:class:`agents.overlap.Prefetched`). With ``prefetch``, the value fit (step 4) runs on
        a second thread while the next batch is collected with the new policy: the run is
        identical to one without (:mod:`agents.overlap`).
        """
        cfg, start = self.config, time.perf_counter()
        # 1. Collect a batch with the current policy.
        rng = self.rng if self.num_workers == 1 else np.random.default_rng(
            [cfg.seed, self.worker_index, self.updates])  # each worker samples its own actions
        if pending is not None:
            if pending.error is not None:
                raise pending.error
            rollout = pending.rollout
        else:
            rollout = worker.collect(self.policy.numpy_params(), cfg.n_steps, rng,
                                     first_step=self.num_timesteps)
        mean_return = worker.mean_return()  # of the episodes up to this batch's end
        # 2. Advantages by GAE, bootstrapping V(final_obs) at truncation.
        values, advantages, returns = self.estimate_advantages(rollout)
        policy_advantages = (normalize_advantages(advantages)  # across workers: in the update
                             if cfg.normalize_advantages and self.num_workers == 1
                             else advantages)
        update_advantages = _flat(policy_advantages).astype(np.float32)
        update_returns = _flat(returns).astype(np.float32)
        check_finite("the return", update_returns, self.num_timesteps, cfg.n_envs)
        check_finite("the advantage", update_advantages, self.num_timesteps, cfg.n_envs)
        critic_order = np.stack([rng.permutation(cfg.batch_size)
                                 for _ in range(cfg.critic_epochs)]).astype(np.int32)
        # 3 + 4. Natural-gradient policy step and value fit (meanwhile, with prefetch, the next
        # batch is collected).
        obs, actions = _flat(rollout.obs), _flat(rollout.actions)
        fit_args = (obs, update_returns, critic_order)
        if not cfg.overlap_value_fit:  # one graph: TensorFlow runs the halves side by side
            stats = self._update_fns.both(obs, actions, update_advantages, update_returns,
                                          critic_order)
        else:
            stats = self._update_fns.policy(obs, actions, update_advantages)
            if not stats["policy_finite"]:
                raise NonFiniteError("the policy weights are not finite after the step")
            if prefetch:
                stats.update(self._overlap.fit_while_collecting(
                    lambda: self._update_fns.value(*fit_args),
                    lambda: worker.collect(self.policy.numpy_params(), cfg.n_steps, rng,
                                           first_step=self.num_timesteps + cfg.batch_size),
                    (normalizer_state(self), rng.bit_generator.state, worker.state())))
            else:
                stats.update(self._update_fns.value(*fit_args))
        stats = {k: v.numpy() for k, v in stats.items()}
        if not stats["policy_finite"]:
            raise NonFiniteError("the policy weights are not finite after the step")
        if not (stats["value_finite"] and np.isfinite(stats["value_loss"])):
            raise NonFiniteError(
                f"the value loss ({stats['value_loss']}) or the value weights are not finite "
                f"after the fit (largest |return| {np.max(np.abs(returns)):.3g})")
        # 5. Log.
        elapsed = time.perf_counter() - start
        self.num_timesteps += cfg.batch_size * self.num_workers
        self.updates += 1
        self.wall_time += elapsed
        return {
            "env_steps": self.num_timesteps,
            "wall_time": self.wall_time,
            "mean_return": mean_return,
            "kl": float(stats["kl"]),
            "entropy": float(stats["entropy"]),
            "value_loss": float(stats["value_loss"]),
            "explained_variance": explained_variance(values.ravel(), returns.ravel()),
            "line_search_tries": int(stats["line_search_tries"]),
            "accepted": int(stats["accepted"]),
            "cg_iterations": int(stats["cg_iterations"]),
            "cg_residual": float(stats["cg_residual"]),
            "surrogate_improvement": float(stats["loss_before"] - stats["loss_after"]),
            "steps_per_second": cfg.batch_size * self.num_workers / elapsed,
            "skipped_batches": self.skipped_batches,
        }

    def estimate_advantages(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, advantages, returns)``, each ``[T, E]``, of a batch: ``V(s)`` by the
        value network, GAE advantages (unstandardized) that bootstrap ``V(final_obs)`` at
        truncation, and the value targets ``advantages + values``."""
        value_params = self.value.numpy_params()
        shape = rollout.rewards.shape
        values = self.value.numpy_values(value_params, _flat(rollout.obs)).reshape(shape)
        next_values = self.value.numpy_values(value_params,
                                              _flat(rollout.bootstrap_obs)).reshape(shape)
        advantages, returns = compute_gae(rollout.train_rewards, values, next_values,
                                          rollout.terminated, rollout.truncated,
                                          self.config.gamma, self.config.gae_lambda)
        return values, advantages, returns

    def _make_update_fns(self) -> UpdateFunctions:
        return make_update_fns(self.config, self.policy, self.value, self.policy_optimizer,
                               self.value_optimizer, self.encoder.leaf_specs(),
                               action_layout(self.action_space),
                               strategy=self.strategy if self.num_workers > 1 else None)

    def _ensure_worker(self) -> RolloutWorker:
        """Creates the vector env (restoring a checkpoint's env state if one is pending)."""
        if self._worker is not None:
            return self._worker
        cfg = self.config
        envs = make_vector_env(self._env_factory, cfg.n_envs, cfg.vectorization)
        worker = RolloutWorker(envs, self.policy, self.obs_rms, self.encoder,
                               self.reward_scaler)
        pending, self._pending_env_state = self._pending_env_state, None
        seed = cfg.seed + 10_007 * self.worker_index  # workers' envs are seeded apart
        if pending is None:
            worker.reset(seed)
        else:
            restore_worker(self, worker, pending, seed + self.updates)
        self._worker = worker
        return worker

    # Using a trained agent -----------------------------------------------------------------

    def _encode(self, raw_batch):
        """The networks' input for a batch of raw observations (:mod:`agents.spaces`)."""
        return self.encoder.encode(raw_batch, self.obs_rms)

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Env-ready actions for one observation or a batch (for a ``Dict`` space, a dict of
        arrays, each with a leading batch axis for a batch).

        Raises:
          ValueError: an observation of another shape, naming the expected one.
        """
        batch, single = self.encoder.as_batch(obs)
        actions = self.policy.numpy_act(self.policy.numpy_params(), self._encode(batch),
                                        self._predict_rng, deterministic=deterministic)
        actions = env_actions(self.action_space, actions)
        return actions[0] if single else actions

    def evaluate(self, episodes: int | None = None, *, seed: int | None = None,
                 max_episode_steps: int | None = None) -> dict:
        """Deterministic-policy returns on a fresh env (unnormalized env rewards); see
        :func:`agents.evaluation.evaluate_policy`. Defaults: ``config.eval_episodes``,
        ``config.seed + 10000``, ``config.eval_max_episode_steps``."""
        cfg = self.config
        return evaluate_policy(
            self, cfg.eval_episodes if episodes is None else int(episodes),
            cfg.seed + EVAL_SEED_OFFSET if seed is None else int(seed),
            cfg.eval_max_episode_steps if max_episode_steps is None else int(max_episode_steps))

    # Saving and loading --------------------------------------------------------------------

    def save(self, path) -> None:
        """Writes the whole agent (weights, optimizers, normalizer, RNG; see
        :mod:`agents.agent_state`) atomically. Refuses non-finite weights (``ValueError``)."""
        write_checkpoint(path, *agent_checkpoint(self))

    @classmethod
    def load(cls, path, *, env=None, run_dir=None, trust_env_state: bool = False,
             strategy=None) -> TRPO:
        """Rebuilds an agent from ``save``/a checkpoint; ``env`` defaults to the saved env id.

        Nothing in the file is executed, unless it holds pickled envs (``save_env_state``)
        and ``trust_env_state=True``: pass that only for files you wrote.

        Raises:
          agents.checkpoint.CheckpointError (a ``ValueError``): the file is unreadable,
            corrupt or truncated, from an older natgrad, or for another env than ``env``.
        """
        checkpoint = path if not isinstance(path, (str, Path)) else read_checkpoint(path)
        return agent_from_checkpoint(cls, checkpoint, env=env, run_dir=run_dir,
                                     trust_env_state=trust_env_state, strategy=strategy)

    @classmethod
    def resume(cls, run_dir, *, env=None, trust_env_state: bool = False,
               strategy=None) -> TRPO:
        """The agent of ``run_dir`` at its newest usable checkpoint; ``.learn()`` continues.

        Checkpoints that are truncated or corrupt are skipped with a warning (logger
        ``"agents"``); one from another env or run is refused (:mod:`agents.run_dir`). A run
        stopped before its first checkpoint restarts from its start, in place. Progress rows
        written after the checkpoint are dropped when ``learn`` starts.

        Raises:
          RunDirError / CheckpointError (both ``ValueError``): naming what is wrong.
        """
        run_dir = Path(run_dir)
        run_id, config, checkpoint = resume_point(run_dir)
        if checkpoint is None:  # stopped before its first checkpoint: restart in place
            settings = {k: v for k, v in config.items() if k != "env_id"}
            agent = cls(config["env_id"] if env is None else env, run_dir=run_dir,
                        strategy=strategy, **settings)
            agent.run_id = run_id
        else:
            agent = agent_from_checkpoint(cls, checkpoint, env=env, run_dir=run_dir,
                                          trust_env_state=trust_env_state, strategy=strategy)
        agent._resumed = True
        agent._newest_at_resume = (list_checkpoints(run_dir) or [None])[0]
        return agent


def _flat(x):
    """``[T, E, ...] -> [T·E, ...]`` (time-major order), leaf by leaf."""
    return map_obs(lambda a: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]), x)
