"""natgrad's rollout and advantages against sb3-contrib's, on the same weights and actions.

The natgrad side builds the agent of an env's preset (observation and reward normalization on
the MuJoCo presets), collects one batch (``n_envs × n_steps``) with its own rollout worker and
computes values, GAE advantages and value targets with the agent's own code
(:meth:`agents.trpo.TRPO.estimate_advantages`). It saves the networks' weights and the actions
it took, then runs this script again under ``--peer-python`` (``--peer-side``: sb3-contrib,
CPU torch, nothing from natgrad imported), which builds sb3-contrib's ``TRPO`` with the RL Zoo
settings of ``scripts/sb3_peer.py`` in a ``VecNormalize`` over envs seeded the same way, loads
the weights, and replays those actions through sb3-contrib's own ``collect_rollouts``.

It prints the largest difference of each quantity, relative to its largest magnitude: the
normalized observations, the value predictions, the rewards learned from (sb3-contrib adds
``γ·V(final obs)`` to a truncated step's reward; natgrad's bootstrap is added here for the
comparison), the advantages, the value targets and the final running statistics. Hopper's
episodes end by termination, HalfCheetah's only by the 1,000-step time limit, so the two
envs check both ends of an episode. Both sides compute in float32, so agreement is to ~1e-6.

``--checkpoint CKPT`` starts both sides from a natgrad run's trained state instead of fresh
networks: the checkpoint's policy and value weights and its observation and reward statistics
(``VecNormalize``'s on sb3-contrib's side), with fresh envs seeded alike on both sides (the
discounted-return accumulators start at 0, as at any reset).

Usage::

    python scripts/check_sb3_rollout.py --peer-python .venv-sb3/bin/python
    python scripts/check_sb3_rollout.py --peer-python .venv-sb3/bin/python --envs Swimmer-v5 \
        --checkpoint RUN/checkpoints/update_000040.ckpt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also under -m
from peer_check import (  # noqa: E402
    check_main,
    mlp_weights,
    peer_model,
    run_peer,
)

SEED = 0


def peer_side(data_file: str, out_file: str, env_id: str) -> int:
    """sb3-contrib's rollout of the saved actions (runs in the peer interpreter)."""
    import torch as th

    data = np.load(data_file)
    actions = data["actions"]  # [T, E, D], unclipped, as natgrad's policy drew them
    n_steps, n_envs = actions.shape[:2]
    model = peer_model(env_id, data, {"policy": "policy_", "value": "value_"}, n_envs=n_envs,
                       seed=SEED, n_steps=n_steps)
    policy = model.policy
    if "start_obs_mean" in data:  # a trained state: natgrad's statistics, before the reset
        vec_normalize = model.get_vec_normalize_env()
        for rms, key in ((vec_normalize.obs_rms, "obs"), (vec_normalize.ret_rms, "ret")):
            rms.mean, rms.var = data[f"start_{key}_mean"], data[f"start_{key}_var"]
            rms.count = float(data[f"start_{key}_count"])

    step = iter(range(n_steps))

    def replay(obs, deterministic=False):  # the recorded actions, sb3-contrib's values
        t = next(step)
        taken = th.as_tensor(actions[t])
        values, log_prob, _ = policy.evaluate_actions(obs, taken)
        return taken, values, log_prob

    policy.forward = replay
    # sb3-contrib has no public call that collects one rollout: learn() would also train on
    # it. _setup_learn makes the callback and resets the env as learn() does first.
    _, callback = model._setup_learn(n_steps * n_envs, None)  # noqa: SLF001
    model.collect_rollouts(model.env, callback, model.rollout_buffer, n_steps)
    buffer = model.rollout_buffer
    out = {"obs": buffer.observations, "values": buffer.values, "rewards": buffer.rewards,
           "advantages": buffer.advantages, "returns": buffer.returns}
    vec_normalize = model.get_vec_normalize_env()
    if vec_normalize is not None:
        out.update(obs_mean=vec_normalize.obs_rms.mean, obs_var=vec_normalize.obs_rms.var,
                   ret_var=vec_normalize.ret_rms.var)
    np.savez(out_file, **out)
    return 0


