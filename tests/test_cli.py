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
import os
import pathlib
import shlex
import subprocess
import sys

import pytest
from conftest import TINY_CONFIG, cli_settings, fails_instead_of_hanging

from agents import cli
from agents.cli.setup import fresh_run_dir

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
    first = fresh_run_dir("CartPole-v1", 0, root=tmp_path)
    assert first == tmp_path / "CartPole-v1-seed0"
    first.mkdir()
    second = fresh_run_dir("CartPole-v1", 0, root=tmp_path)
    assert second == tmp_path / "CartPole-v1-seed0-2"
    second.mkdir()
    assert fresh_run_dir("CartPole-v1", 0, root=tmp_path).name == "CartPole-v1-seed0-3"


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
    (["CartPole-v1", "--set", "n_steps=1000000000000"], ["n_steps=1000000000000", "limit"]),
    (["CartPole-v1", "--set", "policy_hidden=100000000"], ["policy_hidden", "limit"]),
    (["CartPole-v1", "--set", "env_id=Pendulum-v1"], ["--set env_id", "ENV_ID"]),
    (["CartPole-v1", "--seed", "1", "--set", "seed=2"], ["--set seed=2", "--seed 1"]),
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
    assert_usage_error(run_main(["eval", tmp_path / "bare"]), "no usable checkpoint")
    assert_usage_error(run_main(["train", "--resume", tmp_path / "bare"]), "older version")


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
    assert_usage_error(run_main(["eval", trained_run[0], "--video"]), "natgrad[video]")


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None,
                    reason="needs the video extra: pip install -e '.[video]'")
def test_eval_video_encodes_a_real_mp4(trained_run):
    run_dir, _ = trained_run
    status, out, err = run_main(["eval", run_dir, "--episodes", 1, "--video"])
    assert status == 0, err
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert len(videos) == 1 and str(videos[0]) in out
    data = videos[0].read_bytes()
    assert len(data) > 1000 and data[4:8] == b"ftyp"  # an ISO media (mp4) file


def test_eval_video_refuses_a_fifo_planted_as_its_mp4_before_writing_anything(trained_run,
                                                                             tmp_path,
                                                                             monkeypatch):
    import gymnasium.wrappers

    import agents.runs.evaluation

    def recording(*args, **kwargs):  # the encoder would block on the FIFO: fail instead
        raise AssertionError("a video was recorded despite the FIFO at its path")

    monkeypatch.setattr(agents.runs.evaluation, "has_video_encoder", lambda: True)
    monkeypatch.setattr(gymnasium.wrappers, "RecordVideo", recording)
    run_dir = _copy_run(trained_run[0], tmp_path / "run")
    (run_dir / "videos").mkdir(exist_ok=True)
    fifo = run_dir / "videos" / f"CartPole-v1-step{STEPS}-episode-0.mp4"
    fifo.unlink(missing_ok=True)  # recorded by an earlier test
    os.mkfifo(fifo)
    before = _snapshot(run_dir)
    assert_usage_error(run_main(["eval", run_dir, "--episodes", 1, "--video"]), str(fifo),
                       "not a regular file (a FIFO)")
    assert _snapshot(run_dir) == before


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


# --- a run directory shared, interrupted, or filled with someone else's files -----------------

#: The tiny config as ``--set`` options, checkpointing every second update, one evaluation
#: episode.
SMALL = cli_settings({**TINY_CONFIG, "checkpoint_every": 2, "eval_episodes": 1})


