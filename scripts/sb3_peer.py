"""The peer side of ``scripts/bench_trpo.py``: sb3-contrib's TRPO with the RL Zoo settings.

Runs in its own interpreter (a virtual environment with ``sb3-contrib``, CPU ``torch`` and
``gymnasium[mujoco]``; nothing from natgrad is imported), so both sides of a comparison are
timed the same way: as whole processes, started and waited for by ``bench_trpo.py``.

One run: ``ENV`` with ``--seed`` trained to each of ``--budgets`` in turn (``learn`` continues
across budgets); after each, a deterministic evaluation on a fresh env seeded ``seed + 10000``
with the observation statistics frozen and unnormalized rewards, as natgrad evaluates. The
clock of ``learn_seconds`` excludes the evaluations. Prints one JSON line (prefixed
``SB3_RESULT``) with the returns per budget and the timings.

Settings (RL Baselines3 Zoo's ``hyperparams/trpo.yml``; sb3-contrib's defaults where it says
nothing), 2 envs each: CartPole-v1 512 steps per env, critic minibatch 512, λ 0.98, CG damping
1e-3, 20 critic updates; Pendulum-v1 1024 steps, γ 0.9, 15 critic updates (without the Zoo's
gSDE, which natgrad does not have); Acrobot-v1 ``VecNormalize``, 1024 steps; MuJoCo
``VecNormalize`` (observations and rewards), 1024 steps, λ 0.95, CG 25 steps, damping 0.1, 20
critic updates, critic minibatch 128 (Hopper, HalfCheetah, Walker2d, Ant, Swimmer), on
HalfCheetah ``target_kl`` 0.04 and on Swimmer γ 0.9999.

Usage (inside the peer venv)::

    python scripts/sb3_peer.py Hopper-v5 --seed 0 --budgets 100000 300000
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402

# (settings, normalize): RL Zoo trpo.yml; what it leaves out is sb3-contrib's default.
CLASSIC = {
    "CartPole-v1": (dict(n_steps=512, batch_size=512, gamma=0.99, gae_lambda=0.98,
                         cg_damping=1e-3, learning_rate=1e-3, n_critic_updates=20), False),
    "Pendulum-v1": (dict(n_steps=1024, gamma=0.9, n_critic_updates=15), False),
    "Acrobot-v1": (dict(n_steps=1024), True),
}
MUJOCO = dict(n_steps=1024, batch_size=128, gamma=0.99, gae_lambda=0.95, cg_max_steps=25,
              cg_damping=0.1, n_critic_updates=20, learning_rate=1e-3)
MUJOCO_EXTRA = {"HalfCheetah-v5": dict(target_kl=0.04), "Swimmer-v5": dict(gamma=0.9999)}
N_ENVS = 2
EVAL_SEED_OFFSET = 10_000


def settings(env_id: str) -> tuple[dict, bool]:
    """``(TRPO keyword arguments, normalize)`` for ``env_id``."""
    if env_id in CLASSIC:
        settings, normalize = CLASSIC[env_id]
        return dict(settings), normalize
    return {**MUJOCO, **MUJOCO_EXTRA.get(env_id, {})}, True


def make_model(env_id: str, *, n_envs: int, seed: int, normalize: bool = True, **overrides):
    """sb3-contrib's ``TRPO("MlpPolicy")`` on the CPU with :func:`settings` for ``env_id``
    (updated by ``overrides``), on ``n_envs`` envs seeded from ``seed``, in a ``VecNormalize``
    where the settings ask for one (unless ``normalize`` is false)."""
    from sb3_contrib import TRPO
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    kwargs, wants_normalize = settings(env_id)
    kwargs.update(overrides)
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    if normalize and wants_normalize:
        env = VecNormalize(env, gamma=kwargs.get("gamma", 0.99))
    return TRPO("MlpPolicy", env, device="cpu", seed=seed, **kwargs)


def evaluate_model(model, env_id: str, vec_normalize, episodes: int, seed: int) -> list[float]:
    """Deterministic returns (unnormalized rewards) on a fresh env, observation stats frozen."""
    import gymnasium as gym
    import numpy as np

    env = gym.make(env_id)
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, done = 0.0, False
        while not done:
            x = obs[None]
            if vec_normalize is not None:
                x = vec_normalize.normalize_obs(x)
            action, _ = model.predict(x, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(np.asarray(action)[0])
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("env_id")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budgets", type=int, nargs="+", default=[100_000])
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, sb3's fastest for these small MLPs)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import_done = time.perf_counter()
    kwargs, normalize = settings(args.env_id)
    model = make_model(args.env_id, n_envs=N_ENVS, seed=args.seed)

    def evaluate() -> list[float]:
        if args.eval_episodes <= 0:
            return []
        return evaluate_model(model, args.env_id, model.get_vec_normalize_env(),
                              args.eval_episodes, args.seed + EVAL_SEED_OFFSET)

    runs = bench_common.train_to_budgets(
        args.budgets, lambda budget: model.learn(budget - model.num_timesteps,
                                                 reset_num_timesteps=False),
        evaluate, lambda: model.num_timesteps)
    print("SB3_RESULT " + json.dumps({
        "env_id": args.env_id, "seed": args.seed, "settings": kwargs, "normalize": normalize,
        "n_envs": N_ENVS, **runs,
        "import_seconds": import_done - PROCESS_START, "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