def start_from(agent, checkpoint: str) -> dict:
    """Puts ``checkpoint``'s weights and normalizer statistics into ``agent`` (whose envs are
    not made yet); returns the statistics for the peer."""
    from agents.trpo import TRPO

    trained = TRPO.load(checkpoint, env=agent.config.env_id)  # another env's: refused
    for mine, theirs in zip(agent.policy.trainable_variables + agent.value.trainable_variables,
                            trained.policy.trainable_variables + trained.value.trainable_variables,
                            strict=True):
        mine.assign(theirs)
    agent.obs_rms.load_state(trained.obs_rms.state())
    rewards = trained.reward_scaler.state()
    agent.reward_scaler.load_state({**rewards, "returns": np.zeros_like(rewards["returns"])})
    out = {}
    for key, rms in (("obs", agent.obs_rms), ("ret", agent.reward_scaler.rms)):
        out.update({f"start_{key}_mean": rms.mean, f"start_{key}_var": rms.var,
                    f"start_{key}_count": rms.count})
    return out


def natgrad_side(env_id: str, checkpoint: str | None = None) -> tuple[dict, dict]:
    """``(weights and actions for the peer, natgrad's rollout quantities)``, from fresh
    networks or ``checkpoint``'s trained state."""
    from agents.trpo import TRPO

    agent = TRPO(env_id, seed=SEED)
    start = {} if checkpoint is None else start_from(agent, checkpoint)
    cfg = agent.config
    worker = agent.worker
    rollout = worker.collect(agent.policy.numpy_params(), cfg.n_steps, agent.rng)
    values, advantages, returns = agent.estimate_advantages(rollout)
    next_values = agent.value.numpy_values(
        agent.value.numpy_params(),
        rollout.bootstrap_obs.reshape(-1, rollout.bootstrap_obs.shape[-1])).reshape(values.shape)
    # sb3-contrib's reward for a truncated step carries the bootstrap; a terminal one does not.
    bootstrapped = rollout.train_rewards + cfg.gamma * (rollout.truncated
                                                        & ~rollout.terminated) * next_values
    for_peer = {**mlp_weights(agent.policy.trunk, "policy_"),
                **mlp_weights(agent.value.trunk, "value_"),
                "log_std": agent.policy.head.log_std.numpy(), "actions": rollout.actions,
                **start}
    ours = {"obs": rollout.obs, "values": values, "rewards": bootstrapped,
            "advantages": advantages, "returns": returns,
            "episode_ends": {"terminated": int(rollout.terminated.sum()),
                             "truncated": int(rollout.truncated.sum())}}
    if agent.obs_rms is not None:
        ours.update(obs_mean=agent.obs_rms.mean, obs_var=agent.obs_rms.var)
    if agent.reward_scaler is not None:
        ours["ret_var"] = np.asarray(agent.reward_scaler.rms.var)
    worker.envs.close()
    return for_peer, ours


def check(env_id: str, peer_python: str, work: Path, checkpoint: str | None = None) -> dict:
    for_peer, ours = natgrad_side(env_id, checkpoint)
    data_file, out_file = work / f"{env_id}_rollout.npz", work / f"{env_id}_sb3.npz"
    np.savez(data_file, **for_peer)
    run_peer(peer_python, __file__, str(data_file), str(out_file), env_id)
    theirs = dict(np.load(out_file))
    report = {"env_id": env_id, "checkpoint": checkpoint, "batch": list(np.shape(ours["values"])),
              "episode_ends": ours["episode_ends"], "max_relative_difference": {}}
    for key, value in ours.items():
        if key == "episode_ends":
            continue
        a = np.asarray(value, np.float64)
        b = np.asarray(theirs[key], np.float64).reshape(a.shape)
        report["max_relative_difference"][key] = float(
            np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))
    return report


def describe(report: dict) -> list[str]:
    ends = report["episode_ends"]
    start = "" if report.get("checkpoint") is None else f" from {report['checkpoint']}"
    lines = [f"{report['env_id']}{start}: batch {report['batch']}, {ends['terminated']} "
             f"terminated and {ends['truncated']} truncated episodes; largest |natgrad - sb3| / "
             "max |sb3|:"]
    lines += [f"  {key:<11} {diff:.2e}"
              for key, diff in report["max_relative_difference"].items()]
    return lines


def main(argv=None) -> int:
    return check_main(argv, doc=__doc__, envs=["Hopper-v5", "HalfCheetah-v5"],
                      out=lambda checkpoint: ("bench_results/sb3_rollout_check.json"
                                              if checkpoint is None else
                                              "bench_results/sb3_rollout_check_trained.json"),
                      peer_metavar=("DATA", "OUT", "ENV_ID"), peer_side=peer_side, check=check,
                      describe=describe,
                      options={"--checkpoint": {"help": "start both sides from this natgrad "
                                                        "checkpoint's trained state"}})


if __name__ == "__main__":
    sys.exit(main())