def _snapshot(run_dir: pathlib.Path) -> dict:
    """Every file under ``run_dir`` (except the lock) with its bytes."""
    return {p.relative_to(run_dir): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(scope="module")
def small_runs(tmp_path_factory):
    """Three 512-step runs: CartPole seed 0, CartPole seed 1, Pendulum; and one more
    CartPole seed 0 (same settings as the first, another run). 16 updates in all: the tests
    using them are marked slow."""
    root = tmp_path_factory.mktemp("small")
    runs = {}
    for name, argv in [("cartpole", ["CartPole-v1"]), ("seed1", ["CartPole-v1", "--seed", 1]),
                       ("pendulum", ["Pendulum-v1"]), ("twin", ["CartPole-v1"])]:
        runs[name] = root / name
        status, _, err = run_main(["train", *argv, "--steps", 512, *SMALL, "--out", runs[name]])
        assert status == 0, err
    return runs


def _copy_run(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock"))
    return dst


@pytest.mark.slow
@pytest.mark.parametrize("intruder, fragments", [
    ("pendulum", ["written for env 'Pendulum-v1'", "'CartPole-v1'"]),
    ("seed1", ["other settings", "seed 1 (this run: 0)"]),
    ("twin", ["another run of the same settings"]),
])
def test_a_checkpoint_from_another_run_is_refused_and_nothing_changes(small_runs, tmp_path,
                                                                      intruder, fragments):
    run_dir = _copy_run(small_runs["cartpole"], tmp_path / "run")
    foreign = sorted((small_runs[intruder] / "checkpoints").glob("*.ckpt"))[-1]
    (run_dir / "checkpoints" / "update_000009.ckpt").write_bytes(foreign.read_bytes())
    before = _snapshot(run_dir)
    assert_usage_error(run_main(["eval", run_dir]), "update_000009.ckpt", *fragments)
    assert_usage_error(run_main(["train", "--resume", run_dir, "--steps", 2048]),
                       "update_000009.ckpt", *fragments)
    assert _snapshot(run_dir) == before


@pytest.mark.slow
def test_an_edited_config_json_names_each_field_and_resumes_keeping_all_progress(small_runs,
                                                                                tmp_path):
    run_dir = _copy_run(small_runs["cartpole"], tmp_path / "my run")
    rows = (run_dir / "progress.csv").read_text().splitlines()
    data = json.loads((run_dir / "config.json").read_text())
    trained_with = dict(data["config"])
    data["config"].update(max_kl=0.05, critic_lr=0.5)
    (run_dir / "config.json").write_text(json.dumps(data))
    before = _snapshot(run_dir)
    result = run_main(["train", "--resume", run_dir, "--steps", 768])
    assert_usage_error(result, "update_000004.ckpt",
                       "critic_lr 0.001 in the checkpoint, 0.5 in config.json",
                       "max_kl 0.01 in the checkpoint, 0.05 in config.json",
                       f"--resume {shlex.quote(str(run_dir))} --use-checkpoint-config",
                       "keeping all progress")
    assert "move it out" not in result[2].lower()  # nothing that restarts at step 0
    assert _snapshot(run_dir) == before

    status, out, err = run_main(["train", "--resume", run_dir, "--use-checkpoint-config",
                                 "--steps", 768])
    assert status == 0, err
    assert "resuming" in out and "from 512 to 768" in out
    rewritten = json.loads((run_dir / "config.json").read_text())
    assert rewritten == {"run_id": data["run_id"], "config": trained_with}
    after = (run_dir / "progress.csv").read_text().splitlines()
    assert after[:len(rows)] == rows and len(after) == len(rows) + 2  # kept, then continued

    # A config.json no agent can be built from says the same way out.
    data["config"]["n_steps"] = 10**12
    (run_dir / "config.json").write_text(json.dumps(data))
    assert_usage_error(run_main(["train", "--resume", run_dir, "--steps", 1024]),
                       "n_steps=1000000000000", "--use-checkpoint-config")


def test_resume_only_options_need_resume(tmp_path):
    for flag in ("--use-checkpoint-config", "--trust-env-state"):
        assert_usage_error(run_main(["train", "--steps", 256, "--out", tmp_path / "x", flag]),
                           flag, "--resume")
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_network_shape_mismatch_is_named(small_runs, tmp_path):
    run_dir = tmp_path / "wide"
    status, _, err = run_main(["train", "--steps", 256, *SMALL, "--set", "policy_hidden=32",
                               "--out", run_dir])
    assert status == 0, err
    foreign = sorted((small_runs["cartpole"] / "checkpoints").glob("*.ckpt"))[-1]
    (run_dir / "checkpoints" / "update_000009.ckpt").write_bytes(foreign.read_bytes())
    assert_usage_error(run_main(["eval", run_dir]), "policy_hidden [16] (this run: [32])")


@pytest.mark.slow
def test_resume_falls_back_past_a_corrupt_checkpoint_and_says_so(small_runs, tmp_path):
    run_dir = _copy_run(small_runs["cartpole"], tmp_path / "run")
    newest = sorted((run_dir / "checkpoints").glob("*.ckpt"))[-1]
    newest.write_bytes(newest.read_bytes()[:100])
    (run_dir / "checkpoints" / ".update_000006.ckpt.x1.tmp").write_bytes(b"half")
    with (run_dir / "progress.csv").open("a") as f:
        f.write("4")  # a row torn by a crash
    status, out, err = run_main(["train", "--resume", run_dir, "--steps", 768])
    assert status == 0, err
    assert f"skipped {newest}" in err and "truncated or corrupt" in err
    assert "removed" in err and not list((run_dir / "checkpoints").glob(".*.tmp"))
    lines = (run_dir / "progress.csv").read_text().splitlines()
    assert all(line.count(",") == lines[0].count(",") for line in lines)
    assert [int(line.split(",")[0]) for line in lines[1:]] == [128, 256, 384, 512, 640, 768]
    assert "resuming" in out


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path):
    run_dir = tmp_path / "busy"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from agents.runs.run_dir import RunLock\n"
         f"with RunLock({str(run_dir)!r}):\n    print('locked', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert_usage_error(run_main(["train", "--steps", 256, *SMALL, "--out", run_dir]),
                           "in use by another natgrad-trpo process", f"pid {holder.pid}")
        assert_usage_error(run_main(["train", "--resume", run_dir]),
                           "in use by another natgrad-trpo process")
        assert [p.name for p in run_dir.iterdir()] == [".lock"]
    finally:
        holder.communicate("", timeout=30)
    # The lock went with its process: the directory is free again.
    status, _, err = run_main(["train", "--steps", 256, *SMALL, "--out", run_dir])
    assert status == 0, err


