"""``agents.runs.checkpoint``: the file format (checksummed, atomic writes) and files that must
never run code. What an agent stores in one, and how it resumes from it, is
``test_agent_state.py``; a real ``kill -9`` of ``natgrad-trpo train`` and its resume, bit for
bit, is ``test_env_state.py``."""

from __future__ import annotations

import hashlib
import io
import pickle

import numpy as np
import pytest

from agents import TRPO
from agents.runs.checkpoint import MAGIC, CheckpointError, CheckpointRefused, read_checkpoint


class Marker:
    """Unpickling this creates ``path``: proof that a loader ran code from a file."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_corrupt_truncated_and_foreign_files_raise(tmp_path, tiny_config):
    agent = TRPO("CartPole-v1", **tiny_config)
    path = tmp_path / "agent.ckpt"
    agent.save(path)
    data = path.read_bytes()
    (tmp_path / "truncated.ckpt").write_bytes(data[: len(data) // 2])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    (tmp_path / "flipped.ckpt").write_bytes(bytes(flipped))
    (tmp_path / "other.ckpt").write_bytes(b"not a checkpoint at all")
    for name, message in [("truncated", "truncated or corrupt"), ("flipped", "corrupt"),
                          ("other", "not a natgrad TRPO checkpoint"), ("missing", "cannot read")]:
        with pytest.raises(CheckpointError, match=message):
            TRPO.load(tmp_path / f"{name}.ckpt")
    with pytest.raises(ValueError, match="'CartPole-v1', not 'Acrobot-v1'"):
        TRPO.load(path, env="Acrobot-v1")


def _reseal(payload: bytes) -> bytes:
    """A checkpoint file around ``payload`` with a correct header and SHA-256."""
    return MAGIC + hashlib.sha256(payload).digest() + payload


def test_a_crafted_pickle_is_never_executed(tmp_path, tiny_config):
    """Old-format pickles, pickled arrays in a resealed file: refused, and no code runs. (A
    pickled env state is ``test_agent_state.py``'s.)"""
    marker = tmp_path / "pwned"
    old = b"NATGRAD-TRPO-v1\n"
    payload = pickle.dumps({"format_version": 1, "env_id": "CartPole-v1", "x": Marker(marker)})
    (tmp_path / "old.ckpt").write_bytes(old + hashlib.sha256(payload).digest() + payload)
    with pytest.raises(CheckpointError, match="older version of natgrad"):
        TRPO.load(tmp_path / "old.ckpt")

    agent = TRPO("CartPole-v1", **tiny_config)
    agent.save(tmp_path / "good.ckpt")
    assert read_checkpoint(tmp_path / "good.ckpt").meta["env_id"] == "CartPole-v1"
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(b'{"format_version": 2}', np.uint8),
             evil=np.array([Marker(marker)], dtype=object))
    (tmp_path / "evil.ckpt").write_bytes(_reseal(buffer.getvalue()))
    with pytest.raises(CheckpointError, match="could not be decoded"):
        TRPO.load(tmp_path / "evil.ckpt")
    assert not marker.exists()


def _npz_with_header_claim(shape: tuple, data: bytes) -> bytes:
    """An ``.npz`` payload whose ``policy/000`` ``.npy`` header declares ``shape`` (float64)
    but which holds only ``data``, beside a valid ``__meta__``."""
    import json
    import zipfile

    meta = json.dumps({"format_version": 2, "env_id": "CartPole-v1"}).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        npy = io.BytesIO()
        np.lib.format.write_array(npy, np.frombuffer(meta, np.uint8))
        archive.writestr("__meta__.npy", npy.getvalue())
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            header, {"descr": "<f8", "fortran_order": False, "shape": shape})
        archive.writestr("policy/000.npy", header.getvalue() + data)
    return buffer.getvalue()


def test_a_member_whose_header_claims_terabytes_is_refused_before_allocation(tmp_path,
                                                                            monkeypatch):
    path = tmp_path / "claims.ckpt"
    path.write_bytes(_reseal(_npz_with_header_claim((10**12,), bytes(8))))

    def no_allocation(*args, **kwargs):
        raise AssertionError("an array was allocated from the crafted header")

    monkeypatch.setattr(np.lib.format, "read_array", no_allocation)
    with pytest.raises(CheckpointRefused, match=r"member 'policy/000' declares an array of "
                       r"8,000,000,000,000 bytes \(float64\[1000000000000\]\) in 8 bytes"):
        read_checkpoint(path)


def test_members_and_files_larger_than_the_agent_could_need_are_refused(tmp_path):
    from dataclasses import replace

    from agents.config import resolve_config
    from agents.runs.checkpoint import write_checkpoint
    from agents.runs.checkpoint_limits import run_limits

    config = resolve_config("CartPole-v1").to_dict()
    limits = run_limits(config)
    own = limits(None)
    assert own.policy < 4 << 20 and own.total < 1 << 30  # CartPole's 64x64 MLP: a few MB
    path = tmp_path / "fat.ckpt"
    fat = np.zeros(own.policy // 8 + 1)  # one number more than any policy variable can hold
    write_checkpoint(path, {"config": config, "env_id": "CartPole-v1"}, {"policy/000": fat})
    assert read_checkpoint(path).arrays["policy/000"].shape == fat.shape  # no agent: fixed cap
    with pytest.raises(CheckpointRefused, match=rf"member 'policy/000' declares "
                       rf"{fat.nbytes:,} bytes, more than the {own.policy:,} an agent"):
        read_checkpoint(path, limits=limits)
    small = replace(own, total=path.stat().st_size - 1)
    with pytest.raises(CheckpointRefused, match=rf"fat.ckpt is {path.stat().st_size:,} bytes, "
                       "more than the"):
        read_checkpoint(path, limits=lambda settings: small)
    write_checkpoint(path, {"config": config, "env_id": "CartPole-v1"},
                     {"policy/000": np.zeros(64)})
    assert read_checkpoint(path, limits=limits).arrays["policy/000"].shape == (64,)
