"""Returns of a saved TRPO policy on a MuJoCo env, and the torso angle each episode ends at.

HalfCheetah has a known local optimum: running on its back. A policy that learned it flips
over early in an episode and then runs; with the flip made only by the exploration noise, its
deterministic (mean-action) episodes stay upright and go nowhere. This script shows which:
for each mode it runs ``--episodes`` episodes on a fresh env seeded ``--seed + i`` and prints
the return and the final torso angle (``qpos[2]``; |angle| ≈ π is upside down).

Modes: ``deterministic`` (the mean action, as the agent's evaluation), and ``noise=S``: the
mean plus ``S·σ·ε`` with the policy's own ``σ`` (``noise=1`` is the training policy), drawn
from a generator seeded ``--seed``. Actions are clipped to the action space, as in training.

Usage::

    python scripts/eval_posture.py RUN_DIR [--seed 10017] [--noise 1 0.3]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np


def episode(agent, env, seed: int, noise: float, rng: np.random.Generator) -> tuple[float, float]:
    """``(return, final torso angle)`` of one episode."""
    obs, _ = env.reset(seed=seed)
    total, done = 0.0, False
    sigma = np.exp(agent.policy.head.log_std.numpy())
    low, high = env.action_space.low, env.action_space.high
    while not done:
        action = agent.predict(obs, deterministic=True)
        if noise:
            action = action + noise * sigma * rng.standard_normal(action.shape)
        obs, reward, terminated, truncated, _ = env.step(np.clip(action, low, high))
        total += float(reward)
        done = terminated or truncated
    return total, float(env.unwrapped.data.qpos[2])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory (its newest checkpoint is used)")
    parser.add_argument("--seed", type=int, default=None,
                        help="first episode's env seed (default: the run's eval seed)")
    parser.add_argument("--episodes", type=int, default=6)
    parser.add_argument("--noise", type=float, nargs="*", default=[1.0, 0.3])
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import gymnasium as gym

    from agents import TRPO
    from agents.runs.checkpoint import latest_checkpoint
    from agents.runs.evaluation import EVAL_SEED_OFFSET

    path = latest_checkpoint(args.run_dir)
    agent = TRPO.load(path, run_dir=args.run_dir)
    seed = agent.config.seed + EVAL_SEED_OFFSET if args.seed is None else args.seed
    env = gym.make(agent.config.env_id)
    print(f"{path} ({agent.num_timesteps:,} steps), episodes seeded from {seed}")
    for noise in [0.0, *args.noise]:
        rng = np.random.default_rng(seed)
        results = [episode(agent, env, seed + i, noise, rng) for i in range(args.episodes)]
        name = "deterministic" if noise == 0 else f"noise={noise:g}"
        print(f"  {name:<14} returns {[round(r) for r, _ in results]}, final angle "
              f"{[round(a, 1) for _, a in results]}")
    env.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
