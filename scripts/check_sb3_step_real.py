"""natgrad's TRPO policy step against sb3-contrib's on real batches, late in a run.

``scripts/check_sb3_step.py`` compares the two steps on random observations and advantages at
a fresh policy. This one takes them from a natgrad run: for each checkpoint asked for, it
loads the agent (weights, normalizers, envs), collects the next batch with the agent's own
rollout worker, computes its advantages with the agent's own code (GAE, standardized), and
hands weights and batch to sb3-contrib's policy step (``check_sb3_step.peer_side``, under
``--peer-python``) and to natgrad's, both with sb3-contrib's trust region in each one's units
(natgrad: ``max_kl = target_kl·D``, ``cg_damping = 0.1·D``). Late in a run σ is small, the
Fisher ill-conditioned and 25 CG iterations in float32 end far from converged on both sides,
so the two directions drift apart there; the table shows by how much, and how each moves log σ.
Where the full step's KL is near the bound, the two line searches can also part: natgrad
measures ``KL(π_old‖π_new)`` (the TRPO paper's), sb3-contrib ``KL(π_new‖π_old)``, which is the
smaller of the two for a step that narrows σ, so natgrad may take the 0.8 step where
sb3-contrib takes the full one (``|Δ|/|Δ sb3|`` 0.8).

Usage::

    python scripts/check_sb3_step_real.py --peer-python .venv-sb3/bin/python \\
        --run bench_results/.../runs/InvertedPendulum-v5-seed0/natgrad --updates 50 100 250
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also under -m
import bench_common  # noqa: E402
import check_sb3_step  # noqa: E402
from peer_check import (  # noqa: E402
    add_peer_python,
    flat,
    require_peer_python,
    run_peer,
    sb3_trust_region,
)


def real_batch(checkpoint: Path) -> tuple[str, dict]:
    """``(env_id, data)``: the agent of ``checkpoint``'s weights and its next batch, as
    ``check_sb3_step`` saves them."""
    from agents.rollout import flatten_time, normalize_advantages
    from agents.trpo import TRPO

    agent = TRPO.load(checkpoint)
    cfg = agent.config
    rollout = agent.worker.collect(agent.policy.numpy_params(), cfg.n_steps, agent.rng,
                                   first_step=agent.num_timesteps)
    _, advantages, _ = agent.estimate_advantages(rollout)
    data = {**check_sb3_step.natgrad_weights(agent),
            "obs": flatten_time(rollout.obs).astype(np.float32),
            "actions": flatten_time(rollout.actions).astype(np.float32),
            "advantages": flatten_time(normalize_advantages(advantages)).astype(np.float32)}
    return cfg.env_id, data


def check(checkpoint: Path, peer_python: str, work: Path) -> dict:
    env_id, data = real_batch(checkpoint)
    overrides = sb3_trust_region(env_id, data["actions"].shape[1])
    batch_file, out_file = work / f"{checkpoint.stem}_batch.npz", work / f"{checkpoint.stem}.npz"
    np.savez(batch_file, **data)
    run_peer(peer_python, check_sb3_step.__file__, str(batch_file), str(out_file), env_id)
    start = flat({k: v for k, v in data.items() if k not in ("obs", "actions", "advantages")})
    sb3_weights = dict(np.load(out_file))
    natgrad_weights = check_sb3_step.natgrad_step(env_id, data, **overrides)
    sb3_step = flat(sb3_weights) - start
    return {"checkpoint": str(checkpoint), "env_id": env_id, "natgrad_overrides": overrides,
            "log_std": float(np.mean(data["log_std"])),
            "sb3_step_norm": float(np.linalg.norm(sb3_step)),
            **check_sb3_step.compare_steps(flat(natgrad_weights) - start, sb3_step),
            "log_std_change_sb3": float(np.mean(sb3_weights["log_std"] - data["log_std"])),
            "log_std_change_natgrad": float(np.mean(natgrad_weights["log_std"]
                                                    - data["log_std"]))}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a natgrad run directory")
    parser.add_argument("--updates", nargs="+", type=int, required=True,
                        help="checkpoints (update numbers) to take batches at")
    add_peer_python(parser)
    parser.add_argument("--out", default="bench_results/sb3_step_check_real.json")
    args = parser.parse_args(argv)
    require_peer_python(parser, args.peer_python)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    checkpoints = [Path(args.run) / "checkpoints" / f"update_{u:06d}.ckpt" for u in args.updates]
    missing = [str(c) for c in checkpoints if not c.is_file()]
    if missing:
        parser.error(f"no such checkpoint: {', '.join(missing)}")
    print(f"{'update':>7} {'mean log σ':>10} {'|Δ sb3|':>9} {'rel. diff':>9} {'cosine':>8} "
          f"{'|Δ|/|Δ sb3|':>11} {'Δlog σ sb3':>11} {'natgrad':>9}")
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for update, checkpoint in zip(args.updates, checkpoints, strict=True):
            r = check(checkpoint, args.peer_python, Path(work))
            reports.append({"update": update, **r})
            print(f"{update:>7} {r['log_std']:>10.3f} {r['sb3_step_norm']:>9.4g} "
                  f"{r['relative_difference']:>9.2e} {r['cosine']:>8.5f} "
                  f"{r['step_norm_ratio']:>11.4f} {r['log_std_change_sb3']:>11.5f} "
                  f"{r['log_std_change_natgrad']:>9.5f}", flush=True)
    bench_common.write_json(args.out, reports)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
