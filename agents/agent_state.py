"""What a TRPO checkpoint holds, and how an agent is put back into that state.

A checkpoint (:mod:`agents.checkpoint`) is JSON plus named arrays:

* arrays ``policy/NNN``, ``value/NNN``, ``policy_optimizer/NNN``, ``value_optimizer/NNN`` (the
  variables in order), ``obs_rms/mean``, ``obs_rms/var``, ``reward_rms/mean``,
  ``reward_rms/var``, ``reward_rms/returns`` (with ``normalize_reward``),
  ``worker/running_returns``,
  ``worker/last_obs`` (``worker/last_obs/<key>`` per key of a ``Dict`` observation);
* JSON: ``env_id``, ``run_id``, ``config`` (every :class:`TRPOConfig` field), ``num_timesteps``,
  ``updates``, ``wall_time``, the NumPy ``rng`` state, the normalizers' ``count``/``clip``/
  ``epsilon`` (and the reward scaler's ``gamma``), the return window, and the ``history`` of
  progress rows;
* only with ``save_env_state=True``: the sub-environments of a ``"sync"`` vector env, pickled
  (see :mod:`agents.checkpoint` for when they are unpickled).

Non-finite weights are never written, and never loaded.
"""

from __future__ import annotations

import logging
import pickle

import gymnasium as gym
import numpy as np

import natgrad
from agents.checkpoint import ENV_STATE_KEY, Checkpoint, CheckpointError
from agents.config import complete_saved_config
from agents.rollout import resolve_env

log = logging.getLogger("agents")


def _variable_groups(agent) -> dict[str, list]:
    return {
        "policy": list(agent.policy.trainable_variables),
        "value": list(agent.value.trainable_variables),
        "policy_optimizer": list(agent.policy_optimizer.variables),
        "value_optimizer": list(agent.value_optimizer.variables),
    }


def normalizer_state(agent) -> tuple:
    """``(observation statistics, reward scaler)`` states (``None`` where off)."""
    return (None if agent.obs_rms is None else agent.obs_rms.state(),
            None if agent.reward_scaler is None else agent.reward_scaler.state())


def load_normalizer_state(agent, state: tuple) -> None:
    """Puts back what :func:`normalizer_state` returned (``None`` parts are left as they are)."""
    obs_state, reward_state = state
    if obs_state is not None:
        agent.obs_rms.load_state(obs_state)
    if reward_state is not None:
        agent.reward_scaler.load_state(reward_state)


def training_snapshot(agent, normalizers: tuple | None = None) -> tuple:
    """Everything an update changes, to undo it: all variables (weights and optimizer slots)
    and the normalizers (``normalizers`` if given, else their state now)."""
    variables = [v.numpy() for v in _all_variables(agent)]
    return variables, normalizer_state(agent) if normalizers is None else normalizers


def restore_training_snapshot(agent, snapshot: tuple) -> None:
    """Puts back what :func:`training_snapshot` took."""
    variables, normalizers = snapshot
    for variable, value in zip(_all_variables(agent), variables, strict=True):
        variable.assign(value)
    load_normalizer_state(agent, normalizers)


def _all_variables(agent) -> list:
    return [v for group in _variable_groups(agent).values() for v in group]


def restore_worker(agent, worker, pending: dict, reseed: int) -> None:
    """Puts a new rollout worker into a checkpoint's state (``agent._pending_env_state``): the
    pickled sync envs where given and trusted, else fresh envs seeded ``reseed`` (the episodes
    in progress are lost). The normalizers keep the checkpoint's state either way."""
    # A reset feeds the first observations to the normalizers: keep their saved state.
    obs_state, reward_state = normalizer_state(agent)
    if pending["sub_envs"] is not None and isinstance(worker.envs, gym.vector.SyncVectorEnv):
        worker.envs.envs = pending["sub_envs"]
        worker.load_state(pending["worker"])
    else:
        worker.reset(reseed)
        n_envs = worker.envs.num_envs
        worker.load_state({**pending["worker"], "last_obs": worker.last_obs,
                           "running_returns": np.zeros(n_envs)})
        if reward_state is not None:
            reward_state["returns"] = np.zeros(n_envs)
    load_normalizer_state(agent, (obs_state, reward_state))


