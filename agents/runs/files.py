"""Reading and writing a run's files safely.

* :func:`atomic_write_bytes`: a crash leaves the old version or the new one, never half of
  one; a failure (disk full, read-only file system) is an ``OSError`` naming the file.
* :func:`read_regular_file`: the bytes of a regular file, read without following a link out
  of its run directory, without blocking on a FIFO and without reading past a size cap, so a
  hostile or broken run directory (a FIFO, a link to ``/dev/zero``) is refused in one line.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


class UnsafeFileError(ValueError):
    """A file that is not read: not a regular file, a link out of its run directory, or
    larger than its cap. The message is one line naming the file."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via a temporary file beside it (``.NAME.*.tmp``), fsync and
    ``os.replace``.

    Raises:
      OSError: whose ``filename`` is ``path`` (not the temporary file), e.g. disk full.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _open_regular_file(path: Path, *, limit: int, inside, what: str) -> int:
    """A read-only descriptor of ``path`` once it passed the checks of
    :func:`read_regular_file`."""
    target = path
    if stat.S_ISLNK(os.lstat(path).st_mode):
        target = Path(os.path.realpath(path))
        if inside is not None and not _is_within(target, Path(inside)):
            raise UnsafeFileError(f"{what} {path} is a symbolic link to {target}, outside the "
                                  f"run directory {inside}; refused")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(target, flags)
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{what} {path} is not a regular file ({_kind(info.st_mode)}); refused"
    elif info.st_size > limit:
        problem = (f"{what} {path} is {info.st_size:,} bytes, more than the {limit:,} such a "
                   "file can sensibly be; refused")
    if problem is not None:
        os.close(fd)
        raise UnsafeFileError(problem)
    return fd


def _is_within(target: Path, folder: Path) -> bool:
    root = os.path.realpath(folder)
    return os.path.commonpath([root, str(target)]) == root


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a plain file"
