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
from peer_check import (  # noqa: E402
    check_main,
    flat,
    mlp_weights,
    peer_model,
    run_peer,
    sb3_weights,
    train_on_batch,
)

BATCH = 2048


def peer_side(batch_file: str, out_file: str, env_id: str) -> int:
    """sb3-contrib's step on the saved weights and batch (runs in the peer interpreter)."""
    data = np.load(batch_file)
    n = len(data["obs"])
    model = peer_model(env_id, data, {"policy": ""}, n_envs=1, seed=0, normalize=False,
                       n_steps=n, batch_size=n, n_critic_updates=1,
                       normalize_advantage=False)  # advantages come standardized
    train_on_batch(model, data)
    out = sb3_weights(model.policy, "policy")
    out["log_std"] = model.policy.log_std.detach().numpy()
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
        report["variants"][name] = compare_steps(step, sb3_step)
    return report


def compare_steps(step: np.ndarray, sb3_step: np.ndarray) -> dict:
    """natgrad's step against sb3-contrib's, both flat: how far apart relative to sb3-contrib's
    length, the cosine between them, and the ratio of their lengths."""
    norm = np.linalg.norm(sb3_step)
    return {"relative_difference": float(np.linalg.norm(step - sb3_step) / norm),
            "cosine": float(step @ sb3_step / np.linalg.norm(step) / norm),
            "step_norm_ratio": float(np.linalg.norm(step) / norm)}


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
