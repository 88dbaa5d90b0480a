"""The policy's σ and training return through a run, natgrad's TRPO beside sb3-contrib's.

For each env and seed, natgrad's TRPO trains ``--steps`` steps in this process (the env's
preset, updated by ``--set``) while sb3-contrib's trains the same steps in a second process
under ``--peer-python`` (``--peer-side``: CPU torch, the RL Zoo settings of
``scripts/sb3_peer.py``, nothing from natgrad), so the two share the machine's 2 cores. After
every update each side records its Gaussian policy's σ (the geometric mean over the action
dimensions, ``exp(mean log σ)``) and the mean return of its last 20 finished training
episodes (stochastic actions, unnormalized rewards). The table shows both every ``--every``
steps; the JSON holds every update.

What it is for: a solved task whose policy keeps narrowing (σ falls) until the balance is lost
is TRPO's own behaviour if sb3-contrib's σ falls the same way on the same seeds. Compare the
trust regions like with like: sb3-contrib's ``target_kl`` is ``max_kl / D`` (see
``agents/presets.toml``), e.g. ``--set max_kl=0.01`` on InvertedPendulum-v5 (``D = 1``)
against the Zoo's 0.01.

Usage::

    python scripts/trace_sigma.py --peer-python .venv-sb3/bin/python \\
        --envs InvertedPendulum-v5 --seeds 3 --steps 300000 --set max_kl=0.01
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # siblings, also under -m
import bench_common  # noqa: E402
import sb3_peer  # noqa: E402
from peer_check import add_peer_python, require_peer_python  # noqa: E402

RECENT_EPISODES = 20  # natgrad's progress.csv mean_return: its last 20 finished episodes
HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def peer_side(env_id: str, seed: str, steps: str, out_file: str) -> int:
    """sb3-contrib's run, σ and recent return after every update (runs in the peer
    interpreter)."""
    import torch as th
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import configure

    th.set_num_threads(1)
    rows = []

    class Trace(BaseCallback):
        def _on_rollout_start(self) -> None:  # after the previous update's train()
            if self.model.num_timesteps:
                self._record()

        def _on_training_end(self) -> None:
            self._record()

        def _on_step(self) -> bool:
            return True

        def _record(self) -> None:
            episodes = list(self.model.ep_info_buffer)[-RECENT_EPISODES:]
            rows.append({"env_steps": int(self.model.num_timesteps),
                         "sigma": float(th.exp(self.model.policy.log_std.mean())),
                         "mean_return": float(np.mean([e["r"] for e in episodes]))
                         if episodes else float("nan")})

    model = sb3_peer.make_model(env_id, n_envs=sb3_peer.N_ENVS, seed=int(seed))
    model.set_logger(configure(None, [""]))
    model.learn(int(steps), callback=Trace())
    Path(out_file).write_text(json.dumps(rows))
    return 0


def natgrad_side(env_id: str, seed: int, steps: int, overrides: dict) -> list[dict]:
    from agents.trpo import TRPO

    agent = TRPO(env_id, seed=seed, **overrides)
    d = int(np.prod(agent.policy.head.log_std.shape))
    agent.learn(steps)
    # The logged entropy is the batch's before each step: row k's σ is that of update k's
    # policy; the σ after the step is row k + 1's. Shift so both sides give σ after an update.
    sigmas = [math.exp(row["entropy"] / d - HALF_LOG_2PI_E) for row in agent.history]
    sigmas = sigmas[1:] + [float(np.exp(agent.policy.head.log_std.numpy().mean()))]
    return [{"env_steps": int(row["env_steps"]), "sigma": sigma,
             "mean_return": float(row["mean_return"])}
            for row, sigma in zip(agent.history, sigmas, strict=True)]


def at(rows: list[dict], step: int) -> dict | None:
    """The last row at or before ``step``."""
    before = [r for r in rows if r["env_steps"] <= step]
    return before[-1] if before else None


def describe(env_id: str, seed: int, natgrad: list[dict], sb3: list[dict],
             every: int, steps: int) -> list[str]:
    lines = [f"{env_id} seed {seed}: σ / training return (last {RECENT_EPISODES} episodes)",
             f"  {'steps':>9}  {'natgrad σ':>10} {'return':>8}  {'sb3 σ':>10} {'return':>8}"]
    for step in range(every, steps + 1, every):
        a, b = at(natgrad, step), at(sb3, step)
        if a is None or b is None:
            continue
        lines.append(f"  {step:>9,}  {a['sigma']:>10.3f} {a['mean_return']:>8.1f}  "
                     f"{b['sigma']:>10.3f} {b['mean_return']:>8.1f}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=["InvertedPendulum-v5"])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=50_000, help="table rows this far apart")
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="natgrad config overrides, as natgrad-trpo train --set")
    add_peer_python(parser)
    parser.add_argument("--out", default="bench_results/trace_sigma.json")
    parser.add_argument("--peer-side", nargs=4, metavar=("ENV", "SEED", "STEPS", "OUT"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_side:
        return peer_side(*args.peer_side)
    require_peer_python(parser, args.peer_python)
    overrides = bench_common.trpo_overrides(args.set, parser)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for env_id in args.envs:
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                out_file = Path(work) / f"{env_id}-{seed}.json"
                peer = subprocess.Popen(
                    [args.peer_python, str(Path(__file__).resolve()), "--peer-side", env_id,
                     str(seed), str(args.steps), str(out_file)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                natgrad = natgrad_side(env_id, seed, args.steps, overrides)
                output, _ = peer.communicate()
                if peer.returncode != 0:
                    raise RuntimeError(f"sb3-contrib side failed:\n{output}")
                sb3 = json.loads(out_file.read_text())
                print("\n".join(describe(env_id, seed, natgrad, sb3, args.every, args.steps)),
                      flush=True)
                reports.append({"env_id": env_id, "seed": seed, "steps": args.steps,
                                "natgrad_overrides": overrides,
                                "sb3_settings": sb3_peer.settings(env_id)[0],
                                "natgrad": natgrad, "sb3": sb3})
    bench_common.write_json(args.out, reports)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
