"""Reading and writing a run's files safely.

* :func:`atomic_write_bytes`: a crash leaves the old version or the new one, never half of
  one; a failure (disk full, read-only file system) is an ``OSError`` naming the file.
* :func:`read_regular_file`: the bytes of a regular file, read without following a link out
  of its run directory, without blocking on a FIFO and without reading past a size cap, so a
  hostile or broken run directory (a FIFO, a link to ``/dev/zero``) is refused in one line.
* :func:`open_for_append`: a regular file opened to append to (``progress.csv``), checked the
  same way; :func:`create_new_file`: a file that did not exist (a TensorBoard event file).
* :func:`check_run_path`: ``lstat``/``stat`` checks of a path natgrad is about to write, so a
  run directory whose files were replaced by FIFOs, devices or links out of it is refused
  before anything is opened or written.

Every check looks at the path with ``lstat``/``stat`` before ``open`` (so a FIFO or a device
is never opened), and again with ``fstat`` on the descriptor (so a file swapped in between is
refused too). Each refusal is an :class:`UnsafeFileError` whose message is one line naming
the file.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class UnsafeFileError(ValueError):
    """A file that is not read: not a regular file, a link out of its run directory, or
    larger than its cap. The message is one line naming the file."""


def atomic_write_bytes(path: str | Path, data: bytes, *, inside: str | Path | None = None,
                       what: str = "file") -> None:
    """Writes ``data`` to ``path`` via a temporary file beside it (``.NAME.*.tmp``), fsync and
    ``os.replace``. The replace never writes through a link at ``path`` (it replaces the
    link); a FIFO, device, socket or directory at ``path``, and (with ``inside``) a ``path``
    whose folder or link leads out of the run directory ``inside``, are refused before
    anything is written (:func:`check_run_path`).

    Raises:
      OSError: whose ``filename`` is ``path`` (not the temporary file), e.g. disk full.
      UnsafeFileError: ``path`` is refused (nothing is written).
    """
    path = Path(path)
    tmp = None
    check_run_path(path, inside=inside, what=what)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if inside is not None:  # made just now: still in the run (no link swapped in)?
            check_run_path(path.parent, inside=inside, what="folder", directory=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename != str(path):
            raise OSError(exc.errno, exc.strerror or str(exc), str(path)) from exc
        raise


def read_regular_file(path: str | Path, *, limit: int, inside: str | Path | None = None,
                      what: str = "file") -> bytes:
    """The bytes of ``path``, a regular file of at most ``limit`` bytes.

    A symbolic link is followed only to a file under ``inside`` (the run directory; any
    target when ``inside`` is None). The file is opened with ``O_NOFOLLOW | O_NONBLOCK`` and
    checked with ``fstat`` before reading, so a FIFO, a device or a socket is refused
    without blocking, and at most ``limit + 1`` bytes are ever read.

    Raises:
      FileNotFoundError / OSError: the file is missing or cannot be opened.
      UnsafeFileError: not a regular file, a link out of ``inside``, or over ``limit``.
    """
    path = Path(path)
    fd = _open_regular_file(path, limit=limit, inside=inside, what=what)
    try:
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, min(1 << 24, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UnsafeFileError(f"{what} {path} grew past {limit:,} bytes while read; "
                                  "refused")
        return b"".join(chunks)
    finally:
        os.close(fd)


def check_regular_file(path: str | Path, *, limit: int, inside: str | Path | None = None,
                       what: str = "file") -> None:
    """The checks of :func:`read_regular_file` without the read (nothing blocks)."""
    os.close(_open_regular_file(Path(path), limit=limit, inside=inside, what=what))


def open_for_append(path: str | Path, *, inside: str | Path | None = None,
                    what: str = "file") -> int:
    """A write-only ``O_APPEND`` descriptor of the regular file ``path`` (created if missing),
    refused (:func:`check_run_path`) when it is a FIFO, a device, a socket or a link out of
    ``inside``; opened with ``O_NOFOLLOW | O_NONBLOCK`` and checked again with ``fstat``.

    Raises:
      UnsafeFileError: refused (nothing is opened or written).
      OSError: it cannot be opened (naming ``path``).
    """
    path = Path(path)
    target = check_run_path(path, inside=inside, what=what)
    flags = (os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_NONBLOCK", 0))
    fd = _open(target, path, flags)
    _check_descriptor(fd, path, what)
    return fd


def create_new_file(path: str | Path, *, inside: str | Path | None = None,
                    what: str = "file") -> int:
    """A write-only descriptor of ``path``, a file this call creates: ``O_CREAT | O_EXCL``
    never opens anything already there (a FIFO, a link), and the folder is checked to be in
    ``inside``.

    Raises:
      UnsafeFileError: the folder leads out of ``inside``, or ``path`` exists already.
      OSError: it cannot be created (naming ``path``).
    """
    path = Path(path)
    check_run_path(path.parent, inside=inside, what="folder", directory=True)
    try:
        return _open(path, path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                     | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        raise UnsafeFileError(f"{what} {path} exists already (it was not there a moment "
                              "ago); refused") from None


def check_run_path(path: str | Path, *, inside: str | Path | None = None, what: str = "file",
                   directory: bool = False) -> Path:
    """Checks, with ``lstat``/``stat`` only (nothing is opened), a path natgrad is about to
    write: missing, or a regular file (a directory with ``directory``), or a symbolic link to
    one; with ``inside``, its real path must be in that run directory. Returns the path to
    open: ``path``, or a link's target.

    Raises:
      UnsafeFileError: a FIFO, device, socket (or a file where a folder belongs, a folder
        where a file does), or a link or folder leading out of ``inside``.
    """
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        mode = None
    target = path
    if mode is not None and stat.S_ISLNK(mode):
        target = Path(os.path.realpath(path))
        try:
            mode = os.stat(target).st_mode
        except FileNotFoundError:
            mode = None
    real = Path(os.path.realpath(target))
    if inside is not None and not _is_within(real, Path(inside)):
        where = "is a symbolic link to" if target != path else "leads (through a link) to"
        raise UnsafeFileError(f"{what} {path} {where} {real}, outside the run directory "
                              f"{inside}; refused")
    wanted, name = (stat.S_ISDIR, "a directory") if directory else (stat.S_ISREG,
                                                                    "a regular file")
    if mode is not None and not wanted(mode):
        raise UnsafeFileError(f"{what} {path} is not {name} ({_kind(mode)}); refused")
    return target


def _open_regular_file(path: Path, *, limit: int, inside, what: str) -> int:
    """A read-only descriptor of ``path`` once it passed the checks of
    :func:`read_regular_file`: ``lstat``/``stat`` before the ``open``, ``fstat`` after."""
    if not os.path.lexists(path):
        raise FileNotFoundError(2, "No such file or directory", str(path))
    target = check_run_path(path, inside=inside, what=what)
    fd = _open(target, path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_NONBLOCK", 0))
    info = _check_descriptor(fd, path, what)
    if info.st_size > limit:
        os.close(fd)
        raise UnsafeFileError(f"{what} {path} is {info.st_size:,} bytes, more than the "
                              f"{limit:,} such a file can sensibly be; refused")
    return fd


def _open(target: Path, path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open(target, flags)``, an error naming ``path``."""
    try:
        return os.open(target, flags, mode)
    except OSError as exc:
        if exc.filename is None or exc.filename == str(target):
            exc.filename = str(path)
        raise


def _check_descriptor(fd: int, path: Path, what: str) -> os.stat_result:
    """``fstat(fd)``, closing ``fd`` and refusing it when it is not a regular file (swapped in
    after the checks)."""
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise UnsafeFileError(f"{what} {path} is not a regular file ({_kind(info.st_mode)}); "
                              "refused")
    return info


def _is_within(target: Path, folder: Path) -> bool:
    root = os.path.realpath(folder)
    return os.path.commonpath([root, str(target)]) == root


def _kind(mode: int) -> str:
    kinds = ((stat.S_ISREG, "a regular file"), (stat.S_ISFIFO, "a FIFO"),
             (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
             (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
             (stat.S_ISLNK, "a symbolic link"))
    for test, name in kinds:
        if test(mode):
            return name
    return "not a plain file"
