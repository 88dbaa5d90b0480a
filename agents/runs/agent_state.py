"""What a TRPO checkpoint holds, and how an agent is put back into that state.

A checkpoint (:mod:`agents.runs.checkpoint`) is JSON plus named arrays:

* arrays ``policy/NNN``, ``value/NNN``, ``policy_optimizer/NNN``, ``value_optimizer/NNN`` (the
  variables in order), ``obs_rms/mean``, ``obs_rms/var``, ``reward_rms/mean``,
  ``reward_rms/var``, ``reward_rms/returns`` (with ``normalize_reward``),
  ``worker/running_returns``,
  ``worker/last_obs`` (``worker/last_obs/<key>`` per key of a ``Dict`` observation), and
  ``env_state/<i>/<name>``, the arrays of sub-env ``i``'s state;
* JSON: ``env_id``, ``run_id``, ``config`` (every :class:`TRPOConfig` field), ``num_timesteps``,
  ``updates``, ``wall_time``, the NumPy ``rng`` state, the normalizers' ``count``/``clip``/
  ``epsilon`` (and the reward scaler's ``gamma``), the return window, the ``history`` of
  progress rows, and ``env_states``, the JSON part of each sub-env's state;
* the sub-envs' state (:mod:`agents.envs.env_state`) is saved for every env family that module
  knows, in a ``"sync"`` vector env, so a resume continues bit for bit. For any other env it
  is not (said once in the log) and a resume re-seeds the envs, unless ``save_env_state=True``
  pickles them (see :mod:`agents.runs.checkpoint` for when they are unpickled).

The functions read and write the agent's public state (``policy``, ``value``, both optimizers,
the normalizers, ``rng``, counters, ``history``, ``config``, ``run_id``); the rollout worker and
the env state it restarts from are passed and returned explicitly.

Non-finite weights are never written, and never loaded.
"""

from __future__ import annotations

import io
import json
import logging
import pickle

import gymnasium as gym
import numpy as np

import natgrad
from agents.config import complete_saved_config
from agents.envs.env_state import (
    EnvState,
    EnvStateError,
    EnvStateMismatch,
    UnsupportedEnvState,
    capture_env_state,
    restore_env_state,
)
from agents.envs.factories import resolve_env
from agents.runs.checkpoint import ENV_STATE_KEY, ENV_STATES_PREFIX, Checkpoint, CheckpointError

log = logging.getLogger("agents")


# Modules that moved since natgrad 0.2, whose classes (e.g. PixelObservation) an env-state
# pickle written then names.
MOVED_MODULES = {
    "agents.env_factories": "agents.envs.factories",
    "agents.vector_env": "agents.envs.vector_env",
    "agents.spaces": "agents.envs.spaces",
    "agents.normalization": "agents.envs.normalization",
}


class _EnvStateUnpickler(pickle.Unpickler):
    """Unpickles env state written before the modules above moved."""

    def find_class(self, module: str, name: str):
        return super().find_class(MOVED_MODULES.get(module, module), name)


def _unpickle_envs(checkpoint: Checkpoint):
    """The pickled sub-environments of a trusted checkpoint.

    Raises:
      CheckpointError: they cannot be unpickled here (a class this version lacks, a
        truncated pickle), saying how to resume without them.
    """
    blob = checkpoint.arrays[ENV_STATE_KEY].tobytes()
    try:
        return _EnvStateUnpickler(io.BytesIO(blob)).load()  # noqa: S301 - trusted by the caller
    except Exception as exc:  # noqa: BLE001 - whatever the pickle names or holds
        raise CheckpointError(
            f"checkpoint {checkpoint.path}: its pickled env state cannot be loaded by this "
            f"version ({type(exc).__name__}: {exc}); resume without trust_env_state "
            "(--trust-env-state) to re-seed the envs instead") from None


_said: set[str] = set()


def _say_once(message: str, *args) -> None:
    """A warning logged the first time this process has it to say."""
    text = message % args
    if text not in _said:
        _said.add(text)
        log.warning("%s", text)


def capture_env_states(envs: gym.vector.VectorEnv) -> list[EnvState] | None:
    """The state of each sub-env of ``envs`` (:func:`agents.envs.env_state.capture_env_state`),
    or ``None`` (said once) when they cannot be captured."""
    if not isinstance(envs, gym.vector.SyncVectorEnv):
        _say_once("the envs run in other processes (vectorization='async'): checkpoints do not "
                  "hold their state, and a resume re-seeds them")
        return None
    try:
        states = [capture_env_state(env) for env in envs.envs]
        json.dumps([state.meta for state in states])
    except (UnsupportedEnvState, TypeError, ValueError) as exc:
        _say_once("checkpoints do not hold the envs' state (%s): a resume re-seeds them, unless "
                  "save_env_state=true pickles them and the resume trusts the file "
                  "(--trust-env-state)", exc)
        return None
    return states


def variable_groups(agent) -> dict[str, list]:
    """Every variable a checkpoint holds, by group, in the order it stores them."""
    return {
        "policy": list(agent.policy.trainable_variables),
        "value": list(agent.value.trainable_variables),
        "policy_optimizer": list(agent.policy_optimizer.variables),
        "value_optimizer": list(agent.value_optimizer.variables),
    }


def all_variables(agent) -> list:
    """:func:`variable_groups` as one list."""
    return [v for group in variable_groups(agent).values() for v in group]


