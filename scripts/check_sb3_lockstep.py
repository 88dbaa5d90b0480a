"""natgrad's TRPO and sb3-contrib's, update after update on the same batches.

``check_sb3_rollout.py``, ``check_sb3_step.py`` and ``check_sb3_value_fit.py`` each compare one
piece once, from fresh networks. This one runs ``UPDATES`` whole updates: natgrad trains from
an env's preset (seed 0; with sb3-contrib's trust region in natgrad's units,
``max_kl = target_kl·D`` and ``cg_damping = 0.1·D``, as the presets but InvertedPendulum's
set it) and records every batch it collects (normalized observations, actions,
scaled rewards, episode ends, the observations it bootstraps from), the minibatch order of
each value fit, and its weights after each update. sb3-contrib (``--peer-side``, under
``--peer-python``: CPU torch, the RL Zoo settings of ``scripts/sb3_peer.py``, nothing from
natgrad) starts from natgrad's initial weights and replays those batches through its own
``RolloutBuffer`` (its own values and log-probabilities, ``γ·V(final obs)`` on a truncated
step's reward, its own GAE) and its own ``train`` (policy step, then the value fit with the
same minibatch order and an Adam that carries over from update to update). Both sides
therefore keep their own state; only the data is shared.

After each update it prints how far the two sides' weights are apart (relative to natgrad's)
and each side's log σ. If the two pipelines agree, the gap stays at float32 level for many
updates and then grows (any gap grows once it feeds the next update's values and steps); a
difference in the update itself would show as a drift in σ from the first updates on.

Usage::

    python scripts/check_sb3_lockstep.py --peer-python .venv-sb3/bin/python --envs Swimmer-v5
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also under -m
from peer_check import (  # noqa: E402
    check_main,
    flat,
    force_sb3_permutations,
    mlp_weights,
    peer_model,
    run_peer,
    sb3_trust_region,
    sb3_weights,
)

UPDATES = 30
BATCH_KEYS = ("obs", "actions", "rewards", "terminated", "truncated", "bootstrap_obs", "order",
              "advantages")


def all_weights(policy_layers: dict, value_layers: dict, log_std) -> dict:
    return {**{f"policy_{k}": v for k, v in policy_layers.items()},
            **{f"value_{k}": v for k, v in value_layers.items()}, "log_std": np.array(log_std)}


def natgrad_side(env_id: str) -> dict:
    """natgrad's ``UPDATES`` updates: initial weights, every batch, weights after each."""
    import gymnasium as gym

    from agents.trpo import TRPO

    env = gym.make(env_id)
    action_dim = int(np.prod(env.action_space.shape))
    env.close()
    # sb3-contrib's trust region in natgrad's units (the preset's, except InvertedPendulum's),
    # and the one-graph update, ``both``.
    agent = TRPO(env_id, seed=0, overlap_value_fit=False,
                 **sb3_trust_region(env_id, action_dim))

    def weights():
        return all_weights(mlp_weights(agent.policy.trunk), mlp_weights(agent.value.trunk),
                           agent.policy.head.log_std.numpy())

    data = {f"init_{k}": v for k, v in weights().items()}
    batches = []
    worker, both = agent.worker, agent.update_fns.both
    collect = worker.collect

    def recording_collect(*args, **kwargs):
        rollout = collect(*args, **kwargs)
        batches.append({"obs": rollout.obs, "actions": rollout.actions,
                        "rewards": rollout.train_rewards, "terminated": rollout.terminated,
                        "truncated": rollout.truncated, "bootstrap_obs": rollout.bootstrap_obs})
        return rollout

    def recording_both(obs, actions, advantages, returns, order):
        batches[-1].update(advantages=np.asarray(advantages), order=np.asarray(order))
        return both(obs, actions, advantages, returns, order)

    worker.collect = recording_collect
    agent.update_fns = agent.update_fns._replace(both=recording_both)
    for k in range(UPDATES):
        agent.learn((k + 1) * agent.config.batch_size)
        data.update({f"after{k}_{name}": v for name, v in weights().items()})
        data.update({f"batch{k}_{name}": batches[k][name] for name in BATCH_KEYS})
    worker.envs.close()
    return data


