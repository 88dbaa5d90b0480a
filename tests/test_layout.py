"""``agents.runs.layout``: the file names of a run directory, and its checkpoints in order."""

from __future__ import annotations

from agents.runs import layout
from agents.runs.files import atomic_write_bytes
from agents.runs.layout import checkpoint_path, list_checkpoints, remove_temporary_files


def test_the_names_of_a_run_directory():
    names = {name: getattr(layout, name) for name in (
        "CONFIG_FILE", "LOCK_FILE", "PROGRESS_FILE", "TENSORBOARD_DIR", "CHECKPOINT_DIR",
        "EVAL_FILE", "CURVE_FILE", "VIDEO_DIR")}
    assert names == {"CONFIG_FILE": "config.json", "LOCK_FILE": ".lock",
                     "PROGRESS_FILE": "progress.csv", "TENSORBOARD_DIR": "tb",
                     "CHECKPOINT_DIR": "checkpoints", "EVAL_FILE": "eval.json",
                     "CURVE_FILE": "learning_curve.png", "VIDEO_DIR": "videos"}
    assert checkpoint_path("run", 42).as_posix() == "run/checkpoints/update_000042.ckpt"


def test_checkpoints_are_listed_newest_first_by_update_number(tmp_path):
    assert list_checkpoints(tmp_path) == []  # no checkpoints folder yet
    for update in (9, 10, 2, 1_000_000):  # past six digits the name is longer, still a number
        atomic_write_bytes(checkpoint_path(tmp_path, update), b"x")
    folder = tmp_path / "checkpoints"
    for stray in ("notes.txt", "update_000011.ckpt.bak", "update_x.ckpt"):
        (folder / stray).write_bytes(b"x")
    assert [p.name for p in list_checkpoints(tmp_path)] == [
        "update_1000000.ckpt", "update_000010.ckpt", "update_000009.ckpt", "update_000002.ckpt"]


def test_temporary_files_left_by_a_crash_are_removed(tmp_path):
    assert remove_temporary_files(tmp_path) == []
    atomic_write_bytes(checkpoint_path(tmp_path, 1), b"x")
    folder = tmp_path / "checkpoints"
    leftovers = [folder / ".update_000002.ckpt.abc.tmp", folder / ".update_000003.ckpt.d.tmp"]
    for path in leftovers:
        path.write_bytes(b"half")
    assert remove_temporary_files(tmp_path) == leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["update_000001.ckpt"]
