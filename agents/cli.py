"""``natgrad-trpo``: train, evaluate and plot TRPO runs from the command line.

Subcommands::

    natgrad-trpo train [ENV_ID] [--steps N] [--seed S] [--n-envs K] [--preset NAME]
                       [--out DIR] [--resume RUN_DIR] [--set key=value ...]
    natgrad-trpo eval RUN_DIR [--episodes N] [--seed S] [--video]
    natgrad-trpo plot RUN_DIR... [--out PNG]

``train`` defaults to ``CartPole-v1`` with its preset budget and writes into
``runs/<ENV_ID>-seed<S>`` (a fresh ``-2``, ``-3``, … suffix when that exists). A run directory
holds ``config.json``, ``progress.csv``, ``tb/`` (TensorBoard), ``checkpoints/`` and, written
here after training, ``eval.json`` (a deterministic evaluation on fresh environments) and
``learning_curve.png``.

Bad input (unknown environment or preset, an invalid hyperparameter, a non-positive ``--steps``,
a malformed ``--set``) is reported as one line on stderr with exit status 2, before any
environment is stepped; a run directory this command created for the failed run is removed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import time
from pathlib import Path

from agents.overrides import parse_int, parse_overrides

DEFAULT_ENV_ID = "CartPole-v1"
RUNS_DIR = Path("runs")
EVAL_FILE = "eval.json"
CURVE_FILE = "learning_curve.png"
VIDEO_DIR = "videos"
EVAL_SEED_OFFSET = 10_000  # evaluation envs are seeded apart from the training envs
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage dump), status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(minimum: int, what: str):
    """An ``argparse`` type: an integer >= ``minimum`` (``1e5`` and ``100_000`` accepted)."""

    def parse(text: str) -> int:
        try:
            value = parse_int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")


def fresh_run_dir(env_id: str, seed: int, root: Path = RUNS_DIR) -> Path:
    """``root/<env_id>-seed<seed>``, or the first ``…-2``, ``…-3``, … that does not exist."""
    base = root / f"{env_id.replace('/', '_')}-seed{seed}"
    candidate, index = base, 1
    while candidate.exists():
        index += 1
        candidate = base.with_name(f"{base.name}-{index}")
    return candidate


def read_run_config(run_dir: Path) -> dict:
    """The ``config.json`` of a run directory as a dict; ``UsageError`` if it is not a run."""
    path = run_dir / "config.json"
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such run directory")
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{run_dir}: not a run directory (no config.json)") from None
    except ValueError as exc:
        raise UsageError(f"{path}: unreadable ({exc})") from None
    return config.get("config", config) if isinstance(config.get("config"), dict) else config


def _one_line(exc: BaseException) -> str:
    """An exception message squeezed onto one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def training_wall_time(run_dir: Path) -> float | None:
    """The last ``wall_time`` logged in ``progress.csv``, or None."""
    from agents.plotting import read_progress

    try:
        wall = read_progress(run_dir).get("wall_time")
    except (OSError, ValueError):
        return None
    if wall is None or wall.size == 0:
        return None
    return float(wall[-1])


