"""Checkpoint files: arrays and JSON only, checksummed, written atomically; loading runs no code.

Layout (format 2)::

    MAGIC (16 bytes) | SHA-256 of the payload (32 bytes) | payload

The payload is an uncompressed NumPy ``.npz`` archive: every array of the agent (weights,
optimizer slots, normalizer statistics, ...) under its own name, and one ``uint8`` array
``__meta__`` holding UTF-8 JSON (configuration, counters, RNG state, history). It is read with
``numpy.load(..., allow_pickle=False)``: an array that would need unpickling is refused, so a
file cannot make the reader run code. Compressed members are refused too (no zip bombs).

Reads are bounded: the file is read only if it is a regular file no larger than
:data:`MAX_CHECKPOINT_BYTES` or, where the agent is known, than the agent's own arrays could
need (:mod:`agents.runs.checkpoint_limits`); then each member's size, as its zip entry and its
``.npy`` header declare it, is checked against its bound (and against the bytes it really
holds) before any array is allocated, so a member claiming terabytes is refused in one line
instead of failing in NumPy's allocator.

The envs' own state (:mod:`agents.envs.env_state`) is arrays under :data:`ENV_STATES_PREFIX`
(``env_state/<i>/<name>`` for sub-env ``i``) and JSON. The one exception to "no pickles" is
opt-in, for envs that module cannot capture: an agent configured with ``save_env_state=True``
then stores its sub-environments pickled, as the raw bytes of the array :data:`ENV_STATE_KEY`.
Reading a file never unpickles them; :meth:`agents.TRPO.load` does only when called with
``trust_env_state=True`` (``natgrad-trpo train --resume DIR --trust-env-state``), for files
you wrote yourself.

Writing goes to a temporary file beside the target, which is fsynced and then ``os.replace``d
over it, so a crash leaves the old file or the new one, never half of one; a crash can leave
the temporary file (``.NAME.*.tmp``), which :func:`agents.runs.layout.remove_temporary_files`
clears.

Files of format 1 (natgrad 0.1, a pickle) are recognised and refused with a message saying so.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.runs.checkpoint_limits import CheckpointLimits, declared_array_bytes
from agents.runs.files import (
    UnsafeFileError,
    atomic_write_bytes,
    check_regular_file,
    read_regular_file,
)
from agents.runs.layout import CHECKPOINT_DIR, list_checkpoints

MAGIC = b"NATGRAD-TRPO-v2\n"
OLDER_MAGICS = {b"NATGRAD-TRPO-v1\n": 1}
FORMAT_VERSION = 2
META_KEY = "__meta__"
ENV_STATE_KEY = "env_state_pickle"
ENV_STATES_PREFIX = "env_state/"
_DIGEST_BYTES = 32
#: The largest checkpoint read (4 GiB): far above any agent this package builds (a million
#: parameters with their optimizer slots take tens of MB), far below what would exhaust a
#: machine's memory by accident.
MAX_CHECKPOINT_BYTES = 1 << 32


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: unreadable, corrupt, of another format or run."""


class CheckpointRefused(CheckpointError):
    """A checkpoint path that is not read at all: not a regular file, a link out of its run,
    or too large (see :func:`agents.runs.files.read_regular_file`)."""


@dataclass(frozen=True)
class Checkpoint:
    """A decoded checkpoint: its JSON ``meta`` and its named ``arrays``."""

    path: Path
    meta: dict
    arrays: dict

    @property
    def update(self) -> int:
        return int(self.meta.get("updates", -1))