def agent_checkpoint(agent) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of ``agent``'s whole training state.

    Raises:
      ValueError: a weight or optimizer slot is NaN or infinite (nothing is written).
    """
    arrays: dict[str, np.ndarray] = {}
    for group, variables in _variable_groups(agent).items():
        for i, variable in enumerate(variables):
            value = np.asarray(variable.numpy())
            if not np.all(np.isfinite(value)):
                raise ValueError(f"refusing to save a checkpoint: {group} variable "
                                 f"{variable.name} holds NaN or infinite values")
            arrays[f"{group}/{i:03d}"] = value
    meta = {
        "natgrad_version": natgrad.__version__,
        "env_id": agent.config.env_id,
        "run_id": agent.run_id,
        "config": agent.config.to_dict(),
        "num_timesteps": agent.num_timesteps,
        "updates": agent.updates,
        "wall_time": agent.wall_time,
        "rng": agent.rng.bit_generator.state,
        "history": [dict(row) for row in agent.history],
        "obs_rms": None,
        "worker": None,
    }
    if agent.obs_rms is not None:
        rms = agent.obs_rms
        meta["obs_rms"] = {"count": rms.count, "clip": rms.clip, "epsilon": rms.epsilon}
        arrays["obs_rms/mean"], arrays["obs_rms/var"] = rms.mean, rms.var
    meta["reward_rms"] = None
    if agent.reward_scaler is not None:
        state = agent.reward_scaler.state()
        meta["reward_rms"] = {k: state[k] for k in ("count", "clip", "epsilon", "gamma")}
        for key in ("mean", "var", "returns"):
            arrays[f"reward_rms/{key}"] = np.asarray(state[key], np.float64)
    worker = agent._worker
    if worker is not None:
        meta["worker"] = {"episode_returns": list(worker.episode_returns),
                          "episodes": worker.episodes}
        arrays["worker/running_returns"] = worker.running_returns
        if isinstance(worker.last_obs, dict):  # a Dict observation space: one array per key
            for key, value in worker.last_obs.items():
                arrays[f"worker/last_obs/{key}"] = np.asarray(value)
        else:
            arrays["worker/last_obs"] = np.asarray(worker.last_obs)
        if agent.config.save_env_state and isinstance(worker.envs, gym.vector.SyncVectorEnv):
            try:
                blob = pickle.dumps(worker.envs.envs)
            except Exception as exc:  # noqa: BLE001 - an env that cannot be pickled
                log.warning("save_env_state: the envs cannot be pickled (%s); a resume will "
                            "re-seed them", exc)
            else:
                arrays[ENV_STATE_KEY] = np.frombuffer(blob, np.uint8)
    return meta, arrays


def _array(checkpoint: Checkpoint, name: str) -> np.ndarray:
    try:
        return checkpoint.arrays[name]
    except KeyError:
        raise CheckpointError(f"checkpoint {checkpoint.path} lacks the array {name!r}") from None


def _last_obs(checkpoint: Checkpoint):
    prefix = "worker/last_obs/"
    keys = [k for k in checkpoint.arrays if k.startswith(prefix)]
    if keys:
        return {k[len(prefix):]: checkpoint.arrays[k] for k in keys}
    return _array(checkpoint, "worker/last_obs")


def restore_agent(agent, checkpoint: Checkpoint, *, trust_env_state: bool = False) -> None:
    """Puts ``agent`` (built from the checkpoint's config) into the checkpoint's state.

    Everything is checked before the first variable changes: names, counts, shapes and
    finiteness of the arrays, and the JSON fields' types.

    Raises:
      CheckpointError: naming the file and what does not fit.
    """
    meta, path = checkpoint.meta, checkpoint.path
    if meta.get("env_id") != agent.config.env_id:
        raise CheckpointError(f"checkpoint {path} is for env {meta.get('env_id')!r}, "
                              f"this agent is for {agent.config.env_id!r}")
    assignments = []
    for group, variables in _variable_groups(agent).items():
        stored = sorted(k for k in checkpoint.arrays if k.startswith(group + "/"))
        if len(stored) != len(variables):
            raise CheckpointError(
                f"checkpoint {path} does not match this agent's networks: {len(stored)} "
                f"{group} arrays, the agent has {len(variables)} variables")
        for variable, name in zip(variables, stored, strict=True):
            value = checkpoint.arrays[name]
            kind = np.asarray(variable.numpy()).dtype.kind
            if tuple(variable.shape) != value.shape or value.dtype.kind != kind:
                raise CheckpointError(
                    f"checkpoint {path} does not match this agent's networks: {name} is "
                    f"{value.dtype}{list(value.shape)}, {variable.name} is "
                    f"{list(variable.shape)}")
            if not np.all(np.isfinite(value)):
                raise CheckpointError(f"checkpoint {path}: {name} holds NaN or infinite values")
            assignments.append((variable, value))
    try:
        counters = (int(meta["num_timesteps"]), int(meta["updates"]), float(meta["wall_time"]))
        history = [dict(row) for row in meta["history"]]
        rms_meta, worker_meta = meta["obs_rms"], meta["worker"]
        reward_meta = meta.get("reward_rms")
        reward_state = None
        if agent.reward_scaler is not None and reward_meta is not None:
            reward_state = {**reward_meta, **{k: _array(checkpoint, f"reward_rms/{k}")
                                               for k in ("mean", "var", "returns")}}
            if np.shape(reward_state["returns"]) != (agent.config.n_envs,):
                raise ValueError(f"reward_rms/returns has shape "
                                 f"{np.shape(reward_state['returns'])}")
            if not all(np.all(np.isfinite(reward_state[k])) for k in ("mean", "var", "returns")):
                raise ValueError("reward_rms holds NaN or infinite values")
        rng = np.random.default_rng()
        rng.bit_generator.state = meta["rng"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has a malformed field: {exc}") from None

    for variable, value in assignments:
        variable.assign(value)
    agent.rng.bit_generator.state = rng.bit_generator.state
    agent.num_timesteps, agent.updates, agent.wall_time = counters
    agent.history = history
    if agent.obs_rms is not None and rms_meta is not None:
        agent.obs_rms.load_state({**rms_meta, "mean": _array(checkpoint, "obs_rms/mean"),
                                  "var": _array(checkpoint, "obs_rms/var")})
    if reward_state is not None:
        agent.reward_scaler.load_state(reward_state)
    agent._worker = None
    agent._pending_env_state = None
    if worker_meta is not None:
        sub_envs = None
        if ENV_STATE_KEY in checkpoint.arrays:
            if trust_env_state:
                sub_envs = pickle.loads(checkpoint.arrays[ENV_STATE_KEY].tobytes())  # noqa: S301
            else:
                log.warning("%s holds pickled env state, which is not loaded unless you trust "
                            "the file (trust_env_state=True, or --trust-env-state); the envs "
                            "are re-seeded instead", path)
        agent._pending_env_state = {
            "worker": {**worker_meta,
                       "running_returns": _array(checkpoint, "worker/running_returns"),
                       "last_obs": _last_obs(checkpoint)},
            "sub_envs": sub_envs,
        }


def agent_from_checkpoint(cls, checkpoint: Checkpoint, *, env=None, run_dir=None,
                          trust_env_state: bool = False, strategy=None):
    """A new ``cls`` (``agents.TRPO``) built from the checkpoint's configuration and put into
    its state; ``env`` (an id, a ``gymnasium.Env`` or a factory) defaults to the saved id.

    Raises:
      CheckpointError: for another env than ``env``, or a file this version cannot use.
    """
    meta = checkpoint.meta
    expected = resolve_env(env)[0] if isinstance(env, str) else None
    if expected is not None and meta.get("env_id") != expected:
        raise CheckpointError(f"checkpoint {checkpoint.path} was written for env "
                              f"{meta.get('env_id')!r}, not {expected!r}")
    if not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"checkpoint {checkpoint.path} has no configuration")
    settings = complete_saved_config(meta["config"])
    env_id = settings.pop("env_id", meta.get("env_id"))
    try:
        if env is None or isinstance(env, str):
            agent = cls(env_id, run_dir=run_dir, strategy=strategy, **settings)
        else:  # a gymnasium.Env or factory keeps the saved env id
            agent = cls(env, run_dir=run_dir, strategy=strategy, env_id=env_id, **settings)
    except TypeError as exc:  # a config field this version does not know
        raise CheckpointError(f"checkpoint {checkpoint.path}: {exc}") from None
    restore_agent(agent, checkpoint, trust_env_state=trust_env_state)
    agent.run_id = meta.get("run_id") or agent.run_id
    agent._saved_update = agent.updates
    return agent
