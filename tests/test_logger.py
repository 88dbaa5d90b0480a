"""progress.csv rows are whole lines; TensorBoard is optional at run time."""

from __future__ import annotations

import csv
import logging

import pytest

from agents.logger import PROGRESS_KEYS, ProgressLogger


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
    tf = pytest.importorskip("tensorflow")
    from tensorflow.python.summary.tb_summary import TBNotInstalledError

    def no_tensorboard(*args, **kwargs):
        raise TBNotInstalledError("tf.summary.scalar")

    monkeypatch.setattr(tf.summary, "scalar", no_tensorboard)
    logger = ProgressLogger(tmp_path)
    with caplog.at_level(logging.WARNING, logger="agents"):
        for step in (1, 2, 3):
            logger.log(_row(step))
    logger.close()
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "TensorBoard logging is off" in warnings[0]
    with open(tmp_path / "progress.csv") as f:
        assert len(list(csv.DictReader(f))) == 3
