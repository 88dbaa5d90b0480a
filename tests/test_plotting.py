"""``agents.runs.plotting`` against hand-made ``progress.csv`` files whose averages are known."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import fails_instead_of_hanging

from agents.runs.plotting import (
    average_curves,
    common_grid,
    curve,
    group_runs_by_env,
    plot_learning_curves,
    read_env_id,
    read_progress,
)

COLUMNS = ("env_steps", "wall_time", "mean_return", "kl", "accepted")


def write_run(path, env_id, rows):
    """A fake run dir: ``config.json`` with ``env_id`` and ``progress.csv`` from ``rows``."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"env_id": env_id, "seed": 0}))
    lines = [",".join(COLUMNS)] + [",".join(str(v) for v in row) for row in rows]
    (path / "progress.csv").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def three_runs(tmp_path):
    """Two CartPole seeds (returns 2x and 2x + 10 of steps/1000) and one Pendulum run."""
    a = write_run(tmp_path / "cp0", "CartPole-v1",
                  [(1000, 1.0, 2.0, 0.01, True), (2000, 2.0, 4.0, 0.01, True),
                   (3000, 3.0, 6.0, 0.01, False)])
    b = write_run(tmp_path / "cp1", "CartPole-v1",
                  [(1000, 2.0, 12.0, 0.01, True), (2000, 4.0, 14.0, 0.01, True),
                   (3000, 6.0, 16.0, 0.01, True)])
    c = write_run(tmp_path / "pd0", "Pendulum-v1",
                  [(2048, 1.5, "", 0.0, True), (4096, 3.0, -1200.5, 0.0, True)])
    return a, b, c


def test_read_progress_types_and_missing_cells(three_runs):
    progress = read_progress(three_runs[2])
    assert set(progress) == set(COLUMNS)
    np.testing.assert_array_equal(progress["env_steps"], [2048.0, 4096.0])
    assert np.isnan(progress["mean_return"][0]) and progress["mean_return"][1] == -1200.5
    np.testing.assert_array_equal(read_progress(three_runs[0])["accepted"], [1.0, 1.0, 0.0])
    x, y = curve(progress, "env_steps")
    np.testing.assert_array_equal(x, [4096.0])
    np.testing.assert_array_equal(y, [-1200.5])


def test_group_runs_by_env(three_runs, tmp_path):
    a, b, c = three_runs
    groups = group_runs_by_env([a, c, b])
    assert list(groups) == ["CartPole-v1", "Pendulum-v1"]
    assert groups["CartPole-v1"] == [a, b] and groups["Pendulum-v1"] == [c]
    (tmp_path / "stray").mkdir()
    assert read_env_id(tmp_path / "stray") == "stray"
    nested = tmp_path / "nested"
    nested.mkdir()
    (nested / "config.json").write_text(json.dumps({"config": {"env_id": "Acrobot-v1"}}))
    assert read_env_id(nested) == "Acrobot-v1"


def test_average_curves_on_common_step_grid(three_runs):
    curves = [curve(read_progress(d), "env_steps") for d in three_runs[:2]]
    grid = np.array([1000.0, 1500.0, 2500.0, 3000.0])
    stats = average_curves(curves, grid)
    # Seed 0: y = 2x/1000, seed 1: y = 2x/1000 + 10 -> mean 2x/1000 + 5, std 5, min/max ±5.
    np.testing.assert_allclose(stats["mean"], 2 * grid / 1000 + 5)
    np.testing.assert_allclose(stats["std"], 5.0)
    np.testing.assert_allclose(stats["min"], 2 * grid / 1000)
    np.testing.assert_allclose(stats["max"], 2 * grid / 1000 + 10)
    np.testing.assert_array_equal(stats["count"], 2)


def test_average_curves_over_wall_time_with_partial_coverage(three_runs):
    # Against wall time seed 0 is y = 2t on [1, 3] and seed 1 is y = t + 10 on [2, 6].
    curves = [curve(read_progress(d), "wall_time") for d in three_runs[:2]]
    grid = common_grid(curves, num=5)
    np.testing.assert_allclose(grid, [2.0, 2.25, 2.5, 2.75, 3.0])  # the overlap only
    stats = average_curves(curves, np.array([1.0, 2.5, 5.0, 7.0]))
    np.testing.assert_array_equal(stats["count"], [1, 2, 1, 0])
    np.testing.assert_allclose(stats["mean"][:3], [2.0, (5.0 + 12.5) / 2, 15.0])
    np.testing.assert_allclose(stats["std"][:3], [0.0, 3.75, 0.0])
    assert np.isnan(stats["mean"][3])


def test_union_grid_and_hold_last_for_wall_time(three_runs):
    curves = [curve(read_progress(d), "wall_time") for d in three_runs[:2]]
    grid = common_grid(curves, num=6, span="union")
    np.testing.assert_allclose(grid, [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    stats = average_curves(curves, grid, hold_last=True)
    # Seed 0 (y = 2t on [1, 3]) keeps 6 after t = 3; seed 1 (y = t + 10) starts at t = 2.
    np.testing.assert_array_equal(stats["count"], [1, 2, 2, 2, 2, 2])
    np.testing.assert_allclose(stats["mean"], [2.0, 8.0, 9.5, 10.0, 10.5, 11.0])
    np.testing.assert_allclose(stats["max"] - stats["min"], [0.0, 8.0, 7.0, 8.0, 9.0, 10.0])
    with pytest.raises(ValueError, match="span"):
        common_grid(curves, span="all")


def test_common_grid_without_overlap_uses_union():
    curves = [(np.array([0.0, 1.0]), np.array([0.0, 1.0])),
              (np.array([2.0, 3.0]), np.array([5.0, 5.0]))]
    np.testing.assert_array_equal(common_grid(curves), [0.0, 1.0, 2.0, 3.0])
    assert common_grid([]).size == 0


def test_plot_learning_curves_writes_png(three_runs, tmp_path):
    out = plot_learning_curves(list(three_runs), tmp_path / "figs" / "curves.png", title="t")
    assert out.is_file() and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = write_run(tmp_path / "empty", "CartPole-v1", [])
    assert plot_learning_curves([empty], tmp_path / "empty.png").is_file()


def test_the_png_is_never_written_into_a_fifo_or_through_a_link_out_of_the_run(three_runs,
                                                                               tmp_path):
    import os

    from agents.runs.files import UnsafeFileError

    run = three_runs[0]
    os.mkfifo(run / "learning_curve.png")
    with fails_instead_of_hanging():  # a FIFO opened for writing would block
        with pytest.raises(UnsafeFileError, match=r"learning_curve\.png is not a regular file "
                           r"\(a FIFO\); refused"):
            plot_learning_curves([run], run / "learning_curve.png", inside=run)
        with pytest.raises(UnsafeFileError, match=r"fifo\.png is not a regular file"):
            os.mkfifo(tmp_path / "fifo.png")
            plot_learning_curves([run], tmp_path / "fifo.png")  # --out: no run to stay in
    os.unlink(run / "learning_curve.png")
    outside = tmp_path / "outside.txt"
    outside.write_text("theirs")
    (run / "learning_curve.png").symlink_to(outside)
    with pytest.raises(UnsafeFileError, match="outside the run directory"):
        plot_learning_curves([run], run / "learning_curve.png", inside=run)
    assert outside.read_text() == "theirs"
    link = tmp_path / "link.png"  # outside any run: the link is replaced, not written through
    link.symlink_to(outside)
    assert plot_learning_curves([run], link) == link
    assert outside.read_text() == "theirs" and not link.is_symlink()
    assert link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
