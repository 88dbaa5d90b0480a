"""``natgrad-trpo``: train, evaluate and plot TRPO runs from the command line.

Subcommands::

    natgrad-trpo train [ENV_ID] [--steps N] [--seed S] [--n-envs K] [--preset NAME]
                       [--out DIR] [--resume RUN_DIR [--use-checkpoint-config]]
                       [--set key=value ...]
    natgrad-trpo eval RUN_DIR [--episodes N] [--seed S] [--video]
    natgrad-trpo plot RUN_DIR... [--out PNG]

``train`` defaults to ``CartPole-v1`` with its preset budget and writes into
``runs/<ENV_ID>-seed<S>`` (a fresh ``-2``, ``-3``, … suffix when that exists). A run directory
holds ``config.json``, ``progress.csv``, ``tb/`` (TensorBoard), ``checkpoints/`` and, written
here after training, ``eval.json`` (a deterministic evaluation on fresh environments) and
``learning_curve.png``.

Bad input (unknown environment or preset, an invalid hyperparameter, a non-positive ``--steps``,
a malformed ``--set``, a run directory that is not a run or holds another run's checkpoint) is
reported as one line on stderr with exit status 2, before any environment is stepped and before
TensorFlow is imported; a run directory this command created for the failed run is removed.
Failures while running (a file that cannot be written, a NaN in training) are one line with
status 1; Ctrl-C or ``SIGTERM`` during training checkpoints first and exits with 130 or 143.
TensorFlow's start-up log lines are silenced (set ``TF_CPP_MIN_LOG_LEVEL`` to see them).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import shlex
import sys
import time
from pathlib import Path

from agents.cli.overrides import parse_int
from agents.cli.setup import (
    DEFAULT_ENV_ID,
    RunFailed,
    UsageError,
    launch_workers,
    load_run,
    locked_resume,
    one_line,
    prepare_new_run,
)
from agents.config import MAX_EVAL_EPISODES
from agents.runs.files import UnsafeFileError
from agents.runs.layout import CURVE_FILE
from agents.runs.run_dir import RunDirError

EXIT_FAILURE = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line on stderr (no usage dump), status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _int_at_least(minimum: int, what: str, maximum: int | None = None):
    """An ``argparse`` type: an integer >= ``minimum`` (``1e5`` and ``100_000`` accepted), and
    at most ``maximum`` if given."""

    def parse(text: str) -> int:
        try:
            value = parse_int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{text!r} is more than the limit of {maximum:,}")
        return value

    return parse


positive_int = _int_at_least(1, "a positive integer")
non_negative_int = _int_at_least(0, "an integer >= 0")
episode_count = _int_at_least(1, "a positive integer", MAX_EVAL_EPISODES)


def cmd_train(args) -> int:
    """``train``: validate, learn with a progress bar, evaluate, plot, summarize."""
    for flag, given in (("--use-checkpoint-config", args.use_checkpoint_config),
                        ("--trust-env-state", args.trust_env_state)):
        if given and args.resume is None:
            raise UsageError(f"{flag} applies to a resumed run: add --resume RUN_DIR")
    if args.workers > 1:
        return launch_workers(args, args.argv)
    with contextlib.ExitStack() as stack:
        if args.resume is not None:
            if not Path(args.resume).is_dir():  # a typo: create nothing, not even the lock
                raise UsageError(f"{args.resume}: no such run directory (--resume continues "
                                 "an existing run)")
            agent, run_dir, budget = locked_resume(args, stack)
        else:
            agent, run_dir, budget = prepare_new_run(args, stack)
        return _train(agent, run_dir, budget, resumed=args.resume is not None)


def _train(agent, run_dir: Path, budget: int, *, resumed: bool) -> int:
    from agents.envs.vector_env import ObservationShapeError
    from agents.rollout import NonFiniteError
    from agents.runs.evaluation import evaluation_record, write_evaluation
    from agents.runs.plotting import plot_learning_curves
    from agents.stop_signals import TrainingInterrupted

    config = agent.config
    if agent.worker_index > 0:  # another worker of a cluster: the chief reports and evaluates
        agent.learn(budget)
        return 0
    start_steps = agent.num_timesteps
    action = "resuming" if resumed else "training"
    print(f"{action} TRPO on {config.env_id} (seed {config.seed}, {config.n_envs} envs x "
          f"{config.n_steps} steps per update) from {start_steps:,} to {budget:,} steps "
          f"-> {run_dir}", flush=True)
    started = time.perf_counter()
    try:
        agent.learn(budget, progress_bar=True)
    except TrainingInterrupted as stop:
        print(f"\n{stop}: stopped after writing {stop.checkpoint}; continue with:\n"
              f"  natgrad-trpo train --resume {shlex.quote(str(run_dir))}", file=sys.stderr)
        return stop.exit_status
    except KeyboardInterrupt:
        print(f"\ninterrupted at {agent.num_timesteps:,} steps without a new checkpoint; "
              f"continue with:\n  natgrad-trpo train --resume {shlex.quote(str(run_dir))}",
              file=sys.stderr)
        return 130
    except NonFiniteError as exc:
        raise RunFailed(f"{exc}; the last good state is checkpointed in {run_dir}") from None
    except ObservationShapeError as exc:
        raise RunFailed(one_line(exc)) from None
    except RunDirError as exc:
        raise UsageError(str(exc)) from None
    wall_time = time.perf_counter() - started
    done = agent.num_timesteps - start_steps

    record = evaluation_record(agent, run_dir, config.eval_episodes, None, wall_time)
    rate = done / wall_time if wall_time > 0 else float("nan")
    print(f"\n{config.env_id}  seed {config.seed}: {done:,} steps in {wall_time:.1f} s "
          f"({rate:,.0f} steps/s), {agent.num_timesteps:,} in total")
    print(f"eval: mean return {record['mean_return']:.2f} ± {record['std_return']:.2f} over "
          f"{record['episodes']} deterministic episodes")
    eval_path = write_evaluation(run_dir, record)
    curve_png = plot_learning_curves([run_dir], run_dir / CURVE_FILE, inside=run_dir,
                                     title=f"TRPO {config.env_id} (seed {config.seed})")
    print(f"  run dir         {run_dir}")
    print(f"  eval            {eval_path or 'not written (a newer eval.json is kept)'}")
    print(f"  learning curve  {curve_png}")
    print(f"  progress        {run_dir / 'progress.csv'}")
    print(f"  tensorboard     tensorboard --logdir {shlex.quote(str(run_dir / 'tb'))}")
    return 0


def cmd_eval(args) -> int:
    """``eval``: deterministic evaluation of a run's last checkpoint (optionally on video).

    The result is printed before ``eval.json`` is written, so a read-only run still shows it.
    """
    from agents.runs.evaluation import (
        check_video_paths,
        evaluation_record,
        has_video_encoder,
        record_videos,
        write_evaluation,
    )

    run_dir = Path(args.run_dir)
    if args.video and not has_video_encoder():
        raise UsageError('--video needs the moviepy encoder: pip install "natgrad[video]"')
    agent = load_run(run_dir)
    if args.video:  # a FIFO planted as a video: refused before anything is written
        check_video_paths(agent, run_dir, args.video_episodes)
    episodes = args.episodes or agent.config.eval_episodes
    record = evaluation_record(agent, run_dir, episodes, args.seed)
    cut = f" ({record['cut_episodes']} cut at the step cap)" if record["cut_episodes"] else ""
    print(f"{record['env_id']}  seed {record['seed']}  at {record['steps']:,} steps: "
          f"mean return {record['mean_return']:.2f} ± {record['std_return']:.2f} over "
          f"{record['episodes']} deterministic episodes{cut}")
    print(f"  returns  {', '.join(f'{r:.1f}' for r in record['returns'])}", flush=True)
    written = write_evaluation(run_dir, record)
    if written is not None:
        print(f"  written  {written}")
    if args.video:
        videos = record_videos(agent, run_dir, args.video_episodes, record["eval_seed"])
        for video in videos:
            print(f"  video    {video}")
    return 0


def cmd_plot(args) -> int:
    """``plot``: learning curves of one or several runs (seeds of an env averaged)."""
    from agents.runs.layout import PROGRESS_FILE
    from agents.runs.plotting import group_runs_by_env, plot_learning_curves

    run_dirs = [Path(d) for d in args.run_dirs]
    missing = [str(d) for d in run_dirs if not (d / PROGRESS_FILE).is_file()]
    if missing:
        raise UsageError(f"no {PROGRESS_FILE} in: {', '.join(missing)}")
    inside = None
    if args.out is not None:
        out = Path(args.out)
    elif len(run_dirs) == 1:
        out, inside = run_dirs[0] / CURVE_FILE, run_dirs[0]
    else:
        out = Path("learning_curves.png")
    try:
        out = plot_learning_curves(run_dirs, out, inside=inside)
    except (UnsafeFileError, ValueError) as exc:
        raise UsageError(one_line(exc)) from None
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
                       help="continue RUN_DIR from its newest usable checkpoint")
    train.add_argument("--use-checkpoint-config", action="store_true",
                       help="with --resume: if config.json was edited since the newest "
                            "checkpoint, continue with the checkpoint's own settings (keeping "
                            "all progress) and rewrite config.json to them")
    train.add_argument("--trust-env-state", action="store_true",
                       help="with --resume: restore env state pickled by save_env_state=true, "
                            "for envs whose state is not saved as arrays (this runs code from "
                            "the checkpoint: only for runs you made)")
    train.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override one TRPOConfig field, e.g. --set max_kl=0.02 "
                            "(repeatable; tuples as 64,64)")
    train.add_argument("--workers", type=positive_int, default=1, metavar="N",
                       help="train on N worker processes of this machine "
                            "(MultiWorkerMirroredStrategy; see README 'Scaling out')")
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "eval", help="evaluate a run's last checkpoint deterministically",
        description="Load RUN_DIR's last checkpoint, run deterministic episodes on fresh envs, "
                    "print and write RUN_DIR/eval.json.")
    evaluate.add_argument("run_dir", metavar="RUN_DIR")
    evaluate.add_argument("--episodes", type=episode_count, metavar="N",
                          help="evaluation episodes (default: the run's eval_episodes)")
    evaluate.add_argument("--seed", type=non_negative_int, metavar="S",
                          help="seed of the evaluation envs (default: run seed + 10000)")
    evaluate.add_argument("--video", action="store_true",
                          help="also record mp4 videos into RUN_DIR/videos (needs the video "
                               "extra: pip install \"natgrad[video]\")")
    evaluate.add_argument("--video-episodes", type=episode_count, default=1, metavar="N",
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
    args.argv = list(sys.argv[1:] if argv is None else argv)
    prefix = f"natgrad-trpo {args.command}"
    with _warnings_to_stderr(prefix):
        try:
            return args.handler(args)
        except UsageError as exc:
            print(f"{prefix}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except UnsafeFileError as exc:  # a run's file refused (a FIFO, a link out of the run)
            print(f"{prefix}: error: {one_line(exc)}", file=sys.stderr)
            return EXIT_USAGE
        except (RunFailed, OSError) as exc:
            print(f"{prefix}: error: {_os_error_line(exc)}", file=sys.stderr)
            return EXIT_FAILURE
        except KeyboardInterrupt:  # before training started: nothing to checkpoint yet
            print(f"\n{prefix}: interrupted", file=sys.stderr)
            return 130


def _os_error_line(exc: BaseException) -> str:
    """``PATH: reason`` for an ``OSError`` (read-only file system, disk full, ...)."""
    if isinstance(exc, OSError) and exc.strerror:
        path = exc.filename if exc.filename is not None else "file"
        return f"cannot write {path}: {exc.strerror}" if exc.errno in _WRITE_ERRNOS else (
            f"{path}: {exc.strerror}")
    return one_line(exc)


_WRITE_ERRNOS = {30, 28, 13, 1, 122}  # EROFS, ENOSPC, EACCES, EPERM, EDQUOT


@contextlib.contextmanager
def _warnings_to_stderr(prefix: str):
    """The ``agents`` logger's warnings (skipped checkpoints, TensorBoard off, ...) as one
    ``PREFIX: warning: ...`` line each on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{prefix}: warning: %(message)s"))
    logger = logging.getLogger("agents")
    logger.addHandler(handler)
    previous, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = previous


if __name__ == "__main__":
    sys.exit(main())
