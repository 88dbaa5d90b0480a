"""A run directory: its identity (``config.json``), its one writer (a lock) and its checkpoints.

The files are listed in :mod:`agents.runs.layout`. :class:`RunWriter` is what an agent holds:
the lock, the claim and the checkpoints of the one run it writes.

``run_id`` is drawn when the run starts and written into every checkpoint, so a checkpoint
copied in from another run (another env, seed, network, or just another run of the same
settings) is recognised and refused by :func:`select_checkpoint`, naming the mismatch, before
anything in the directory changes. A ``config.json`` edited after the run's own checkpoints
(the same run id, other settings) is a :class:`ConfigMismatch`: it names each differing field
with both values, and a resume with ``use_checkpoint_config`` continues from the checkpoint
with the settings it was trained with, keeping all progress, and rewrites ``config.json`` to
them (atomically, under the lock, when training starts).

:class:`RunLock` takes an exclusive, non-blocking ``flock`` on ``.lock``: a second writer is
refused with the first one's pid. The kernel drops the lock when its process dies, even by
``kill -9``, so there are no stale locks to clean up. Locks are re-entrant within a process.
(``flock`` exists on Linux and macOS; elsewhere runs are not locked.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from agents.config import complete_saved_config
from agents.runs.checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointRefused,
    read_checkpoint,
)
from agents.runs.checkpoint_limits import run_limits
from agents.runs.files import (
    UnsafeFileError,
    atomic_write_bytes,
    check_run_path,
    read_regular_file,
)
from agents.runs.layout import (
    CHECKPOINT_DIR,
    CONFIG_FILE,
    CURVE_FILE,
    EVAL_FILE,
    LOCK_FILE,
    PROGRESS_FILE,
    TENSORBOARD_DIR,
    VIDEO_DIR,
    checkpoint_path,
    list_checkpoints,
    remove_temporary_files,
)
from agents.runs.progress import ProgressLogger
from agents.runs.run_config import (
    checkpoint_config,
    config_differences,
    describe_mismatch,
    edited_config_message,
)

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger("agents")

MAX_CONFIG_BYTES = 1 << 20  # a config.json is about 2 kB


class RunDirError(ValueError):
    """A run directory that cannot be used as asked (not a run, another run's files, ...)."""


class RunDirLocked(RunDirError):
    """Another process is writing this run directory."""


class ConfigMismatch(RunDirError):
    """``config.json`` and the run's own ``checkpoint`` (same run id) disagree on settings;
    ``notes`` are the newer checkpoints skipped on the way (see :func:`select_checkpoint`)."""

    def __init__(self, message: str, checkpoint: Checkpoint, notes: list[str]):
        super().__init__(message)
        self.checkpoint, self.notes = checkpoint, notes


def read_run_config(run_dir: str | Path) -> tuple[str | None, dict]:
    """``(run_id, config dict)`` of a run directory, with the fields added since it was
    written filled in (:func:`agents.config.complete_saved_config`).

    Also reads the flat ``config.json`` of natgrad 0.1 (``run_id`` is then ``None``).

    Raises:
      RunDirError: no such directory, no or unreadable ``config.json``, one that is not a
        regular file (a FIFO is refused, not waited on), links out of the run or is over
        :data:`MAX_CONFIG_BYTES`, or one that is not a run configuration.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    try:
        data = json.loads(read_regular_file(path, limit=MAX_CONFIG_BYTES, inside=run_dir,
                                            what=CONFIG_FILE))
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: not a run directory (no {CONFIG_FILE})") from None
    except UnsafeFileError as exc:
        raise RunDirError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"{path}: unreadable ({exc})") from None
    if not isinstance(data, dict):
        raise RunDirError(f"{path}: not a run configuration (a JSON {type(data).__name__}, "
                          "expected an object)")
    run_id = data.get("run_id")
    config = data.get("config", data) if "run_id" in data else data
    if not isinstance(config, dict) or not isinstance(config.get("env_id"), str):
        raise RunDirError(f"{path}: not a run configuration (no env_id)")
    if run_id is not None and not isinstance(run_id, str):
        raise RunDirError(f"{path}: run_id must be a string")
    return run_id, complete_saved_config(config)


def check_run_files(run_dir: str | Path) -> None:
    """Refuses, with ``lstat``/``stat`` only (nothing is opened or written), a run directory
    whose files natgrad reads or writes are not what they must be: ``config.json``,
    ``progress.csv``, ``eval.json`` and ``learning_curve.png`` each missing or a regular file,
    ``checkpoints/``, ``tb/`` and ``videos/`` each missing or a folder, and none a link (or
    under a link) leading out of the run. (``.lock`` is checked by :class:`RunLock`, the
    checkpoints by :func:`agents.runs.checkpoint.check_checkpoint_files`.)

    Raises:
      RunDirError: naming the first such path, e.g. a FIFO planted as ``progress.csv``.
    """
    run_dir = Path(run_dir)
    try:
        for name in (CONFIG_FILE, PROGRESS_FILE, EVAL_FILE, CURVE_FILE):
            check_run_path(run_dir / name, inside=run_dir, what="run file")
        for name in (CHECKPOINT_DIR, TENSORBOARD_DIR, VIDEO_DIR):
            check_run_path(run_dir / name, inside=run_dir, what="run folder", directory=True)
    except UnsafeFileError as exc:
        raise RunDirError(str(exc)) from None


def write_run_config(run_dir: str | Path, run_id: str, config: dict) -> None:
    """Writes ``config.json`` atomically."""
    text = json.dumps({"run_id": run_id, "config": config}, indent=2) + "\n"
    atomic_write_bytes(Path(run_dir) / CONFIG_FILE, text.encode(), inside=run_dir,
                       what=CONFIG_FILE)


def select_checkpoint(run_dir: str | Path, run_id: str | None,
                      config: dict) -> tuple[Checkpoint | None, list[str]]:
    """The newest usable checkpoint of the run, and a note for each newer one skipped.

    Truncated or corrupt files (a crash, a bad disk) are skipped with a note. A file that
    decodes but belongs to another env or run, or that an older natgrad wrote, stops the
    search with an error: resuming past it would later overwrite it. So does a path that is
    not a regular file (a FIFO, a device), a link out of the run, or a file or member larger
    than an agent of ``config`` could need (:mod:`agents.runs.checkpoint_limits`).

    Raises:
      ConfigMismatch: the newest usable checkpoint is this run's (its run id) but ``config``
        (an edited ``config.json``) has other settings: naming each field, both values, and
        how to resume keeping all progress.
      RunDirError: a foreign or old file, naming it and the mismatch.
    """
    notes = []
    limits = run_limits(config)  # the env is made (once) only if there is a checkpoint
    for path in list_checkpoints(run_dir):
        try:
            checkpoint = read_checkpoint(path, run_dir=run_dir, limits=limits)
        except CheckpointError as exc:
            if isinstance(exc, CheckpointRefused) or "older version" in str(exc):
                raise RunDirError(str(exc)) from None
            notes.append(f"skipped {path}: {exc}")
            continue
        problem = describe_mismatch(checkpoint.meta, run_id, config)
        if problem is not None and run_id is not None and checkpoint.meta.get("run_id") == run_id:
            raise ConfigMismatch(edited_config_message(run_dir, path, checkpoint.meta, config),
                                 checkpoint, notes)
        if problem is not None:
            raise RunDirError(f"{path} does not belong to this run: {problem}. It was copied "
                              f"in from elsewhere: move it out of "
                              f"{Path(run_dir) / CHECKPOINT_DIR} (this run's own checkpoints "
                              "stay where they are)")
        return checkpoint, notes
    return None, notes


def claim_run_dir(run_dir: str | Path, run_id: str, config: dict, *,
                  resumed_at: int | None = None, newest_at_resume: Path | None = None,
                  rewrite_config: bool = False) -> None:
    """Makes ``run_dir`` the run ``(run_id, config)``'s before training writes to it; call it
    holding the :class:`RunLock`.

    Writes ``config.json`` for a new run, or checks the existing one is this run's (with
    ``rewrite_config``, one of this run id with other settings is rewritten to ``config``);
    removes temporary files a crash left. For a run resumed at ``resumed_at`` env steps, also
    checks that its newest checkpoint is still ``newest_at_resume`` (no one trained it
    meanwhile) and drops the progress rows past ``resumed_at``.

    Raises:
      RunDirError: the directory holds another run, moved on since it was loaded, or has a
        file that is refused (:func:`check_run_files`); nothing is written then.
    """
    run_dir = Path(run_dir)
    check_run_files(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        theirs_id, theirs = read_run_config(run_dir)
        if rewrite_config and theirs_id == run_id and theirs != complete_saved_config(config):
            write_run_config(run_dir, run_id, config)
            log.warning("%s rewritten to the settings of the checkpoint the run resumed from",
                        run_dir / CONFIG_FILE)
        elif theirs_id not in (None, run_id) or theirs != complete_saved_config(config):
            raise RunDirError(f"{run_dir} holds another run (run id {theirs_id}); resume it "
                              "with TRPO.resume, or train into a new directory")
    else:
        write_run_config(run_dir, run_id, config)
    if resumed_at is not None:
        newest = (list_checkpoints(run_dir) or [None])[0]
        if newest != newest_at_resume:
            raise RunDirError(f"{run_dir} was written to after it was loaded (now at "
                              f"{newest.name if newest else 'no checkpoint'}); resume it again")
        try:
            ProgressLogger(run_dir).truncate_after(resumed_at)
        except UnsafeFileError as exc:
            raise RunDirError(str(exc)) from None
    for path in remove_temporary_files(run_dir):
        log.warning("removed %s, left by an interrupted checkpoint write", path)


def resume_point(run_dir: str | Path, *, use_checkpoint_config: bool = False
                 ) -> tuple[str, dict, Checkpoint | None]:
    """``(run_id, config, checkpoint)`` a resume of ``run_dir`` starts from: its newest usable
    checkpoint, or ``None`` for a run stopped before its first one (it restarts in place).
    Skipped checkpoints are logged (logger ``"agents"``). With ``use_checkpoint_config``, a
    ``config.json`` edited since that checkpoint (:class:`ConfigMismatch`) gives way to the
    checkpoint's own settings (``config`` is then theirs, with a warning naming the fields).

    Raises:
      RunDirError: not a run, a run of natgrad 0.1, a foreign checkpoint, an edited
        ``config.json`` (:class:`ConfigMismatch`, without ``use_checkpoint_config``), or
        checkpoints that are all unusable.
    """
    run_dir = Path(run_dir)
    run_id, config = read_run_config(run_dir)
    if run_id is None:
        raise RunDirError(f"{run_dir} was written by an older version of natgrad (its "
                          "config.json has no run id) and cannot be resumed; start a new run")
    try:
        checkpoint, notes = select_checkpoint(run_dir, run_id, config)
    except ConfigMismatch as exc:
        if not use_checkpoint_config:
            raise
        checkpoint, notes = exc.checkpoint, exc.notes
        log.warning("resuming with the settings of %s, not %s's: %s", checkpoint.path,
                    CONFIG_FILE, ", ".join(
                        f"{k} {theirs!r} (was {ours!r})" for k, (theirs, ours)
                        in config_differences(checkpoint.meta, config).items()))
        config = checkpoint_config(checkpoint.meta)
    for note in notes:
        log.warning("%s", note)
    if checkpoint is None and notes:
        raise RunDirError(f"{run_dir}: no usable checkpoint ({'; '.join(notes)})")
    if checkpoint is None:
        log.warning("%s has no checkpoint yet: the run restarts from its start", run_dir)
    elif notes:
        log.warning("resuming from %s", checkpoint.path)
    return run_id, config, checkpoint


class RunLock:
    """``with RunLock(run_dir):`` makes this process the run directory's one writer.

    Raises:
      RunDirLocked: on entry, when another process holds the lock (naming its pid).
    """

    _held: dict[str, list] = {}  # real path -> [fd, depth]: re-entrant within a process

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE

    def __enter__(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in self._held:
            self._held[key][1] += 1
            return self
        if os.path.lexists(self.path) and not stat.S_ISREG(os.lstat(self.path).st_mode):
            kind = "a symbolic link" if os.path.islink(self.path) else "not a regular file"
            raise RunDirError(f"{self.path} is {kind}; refused (a run's lock file must be a "
                              "regular file: remove it)")
        try:  # never through a link, never blocking on a FIFO
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
                         | getattr(os, "O_NONBLOCK", 0), 0o644)
        except OSError:
            if os.path.islink(self.path):
                raise RunDirError(f"{self.path} is a symbolic link; refused (a run's lock "
                                  "file must be a regular file: remove the link)") from None
            raise
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise RunDirError(f"{self.path} is not a regular file; refused (remove it)")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirLocked(
                    f"{self.run_dir} is in use by another natgrad-trpo process (pid {holder}); "
                    "wait for it to finish, or write to another directory") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._held[key] = [fd, 1]
        return self

    def __exit__(self, *exc) -> None:
        key = os.path.realpath(self.path)
        entry = self._held[key]
        entry[1] -= 1
        if entry[1] == 0:
            del self._held[key]
            os.close(entry[0])  # closing the descriptor releases the flock


class RunWriter:
    """The run directory as one agent writes it: its lock, its claim and its checkpoints.

    Does nothing without a directory or on a worker other than the chief (``writes`` false).
    After :meth:`mark_resumed`, the next :meth:`claim` checks that nobody trained the run since
    it was loaded and drops the progress rows past the checkpoint.
    """

    def __init__(self, run_dir: str | Path | None, *, writes: bool = True):
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.writes = self.run_dir is not None and writes
        self.saved_update: int | None = None  # the update the newest checkpoint holds
        self.resumed = False
        self.newest_at_resume: Path | None = None
        self.rewrite_config = False

    def lock(self):
        """The :class:`RunLock` to train under (a null context when not writing)."""
        return RunLock(self.run_dir) if self.writes else contextlib.nullcontext()

    def mark_resumed(self, *, rewrite_config: bool = False) -> None:
        """Records that the run was loaded to be resumed, and its newest checkpoint now; with
        ``rewrite_config``, the claim rewrites an edited ``config.json`` to the agent's."""
        self.resumed, self.rewrite_config = True, rewrite_config
        self.newest_at_resume = (list_checkpoints(self.run_dir) or [None])[0]

    def claim(self, run_id: str, config: dict, num_timesteps: int) -> None:
        """:func:`claim_run_dir`, under the lock, at the start of training."""
        if self.writes:
            claim_run_dir(self.run_dir, run_id, config,
                          resumed_at=num_timesteps if self.resumed else None,
                          newest_at_resume=self.newest_at_resume,
                          rewrite_config=self.rewrite_config)
            self.resumed = self.rewrite_config = False

    def checkpoint(self, update: int, save: Callable[[Path], None]) -> Path | None:
        """``save(path)`` of the checkpoint after ``update`` updates, unless it is written
        already; its path (``None`` when not writing)."""
        if not self.writes:
            return None
        path = checkpoint_path(self.run_dir, update)
        if self.saved_update != update:
            try:  # a FIFO planted under the checkpoint's name, checkpoints/ linked out, ...
                check_run_path(path.parent, inside=self.run_dir, what=f"{CHECKPOINT_DIR}/",
                               directory=True)
                check_run_path(path, inside=self.run_dir, what="checkpoint")
            except UnsafeFileError as exc:
                raise RunDirError(str(exc)) from None
            save(path)
            self.saved_update = update
        return path
