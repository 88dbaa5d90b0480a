"""Rebuilding an agent from disk: from one checkpoint (``TRPO.load``) or from a run
directory's newest usable checkpoint (``TRPO.resume``).

Both construct the agent with the saved settings through its class, then put the saved state
into it (:func:`agents.runs.agent_state.restore_agent`); nothing in a file is executed unless
the caller trusts pickled envs. ``TRPO`` documents the errors.
"""

from __future__ import annotations

from pathlib import Path

from agents.runs.agent_state import restore_agent, saved_settings
from agents.runs.checkpoint import CheckpointError, read_checkpoint
from agents.runs.run_dir import resume_point


def load_agent(agent_class, path, *, env, run_dir, trust_env_state: bool, strategy):
    """``(agent, env_state)``: an ``agent_class`` built from the checkpoint ``path`` (a path
    or a read :class:`~agents.runs.checkpoint.Checkpoint`), and the saved env state for its
    first rollout worker (``None`` when there is none to restore)."""
    checkpoint = path if not isinstance(path, (str, Path)) else read_checkpoint(path)
    env, settings = saved_settings(checkpoint, env)
    try:
        agent = agent_class(env, run_dir=run_dir, strategy=strategy, **settings)
    except TypeError as exc:  # a config field this version does not know
        raise CheckpointError(f"checkpoint {checkpoint.path}: {exc}") from None
    env_state = restore_agent(agent, checkpoint, trust_env_state=trust_env_state)
    agent.run_id = checkpoint.meta.get("run_id") or agent.run_id
    agent.run.saved_update = agent.updates
    return agent, env_state


def resume_agent(agent_class, run_dir, *, env, trust_env_state: bool,
                 use_checkpoint_config: bool, strategy):
    """The ``agent_class`` agent of ``run_dir`` at its newest usable checkpoint (through
    ``agent_class.load``), or restarted in place when it has none."""
    run_dir = Path(run_dir)
    run_id, config, checkpoint = resume_point(run_dir,
                                              use_checkpoint_config=use_checkpoint_config)
    if checkpoint is None:  # stopped before its first checkpoint: restart in place
        settings = {k: v for k, v in config.items() if k != "env_id"}
        agent = agent_class(config["env_id"] if env is None else env, run_dir=run_dir,
                            strategy=strategy, **settings)
        agent.run_id = run_id
    else:
        agent = agent_class.load(checkpoint, env=env, run_dir=run_dir,
                                 trust_env_state=trust_env_state, strategy=strategy)
    agent.run.mark_resumed(rewrite_config=use_checkpoint_config)
    return agent
