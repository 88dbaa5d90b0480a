"""Checkpoint files: a header, a SHA-256 digest and a pickled state dict, written atomically.

Layout: ``MAGIC`` (16 bytes) ``|`` SHA-256 of the payload (32 bytes) ``|`` payload (pickle of a
dict of NumPy arrays and Python values, see ``TRPO._state``). Writing goes to a temporary file
in the same directory, which is fsynced and then ``os.replace``d over the target, so a crash
leaves either the old file or the new one, never half of one. Reading checks the header, the
digest and the env id, and raises ``ValueError`` with what was wrong.

Checkpoints are pickles: load only files you (or someone you trust) wrote.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import tempfile
from pathlib import Path

MAGIC = b"NATGRAD-TRPO-v1\n"
FORMAT_VERSION = 1
_DIGEST_BYTES = 32
_NAME = re.compile(r"update_(\d+)\.ckpt$")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes ``data`` to ``path`` via temp file + fsync + ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_checkpoint(path: str | Path, state: dict) -> None:
    payload = pickle.dumps({"format_version": FORMAT_VERSION, **state},
                           protocol=pickle.HIGHEST_PROTOCOL)
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def read_checkpoint(path: str | Path, expected_env_id: str | None = None) -> dict:
    """The state dict saved at ``path``.

    Raises:
      ValueError: the file is missing, not a TRPO checkpoint, truncated or corrupt (digest
        mismatch), of another format version, or (with ``expected_env_id``) for another env.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read checkpoint {path}: {e}") from e
    if not data.startswith(MAGIC):
        raise ValueError(f"{path} is not a natgrad TRPO checkpoint (bad header)")
    digest = data[len(MAGIC):len(MAGIC) + _DIGEST_BYTES]
    payload = data[len(MAGIC) + _DIGEST_BYTES:]
    if len(digest) != _DIGEST_BYTES or hashlib.sha256(payload).digest() != digest:
        raise ValueError(f"checkpoint {path} is truncated or corrupt (checksum mismatch)")
    try:
        state = pickle.loads(payload)
    except Exception as e:  # a matching digest makes this unlikely, but say so if it happens
        raise ValueError(f"checkpoint {path} could not be decoded: {e}") from e
    if not isinstance(state, dict) or state.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"checkpoint {path} has an unsupported format version")
    if expected_env_id is not None and state.get("env_id") != expected_env_id:
        raise ValueError(
            f"checkpoint {path} was written for env {state.get('env_id')!r}, "
            f"not {expected_env_id!r}"
        )
    return state


def checkpoint_path(run_dir: str | Path, update: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"update_{update:06d}.ckpt"


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint with the highest update number in ``run_dir/checkpoints``."""
    folder = Path(run_dir) / "checkpoints"
    found = sorted(
        (int(m.group(1)), p) for p in folder.glob("update_*.ckpt")
        if (m := _NAME.search(p.name))
    ) if folder.is_dir() else []
    if not found:
        raise ValueError(f"no checkpoint found under {folder}")
    return found[-1][1]
