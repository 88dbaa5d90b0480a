"""``agents.runs.progress``: progress.csv rows are whole lines; TensorBoard is optional at run
time."""

from __future__ import annotations

import csv
import logging

import pytest

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
    monkeypatch.setitem(sys.modules, "tensorboard.summary.writer.event_file_writer", None)
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
