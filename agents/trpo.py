"""``TRPO``: trust region policy optimization (Schulman et al., 2015) on Gymnasium.

One iteration (:meth:`TRPO._trpo_iteration`) follows Algorithm 1 of the paper:

1. **Collect** ``n_envs × n_steps`` transitions with the current policy (NumPy forward passes;
   a compiled ``tf.function`` for image observations). Spaces: :mod:`agents.envs.spaces`.
2. **Advantages** by GAE, bootstrapping ``V(final_obs)`` at time-limit truncations; standardized.
3. **Policy step** with :meth:`natgrad.NaturalGradient.minimize` on the surrogate
   ``L(θ) = −mean_n[π_θ(a_n|s_n) / π_old(a_n|s_n) · Â_n]``: CG on the Fisher (its Gauss-Newton
   form ``Jᵀ F_out J``, on every ``fisher_subsample``-th state), step to the edge of
   ``KL(π_old‖π_θ) ≤ max_kl``, backtracking line search, exact restore when it fails.
4. **Value fit**: ``critic_epochs`` passes of Adam on ``mean (V(s) − R̂)²`` in minibatches.
5. **Log** the row described in :mod:`agents.runs.progress`; checkpoint every ``checkpoint_every``.

Steps 3 and 4 run in one ``tf.function`` with a fixed input signature (traced once per agent).
All randomness (initial weights, action sampling, minibatch order) comes from one seeded NumPy
``Generator``, whose state is checkpointed; no ``tf.random`` generator is used.

Around it, in their own modules: an iteration that meets a NaN is undone whole and stopped or
skipped (:mod:`agents.rollback`); the value fit may run while the next batch is collected
(:mod:`agents.overlap`); the run directory's lock, claim and checkpoints
(:class:`agents.runs.run_dir.RunWriter`); ``load`` and ``resume``
(:mod:`agents.runs.loading`); Ctrl-C and ``SIGTERM`` stop at the next update
(:mod:`agents.stop_signals`).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from pathlib import Path

import gymnasium as gym
import numpy as np

from agents.config import TRPOConfig, check_memory, resolve_config
from agents.envs.factories import resolve_agent_env
from agents.envs.normalization import RewardScaler, RunningMeanStd
from agents.envs.spaces import (
    ObservationEncoder,
    action_layout,
    env_actions,
    flatten_time,
    probe_spaces,
)
from agents.nets import build_networks
from agents.overlap import ValueFitOverlap, may_prefetch, policy_step_and_value_fit, undo_prefetch
from agents.rollback import Snapshot, skipped_row
from agents.rollout import (
    NonFiniteError,
    Rollout,
    RolloutWorker,
    explained_variance,
    start_worker,
    update_targets,
)
from agents.rollout import (
    estimate_advantages as estimate_batch_advantages,
)
from agents.runs.agent_state import (
    agent_checkpoint,
    all_variables,
)
from agents.runs.checkpoint import write_checkpoint
from agents.runs.evaluation import EVAL_SEED_OFFSET, evaluate_policy
from agents.runs.loading import load_agent, resume_agent
from agents.runs.progress import ProgressBar, ProgressLogger, progress_row
from agents.runs.run_dir import RunWriter
from agents.stop_signals import StopSignals, TrainingInterrupted
from agents.tf_threads import apply_tf_threads, blas_threads
from agents.update import UpdateFunctions, make_optimizers, make_update_fns
from agents.worker_sync import WorkerSync
from agents.workers import check_same_start, check_worker_settings, worker_position

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

    Checkpoints (``save``, ``run_dir/checkpoints/``) are arrays plus JSON, envs' state
    included (:mod:`agents.runs.agent_state`, :mod:`agents.envs.env_state`): loading one runs
    no code, and a resume continues bit for bit on CPU (envs whose state cannot be captured
    are re-seeded, ``seed + updates``, unless pickled by ``save_env_state=True`` and trusted
    by ``trust_env_state=True``). ``learn`` documents the lock, stops and non-finite values.
    """

    def __init__(self, env, *, preset: str | None = None, run_dir=None, strategy=None,
                 **overrides):
        env_id, self.env_factory = resolve_agent_env(env, overrides)
        self.config: TRPOConfig = resolve_config(env_id, preset, **overrides)
        apply_tf_threads(self.config.tf_threads)  # before this agent's first TensorFlow op
        self.observation_space, self.action_space = probe_spaces(self.env_factory)
        check_memory(self.config, gym.spaces.flatdim(self.observation_space),
                     gym.spaces.flatdim(self.action_space))
        cfg = self.config
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.strategy = strategy
        self.worker_index, self.num_workers = worker_position(strategy)
        self.run = RunWriter(self.run_dir, writes=self.worker_index == 0)
        check_worker_settings(cfg, self.num_workers)
        self.rng = np.random.default_rng(cfg.seed)
        self._predict_rng = np.random.default_rng([cfg.seed, 1])
        self.encoder = ObservationEncoder(self.observation_space)
        with strategy.scope() if strategy is not None else contextlib.nullcontext():
            self._build_networks()
        self._sync = WorkerSync.from_strategy(strategy, self.obs_rms, self.reward_scaler)
        self.num_timesteps = 0
        self.updates = 0
        self.wall_time = 0.0
        self.history: list[dict] = []
        self.run_id = uuid.uuid4().hex  # names this run in config.json and its checkpoints
        self.skipped_batches = 0
        self._worker: RolloutWorker | None = None
        self._pending_env_state: dict | None = None  # a checkpoint's, for the next worker
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
        self.policy_optimizer, self.value_optimizer = make_optimizers(cfg, self.policy,
                                                                      self.value)
        self.update_fns: UpdateFunctions = make_update_fns(
            cfg, self.policy, self.value, self.policy_optimizer, self.value_optimizer,
            self.encoder.leaf_specs(), action_layout(self.action_space),
            strategy=self.strategy if self.num_workers > 1 else None)

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
        with self.run.lock(), StopSignals() as stop, blas_threads(self.config.tf_threads):
            self.run.claim(self.run_id, self.config.to_dict(), self.num_timesteps)
            if self.num_workers > 1:
                check_same_start(self.strategy, self.updates)
            worker = self.worker
            logger = ProgressLogger(self.run_dir if self.run.writes else None)
            bar = ProgressBar(total, self.num_timesteps, enabled=progress_bar)
            try:
                while self.num_timesteps < total:
                    row = self._update(worker, prefetch=self._may_prefetch(total, stop))
                    self.history.append(row)
                    logger.log(row)
                    bar.update(row)
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
        """Undoes a batch collected early, if one is held (:func:`agents.overlap.undo_prefetch`)."""
        dropped = self._overlap.take()
        if dropped is not None:
            undo_prefetch(dropped, rng=self.rng, obs_rms=self.obs_rms,
                          reward_scaler=self.reward_scaler, worker=worker,
                          reseed=self.config.seed + self.updates)

    def _may_prefetch(self, total: int, stop: StopSignals) -> bool:
        checkpoint_follows = (self.run.writes
                              and (self.updates + 1) % self.config.checkpoint_every == 0)
        return may_prefetch(self.config, num_workers=self.num_workers,
                            stop_requested=stop.signal is not None,
                            checkpoint_follows=checkpoint_follows,
                            num_timesteps=self.num_timesteps, total=total)

    def _checkpoint(self) -> Path | None:
        """Saves ``run_dir/checkpoints/update_NNNNNN.ckpt`` unless this update is saved."""
        return self.run.checkpoint(self.updates, self.save)

    def _update(self, worker: RolloutWorker, prefetch: bool = False) -> dict:
        """:meth:`_trpo_iteration`, undone whole (:mod:`agents.rollback`) if a quantity in it
        is not finite, then stopped or skipped (``on_non_finite``); returns its progress row."""
        start = time.perf_counter()
        pending = self._overlap.take()
        snapshot = Snapshot.take(all_variables(self), self.obs_rms, self.reward_scaler,
                                 None if pending is None else pending.normalizers)
        try:
            return self._trpo_iteration(worker, pending, prefetch)
        except NonFiniteError as exc:
            self._unwind_prefetch(worker)  # collected by a policy that is being undone
            snapshot.restore(all_variables(self), self.obs_rms, self.reward_scaler)
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
        return skipped_row(self.num_timesteps, self.wall_time, worker.mean_return(),
                           self.skipped_batches)

    def _trpo_iteration(self, worker: RolloutWorker, pending, prefetch: bool) -> dict:
        """One iteration of Algorithm 1 (Schulman et al., 2015); returns its progress row.

        ``pending`` is this iteration's batch if the previous one collected it
        (:class:`agents.overlap.Prefetched`). With ``prefetch``, the value fit (step 4) runs on
        a second thread while the next batch is collected with the new policy: the run is
        identical to one without (:mod:`agents.overlap`).
        """
        cfg, start = self.config, time.perf_counter()
        # 1. Collect a batch with the current policy.
        rng = self.rng if self.num_workers == 1 else np.random.default_rng(
            [cfg.seed, self.worker_index, self.updates])  # each worker samples its own actions
        with self._sync.batch():  # workers: all go on (normalizers merged), or all raise
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
            update_advantages, update_returns = update_targets(  # workers: standardized later
                advantages, returns, cfg.normalize_advantages and self.num_workers == 1,
                self.num_timesteps)
        critic_order = np.stack([rng.permutation(cfg.batch_size)
                                 for _ in range(cfg.critic_epochs)]).astype(np.int32)
        # 3 + 4. Natural-gradient policy step and value fit (with prefetch, the next batch is
        # collected meanwhile).
        def collect_next() -> Rollout:  # the next batch, by the policy after this step
            return worker.collect(self.policy.numpy_params(), cfg.n_steps, rng,
                                  first_step=self.num_timesteps + cfg.batch_size)

        stats = policy_step_and_value_fit(
            self.update_fns, self._overlap if cfg.overlap_value_fit else None,
            flatten_time(rollout.obs), flatten_time(rollout.actions), update_advantages,
            update_returns, critic_order, worker=worker, rng=rng, obs_rms=self.obs_rms,
            reward_scaler=self.reward_scaler, collect_next=collect_next if prefetch else None)
        if not (stats["value_finite"] and np.isfinite(stats["value_loss"])):
            raise NonFiniteError(
                f"the value loss ({stats['value_loss']}) or the value weights are not finite "
                f"after the fit (largest |return| {np.max(np.abs(returns)):.3g})")
        # 5. Log.
        elapsed = time.perf_counter() - start
        self.num_timesteps += cfg.batch_size * self.num_workers
        self.updates += 1
        self.wall_time += elapsed
        return progress_row(
            stats, env_steps=self.num_timesteps, wall_time=self.wall_time,
            mean_return=mean_return,
            explained_variance=explained_variance(values.ravel(), returns.ravel()),
            steps_per_second=cfg.batch_size * self.num_workers / elapsed,
            skipped_batches=self.skipped_batches)

    def estimate_advantages(self, rollout: Rollout) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(values, advantages, returns)``, each ``[T, E]``, of a batch: ``V(s)`` by the
        value network, GAE advantages (unstandardized) that bootstrap ``V(final_obs)`` at
        truncation, and the value targets ``advantages + values``."""
        return estimate_batch_advantages(self.value, rollout, self.config.gamma,
                                         self.config.gae_lambda)

    @property
    def worker(self) -> RolloutWorker:
        """The rollout worker: the vector env and the episodes in it, created on first use
        (then from a checkpoint's env state, when the agent was loaded from one)."""
        if self._worker is None:
            env_state, self._pending_env_state = self._pending_env_state, None
            seed = self.config.seed + 10_007 * self.worker_index  # workers' envs seeded apart
            self._worker = start_worker(self.env_factory, self.config, self.policy,
                                        self.obs_rms, self.encoder, self.reward_scaler,
                                        seed=seed, env_state=env_state,
                                        reseed=seed + self.updates)
        return self._worker

    # Using a trained agent -----------------------------------------------------------------

    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """Env-ready actions for one observation or a batch (for a ``Dict`` space, a dict of
        arrays, each with a leading batch axis for a batch).

        Raises:
          ValueError: an observation of another shape, naming the expected one.
        """
        batch, single = self.encoder.as_batch(obs)
        actions = self._env_actions(self.policy.numpy_params(), batch, self._predict_rng,
                                    deterministic)
        return actions[0] if single else actions

    def evaluate(self, episodes: int | None = None, *, seed: int | None = None,
                 max_episode_steps: int | None = None) -> dict:
        """Deterministic-policy returns on a fresh env (unnormalized env rewards); see
        :func:`agents.runs.evaluation.evaluate_policy`. Defaults: ``config.eval_episodes``,
        ``config.seed + 10000``, ``config.eval_max_episode_steps``."""
        cfg, params = self.config, self.policy.numpy_params()

        def act(obs):
            return self._env_actions(params, self.encoder.stack([obs]), None, True)[0]

        return evaluate_policy(
            self.env_factory, act, cfg.eval_episodes if episodes is None else int(episodes),
            cfg.seed + EVAL_SEED_OFFSET if seed is None else int(seed),
            cfg.eval_max_episode_steps if max_episode_steps is None else int(max_episode_steps))

    def _env_actions(self, params: dict, batch, rng, deterministic: bool) -> np.ndarray:
        """Env-ready actions of the policy ``params`` for a batch of raw observations."""
        actions = self.policy.numpy_act(params, self.encoder.encode(batch, self.obs_rms), rng,
                                        deterministic=deterministic)
        return env_actions(self.action_space, actions)

    # Saving and loading --------------------------------------------------------------------

    def save(self, path) -> None:
        """Writes the whole agent (weights, optimizers, normalizer, RNG; see
        :mod:`agents.runs.agent_state`) atomically. Refuses non-finite weights
        (``ValueError``)."""
        write_checkpoint(path, *agent_checkpoint(self, self._worker))

    @classmethod
    def load(cls, path, *, env=None, run_dir=None, trust_env_state: bool = False,
             strategy=None) -> TRPO:
        """Rebuilds an agent from ``save``/a checkpoint; ``env`` defaults to the saved env id.

        Nothing in the file is executed (env state is arrays + JSON), unless it holds pickled
        envs (``save_env_state``) and ``trust_env_state=True``: only for files you wrote.

        Raises:
          agents.runs.checkpoint.CheckpointError (a ``ValueError``): the file is unreadable,
            corrupt or truncated, from an older natgrad, or for another env than ``env``.
        """
        agent, env_state = load_agent(cls, path, env=env, run_dir=run_dir,
                                      trust_env_state=trust_env_state, strategy=strategy)
        agent._pending_env_state = env_state  # for the first worker
        return agent

    @classmethod
    def resume(cls, run_dir, *, env=None, trust_env_state: bool = False,
               use_checkpoint_config: bool = False, strategy=None) -> TRPO:
        """The agent of ``run_dir`` at its newest usable checkpoint; ``.learn()`` continues.

        Corrupt checkpoints are skipped (a warning); another run's, or an edited config.json
        unless ``use_checkpoint_config`` (``learn`` rewrites it), refused. No checkpoint: a
        restart in place. Rows after the checkpoint are dropped when ``learn`` starts.

        Raises:
          RunDirError / CheckpointError (both ``ValueError``): naming what is wrong.
        """
        return resume_agent(cls, run_dir, env=env, trust_env_state=trust_env_state,
                            use_checkpoint_config=use_checkpoint_config, strategy=strategy)
