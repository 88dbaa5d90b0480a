"""natgrad's TRPO policy step against sb3-contrib's, on the same weights and the same batch.

The natgrad side builds the agent of an env's preset and a batch (random observations,
actions sampled from the policy, standardized random advantages), saves both to a file and
runs this script again under ``--peer-python`` (``--peer-side``: sb3-contrib, CPU torch,
nothing from natgrad), which loads them into sb3-contrib's ``TRPO`` with the RL Zoo settings
of ``scripts/sb3_peer.py`` and takes its policy step. Then natgrad takes its step, once with
the preset's ``max_kl``/``cg_damping`` and once with sb3-contrib's numbers unconverted, and
prints how far each lands from sb3-contrib's new weights (relative to sb3-contrib's step).

sb3-contrib averages its KL over the ``D`` action dimensions; natgrad's is the joint KL, so
the preset takes ``max_kl = target_kl·D`` and ``cg_damping = 0.1·D``: this checks that those
give sb3-contrib's step (both sides compute in float32, so agreement is to ~1e-4, not 1e-15).

Usage::

    python scripts/check_sb3_step.py --peer-python .venv-sb3/bin/python --envs Hopper-v5
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also under -m
import sb3_peer  # noqa: E402
from peer_check import (  # noqa: E402
    check_main,
    flat,
    load_sb3_weights,
    mlp_weights,
    run_peer,
    sb3_layers,
)

BATCH = 2048


def peer_side(batch_file: str, out_file: str, env_id: str) -> int:
    """sb3-contrib's step on the saved weights and batch (runs in the peer interpreter)."""
    import torch as th
    from stable_baselines3.common.logger import configure

    th.set_num_threads(1)
    data = np.load(batch_file)
    n = len(data["obs"])
    model = sb3_peer.make_model(env_id, n_envs=1, seed=0, normalize=False, n_steps=n,
                                batch_size=n, n_critic_updates=1,
                                normalize_advantage=False)  # advantages come standardized
    model.set_logger(configure(None, [""]))
    policy = model.policy
    layers = sb3_layers(policy, "policy")
    load_sb3_weights(policy, "policy", data)
    with th.no_grad():
        policy.log_std.copy_(th.as_tensor(data["log_std"]))
        obs = th.as_tensor(data["obs"])
        actions = th.as_tensor(data["actions"])
        _, log_prob, _ = policy.evaluate_actions(obs, actions)
    buffer = model.rollout_buffer
    buffer.reset()
    buffer.observations[:, 0] = data["obs"]
    buffer.actions[:, 0] = data["actions"]
    buffer.advantages[:, 0] = data["advantages"]
    buffer.log_probs[:, 0] = log_prob.numpy()
    buffer.pos, buffer.full = n, True
    # sb3-contrib has no public call that takes one policy step on a given batch; train()
    # does, and reads the learning-rate schedule's progress, which learn() would have set.
    model._current_progress_remaining = 1.0  # noqa: SLF001
    model.train()
    out = {f"kernel_{i}": layer.weight.detach().numpy().T for i, layer in enumerate(layers)}
    out.update({f"bias_{i}": layer.bias.detach().numpy() for i, layer in enumerate(layers)})
    out["log_std"] = policy.log_std.detach().numpy()
    np.savez(out_file, **out)
    return 0


def natgrad_weights(agent) -> dict:
    return {**mlp_weights(agent.policy.trunk), "log_std": agent.policy.head.log_std.numpy()}


def natgrad_step(env_id: str, data: dict, **overrides) -> dict:
    """natgrad's new policy weights after one policy step from ``data``'s weights and batch."""
    from agents.trpo import TRPO

    agent = TRPO(env_id, seed=0, normalize_advantages=False, **overrides)
    net = agent.policy.trunk
    for i, (w, b) in enumerate(zip(net.kernels, net.biases, strict=True)):
        w.assign(data[f"kernel_{i}"])
        b.assign(data[f"bias_{i}"])
    agent.policy.head.log_std.assign(data["log_std"])
    agent.update_fns.policy(data["obs"], data["actions"], data["advantages"])
    return natgrad_weights(agent)


def check(env_id: str, peer_python: str, work: Path) -> dict:
    from agents.config import resolve_config
    from agents.trpo import TRPO

    cfg = resolve_config(env_id)
    agent = TRPO(env_id, seed=0)
    rng = np.random.default_rng(0)
    obs_dim = agent.encoder.vector_dim
    obs = rng.standard_normal((BATCH, obs_dim)).astype(np.float32)
    actions = agent.policy.numpy_act(agent.policy.numpy_params(), obs, rng).astype(np.float32)
    advantages = rng.standard_normal(BATCH)
    advantages = ((advantages - advantages.mean()) / advantages.std()).astype(np.float32)
    data = {**natgrad_weights(agent), "obs": obs, "actions": actions, "advantages": advantages}
    batch_file, out_file = work / f"{env_id}_batch.npz", work / f"{env_id}_sb3.npz"
    np.savez(batch_file, **data)
    run_peer(peer_python, __file__, str(batch_file), str(out_file), env_id)
    start = flat({k: data[k] for k in natgrad_weights(agent)})
    sb3_step = flat(dict(np.load(out_file))) - start
    action_dim = actions.shape[1]
    variants = {
        f"preset (max_kl {cfg.max_kl:g}, cg_damping {cfg.cg_damping:g})": {},
        f"sb3's numbers unconverted (max_kl {cfg.max_kl / action_dim:g}, cg_damping "
        f"{cfg.cg_damping / action_dim:g})": {"max_kl": cfg.max_kl / action_dim,
                                             "cg_damping": cfg.cg_damping / action_dim},
    }
    report = {"env_id": env_id, "action_dim": action_dim, "sb3_step_norm":
              float(np.linalg.norm(sb3_step)), "variants": {}}
    for name, overrides in variants.items():
        step = flat(natgrad_step(env_id, data, **overrides)) - start
        report["variants"][name] = {
            "relative_difference": float(np.linalg.norm(step - sb3_step)
                                         / np.linalg.norm(sb3_step)),
            "cosine": float(step @ sb3_step / np.linalg.norm(step) / np.linalg.norm(sb3_step)),
            "step_norm_ratio": float(np.linalg.norm(step) / np.linalg.norm(sb3_step))}
    return report


def describe(report: dict) -> list[str]:
    lines = [f"{report['env_id']} (D = {report['action_dim']}), |sb3 step| = "
             f"{report['sb3_step_norm']:.4g}"]
    for name, r in report["variants"].items():
        lines.append(f"  natgrad {name}: |Δ - Δ_sb3| / |Δ_sb3| = "
                     f"{r['relative_difference']:.2e}, cosine {r['cosine']:.6f}, "
                     f"|Δ| / |Δ_sb3| = {r['step_norm_ratio']:.4f}")
    return lines


def main(argv=None) -> int:
    return check_main(argv, doc=__doc__, envs=["Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"],
                      out="bench_results/sb3_step_check.json",
                      peer_metavar=("BATCH", "OUT", "ENV_ID"), peer_side=peer_side, check=check,
                      describe=describe)


if __name__ == "__main__":
    sys.exit(main())
