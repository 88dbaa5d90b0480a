"""``agents.runs.progress``: progress.csv rows are whole lines; TensorBoard is optional at run
time."""

from __future__ import annotations

import csv
import itertools
import logging
import os
import socket

import pytest
from conftest import fails_instead_of_hanging

from agents.runs.files import UnsafeFileError
from agents.runs.progress import PROGRESS_KEYS, ProgressLogger


def _row(step: int) -> dict:
    return {**dict.fromkeys(PROGRESS_KEYS, 0.5), "env_steps": step, "skipped_batches": 0}


def test_torn_and_malformed_rows_are_dropped_on_resume_naming_the_file(tmp_path, caplog):
    logger = ProgressLogger(tmp_path)
    for step in (100, 200, 300):
        logger.log(_row(step))
    logger.close()
    path = tmp_path / "progress.csv"
    text = path.read_text()
    lines = text.splitlines()
    path.write_text("\n".join([*lines[:2], "oops," * (len(PROGRESS_KEYS) - 1) + "x",
                               *lines[2:], "4"]))  # a non-numeric row and a torn last row
    with caplog.at_level(logging.WARNING, logger="agents"):
        ProgressLogger(tmp_path).truncate_after(200)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["env_steps"] for r in rows] == ["100", "200"]
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{path} line 3 dropped" in m for m in messages), messages
    assert any(f"{path} line 6 dropped" in m for m in messages), messages


def test_missing_tensorboard_is_one_warning_and_the_csv_goes_on(tmp_path, monkeypatch, caplog):
    import sys

    # Importing a module whose sys.modules entry is None raises ImportError, as when
    # TensorBoard is not installed.
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.record_writer", None)
    logger = ProgressLogger(tmp_path)
    with caplog.at_level(logging.WARNING, logger="agents"):
        for step in (1, 2, 3):
            logger.log(_row(step))
    logger.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "TensorBoard logging is off" in warnings[0]
    with open(tmp_path / "progress.csv") as f:
        assert len(list(csv.DictReader(f))) == 3


def test_tensorboard_scalars_read_back_as_tf_summary_scalars(tmp_path):
    tf = pytest.importorskip("tensorflow")
    rows = [{**_row(100), "kl": 0.0123, "mean_return": float("nan")},
            {**_row(200), "kl": 0.0321, "mean_return": 17.5}]
    logger = ProgressLogger(tmp_path)
    for row in rows:
        logger.log(row)
    logger.close()
    # Read with TensorFlow's own event reader, as TensorBoard's scalar plugin sees them.
    seen = {}
    for path in sorted((tmp_path / "tb").glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                seen[(event.step, value.tag)] = float(tf.make_ndarray(value.tensor))
    for row in rows:
        for key in PROGRESS_KEYS[1:]:
            if key == "mean_return" and row is rows[0]:
                assert (row["env_steps"], key) not in seen  # NaN is left out
            else:
                assert seen[(row["env_steps"], key)] == pytest.approx(row[key], rel=1e-6)


def test_progress_csv_is_appended_to_only_if_it_is_a_regular_file_of_the_run(tmp_path):
    os.mkfifo(tmp_path / "progress.csv")
    with fails_instead_of_hanging(), pytest.raises(
            UnsafeFileError, match=r"progress\.csv is not a regular file \(a FIFO\); refused"):
        ProgressLogger(tmp_path).log(_row(100))
    os.unlink(tmp_path / "progress.csv")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.csv"
    outside.write_text("theirs\n")
    (tmp_path / "progress.csv").symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="outside the run directory"):
        ProgressLogger(tmp_path).log(_row(100))
    assert outside.read_text() == "theirs\n"
    assert not (tmp_path / "tb").exists()  # refused before TensorBoard was started


def test_tensorboard_files_are_created_new_in_a_tb_folder_of_the_run(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from agents.runs import progress

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "tb").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(UnsafeFileError, match=r"TensorBoard folder .*tb is a symbolic link"):
        ProgressLogger(run_dir).log(_row(100))
    assert list(elsewhere.iterdir()) == []
    (run_dir / "tb").unlink()
    (run_dir / "tb").mkdir()
    # A FIFO planted under the exact name the next event file gets: refused, never opened.
    monkeypatch.setattr(progress, "_EVENT_FILES", itertools.count(7))
    monkeypatch.setattr(progress.time, "time", lambda: 1234567890.5)
    name = f"events.out.tfevents.1234567890.{socket.gethostname()}.{os.getpid()}.7.natgrad"
    os.mkfifo(run_dir / "tb" / name)
    with fails_instead_of_hanging(), pytest.raises(UnsafeFileError,
                                                    match=f"{name} exists already"):
        ProgressLogger(run_dir).log(_row(100))
