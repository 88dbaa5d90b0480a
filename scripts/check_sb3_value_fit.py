"""natgrad's TRPO value fit against sb3-contrib's, on the same weights, batch and minibatches.

The natgrad side builds the agent of an env's preset, collects one batch with its own rollout
worker (normalized observations) and computes the value targets with the agent's own code
(:meth:`agents.trpo.TRPO.estimate_advantages`); it draws the minibatch order of every epoch,
saves weights, batch and order to a file and runs this script again under ``--peer-python``
(``--peer-side``: sb3-contrib, CPU torch, nothing from natgrad), which loads them into
sb3-contrib's ``TRPO`` with the RL Zoo settings of ``scripts/sb3_peer.py`` (20 critic epochs of
minibatch 128, Adam with learning rate 1e-3 and ε 1e-5) and runs its ``train``, whose
minibatches are made to follow the saved order. Then natgrad runs its compiled value fit
(``update_fns.value``) on the same input, and the two value networks are compared: their
weights (relative to the size of sb3-contrib's change) and their predictions on the batch
(relative to the targets' spread).

The two are not expected to agree to the last digit: both compute in float32, in different
orders, over 320 Adam steps, and Keras' Adam adds ε to ``sqrt(v)`` where torch's adds it to
``sqrt(v / (1 − β₂ᵗ))``, so in a fresh optimizer's first steps Keras' ε is effectively
``ε / sqrt(1 − β₂ᵗ)`` (~32 ε at step 1, ~1.9 ε at step 320, ε once ``t`` is in the thousands).

Usage::

    python scripts/check_sb3_value_fit.py --peer-python .venv-sb3/bin/python --envs Hopper-v5
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
    sb3_weights,
    train_on_batch,
)

SEED = 0


def peer_side(data_file: str, out_file: str, env_id: str) -> int:
    """sb3-contrib's value fit on the saved weights, batch and order (the peer interpreter)."""
    import torch as th

    data = np.load(data_file)
    n, epochs = len(data["obs"]), len(data["order"])
    model = peer_model(env_id, data, {"policy": "policy_", "value": "value_"}, n_envs=1,
                       seed=SEED, normalize=False, n_steps=n, n_critic_updates=epochs)
    policy = model.policy
    force_sb3_permutations([np.arange(n), *data["order"]])  # the saved order of each epoch
    train_on_batch(model, data)
    out = sb3_weights(policy, "value")
    with th.no_grad():
        out["predictions"] = policy.predict_values(th.as_tensor(data["obs"])).numpy()[:, 0]
    np.savez(out_file, **out)
    return 0


def check(env_id: str, peer_python: str, work: Path) -> dict:
    from agents.envs.spaces import flatten_time
    from agents.trpo import TRPO

    agent = TRPO(env_id, seed=SEED)
    cfg = agent.config
    rng = np.random.default_rng(SEED)
    rollout = agent.worker.collect(agent.policy.numpy_params(), cfg.n_steps, rng)
    _, advantages, returns = agent.estimate_advantages(rollout)
    obs = flatten_time(rollout.obs).astype(np.float32)
    returns = flatten_time(returns).astype(np.float32)
    advantages = flatten_time(advantages).astype(np.float32)
    actions = flatten_time(rollout.actions).astype(np.float32)
    order = np.stack([rng.permutation(len(obs)) for _ in range(cfg.critic_epochs)])
    start = mlp_weights(agent.value.trunk)
    data = {**mlp_weights(agent.policy.trunk, "policy_"),
            **mlp_weights(agent.value.trunk, "value_"),
            "log_std": agent.policy.head.log_std.numpy(), "obs": obs, "actions": actions,
            "advantages": advantages, "returns": returns, "order": order}
    data_file, out_file = work / f"{env_id}_value.npz", work / f"{env_id}_value_sb3.npz"
    np.savez(data_file, **data)
    run_peer(peer_python, __file__, str(data_file), str(out_file), env_id)
    sb3 = dict(np.load(out_file))
    sb3_predictions = sb3.pop("predictions")
    stats = agent.update_fns.value(obs, returns, order.astype(np.int32))
    predictions = agent.value.numpy_values(agent.value.numpy_params(), obs)
    sb3_change = flat(sb3) - flat(start)
    natgrad_change = flat(mlp_weights(agent.value.trunk)) - flat(start)
    spread = float(np.std(returns))
    return {
        "env_id": env_id, "batch": len(obs), "epochs": cfg.critic_epochs,
        "minibatch": cfg.critic_batch_size, "returns_std": spread,
        "value_loss": float(stats["value_loss"]),
        "weights_relative_difference": float(
            np.linalg.norm(natgrad_change - sb3_change) / np.linalg.norm(sb3_change)),
        "weights_change_cosine": float(
            natgrad_change @ sb3_change
            / np.linalg.norm(natgrad_change) / np.linalg.norm(sb3_change)),
        "predictions_max_difference_over_returns_std": float(
            np.max(np.abs(predictions - sb3_predictions)) / spread),
    }


def describe(report: dict) -> list[str]:
    return [f"{report['env_id']}: {report['epochs']} epochs of minibatch {report['minibatch']} on "
            f"{report['batch']} samples (returns' std {report['returns_std']:.3g}, final value "
            f"loss {report['value_loss']:.3g})",
            f"  weights |natgrad - sb3| / |sb3's change| = "
            f"{report['weights_relative_difference']:.2e}, cosine of the changes "
            f"{report['weights_change_cosine']:.6f}",
            f"  predictions max |natgrad - sb3| / std(returns) = "
            f"{report['predictions_max_difference_over_returns_std']:.2e}"]


def main(argv=None) -> int:
    return check_main(argv, doc=__doc__,
                      envs=["Hopper-v5", "HalfCheetah-v5", "Swimmer-v5", "InvertedPendulum-v5"],
                      out="bench_results/sb3_value_fit_check.json",
                      peer_metavar=("DATA", "OUT", "ENV_ID"), peer_side=peer_side, check=check,
                      describe=describe)


if __name__ == "__main__":
    sys.exit(main())
