"""How large a checkpoint of a given agent can be, member by member, so that a file whose
member claims more is refused before anything of that size is allocated.

A checkpoint (:mod:`agents.runs.agent_state`) of an agent with settings ``config`` on an env
whose observations hold ``obs`` numbers and whose actions ``act`` numbers holds:

* ``policy/NNN``, ``value/NNN``: each one variable of its network. A network with hidden widths
  ``h₁…h_k`` (plus, for image observations, the Nature CNN and its 512-unit layer) has at most
  ``N = K + (obs + 1)·W + Σᵢ (hᵢ + 1)·hᵢ₊₁ + (W + 1)·(2·act + 1)`` numbers, ``W`` the widest
  layer (512 or more) and ``K`` a bound on the CNN's kernels, so each variable is at most ``N``.
* ``policy_optimizer/NNN``, ``value_optimizer/NNN``: each one slot of one variable (Adam's
  moments, the natural gradient's state): at most ``N`` too, ``4·N`` for all of them.
* ``obs_rms/*``: ``obs`` numbers; ``reward_rms/*``, ``worker/running_returns``: ``n_envs``;
  ``worker/last_obs[/key]``: ``n_envs·obs``.
* ``env_state/<i>/*``: one sub-env's state (:mod:`agents.envs.env_state`: a state vector,
  MuJoCo's integration state, ALE's serialized state, a MiniGrid grid, a frame stack):
  :data:`ENV_STATE_BYTES` plus 16 observations per env, all its members together.
* ``env_state_pickle`` (``save_env_state``): the same per env, plus :data:`ENV_PICKLE_BYTES`.
* ``__meta__``: JSON (settings, counters, the history of progress rows):
  :data:`META_BYTES`, plus 1 MiB per env.

Each number is counted at 8 bytes (float64) and each member with :data:`MEMBER_OVERHEAD_BYTES`
of ``.npy`` header and zip entry, so these are upper bounds far above any real checkpoint,
not estimates; a member above its bound (or a file above the total) is no checkpoint of this
agent, and is refused by :func:`agents.runs.checkpoint.read_checkpoint` from the sizes its zip
directory and ``.npy`` headers declare, before it is read.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import gymnasium as gym

from agents.config import complete_saved_config

log = logging.getLogger("agents")

NUMBER_BYTES = 8
MEMBER_OVERHEAD_BYTES = 4096
MAX_MEMBERS = 4096  # besides env_state/<i>/*: a few per variable, far fewer in practice
CNN_WIDTH = 512  # the Nature CNN's dense layer (agents.nets.cnn)
CNN_KERNEL_NUMBERS = 8 * 8 * 64 * 32 + 4 * 4 * 32 * 64 + 3 * 3 * 64 * 64 + 1024  # ≤ 64 channels
ENV_STATE_BYTES = 16 << 20
ENV_PICKLE_BYTES = 64 << 20
FRAMES_PER_ENV_STATE = 16
META_BYTES = 256 << 20


@dataclass(frozen=True)
class CheckpointLimits:
    """Upper bounds, in bytes, on a checkpoint of one agent: ``total`` for the whole file and
    one per member (:meth:`member`)."""

    policy: int  # one policy variable or policy-optimizer slot
    value: int  # one value variable or value-optimizer slot
    observation: int  # obs_rms/mean, obs_rms/var
    per_env: int  # reward_rms/*, worker/running_returns
    last_obs: int  # worker/last_obs (all keys together)
    env_state: int  # env_state/<i>/* of one env, all its members together
    env_pickle: int  # env_state_pickle
    meta: int  # __meta__
    total: int

    def member(self, name: str) -> int:
        """The bound of the member ``name`` (the array's name, without ``.npy``); a name no
        checkpoint of an agent has gets :data:`MEMBER_OVERHEAD_BYTES`."""
        group = name.split("/", 1)[0]
        by_group = {"policy": self.policy, "policy_optimizer": self.policy,
                    "value": self.value, "value_optimizer": self.value,
                    "obs_rms": self.observation, "reward_rms": self.per_env,
                    "env_state": self.env_state, "env_state_pickle": self.env_pickle,
                    "__meta__": self.meta}
        if name in ("worker/running_returns",):
            return self.per_env
        if name == "worker/last_obs" or name.startswith("worker/last_obs/"):
            return self.last_obs
        return by_group.get(group, MEMBER_OVERHEAD_BYTES)


def network_numbers(obs: int, hidden: tuple, outputs: int) -> int:
    """An upper bound on the numbers of a network from ``obs`` inputs through ``hidden`` to
    ``outputs`` (for any trunk :mod:`agents.nets` builds, the CNN included)."""
    widths = [CNN_WIDTH, *hidden]
    widest = max(widths)
    inner = sum((a + 1) * b for a, b in zip(widths, widths[1:], strict=False))
    return CNN_KERNEL_NUMBERS + (obs + 1) * widest + inner + (widest + 1) * (outputs + 1)


def checkpoint_limits(config: dict, observation_space: gym.Space,
                      action_space: gym.Space) -> CheckpointLimits:
    """:class:`CheckpointLimits` of an agent with settings ``config`` (a run's ``config.json``
    dict) on an env of these spaces (see the module docstring for the bounds)."""
    config = complete_saved_config(config)
    obs = gym.spaces.flatdim(observation_space)
    act = gym.spaces.flatdim(action_space)
    n_envs = int(config.get("n_envs", 1))
    policy = network_numbers(obs, tuple(config.get("policy_hidden", ())), 2 * act + 1)
    value = network_numbers(obs, tuple(config.get("value_hidden", ())), 1)
    policy_bytes = policy * NUMBER_BYTES + MEMBER_OVERHEAD_BYTES
    value_bytes = value * NUMBER_BYTES + MEMBER_OVERHEAD_BYTES
    observation = obs * NUMBER_BYTES + MEMBER_OVERHEAD_BYTES
    per_env = n_envs * NUMBER_BYTES + MEMBER_OVERHEAD_BYTES
    last_obs = n_envs * obs * NUMBER_BYTES + MEMBER_OVERHEAD_BYTES
    env_state = ENV_STATE_BYTES + FRAMES_PER_ENV_STATE * obs * NUMBER_BYTES
    env_pickle = n_envs * (env_state + ENV_PICKLE_BYTES)
    meta = META_BYTES + n_envs * (1 << 20)
    total = (5 * (policy + value) * NUMBER_BYTES + 2 * observation + 5 * per_env + last_obs
             + n_envs * env_state + env_pickle + meta + MAX_MEMBERS * MEMBER_OVERHEAD_BYTES)
    return CheckpointLimits(policy=policy_bytes, value=value_bytes, observation=observation,
                            per_env=per_env, last_obs=last_obs, env_state=env_state,
                            env_pickle=env_pickle, meta=meta, total=total)


def run_limits(config: dict) -> Callable[[dict | None], CheckpointLimits | None]:
    """The ``limits`` :func:`agents.runs.checkpoint.read_checkpoint` takes for a run of
    ``config`` (its ``config.json``): ``limits(None)`` bounds the run's own agent, and
    ``limits(settings)`` one with the settings a checkpoint's ``__meta__`` names (if they are
    valid settings: ``None`` otherwise) on the same env. The env's spaces are read once, from
    one env made as the agent makes it; where that fails (the agent's own construction then
    reports it), there is no agent-aware bound and the fixed cap
    :data:`agents.runs.checkpoint.MAX_CHECKPOINT_BYTES` applies."""

    @functools.cache
    def spaces():
        from agents.envs.factories import resolve_env

        try:
            env = resolve_env(config.get("env_id"))[1]()
        except Exception as exc:  # noqa: BLE001 - any env failure: reported by the agent
            log.debug("no checkpoint limits for %r: %s", config.get("env_id"), exc)
            return None
        try:
            return env.observation_space, env.action_space
        finally:
            env.close()

    def limits(settings: dict | None) -> CheckpointLimits | None:
        from agents.config import config_from_dict

        found = spaces()
        try:  # settings no agent can have (too large, malformed) get no agent-aware bound
            config_from_dict({**complete_saved_config(config if settings is None else settings),
                              "env_id": config.get("env_id")}).validate()
            return None if found is None else checkpoint_limits(
                config if settings is None else settings, *found)
        except (TypeError, ValueError, NotImplementedError) as exc:  # bad settings or space
            log.debug("no checkpoint limits for %r: %s", config.get("env_id"), exc)
            return None

    return limits


def declared_array_bytes(shape: tuple, itemsize: int) -> int:
    """Bytes an ``.npy`` header of ``shape`` and ``itemsize`` declares (exact integers: a
    crafted shape cannot overflow)."""
    return math.prod(int(n) for n in shape) * int(itemsize)
