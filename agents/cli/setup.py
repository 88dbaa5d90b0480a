"""What a ``natgrad-trpo`` command runs on: a new run directory, a resumed run, or a run to
evaluate, each checked (arguments, env id, configuration, the run's own files and lock) before
TensorFlow is imported, so bad input fails in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

from agents.cli.overrides import parse_overrides
from agents.runs.checkpoint import CheckpointRefused, check_checkpoint_files
from agents.runs.layout import CHECKPOINT_DIR, CONFIG_FILE, LOCK_FILE
from agents.runs.run_dir import (
    RunDirError,
    RunLock,
    check_run_files,
    read_run_config,
    select_checkpoint,
)

DEFAULT_ENV_ID = "CartPole-v1"
RUNS_DIR = Path("runs")


class UsageError(Exception):
    """Bad command-line input: reported in one line, exit status 2."""


class RunFailed(Exception):
    """A failure while running (not the input's fault): one line, exit status 1."""


def fresh_run_dir(env_id: str, seed: int, root: Path = RUNS_DIR) -> Path:
    """``root/<env_id>-seed<seed>``, or the first ``…-2``, ``…-3``, … that does not exist."""
    base = root / f"{env_id.replace('/', '_')}-seed{seed}"
    candidate, index = base, 1
    while candidate.exists():
        index += 1
        candidate = base.with_name(f"{base.name}-{index}")
    return candidate


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow with its C++ start-up lines (absl, CUDA probing) kept off stderr.

    ``TF_CPP_MIN_LOG_LEVEL`` defaults to 3 here; the lines TensorFlow writes before it reads
    that variable are captured and shown only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def one_line(exc: BaseException) -> str:
    """An exception message squeezed onto one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def load_run(run_dir: Path):
    """The agent of a run at its newest usable checkpoint, read only (``eval``).

    Skipped (corrupt) checkpoints are reported; one from another env or run is refused.
    """
    run_id, config = read_run(run_dir)
    try:
        check_run_files(run_dir)  # eval.json a FIFO, ...: refused before the evaluation
        checkpoint, notes = select_checkpoint(run_dir, run_id, config)
    except RunDirError as exc:
        raise UsageError(str(exc)) from None
    for note in notes:
        logging.getLogger("agents").warning("%s", note)
    if checkpoint is None:
        raise UsageError(f"{run_dir}: no usable checkpoint in {run_dir / CHECKPOINT_DIR}")
    import_tensorflow_quietly()
    from agents import TRPO

    try:
        return TRPO.load(checkpoint)
    except ValueError as exc:
        raise UsageError(f"{run_dir}: cannot load the run ({one_line(exc)})") from None


def read_run(run_dir: Path) -> tuple[str | None, dict]:
    """``(run_id, config)`` of an existing run directory; anything else is a usage error
    (a missing directory is reported, not created)."""
    try:
        return read_run_config(run_dir)
    except RunDirError as exc:
        raise UsageError(str(exc)) from None


def prepare_resume(args):
    """The resumed agent and its step budget, after checking every argument against the run."""
    run_dir = Path(args.resume)
    config = read_run(run_dir)[1]
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
    try:  # a FIFO, a link out of the run, an oversized file: refused before TensorFlow
        check_run_files(run_dir)
        check_checkpoint_files(run_dir)
    except (CheckpointRefused, RunDirError) as exc:
        raise UsageError(str(exc)) from None
    if not args.use_checkpoint_config:  # else the checkpoint's settings are used and checked
        _check_edited_config(run_dir, config)
    import_tensorflow_quietly()
    from agents import TRPO

    try:
        agent = TRPO.resume(run_dir, trust_env_state=args.trust_env_state,
                            use_checkpoint_config=args.use_checkpoint_config,
                            strategy=_cluster_strategy(_saved_tf_threads(config)))
    except ValueError as exc:
        raise UsageError(f"{run_dir}: cannot resume ({one_line(exc)})") from None
    budget = args.steps if args.steps is not None else agent.config.total_steps
    if budget <= agent.num_timesteps:
        raise UsageError(
            f"{run_dir} has already done {agent.num_timesteps:,} steps >= the budget of "
            f"{budget:,}; pass --steps N with N > {agent.num_timesteps} (a total, including the "
            "steps already done)"
        )
    return agent, run_dir, budget


def _check_edited_config(run_dir: Path, config: dict) -> None:
    """Refuses, before TensorFlow, a ``config.json`` no agent can be built from (a size no
    machine holds, ...), saying how to resume with the checkpoints' settings instead."""
    from agents.config import config_from_dict
    from agents.runs.layout import list_checkpoints

    try:
        config_from_dict(config).validate()
    except (ValueError, TypeError) as exc:
        hint = ("; if it was edited since the run's checkpoints, resume with their settings "
                "instead: --use-checkpoint-config") if list_checkpoints(run_dir) else ""
        raise UsageError(f"{run_dir / CONFIG_FILE}: {one_line(exc)}{hint}") from None


def _new_run_config(args):
    """``(env_id, overrides, config)`` of a new run, validated without TensorFlow."""
    from agents.config import PRESET_NAMES, TRPOConfig, resolve_config
    from agents.envs.factories import resolve_env

    env_id = args.env_id or DEFAULT_ENV_ID
    try:
        overrides = parse_overrides(args.set, TRPOConfig)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if "env_id" in overrides:
        raise UsageError(f"--set env_id: the environment is the ENV_ID argument (natgrad-trpo "
                         f"train {shlex.quote(str(overrides['env_id']))} ...), not a --set")
    for key, flag, value in (("seed", "--seed", args.seed), ("n_envs", "--n-envs", args.n_envs),
                             ("total_steps", "--steps", args.steps)):
        if value is not None:
            if key in overrides and overrides[key] != value:
                raise UsageError(f"--set {key}={overrides[key]} contradicts {flag} {value}; "
                                 "give one of them")
            overrides[key] = value
    if args.preset is not None and args.preset not in PRESET_NAMES:
        raise UsageError(f"unknown preset {args.preset!r}; known: {', '.join(PRESET_NAMES)}")
    try:
        resolve_env(env_id)
        config = resolve_config(env_id, args.preset, **overrides)
    except (ValueError, TypeError) as exc:
        raise UsageError(one_line(exc)) from None
    return env_id, overrides, config


def _saved_tf_threads(config: dict) -> int:
    """A run's ``tf_threads`` as its config.json says (0 when absent or not an integer: the
    agent's own checks then report the file)."""
    from agents.config import is_int

    value = config.get("tf_threads", 0)
    return value if is_int(value) and value > 0 else 0


def _cluster_strategy(tf_threads: int):
    """The multi-worker strategy ``TF_CONFIG`` asks for, or None (see ``agents.workers``).

    TensorFlow's thread pools are sized first (``tf_threads``): a strategy starts TensorFlow,
    after which they are fixed."""
    from agents.tf_threads import apply_tf_threads
    from agents.workers import strategy_from_environment

    apply_tf_threads(tf_threads)
    try:
        return strategy_from_environment()
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def is_chief() -> bool:
    """Whether this process writes the run: the only one, or worker 0 of a cluster."""
    from agents.workers import task_index

    return task_index() == 0


def _check_new_run_dir(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file, not a directory")
    if run_dir.is_dir() and any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise UsageError(
            f"--out {run_dir} already exists and is not empty; use --resume "
            f"{shlex.quote(str(run_dir))} to "
            "continue it, or another --out"
        )


def launch_workers(args, argv: list[str]) -> int:
    """``train --workers N``: checks the arguments, fixes the run directory, and runs N
    workers on this machine (:func:`agents.workers.launch`); returns their exit status."""
    from agents.workers import TF_CONFIG, launch

    if os.environ.get(TF_CONFIG):
        raise UsageError(f"--workers starts a cluster on this machine, but {TF_CONFIG} is "
                         "set: run one process per worker without --workers instead")
    child = []
    tokens = iter(argv)
    for token in tokens:
        if token == "--workers":
            next(tokens, None)
        elif not token.startswith("--workers="):
            child.append(token)
    if args.resume is None:
        env_id, _, config = _new_run_config(args)
        run_dir = Path(args.out) if args.out is not None else fresh_run_dir(env_id, config.seed)
        _check_new_run_dir(run_dir)
        if args.out is None:
            child += ["--out", str(run_dir)]
    else:
        read_run(Path(args.resume))
    return launch(child, args.workers)


def prepare_new_run(args, stack: contextlib.ExitStack):
    """A new, validated agent and its locked run directory (removed again if setup fails)."""
    env_id, overrides, config = _new_run_config(args)
    if not is_chief():  # another worker of a cluster: the chief owns and checks the directory
        if args.out is None:
            raise UsageError("every worker of a cluster needs the same --out DIR")
        import_tensorflow_quietly()
        from agents import TRPO

        strategy = _cluster_strategy(config.tf_threads)
        return (TRPO(env_id, preset=args.preset, run_dir=Path(args.out), strategy=strategy,
                     **overrides), Path(args.out), config.total_steps)
    if args.out is not None:
        run_dir = Path(args.out)
        _check_new_run_dir(run_dir)
    else:
        run_dir = fresh_run_dir(env_id, config.seed)
    existed = run_dir.exists()
    stack.enter_context(locked(run_dir))
    try:
        _check_new_run_dir(run_dir)  # again, now that no other process can write it
        import_tensorflow_quietly()
        from agents import TRPO

        agent = TRPO(env_id, preset=args.preset, run_dir=run_dir,
                     strategy=_cluster_strategy(config.tf_threads), **overrides)
    except BaseException as exc:
        if not existed:
            shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, (ValueError, TypeError)) or _is_gym_error(exc):
            raise UsageError(one_line(exc)) from None
        raise
    return agent, run_dir, config.total_steps


@contextlib.contextmanager
def locked(run_dir: Path):
    """``RunLock(run_dir)``, a refusal reported as a usage error."""
    try:
        lock = RunLock(run_dir).__enter__()
    except RunDirError as exc:
        raise UsageError(str(exc)) from None
    try:
        yield lock
    finally:
        lock.__exit__(None, None, None)


def locked_resume(args, stack: contextlib.ExitStack):
    """:func:`prepare_resume` under the run's lock (taken by the chief), which ``stack``
    holds while training. A refused resume leaves the directory as it found it: a ``.lock``
    that this call created is removed again (while still held, so no other process has it)."""
    run_dir = Path(args.resume)
    created = is_chief() and not os.path.lexists(run_dir / LOCK_FILE)
    if is_chief():
        stack.enter_context(locked(run_dir))
    try:
        return prepare_resume(args)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                (run_dir / LOCK_FILE).unlink()
        raise


def _is_gym_error(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Gymnasium's errors (unknown env id, missing dependency…)."""
    import gymnasium

    return isinstance(exc, gymnasium.error.Error)
