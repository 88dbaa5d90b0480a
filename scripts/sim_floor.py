"""The physical floor of an RL run: the bare simulator, stepped as cheaply as Python can.

The same env (``gymnasium.make(ENV)``, the same number of copies a run uses) stepped in a
plain loop with random actions for the same number of env steps, each copy reset when its
episode ends. No vector env, no policy, no learner, no normalizer: no RL library can collect
those steps faster in one process, so ``whole run time / floor time`` is what the library
costs on top of the simulator (``scripts/bench_trpo.py --floor`` reports it).

Prints one JSON line prefixed ``FLOOR_RESULT`` (loop seconds, episodes, steps).

Usage::

    python scripts/sim_floor.py Hopper-v5 --steps 1000000 --n-envs 2
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402


def step_floor(env_id: str, steps: int, n_envs: int, seed: int = 0) -> dict:
    """Steps ``n_envs`` copies of ``env_id`` round-robin with random actions until ``steps``
    env steps in all are taken; returns the loop's seconds and counts."""
    import gymnasium as gym

    envs = [gym.make(env_id) for _ in range(n_envs)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
    episodes, taken = 0, 0
    start = time.perf_counter()
    while taken < steps:
        for env in envs:
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
                episodes += 1
        taken += n_envs
    seconds = time.perf_counter() - start
    for env in envs:
        env.close()
    return {"env_id": env_id, "steps": taken, "n_envs": n_envs, "episodes": episodes,
            "loop_seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env_id")
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--n-envs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.n_envs < 1:
        parser.error("--steps and --n-envs must be >= 1")
    result = step_floor(args.env_id, args.steps, args.n_envs, args.seed)
    result["process_seconds_in_child"] = time.perf_counter() - PROCESS_START
    print("FLOOR_RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
