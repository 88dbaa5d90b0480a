"""``agents.runs.files``: atomic writes whose errors name the file, and reads that refuse
FIFOs, devices, links out of the run and oversized files."""

from __future__ import annotations

import errno
import os

import pytest

from agents.runs.files import UnsafeFileError, atomic_write_bytes, read_regular_file


def test_a_write_error_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError) as raised:
        atomic_write_bytes(tmp_path / "eval.json", b"{}")
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "eval.json")
    assert list(tmp_path.iterdir()) == []


def test_the_cli_names_the_file_a_full_disk_refused(tmp_path, monkeypatch, capsys):
    from agents import cli

    def disk_full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    def plot_writing_a_file(args):
        atomic_write_bytes(tmp_path / "curves.png", b"x")

    monkeypatch.setattr(os, "fsync", disk_full)
    monkeypatch.setattr(cli, "cmd_plot", plot_writing_a_file)
    assert cli.main(["plot", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == (
        f"natgrad-trpo plot: error: cannot write {tmp_path / 'curves.png'}: "
        "No space left on device")


def test_reads_refuse_fifos_links_out_and_oversized_files(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "ok").write_bytes(b"12345")
    (run_dir / "inner").symlink_to(run_dir / "ok")
    assert read_regular_file(run_dir / "inner", limit=5, inside=run_dir) == b"12345"
    with pytest.raises(UnsafeFileError, match="ok is 5 bytes, more than the 4"):
        read_regular_file(run_dir / "ok", limit=4)
    os.mkfifo(run_dir / "fifo")
    with pytest.raises(UnsafeFileError, match="fifo is not a regular file \\(a FIFO\\)"):
        read_regular_file(run_dir / "fifo", limit=10)
    (run_dir / "zero").symlink_to("/dev/zero")
    with pytest.raises(UnsafeFileError, match="zero is a symbolic link to /dev/zero, outside"):
        read_regular_file(run_dir / "zero", limit=10, inside=run_dir)
    with pytest.raises(UnsafeFileError, match="not a regular file \\(a character device\\)"):
        read_regular_file(run_dir / "zero", limit=10)