def peer_side(data_file: str, out_file: str, env_id: str) -> int:
    """sb3-contrib's updates on natgrad's batches (runs in the peer interpreter)."""
    import torch as th

    data = np.load(data_file)
    n_steps, n_envs = data["batch0_rewards"].shape
    model = peer_model(env_id, data, {"policy": "init_policy_", "value": "init_value_"},
                       "init_log_std", n_envs=n_envs, seed=0, normalize=False)
    policy = model.policy
    updates = sum(1 for name in data.files if name.endswith("_order"))
    out, previous_done = {}, np.ones(n_envs, np.float32)  # the first batch starts episodes
    for k in range(updates):
        batch = {name: data[f"batch{k}_{name}"] for name in BATCH_KEYS}
        done = (batch["terminated"] | batch["truncated"]).astype(np.float32)
        buffer = model.rollout_buffer
        buffer.reset()
        with th.no_grad():
            for t in range(n_steps):
                values, log_prob, _ = policy.evaluate_actions(th.as_tensor(batch["obs"][t]),
                                                              th.as_tensor(batch["actions"][t]))
                rewards = batch["rewards"][t].astype(np.float32)
                cut = batch["truncated"][t] & ~batch["terminated"][t]  # sb3-contrib's bootstrap
                if cut.any():
                    final = policy.predict_values(th.as_tensor(batch["bootstrap_obs"][t]))
                    rewards = rewards + model.gamma * cut * final.numpy()[:, 0]
                buffer.add(batch["obs"][t], batch["actions"][t], rewards,
                           previous_done if t == 0 else done[t - 1], values, log_prob)
            last = policy.predict_values(th.as_tensor(batch["bootstrap_obs"][-1]))
        buffer.compute_returns_and_advantage(last_values=last, dones=done[-1])
        previous_done = done[-1]
        advantages = buffer.advantages.reshape(-1).copy()  # [T, E] time-major, as natgrad's
        # natgrad's minibatch index is t·E + e; sb3-contrib's (env-major) e·T + t.
        force_sb3_permutations([np.arange(n_steps * n_envs),
                                *[(o % n_envs) * n_steps + o // n_envs for o in batch["order"]]])
        model._current_progress_remaining = 1.0  # noqa: SLF001 (see peer_check.train_on_batch)
        model.train()
        weights = all_weights(sb3_weights(policy, "policy"), sb3_weights(policy, "value"),
                              policy.log_std.detach().numpy().copy())
        out.update({f"after{k}_{name}": v for name, v in weights.items()})
        out[f"advantages{k}"] = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
    np.savez(out_file, **out)
    return 0


def _gap(ours: dict, sb3: dict, prefix: str) -> float:
    """``|ours − sb3| / |ours|`` over the weights whose names start with ``prefix``."""
    a = flat({n: v for n, v in ours.items() if n.startswith(prefix)})
    b = flat({n: v for n, v in sb3.items() if n.startswith(prefix)})
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def check(env_id: str, peer_python: str, work: Path) -> dict:
    data = natgrad_side(env_id)
    data_file, out_file = work / f"{env_id}_lockstep.npz", work / f"{env_id}_lockstep_sb3.npz"
    np.savez(data_file, **data)
    run_peer(peer_python, __file__, str(data_file), str(out_file), env_id)
    theirs = dict(np.load(out_file))
    rows = []
    for k in range(UPDATES):
        ours = {name[len(f"after{k}_"):]: v for name, v in data.items()
                if name.startswith(f"after{k}_")}
        sb3 = {name[len(f"after{k}_"):]: v for name, v in theirs.items()
               if name.startswith(f"after{k}_")}

        rows.append({"update": k + 1, "policy_gap": _gap(ours, sb3, "policy_"),
                     "value_gap": _gap(ours, sb3, "value_"),
                     "advantages_max_difference": float(np.max(np.abs(
                         theirs[f"advantages{k}"] - data[f"batch{k}_advantages"]))),
                     "log_std_natgrad": ours["log_std"].tolist(),
                     "log_std_sb3": sb3["log_std"].tolist()})
    return {"env_id": env_id, "updates": rows}


def describe(report: dict) -> list[str]:
    lines = [f"{report['env_id']}: |natgrad - sb3| / |natgrad| after each update on natgrad's "
             "batches", f"  {'update':>6} {'policy':>9} {'value':>9} {'max |ΔÂ|':>9}  "
                         "log σ natgrad / sb3-contrib"]
    for r in report["updates"]:
        ours = " ".join(f"{x:+.4f}" for x in r["log_std_natgrad"])
        sb3 = " ".join(f"{x:+.4f}" for x in r["log_std_sb3"])
        lines.append(f"  {r['update']:>6} {r['policy_gap']:>9.2e} {r['value_gap']:>9.2e} "
                     f"{r['advantages_max_difference']:>9.2e}  {ours} / {sb3}")
    return lines


def main(argv=None) -> int:
    return check_main(argv, doc=__doc__, envs=["Swimmer-v5"],
                      out="bench_results/sb3_lockstep_check.json",
                      peer_metavar=("DATA", "OUT", "ENV_ID"), peer_side=peer_side, check=check,
                      describe=describe)


if __name__ == "__main__":
    sys.exit(main())