def evaluate_and_record(agent, run_dir: Path, episodes: int | None, seed: int | None,
                        wall_time: float | None = None) -> dict:
    """Deterministic evaluation on fresh envs, written to ``run_dir/eval.json``; returns it."""
    config = agent.config
    eval_seed = config.seed + EVAL_SEED_OFFSET if seed is None else seed
    result = agent.evaluate(episodes, seed=eval_seed)
    logged_wall_time = training_wall_time(run_dir)
    record = {
        "mean_return": float(result["mean_return"]),
        "std_return": float(result["std_return"]),
        "episodes": int(result["episodes"]),
        "env_id": config.env_id,
        "steps": int(agent.num_timesteps),
        "seed": int(config.seed),
        "wall_time": logged_wall_time if logged_wall_time is not None else wall_time,
        "eval_seed": int(eval_seed),
        "returns": [float(r) for r in result.get("returns", ())],
    }
    (run_dir / EVAL_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record


def load_run(run_dir: Path, *, resume: bool = False):
    """The agent of a run at its last checkpoint.

    ``resume=True`` uses ``TRPO.resume`` (the agent logs into ``run_dir`` again, and progress
    rows past the checkpoint are dropped); otherwise the checkpoint is only read
    (``TRPO.load``), so evaluating a run never changes it.
    """
    from agents import TRPO
    from agents.checkpoint import latest_checkpoint

    read_run_config(run_dir)
    try:
        return TRPO.resume(run_dir) if resume else TRPO.load(latest_checkpoint(run_dir))
    except (FileNotFoundError, ValueError) as exc:
        raise UsageError(f"{run_dir}: cannot load the run ({_one_line(exc)})") from None


def _prepare_resume(args):
    """The resumed agent and its step budget, after checking every argument against the run."""
    run_dir = Path(args.resume)
    config = read_run_config(run_dir)
    run_env = config.get("env_id")
    if args.env_id is not None and args.env_id != run_env:
        raise UsageError(
            f"ENV_ID {args.env_id!r} does not match the run being resumed ({run_env!r} in "
            f"{run_dir})"
        )
    fixed = [flag for flag, value in (("--seed", args.seed), ("--n-envs", args.n_envs),
                                      ("--preset", args.preset), ("--set", args.set),
                                      ("--out", args.out)) if value]
    if fixed:
        raise UsageError(
            f"{', '.join(fixed)} cannot be combined with --resume: the run keeps its own "
            "configuration and directory"
        )
    agent = load_run(run_dir, resume=True)
    budget = args.steps if args.steps is not None else int(agent.config.total_steps)
    if budget <= agent.num_timesteps:
        raise UsageError(
            f"{run_dir} has already done {agent.num_timesteps:,} steps >= the budget of "
            f"{budget:,}; pass --steps N with N > {agent.num_timesteps} (a total, including the "
            "steps already done)"
        )
    return agent, run_dir, budget


def _prepare_new_run(args):
    """A new, validated agent and its run directory (removed again if validation fails)."""
    from agents import PRESET_NAMES, TRPO, TRPOConfig, load_preset

    env_id = args.env_id or DEFAULT_ENV_ID
    try:
        overrides = parse_overrides(args.set, TRPOConfig)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.n_envs is not None:
        overrides["n_envs"] = args.n_envs
    if args.steps is not None:
        overrides["total_steps"] = args.steps
    if args.preset is not None and args.preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {args.preset!r}; known: {', '.join(PRESET_NAMES)}")
    preset_name = args.preset or (env_id if env_id in PRESET_NAMES else None)
    preset = load_preset(preset_name) if preset_name else {}
    seed = overrides.get("seed", preset.get("seed", TRPOConfig.seed))

    if args.out is not None:
        run_dir = Path(args.out)
        if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
            raise UsageError(
                f"--out {run_dir} already exists and is not empty; use --resume {run_dir} to "
                "continue it, or another --out"
            )
    else:
        run_dir = fresh_run_dir(env_id, seed)
    existed = run_dir.exists()
    try:
        agent = TRPO(env_id, preset=args.preset, run_dir=run_dir, **overrides)
    except Exception as exc:
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, (ValueError, TypeError)) or _is_gym_error(exc):
            raise UsageError(_one_line(exc)) from None
        raise
    budget = args.steps if args.steps is not None else int(agent.config.total_steps)
    return agent, run_dir, budget


def _is_gym_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Gymnasium's errors (unknown env id, missing dependency…)."""
    import gymnasium

    return isinstance(exc, gymnasium.error.Error)