@pytest.mark.slow
def test_ctrl_c_checkpoints_and_the_run_resumes(tmp_path):
    """A real SIGINT once the first update is logged (an event, not a time): the run stops
    with its first checkpoint, and resumes from it."""
    import signal
    import time

    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "agents", "train", "--steps", "10_000_000",
                             *map(str, SMALL), "--set", "checkpoint_every=1000",
                             "--out", str(run_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run_dir / "progress.csv").exists():  # the first update is done
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    checkpoints = sorted((run_dir / "checkpoints").glob("update_*.ckpt"))
    assert len(checkpoints) == 1 and str(checkpoints[0]) in err and "--resume" in err
    status, out, err = run_main(["train", "--resume", run_dir, "--steps", 1024])
    assert status == 0, err


def test_a_run_stopped_before_its_first_checkpoint_restarts_in_place(tmp_path):
    from agents.config import resolve_config
    from agents.runs.run_dir import write_run_config

    run_dir = tmp_path / "early"
    config = resolve_config("CartPole-v1", **TINY_CONFIG, eval_episodes=1)
    write_run_config(run_dir, "0123456789abcdef0123456789abcdef", config.to_dict())
    (run_dir / "progress.csv").write_text("env_steps,wall_time\n128,0.5\n")
    status, out, err = run_main(["train", "--resume", run_dir, "--steps", 256])
    assert status == 0, err
    assert "no checkpoint yet: the run restarts from its start" in err
    assert (run_dir / "checkpoints" / "update_000002.ckpt").is_file()


def test_malformed_run_directories_get_one_line(tmp_path):
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "config.json").write_text("[1, 2]")
    assert_usage_error(run_main(["eval", tmp_path / "list"]), "not a run configuration",
                       "JSON list")
    assert_usage_error(run_main(["train", "--resume", tmp_path / "list"]),
                       "not a run configuration")
    (tmp_path / "afile").write_text("x")
    assert_usage_error(run_main(["train", "--out", tmp_path / "afile"]), "is a file")


@pytest.mark.slow
def test_os_errors_are_one_line_naming_the_path(small_runs, tmp_path, monkeypatch):
    import errno

    from agents.runs import checkpoint

    run_dir = _copy_run(small_runs["cartpole"], tmp_path / "run")
    real_write = checkpoint.atomic_write_bytes

    def read_only(path, data, **_):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", read_only)
    import agents.runs.evaluation

    monkeypatch.setattr(agents.runs.evaluation, "atomic_write_bytes", read_only)
    status, out, err = run_main(["eval", run_dir, "--episodes", 1])
    assert status == 1 and "mean return" in out  # the result is shown all the same
    assert err.strip() == (f"natgrad-trpo eval: error: cannot write {run_dir / 'eval.json'}: "
                           "Read-only file system")

    def disk_full(path, data, **where):
        if str(path).endswith(".ckpt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_write(path, data, **where)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", disk_full)
    import agents.trpo

    monkeypatch.setattr(agents.trpo, "write_checkpoint",
                        lambda path, meta, arrays: disk_full(path, b""))
    status, out, err = run_main(["train", "--steps", 256, *SMALL, "--out", tmp_path / "full"])
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    assert status == 1 and len(lines) == 1, err
    assert "cannot write" in lines[0] and "No space left on device" in lines[0]


