"""Deterministic evaluation of a TRPO agent: returns, ``eval.json`` and mp4 videos.

* :func:`evaluate_policy`: a policy (for an agent, its deterministic one: mean action, or
  argmax) on a fresh env, episode ``i`` reset with ``seed + i``; unnormalized env rewards. An
  episode still running after ``max_episode_steps`` is cut there and counted, so an env that
  never ends cannot hang the evaluation.
* :func:`evaluation_record` / :func:`write_evaluation`: the ``eval.json`` of a run directory
  (never replaced by the evaluation of an older checkpoint).
* :func:`record_videos`: episodes as mp4 through Gymnasium's ``RecordVideo`` (needs the
  ``video`` extra, i.e. moviepy).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np

from agents.envs.factories import make_env
from agents.runs.files import atomic_write_bytes, check_run_path, read_regular_file
from agents.runs.layout import EVAL_FILE, VIDEO_DIR

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

EVAL_SEED_OFFSET = 10_000  # evaluation envs are seeded apart from the training envs
MAX_EVAL_BYTES = 1 << 24  # an eval.json of a million episode returns
log = logging.getLogger("agents")


def evaluate_policy(env_factory: Callable[[], gym.Env], act: Callable[[object], object],
                    episodes: int, seed: int, max_episode_steps: int) -> dict:
    """``{mean_return, std_return, episodes, returns, cut_episodes}`` of ``act`` (one raw
    observation -> the env's action) over ``episodes`` episodes of a fresh ``env_factory()``."""
    env = env_factory()
    returns, cut = [], 0
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            total, done, steps = 0.0, False, 0
            while not done and steps < max_episode_steps:
                obs, reward, terminated, truncated, _ = env.step(act(obs))
                total += float(reward)
                steps += 1
                done = terminated or truncated
            cut += not done
            returns.append(total)
    finally:
        env.close()
    return {"mean_return": float(np.mean(returns)), "std_return": float(np.std(returns)),
            "episodes": episodes, "returns": returns, "cut_episodes": cut}


def training_wall_time(run_dir: Path) -> float | None:
    """The last ``wall_time`` logged in ``progress.csv``, or None."""
    from agents.runs.plotting import read_progress

    try:
        wall = read_progress(run_dir).get("wall_time")
    except (OSError, ValueError):
        return None
    wall = None if wall is None else wall[np.isfinite(wall)]
    return None if wall is None or wall.size == 0 else float(wall[-1])


def evaluation_record(agent, run_dir: Path, episodes: int | None, seed: int | None,
                      wall_time: float | None = None) -> dict:
    """Evaluates ``agent`` and returns the ``eval.json`` record (nothing is written)."""
    config = agent.config
    eval_seed = config.seed + EVAL_SEED_OFFSET if seed is None else seed
    result = agent.evaluate(episodes, seed=eval_seed)
    logged_wall_time = training_wall_time(run_dir)
    return {
        "mean_return": float(result["mean_return"]),
        "std_return": float(result["std_return"]),
        "episodes": int(result["episodes"]),
        "cut_episodes": int(result["cut_episodes"]),
        "env_id": config.env_id,
        "steps": int(agent.num_timesteps),
        "seed": int(config.seed),
        "wall_time": logged_wall_time if logged_wall_time is not None else wall_time,
        "eval_seed": int(eval_seed),
        "returns": [float(r) for r in result["returns"]],
    }


def write_evaluation(run_dir: Path, record: dict) -> Path | None:
    """Writes ``record`` to ``run_dir/eval.json`` atomically; returns the path.

    An ``eval.json`` already there of a later checkpoint (more ``steps``: a resumed run
    evaluated itself meanwhile) is kept, with a warning, and ``None`` is returned: an older
    evaluation never overwrites a newer one. The comparison and the replacement are one step
    under an exclusive ``flock`` on the run directory, so two concurrent writers cannot
    interleave them.
    """
    path = Path(run_dir) / EVAL_FILE
    with _directory_lock(Path(run_dir)):
        existing = _recorded_steps(path)
        if existing is not None and existing > int(record["steps"]):
            log.warning("kept %s: it holds an evaluation at %s steps, newer than this one at "
                        "%s steps", path, f"{existing:,}", f"{int(record['steps']):,}")
            return None
        atomic_write_bytes(path, (json.dumps(record, indent=2) + "\n").encode(),
                           inside=run_dir, what=EVAL_FILE)
    return path


def _recorded_steps(path: Path) -> int | None:
    """The ``steps`` of an existing ``eval.json``, or None (none, unreadable, malformed)."""
    try:
        record = json.loads(read_regular_file(path, limit=MAX_EVAL_BYTES, inside=path.parent,
                                              what=EVAL_FILE))
    except (OSError, ValueError):
        return None
    steps = record.get("steps") if isinstance(record, dict) else None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


@contextlib.contextmanager
def _directory_lock(folder: Path):
    """An exclusive ``flock`` on ``folder`` itself (a no-op where there is no ``flock``)."""
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def has_video_encoder() -> bool:
    """Whether moviepy, which ``RecordVideo`` encodes mp4 with, is installed."""
    return importlib.util.find_spec("moviepy") is not None


def check_video_paths(agent, run_dir: Path, episodes: int) -> str:
    """Checks, before anything is recorded or written, the paths :func:`record_videos` will
    write (``videos/`` and ``RecordVideo``'s ``<prefix>-episode-<i>.mp4``: a FIFO there would
    block the encoder); returns the name prefix.

    Raises:
      agents.runs.files.UnsafeFileError: naming the first path refused.
    """
    video_dir = Path(run_dir) / VIDEO_DIR
    prefix = f"{agent.config.env_id.replace('/', '_').replace(':', '_')}-step{agent.num_timesteps}"
    check_run_path(video_dir, inside=run_dir, what="video folder", directory=True)
    for episode in range(episodes):
        check_run_path(video_dir / f"{prefix}-episode-{episode}.mp4", inside=run_dir,
                       what="video")
    return prefix


def record_videos(agent, run_dir: Path, episodes: int, seed: int) -> list[Path]:
    """Records ``episodes`` deterministic episodes as mp4 into ``run_dir/videos``.

    Raises:
      agents.runs.files.UnsafeFileError: ``videos/`` or a video's path is refused (a FIFO, a
        device, a link out of the run), before anything is recorded.
    """
    from gymnasium.wrappers import RecordVideo

    video_dir = Path(run_dir) / VIDEO_DIR
    prefix = check_video_paths(agent, run_dir, episodes)
    before = set(video_dir.glob("*.mp4")) if video_dir.exists() else set()
    env = make_env(agent.config.env_id, render_mode="rgb_array")
    env = RecordVideo(env, str(video_dir), episode_trigger=lambda _: True, name_prefix=prefix,
                      disable_logger=True)
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            done, steps = False, 0
            while not done and steps < agent.config.eval_max_episode_steps:
                action = agent.predict(obs, deterministic=True)
                if isinstance(env.action_space, gym.spaces.Discrete):
                    action = int(action)
                obs, _, terminated, truncated, _ = env.step(action)
                done, steps = terminated or truncated, steps + 1
    finally:
        env.close()
    return sorted(set(video_dir.glob("*.mp4")) - before)