def agent_checkpoint(agent, worker) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of ``agent``'s whole training state, with its rollout ``worker``'s
    (``None`` before the first rollout).

    Raises:
      ValueError: a weight or optimizer slot is NaN or infinite (nothing is written).
    """
    arrays: dict[str, np.ndarray] = {}
    for group, variables in variable_groups(agent).items():
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
    if worker is not None:
        meta["worker"] = {"episode_returns": list(worker.episode_returns),
                          "episodes": worker.episodes}
        arrays["worker/running_returns"] = worker.running_returns
        if isinstance(worker.last_obs, dict):  # a Dict observation space: one array per key
            for key, value in worker.last_obs.items():
                arrays[f"worker/last_obs/{key}"] = np.asarray(value)
        else:
            arrays["worker/last_obs"] = np.asarray(worker.last_obs)
        states = capture_env_states(worker.envs)
        meta["env_states"] = None if states is None else [state.meta for state in states]
        for i, state in enumerate(states or ()):
            for name, value in state.arrays.items():
                arrays[f"{ENV_STATES_PREFIX}{i}/{name}"] = value
        if (states is None and agent.config.save_env_state
                and isinstance(worker.envs, gym.vector.SyncVectorEnv)):
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


def _saved_env_states(agent, checkpoint: Checkpoint) -> list[EnvState] | None:
    """The sub-envs' states in ``checkpoint``, checked against an env made by the agent's own
    factory; ``None`` when it holds none, or ones of another env version (said in the log).

    Raises:
      CheckpointError: a malformed state, naming the file and the field.
    """
    saved, path, n_envs = checkpoint.meta.get("env_states"), checkpoint.path, agent.config.n_envs
    if saved is None:
        return None
    if not isinstance(saved, list) or len(saved) != n_envs:
        raise CheckpointError(f"checkpoint {path}: env_states is not a list of the states of "
                              f"its {n_envs} envs")
    states = []
    for i, meta in enumerate(saved):
        prefix = f"{ENV_STATES_PREFIX}{i}/"
        states.append(EnvState(meta, {name[len(prefix):]: value for name, value
                                      in checkpoint.arrays.items() if name.startswith(prefix)}))
    if agent.num_workers > 1 or agent.config.vectorization != "sync":
        _say_once("with several workers or vectorization='async', a resume re-seeds the envs")
        return None
    probe = agent.env_factory()
    try:
        probe.reset(seed=agent.config.seed)
        for i, state in enumerate(states):
            try:
                restore_env_state(probe, state, check_only=True)
            except EnvStateMismatch as exc:
                log.warning("%s: the saved state of env %d is not one of this env (%s), perhaps "
                            "from another version of its package: the envs are re-seeded",
                            path, i, exc)
                return None
            except EnvStateError as exc:
                raise CheckpointError(f"checkpoint {path}: the saved state of env {i} is "
                                      f"malformed: {exc}") from None
    finally:
        probe.close()
    return states


def _checked_assignments(agent, checkpoint: Checkpoint) -> list[tuple]:
    """``[(variable, value)]`` for every variable of the agent, each value checked against its
    variable (count, shape, kind, finiteness) before anything is assigned."""
    path = checkpoint.path
    assignments = []
    for group, variables in variable_groups(agent).items():
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
    return assignments


def restore_agent(agent, checkpoint: Checkpoint, *,
                  trust_env_state: bool = False) -> dict | None:
    """Puts ``agent`` (built from the checkpoint's config) into the checkpoint's state, and
    returns the state its next rollout worker starts from
    (:meth:`agents.rollout.RolloutWorker.restore`: ``worker``, ``env_states``, and
    ``sub_envs``, unpickled only from a trusted file holding no ``env_states``; ``None`` for a
    checkpoint saved before the first rollout).

    Everything is checked before the first variable changes: names, counts, shapes and
    finiteness of the arrays, the JSON fields' types, and the envs' states against an env
    made by the agent's factory.

    Raises:
      CheckpointError: naming the file and what does not fit.
    """
    meta, path = checkpoint.meta, checkpoint.path
    if meta.get("env_id") != agent.config.env_id:
        raise CheckpointError(f"checkpoint {path} is for env {meta.get('env_id')!r}, "
                              f"this agent is for {agent.config.env_id!r}")
    assignments = _checked_assignments(agent, checkpoint)
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
    worker_state = env_states = None
    if worker_meta is not None:
        worker_state = {**worker_meta, "last_obs": _last_obs(checkpoint),
                        "running_returns": _array(checkpoint, "worker/running_returns")}
        if np.shape(worker_state["running_returns"]) != (agent.config.n_envs,):
            raise CheckpointError(f"checkpoint {path}: worker/running_returns has shape "
                                  f"{np.shape(worker_state['running_returns'])}, expected "
                                  f"({agent.config.n_envs},)")
        env_states = _saved_env_states(agent, checkpoint)

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
    if worker_meta is None:
        return None
    sub_envs = None
    if ENV_STATE_KEY in checkpoint.arrays and env_states is None:
        if trust_env_state:
            sub_envs = _unpickle_envs(checkpoint)
        else:
            log.warning("%s holds pickled env state, which is not loaded unless you trust "
                        "the file (trust_env_state=True, or --trust-env-state); the envs "
                        "are re-seeded instead", path)
    elif meta.get("env_states") is None:
        _say_once("%s holds no env state (written by an older natgrad, or for envs whose "
                  "state it cannot capture): the envs are re-seeded", path)
    return {"worker": worker_state, "sub_envs": sub_envs, "env_states": env_states}


def saved_settings(checkpoint: Checkpoint, env=None) -> tuple[object, dict]:
    """``(env, settings)`` to build the agent a checkpoint was saved from: ``env`` (an id, a
    ``gymnasium.Env`` or a factory; default the saved id) and every config field (with
    ``env_id`` among them when ``env`` is not an id).

    Raises:
      CheckpointError: for another env than ``env``, or a file without a configuration.
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
    if env is None or isinstance(env, str):
        return env_id, settings
    return env, {**settings, "env_id": env_id}  # a gymnasium.Env or factory keeps the id