def test_help_and_bad_input_do_not_import_tensorflow_and_print_no_log_noise(tmp_path):
    probe = ("import sys; from agents import cli\n"
             "for argv in (['--help'], ['train', '--help'], ['train', '--set', 'bogus=1'],"
             " ['train', 'NoSuchEnv-v0'], ['eval', 'nowhere']):\n"
             "    try: cli.main(argv)\n"
             "    except SystemExit: pass\n"
             "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("TF_CPP")}
    train = subprocess.run([sys.executable, "-m", "agents", "train", "--steps", "256", *SMALL,
                            "--out", str(tmp_path / "run")], capture_output=True, text=True,
                           timeout=300, env=env)
    assert train.returncode == 0, train.stderr
    noise = [line for line in train.stderr.splitlines()
             if "absl" in line or line[:1] in "IWEF" and line[1:5].isdigit()]
    assert noise == [], noise


# --- hostile or mistyped run directories: refused in one line, nothing created or hung on -------


def _bare_run(run_dir: pathlib.Path) -> pathlib.Path:
    """A run directory with a valid config.json and no checkpoint."""
    from agents.config import resolve_config
    from agents.runs.run_dir import write_run_config

    config = resolve_config("CartPole-v1", **TINY_CONFIG, eval_episodes=1)
    write_run_config(run_dir, "0123456789abcdef0123456789abcdef", config.to_dict())
    return run_dir


def _cli_subprocess(*argv, timeout=30):
    """``python -m agents ARGV`` that must finish within ``timeout`` seconds (a hang fails)."""
    return subprocess.run([sys.executable, "-m", "agents", *map(str, argv)],
                          capture_output=True, text=True, timeout=timeout)


def _one_line_usage_error(done, *fragments):
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_fifo_checkpoint_is_refused_not_waited_on(tmp_path):
    run_dir = _bare_run(tmp_path / "run")
    (run_dir / "checkpoints").mkdir()
    os.mkfifo(run_dir / "checkpoints" / "update_000002.ckpt")
    before = sorted(p.name for p in run_dir.rglob("*"))
    _one_line_usage_error(_cli_subprocess("eval", run_dir), "update_000002.ckpt",
                          "not a regular file")
    _one_line_usage_error(_cli_subprocess("train", "--resume", run_dir, "--steps", 512),
                          "update_000002.ckpt", "not a regular file")
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # no .lock left either


def test_a_fifo_config_json_is_refused_by_eval_resume_and_plot(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.mkfifo(run_dir / "config.json")
    (run_dir / "progress.csv").write_text("env_steps,wall_time,mean_return\n128,1.0,9.0\n")
    _one_line_usage_error(_cli_subprocess("eval", run_dir), "config.json", "not a regular file")
    _one_line_usage_error(_cli_subprocess("train", "--resume", run_dir), "config.json",
                          "not a regular file")
    done = _cli_subprocess("plot", run_dir, "--out", tmp_path / "curve.png")
    assert done.returncode == 0 and "config.json" in done.stderr, done.stderr
    assert (tmp_path / "curve.png").is_file()


def test_a_progress_csv_linked_out_of_the_run_is_refused_by_plot(tmp_path):
    run_dir = _bare_run(tmp_path / "run")
    outside = tmp_path / "elsewhere.csv"
    outside.write_text("env_steps,wall_time,mean_return\n128,1.0,9.0\n")
    (run_dir / "progress.csv").symlink_to(outside)
    assert_usage_error(run_main(["plot", run_dir, "--out", tmp_path / "c.png"]),
                       "progress.csv", "outside the run directory")
    assert not (tmp_path / "c.png").exists()


def test_resume_of_a_missing_directory_creates_nothing(tmp_path):
    assert_usage_error(run_main(["train", "--resume", tmp_path / "typo"]),
                       "no such run directory")
    assert not (tmp_path / "typo").exists()


def test_an_edited_config_json_too_large_for_memory_is_refused_on_resume(tmp_path):
    run_dir = _bare_run(tmp_path / "run")
    data = json.loads((run_dir / "config.json").read_text())
    data["config"]["n_steps"] = 10**12
    (run_dir / "config.json").write_text(json.dumps(data))
    assert_usage_error(run_main(["train", "--resume", run_dir, "--steps", 512]),
                       "n_steps=1000000000000", "limit")


def test_printed_commands_quote_the_run_directory(tmp_path, capsys):
    class Interrupted:
        config = __import__("agents.config").config.resolve_config("CartPole-v1")
        worker_index, num_timesteps = 0, 0

        def learn(self, budget, progress_bar=False):
            raise KeyboardInterrupt

    run_dir = tmp_path / "my runs; rm -rf x"
    assert cli._train(Interrupted(), run_dir, 100, resumed=False) == 130
    err = capsys.readouterr().err
    assert f"natgrad-trpo train --resume {shlex.quote(str(run_dir))}" in err
    assert shlex.split(err.splitlines()[-1])[-1] == str(run_dir)


def test_plot_writes_exactly_the_path_it_reports(tmp_path):
    run_dir = _bare_run(tmp_path / "run")
    (run_dir / "progress.csv").write_text("env_steps,wall_time,mean_return\n128,1.0,9.0\n")
    status, out, err = run_main(["plot", run_dir, "--out", tmp_path / "curves_noext"])
    assert status == 0, err
    assert f"learning curves written to {tmp_path / 'curves_noext'}\n" in out
    assert (tmp_path / "curves_noext").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "curves_noext.png").exists()


def _plant(run_dir: pathlib.Path, name: str, kind: str, outside: pathlib.Path) -> None:
    path = run_dir / name
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link out":
        path.symlink_to(outside, target_is_directory=outside.is_dir())


@pytest.mark.parametrize(("command", "name", "kind", "fragment"), [
    ("resume", "progress.csv", "fifo", "not a regular file (a FIFO)"),
    ("resume", "progress.csv", "link out", "outside the run directory"),
    ("resume", "tb", "link out", "outside the run directory"),
    ("resume", "checkpoints", "link out", "outside the run directory"),
    ("resume", "eval.json", "fifo", "not a regular file (a FIFO)"),
    ("eval", "eval.json", "fifo", "not a regular file (a FIFO)"),
    ("eval", "eval.json", "link out", "outside the run directory"),
    ("eval", "learning_curve.png", "link out", "outside the run directory"),
    ("plot", "learning_curve.png", "fifo", "not a regular file (a FIFO)"),
    ("plot", "learning_curve.png", "link out", "outside the run directory"),
])
def test_a_run_file_planted_as_a_fifo_or_a_link_out_is_refused_writing_nothing(
        tmp_path, command, name, kind, fragment):
    run_dir = _bare_run(tmp_path / "run")
    (run_dir / "progress.csv").write_text("env_steps,wall_time,mean_return\n128,1.0,9.0\n")
    if name == "progress.csv":
        (run_dir / name).unlink()
    outside = tmp_path / ("outside" if name in ("tb", "checkpoints") else "outside.txt")
    if outside.suffix:
        outside.write_text("theirs")
    else:
        outside.mkdir()
    _plant(run_dir, name, kind, outside)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    argv = {"resume": ["train", "--resume", run_dir, "--steps", 4096],
            "eval": ["eval", run_dir], "plot": ["plot", run_dir]}[command]
    with fails_instead_of_hanging(20):  # a FIFO opened would block
        assert_usage_error(run_main(argv), str(run_dir / name), fragment)
    after = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert after == before  # a refused resume removes the .lock it created
    if outside.suffix:
        assert outside.read_text() == "theirs"
    else:
        assert list(outside.iterdir()) == []


def test_a_checkpoint_member_larger_than_the_agent_could_need_is_refused_unread(tmp_path):
    from agents.runs.checkpoint import write_checkpoint
    from agents.runs.checkpoint_limits import run_limits
    from agents.runs.run_dir import read_run_config

    run_dir = _bare_run(tmp_path / "run")
    run_id, config = read_run_config(run_dir)
    bound = run_limits(config)(None).value
    write_checkpoint(run_dir / "checkpoints" / "update_000001.ckpt",
                     {"run_id": run_id, "env_id": "CartPole-v1", "config": config},
                     {"value/000": __import__("numpy").zeros(bound // 8 + 1)})
    for argv in (["eval", run_dir], ["train", "--resume", run_dir, "--steps", 4096]):
        assert_usage_error(run_main(argv), "update_000001.ckpt", "member 'value/000' declares",
                           f"more than the {bound:,} an agent of this run's settings can need")
    assert not (run_dir / "eval.json").exists() and not (run_dir / "tb").exists()
