"""``natgrad-trpo`` end to end: train, resume, eval, plot on a 2,048-step CartPole run.

One short run is trained once per module (``--steps 2048``: two updates of the preset's
2 envs x 512 steps) and reused; bad input is checked to fail with status 2 and one line on
stderr before anything is trained or written.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import pathlib
import subprocess
import sys

import pytest

from agents import cli

STEPS = 2048
EVAL_KEYS = {"mean_return", "std_return", "episodes", "env_id", "steps", "seed", "wall_time"}


def run_main(argv):
    """``cli.main(argv)`` with stdout and stderr captured: ``(status, stdout, stderr)``."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def assert_usage_error(result, *fragments):
    """Status 2 and one line on stderr that contains every fragment."""
    status, _, err = result
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A CartPole run of 2,048 steps (seed 3, 3 evaluation episodes) and its train output."""
    run_dir = tmp_path_factory.mktemp("cli") / "cartpole"
    status, out, err = run_main(["train", "CartPole-v1", "--steps", STEPS, "--seed", 3,
                                 "--set", "eval_episodes=3", "--out", run_dir])
    assert status == 0, err
    return run_dir, out


# --- pure helpers ------------------------------------------------------------------------------


def test_fresh_run_dir_never_reuses_a_directory(tmp_path):
    first = cli.fresh_run_dir("CartPole-v1", 0, root=tmp_path)
    assert first == tmp_path / "CartPole-v1-seed0"
    first.mkdir()
    second = cli.fresh_run_dir("CartPole-v1", 0, root=tmp_path)
    assert second == tmp_path / "CartPole-v1-seed0-2"
    second.mkdir()
    assert cli.fresh_run_dir("CartPole-v1", 0, root=tmp_path).name == "CartPole-v1-seed0-3"


# --- bad input: status 2, one line, nothing trained ---------------------------------------------


@pytest.mark.parametrize("argv, fragments", [
    (["NoSuchEnv-v0"], ["NoSuchEnv-v0"]),
    (["CartPole-v1", "--steps", "0"], ["--steps", "positive integer"]),
    (["CartPole-v1", "--steps", "-5"], ["--steps"]),
    (["CartPole-v1", "--set", "max_kl=-1"], ["max_kl"]),
    (["CartPole-v1", "--set", "gamma=2"], ["gamma"]),
    (["CartPole-v1", "--set", "bogus=1"], ["bogus", "unknown setting"]),
    (["CartPole-v1", "--set", "cg_iters"], ["key=value"]),
    (["CartPole-v1", "--preset", "NoPreset"], ["NoPreset"]),
    (["CartPole-v1", "--n-envs", "0"], ["--n-envs"]),
])
def test_train_bad_input_exits_2_without_a_run(tmp_path, argv, fragments):
    out = tmp_path / "run"
    assert_usage_error(run_main(["train", *argv, "--out", out]), *fragments)
    assert not out.exists()


def test_train_refuses_a_non_empty_out_dir(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "progress.csv").write_text("env_steps\n")
    assert_usage_error(run_main(["train", "--steps", STEPS, "--out", tmp_path / "old"]),
                       "--resume")


def test_eval_and_plot_of_a_missing_run_exit_2(tmp_path):
    assert_usage_error(run_main(["eval", tmp_path / "nothing"]), "no such run directory")
    assert_usage_error(run_main(["plot", tmp_path / "nothing"]), "progress.csv")
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "config.json").write_text(json.dumps({"env_id": "CartPole-v1"}))
    assert_usage_error(run_main(["eval", tmp_path / "bare"]), "no checkpoint")
    assert_usage_error(run_main(["train", "--resume", tmp_path / "bare"]), "no checkpoint")


def test_help_and_module_entry_point():
    assert run_main(["--help"])[0] == 0
    assert run_main([])[0] == 2
    done = subprocess.run([sys.executable, "-m", "agents", "train", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--resume" in done.stdout


# --- end to end ---------------------------------------------------------------------------------


def test_train_writes_the_run_and_summary(trained_run):
    run_dir, out = trained_run
    for name in ("config.json", "progress.csv", "eval.json", "learning_curve.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "tb").is_dir() and (run_dir / "checkpoints").is_dir()
    record = json.loads((run_dir / "eval.json").read_text())
    assert EVAL_KEYS <= set(record)
    assert record["env_id"] == "CartPole-v1" and record["seed"] == 3
    assert record["steps"] >= STEPS and record["episodes"] == 3
    assert record["mean_return"] > 0 and record["wall_time"] > 0
    assert "eval: mean return" in out and str(run_dir / "eval.json") in out


def test_eval_prints_and_writes_results(trained_run):
    run_dir, _ = trained_run
    progress = (run_dir / "progress.csv").read_text()
    status, out, err = run_main(["eval", run_dir, "--episodes", 2])
    assert status == 0, err
    assert (run_dir / "progress.csv").read_text() == progress  # evaluation changes nothing
    assert "mean return" in out
    record = json.loads((run_dir / "eval.json").read_text())
    assert record["episodes"] == 2 and EVAL_KEYS <= set(record)


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is not None, reason="moviepy installed")
def test_eval_video_without_moviepy_says_how_to_install(trained_run):
    assert_usage_error(run_main(["eval", trained_run[0], "--video"]), "pip install moviepy")


def test_eval_video_records_deterministic_episodes(trained_run, monkeypatch):
    """The recording loop, with RecordVideo replaced by a wrapper that needs no encoder."""
    import gymnasium

    class FrameCounter(gymnasium.Wrapper):
        def __init__(self, env, video_folder, *, name_prefix, **_):
            super().__init__(env)
            self.folder, self.prefix, self.episode, self.frames = video_folder, name_prefix, -1, 0

        def reset(self, **kwargs):
            self.episode, self.frames = self.episode + 1, 0
            return super().reset(**kwargs)

        def step(self, action):
            result = super().step(action)
            self.frames += int(self.env.render().ndim == 3)
            if result[2] or result[3]:
                path = pathlib.Path(self.folder) / f"{self.prefix}-episode-{self.episode}.mp4"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(str(self.frames))
            return result

    monkeypatch.setattr(cli, "has_video_encoder", lambda: True)
    monkeypatch.setattr(gymnasium.wrappers, "RecordVideo", FrameCounter)
    run_dir, _ = trained_run
    status, out, err = run_main(["eval", run_dir, "--episodes", 1, "--video",
                                 "--video-episodes", 2])
    assert status == 0, err
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert len(videos) == 2 and all(int(v.read_text()) > 0 for v in videos)
    assert str(videos[0]) in out


def test_plot_several_runs(trained_run, tmp_path):
    run_dir, _ = trained_run
    png = tmp_path / "curves.png"
    status, out, err = run_main(["plot", run_dir, run_dir, "--out", png])
    assert status == 0, err
    assert png.is_file() and "CartPole-v1: 2 runs" in out


def test_resume_checks_its_arguments(trained_run):
    run_dir, _ = trained_run
    assert_usage_error(run_main(["train", "Pendulum-v1", "--resume", run_dir]),
                       "does not match", "CartPole-v1")
    assert_usage_error(run_main(["train", "--resume", run_dir, "--set", "max_kl=0.1"]),
                       "--set", "--resume")
    assert_usage_error(run_main(["train", "--resume", run_dir, "--steps", STEPS]),
                       "already done")


def test_resume_continues_the_run(trained_run):
    run_dir, _ = trained_run
    rows_before = (run_dir / "progress.csv").read_text().strip().splitlines()
    status, out, err = run_main(["train", "CartPole-v1", "--resume", run_dir,
                                 "--steps", 2 * STEPS])
    assert status == 0, err
    rows_after = (run_dir / "progress.csv").read_text().strip().splitlines()
    assert len(rows_after) > len(rows_before)
    assert json.loads((run_dir / "eval.json").read_text())["steps"] >= 2 * STEPS
    assert "resuming" in out