def write_checkpoint(path: str | Path, meta: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``meta`` (JSON-serializable) and ``arrays`` (numeric or bytes) to ``path``.

    Raises:
      ValueError: an array of Python objects (it would need pickle to read back), or a name
        clash with the reserved ``__meta__``.
    """
    if META_KEY in arrays:
        raise ValueError(f"array name {META_KEY!r} is reserved")
    for name, value in arrays.items():
        if np.asarray(value).dtype.hasobject:
            raise ValueError(f"checkpoint array {name!r} holds Python objects; only numbers")
    text = json.dumps({"format_version": FORMAT_VERSION, **meta}, allow_nan=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{META_KEY: np.frombuffer(text.encode(), np.uint8)}, **arrays)
    payload = buffer.getvalue()
    atomic_write_bytes(path, MAGIC + hashlib.sha256(payload).digest() + payload)


def read_checkpoint(path: str | Path, *, run_dir: str | Path | None = None,
                    max_bytes: int = MAX_CHECKPOINT_BYTES,
                    limits: Callable[[dict | None], CheckpointLimits | None] | None = None
                    ) -> Checkpoint:
    """Decodes ``path`` without running any code from it.

    The file must be a regular file of at most ``max_bytes`` (a FIFO, a device or a larger
    file is refused without blocking or reading it whole); with ``run_dir``, a symbolic link
    must point inside it (:func:`agents.runs.files.read_regular_file`).

    ``limits`` bounds the file for the agent it is read for: ``limits(None)`` is the
    :class:`~agents.runs.checkpoint_limits.CheckpointLimits` of the run's own settings (its
    ``total`` caps the file), ``limits(config)`` those of the settings the file's ``__meta__``
    names (the larger of the two bounds each member). Each member's declared size (zip entry
    and ``.npy`` header) is checked before any array is allocated.

    Raises:
      CheckpointError: the file is missing or unreadable, not a regular file, not a natgrad
        checkpoint, written by an older version, truncated or corrupt (checksum), or its
        payload is malformed.
      CheckpointRefused: not a regular file, a link out of the run, larger than its cap, or a
        member declared larger than its bound (naming the member and both sizes).
    """
    path = Path(path)
    own = limits(None) if limits is not None else None
    if own is not None:
        max_bytes = min(max_bytes, own.total)
    try:
        data = read_regular_file(path, limit=max_bytes, inside=run_dir, what="checkpoint")
    except UnsafeFileError as e:
        raise CheckpointRefused(str(e)) from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or e}") from e
    for magic, version in OLDER_MAGICS.items():
        if data.startswith(magic):
            raise CheckpointError(
                f"{path} was written by an older version of natgrad (checkpoint format "
                f"{version}, a pickle); this version does not load it because unpickling can "
                "run code. Retrain, or load it with natgrad 0.1 if you wrote it yourself."
            )
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a natgrad TRPO checkpoint (bad header)")
    digest = data[len(MAGIC):len(MAGIC) + _DIGEST_BYTES]
    payload = data[len(MAGIC) + _DIGEST_BYTES:]
    if len(digest) != _DIGEST_BYTES or hashlib.sha256(payload).digest() != digest:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt (checksum mismatch)")
    try:
        with zipfile.ZipFile(io.BytesIO(payload)) as archive:
            sizes = _member_sizes(path, archive, len(payload))
            meta = _read_meta(path, archive, sizes, own)
            theirs = (limits(meta["config"]) if limits is not None
                      and isinstance(meta, dict) and isinstance(meta.get("config"), dict)
                      else None)
            for name, size in sizes.items():
                bound = max(x.member(name) for x in (own, theirs) if x is not None) if (
                    own is not None or theirs is not None) else len(payload)
                if size > bound:
                    raise CheckpointRefused(
                        f"checkpoint {path}: member {name!r} declares {size:,} bytes, more "
                        f"than the {bound:,} an agent of this run's settings can need; refused")
        with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files if name != META_KEY}
    except CheckpointError:
        raise
    except Exception as e:  # pickled arrays (refused by allow_pickle=False), bad zip or JSON
        raise CheckpointError(f"checkpoint {path} could not be decoded: {e}") from e
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path} has an unsupported format version")
    return Checkpoint(path, meta, arrays)


_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}


def _member_sizes(path: Path, archive: zipfile.ZipFile, payload_bytes: int) -> dict[str, int]:
    """``{array name: bytes its array declares}`` of an ``.npz`` archive, from each zip entry
    and ``.npy`` header alone (nothing of the arrays is read or allocated).

    Raises:
      CheckpointError: a compressed member, or one whose zip entry or ``.npy`` header claims
        more bytes than the member holds (a crafted or corrupt file).
    """
    sizes = {}
    for info in archive.infolist():
        name = info.filename.removesuffix(".npy")
        if info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"checkpoint {path} has compressed members; refused")
        if info.file_size > payload_bytes:
            raise CheckpointRefused(
                f"checkpoint {path}: member {name!r} declares {info.file_size:,} bytes, more "
                f"than the whole file's {payload_bytes:,}; refused")
        with archive.open(info) as member:
            version = np.lib.format.read_magic(member)
            read_header = _HEADER_READERS.get(version)
            if read_header is None:
                raise CheckpointError(f"checkpoint {path}: member {name!r} is a .npy file of "
                                      f"version {version}, not one natgrad writes")
            shape, _, dtype = read_header(member)
            header_bytes = member.tell()
        declared = declared_array_bytes(shape, dtype.itemsize)
        if declared > info.file_size - header_bytes:
            raise CheckpointRefused(
                f"checkpoint {path}: member {name!r} declares an array of {declared:,} bytes "
                f"({dtype}{list(shape)}) in {info.file_size - header_bytes:,} bytes; refused")
        sizes[name] = declared
    return sizes


def _read_meta(path: Path, archive: zipfile.ZipFile, sizes: dict[str, int],
               own: CheckpointLimits | None) -> dict:
    """The JSON ``__meta__`` member, checked against ``own.meta`` before it is read."""
    if META_KEY not in sizes:
        raise CheckpointError(f"checkpoint {path} has no {META_KEY} member")
    bound = own.meta if own is not None else sizes[META_KEY]
    if sizes[META_KEY] > bound:
        raise CheckpointRefused(
            f"checkpoint {path}: member {META_KEY!r} declares {sizes[META_KEY]:,} bytes, more "
            f"than the {bound:,} an agent of this run's settings can need; refused")
    with archive.open(META_KEY + ".npy") as member:
        text = np.lib.format.read_array(member, allow_pickle=False)
    return json.loads(text.tobytes().decode())


def check_checkpoint_files(run_dir: str | Path) -> None:
    """Refuses, without reading them, checkpoint paths of ``run_dir`` that
    :func:`read_checkpoint` would refuse: not regular files, links out of the run, too large.

    Raises:
      CheckpointRefused: naming the first such path.
    """
    for path in list_checkpoints(run_dir):
        try:
            check_regular_file(path, limit=MAX_CHECKPOINT_BYTES, inside=run_dir,
                               what="checkpoint")
        except UnsafeFileError as e:
            raise CheckpointRefused(str(e)) from None
        except OSError:
            pass  # unreadable: read_checkpoint skips it with a note


def latest_checkpoint(run_dir: str | Path) -> Path:
    """The checkpoint with the highest update number (not checked: see
    :mod:`agents.runs.run_dir`)."""
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"no checkpoint found under {Path(run_dir) / CHECKPOINT_DIR}")
    return found[0]