def cmd_train(args) -> int:
    """``train``: validate, learn with a progress bar, evaluate, plot, summarize."""
    from agents.plotting import plot_learning_curves

    if args.resume is not None:
        agent, run_dir, budget = _prepare_resume(args)
    else:
        agent, run_dir, budget = _prepare_new_run(args)
    config = agent.config
    start_steps = agent.num_timesteps
    action = "resuming" if args.resume else "training"
    print(f"{action} TRPO on {config.env_id} (seed {config.seed}, {config.n_envs} envs x "
          f"{config.n_steps} steps per update) from {start_steps:,} to {budget:,} steps "
          f"-> {run_dir}", flush=True)
    started = time.perf_counter()
    try:
        agent.learn(budget, progress_bar=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted at {agent.num_timesteps:,} steps; continue with:\n"
              f"  natgrad-trpo train --resume {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    wall_time = time.perf_counter() - started
    done = agent.num_timesteps - start_steps

    record = evaluate_and_record(agent, run_dir, config.eval_episodes, None, wall_time)
    curve_png = plot_learning_curves([run_dir], run_dir / CURVE_FILE,
                                     title=f"TRPO {config.env_id} (seed {config.seed})")
    rate = done / wall_time if wall_time > 0 else float("nan")
    print(f"\n{config.env_id}  seed {config.seed}: {done:,} steps in {wall_time:.1f} s "
          f"({rate:,.0f} steps/s), {agent.num_timesteps:,} in total")
    print(f"eval: mean return {record['mean_return']:.2f} ± {record['std_return']:.2f} over "
          f"{record['episodes']} deterministic episodes")
    print(f"  run dir         {run_dir}")
    print(f"  eval            {run_dir / EVAL_FILE}")
    print(f"  learning curve  {curve_png}")
    print(f"  progress        {run_dir / 'progress.csv'}")
    print(f"  tensorboard     tensorboard --logdir {run_dir / 'tb'}")
    return 0


def has_video_encoder() -> bool:
    """Whether moviepy, which ``RecordVideo`` encodes mp4 with, is installed."""
    return importlib.util.find_spec("moviepy") is not None


def record_videos(agent, run_dir: Path, episodes: int, seed: int) -> list[Path]:
    """Records ``episodes`` deterministic episodes as mp4 into ``run_dir/videos``."""
    import gymnasium as gym
    from gymnasium.wrappers import RecordVideo

    video_dir = run_dir / VIDEO_DIR
    before = set(video_dir.glob("*.mp4")) if video_dir.exists() else set()
    env = gym.make(agent.config.env_id, render_mode="rgb_array")
    env = RecordVideo(env, str(video_dir), episode_trigger=lambda _: True,
                      name_prefix=f"{agent.config.env_id}-step{agent.num_timesteps}",
                      disable_logger=True)
    try:
        for episode in range(episodes):
            obs, _ = env.reset(seed=seed + episode)
            done = False
            while not done:
                action = agent.predict(obs, deterministic=True)
                if isinstance(env.action_space, gym.spaces.Discrete):
                    action = int(action)
                obs, _, terminated, truncated, _ = env.step(action)
                done = terminated or truncated
    finally:
        env.close()
    return sorted(set(video_dir.glob("*.mp4")) - before)


def cmd_eval(args) -> int:
    """``eval``: deterministic evaluation of a run's last checkpoint (optionally on video)."""
    run_dir = Path(args.run_dir)
    if args.video and not has_video_encoder():
        raise UsageError("--video needs the moviepy encoder: pip install moviepy")
    agent = load_run(run_dir)
    episodes = args.episodes or agent.config.eval_episodes
    record = evaluate_and_record(agent, run_dir, episodes, args.seed)
    print(f"{record['env_id']}  seed {record['seed']}  at {record['steps']:,} steps: "
          f"mean return {record['mean_return']:.2f} ± {record['std_return']:.2f} over "
          f"{record['episodes']} deterministic episodes")
    print(f"  returns  {', '.join(f'{r:.1f}' for r in record['returns'])}")
    print(f"  written  {run_dir / EVAL_FILE}")
    if args.video:
        videos = record_videos(agent, run_dir, args.video_episodes, record["eval_seed"])
        for video in videos:
            print(f"  video    {video}")
    return 0


def cmd_plot(args) -> int:
    """``plot``: learning curves of one or several runs (seeds of an env averaged)."""
    from agents.plotting import PROGRESS_FILE, group_runs_by_env, plot_learning_curves

    run_dirs = [Path(d) for d in args.run_dirs]
    missing = [str(d) for d in run_dirs if not (d / PROGRESS_FILE).is_file()]
    if missing:
        raise UsageError(f"no {PROGRESS_FILE} in: {', '.join(missing)}")
    if args.out is not None:
        out = Path(args.out)
    elif len(run_dirs) == 1:
        out = run_dirs[0] / CURVE_FILE
    else:
        out = Path("learning_curves.png")
    out = plot_learning_curves(run_dirs, out)
    for env_id, dirs in group_runs_by_env(run_dirs).items():
        print(f"{env_id}: {len(dirs)} run{'s' if len(dirs) > 1 else ''}")
    print(f"learning curves written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``natgrad-trpo`` argument parser with its three subcommands."""
    parser = _Parser(prog="natgrad-trpo",
                     description="Train, evaluate and plot TRPO agents (natgrad).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    train = commands.add_parser(
        "train", help="train an agent, then evaluate it and plot its learning curve",
        description="Train TRPO on a Gymnasium env; writes a run directory with config.json, "
                    "progress.csv, tb/, checkpoints/, eval.json and learning_curve.png.")
    train.add_argument("env_id", nargs="?", metavar="ENV_ID",
                       help=f"Gymnasium env id (default: {DEFAULT_ENV_ID}, or the resumed run's)")
    train.add_argument("--steps", type=positive_int, metavar="N",
                       help="total env steps of the run (default: the preset's budget); with "
                            "--resume, a total including the steps already done")
    train.add_argument("--seed", type=non_negative_int, metavar="S", help="random seed")
    train.add_argument("--n-envs", type=positive_int, metavar="K",
                       help="environments stepped in parallel")
    train.add_argument("--preset", metavar="NAME",
                       help="hyperparameter preset to start from (default: ENV_ID's own)")
    train.add_argument("--out", metavar="DIR",
                       help="run directory (default: runs/<ENV_ID>-seed<S>, made unique)")
    train.add_argument("--resume", metavar="RUN_DIR",
                       help="continue RUN_DIR from its last checkpoint")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one TRPOConfig field, e.g. --set max_kl=0.02 "
                            "(repeatable; tuples as 64,64)")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a run's last checkpoint deterministically",
        description="Load RUN_DIR's last checkpoint, run deterministic episodes on fresh envs, "
                    "print and write RUN_DIR/eval.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--episodes", type=positive_int, metavar="N",
                          help="evaluation episodes (default: the run's eval_episodes)")
    evaluate.add_argument("--seed", type=non_negative_int, metavar="S",
                          help=f"seed of the evaluation envs (default: run seed + "
                               f"{EVAL_SEED_OFFSET})")
    evaluate.add_argument("--video", action="store_true",
                          help="also record mp4 videos into RUN_DIR/videos (needs moviepy)")
    evaluate.add_argument("--video-episodes", type=positive_int, default=1, metavar="N",
                          help="episodes recorded with --video (default: 1)")
    evaluate.set_defaults(handler=cmd_eval)

    plot = commands.add_parser(
        "plot", help="plot learning curves of one or more runs",
        description="Return against env steps and against wall time; runs of the same env are "
                    "averaged over seeds (mean, min-max band).")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    plot.add_argument("--out", metavar="PNG",
                      help="output file (default: RUN_DIR/learning_curve.png for one run, "
                           "./learning_curves.png for several)")
    plot.set_defaults(handler=cmd_plot)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs ``natgrad-trpo`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return args.handler(args)
    except UsageError as exc:
        print(f"natgrad-trpo {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
