"""The runs of ``scripts/bench_trpo.py``: each one a timed process, finished runs kept.

A benchmark of 1M steps x seeds x tasks takes hours, longer than a job may live, so every
run's outcome is kept and a stopped sweep continues where it was:

* **natgrad**: each run trains in its own run directory, which checkpoints as any run does.
  After each budget's evaluation the child saves what it has (:data:`PARTIAL_FILE`); when
  the run is done, the parent saves the whole report (:data:`RESULT_FILE`). Started again,
  the bench reuses a finished run whose settings are the ones asked for, and a run stopped
  midway resumes from its newest checkpoint (``TRPO.resume``) with its finished budgets
  kept. A run directory holding other settings (a preset changed since) is refused, naming
  the fields, rather than mixed in: ``--fresh`` starts over.
* **sb3-contrib**: a run is deterministic given (env, seed, budgets, sb3-contrib version,
  the peer script), so its report is cached under that key in ``--peer-cache``
  (:func:`peer_cache_path`) and reused by any later invocation, which says so.

A resumed run is marked ``"segments": n`` (the processes it took); its ``process_seconds`` are
its last process's only, so only runs done in one process are used for timing ratios.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_common  # noqa: E402

BENCH_SCRIPT = HERE / "bench_trpo.py"
PEER_SCRIPT = HERE / "sb3_peer.py"
FLOOR_SCRIPT = HERE / "sim_floor.py"
RESULT_FILE = "bench_result.json"  # a finished run's report, written by the parent
PARTIAL_FILE = "bench_partial.json"  # the budgets a natgrad child has finished so far
RESULT_PREFIXES = ("NATGRAD_RESULT ", "SB3_RESULT ", "FLOOR_RESULT ")
SB3_PEER_HELP = (
    "make one with: python -m venv .venv-sb3 && .venv-sb3/bin/pip install torch "
    "--index-url https://download.pytorch.org/whl/cpu && .venv-sb3/bin/pip install sb3-contrib "
    "'gymnasium[mujoco]', then pass --peer-python .venv-sb3/bin/python (or set "
    "NATGRAD_PEER_PYTHON)")


class SettingsMismatch(RuntimeError):
    """A run directory holds a run with other settings than the ones asked for."""


def _plain(value):
    return json.loads(json.dumps(value, default=str))


# Settings that change how a run is scheduled, not a number it computes (the same run, bit for
# bit, either way): a run made with the other value is reused.
SAME_RUN_EITHER_WAY = frozenset({"overlap_value_fit"})


def differences(wanted: dict, found: dict) -> list[str]:
    """``["field: found X, wanted Y", ...]`` for the fields two configurations disagree on;
    ``found`` is a run's saved configuration, so the fields added since it was written count
    with the value it ran with (:func:`agents.config.complete_saved_config`)."""
    from agents.config import complete_saved_config

    wanted, found = _plain(wanted), _plain(complete_saved_config(found))
    return [f"{key}: the run has {found.get(key)!r}, this bench asks for {wanted.get(key)!r}"
            for key in sorted(set(wanted) | set(found))
            if key not in SAME_RUN_EITHER_WAY and wanted.get(key) != found.get(key)]


def wanted_settings(env_id: str, seed: int, overrides: dict) -> dict:
    """The configuration a natgrad run of the bench has: preset <- overrides, with ``seed``."""
    from agents.config import resolve_config

    return resolve_config(env_id, seed=seed, **overrides).to_dict()


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def finished_natgrad(run_dir: Path, budgets: list[int], settings: dict) -> dict | None:
    """The saved report of a finished natgrad run in ``run_dir`` with exactly these budgets
    and settings, or None."""
    report = read_json(run_dir / RESULT_FILE)
    if not report or sorted(r["budget"] for r in report.get("results", [])) != sorted(budgets):
        return None
    if differences(settings, report.get("settings", {})):
        raise SettingsMismatch(
            f"{run_dir} holds a finished run with other settings ("
            + "; ".join(differences(settings, report.get("settings", {}))[:3])
            + "): pass --fresh to train it again, or another --out-dir")
    return report


def peer_cache_path(cache_dir: Path, env_id: str, seed: int, budgets: list[int],
                    version: str) -> Path:
    """Where sb3-contrib's report for this key is kept: env, seed, budgets, sb3-contrib's
    version and a digest of ``sb3_peer.py`` (its settings) all name the file."""
    digest = hashlib.sha256(PEER_SCRIPT.read_bytes()).hexdigest()[:10]
    steps = "-".join(str(b) for b in sorted(budgets))
    name = f"{env_id.replace('/', '_')}-seed{seed}-steps{steps}-sb3contrib{version}-{digest}"
    return cache_dir / f"{name}.json"


def _child_env(threads: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
    if threads:
        env.update(TF_NUM_INTRAOP_THREADS=str(threads), TF_NUM_INTEROP_THREADS=str(threads),
                   OMP_NUM_THREADS=str(threads))
    return env


def timed_process(command: list[str], log: Path, threads: int, what: str) -> dict:
    """Runs ``command``; returns its last result line's JSON plus ``process_seconds``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    done = subprocess.run(command, env=_child_env(threads), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    log.write_text(done.stdout + done.stderr)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_PREFIXES)]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-15:])
        raise RuntimeError(f"{what} failed (exit {done.returncode}); log {log}:\n{tail}")
    report = json.loads(lines[-1].split(" ", 1)[1])
    report["process_seconds"] = seconds
    return report


def run_natgrad(env_id: str, seed: int, budgets: list[int], args, run_dir: Path,
                threads: int) -> dict:
    """One natgrad run, reused if finished, resumed if stopped midway (module docstring)."""
    settings = wanted_settings(env_id, seed, bench_common.trpo_overrides(args.set))
    report = finished_natgrad(run_dir, budgets, settings)
    if report is not None:
        return {**report, "reused": True}
    command = [sys.executable, str(BENCH_SCRIPT), "--child", env_id, "--seed", str(seed),
               "--run-dir", str(run_dir), "--eval-episodes", str(args.eval_episodes),
               "--budgets", *map(str, budgets), *(["--set", *args.set] if args.set else [])]
    report = timed_process(command, run_dir / "natgrad.log", threads,
                           f"natgrad run {env_id} seed {seed}")
    report.update(side="natgrad", reused=False)
    bench_common.write_json(run_dir / RESULT_FILE, report)
    return report


def run_peer(env_id: str, seed: int, budgets: list[int], args, run_dir: Path, threads: int,
             *, version: str, cache_dir: Path | None) -> dict:
    """One sb3-contrib run, or its cached report (module docstring)."""
    cached = peer_cache_path(cache_dir, env_id, seed, budgets, version) if cache_dir else None
    if cached is not None and (report := read_json(cached)) is not None:
        return {**report, "reused": True, "cache": str(cached)}
    command = [args.peer_python, str(PEER_SCRIPT), env_id, "--seed", str(seed),
               "--eval-episodes", str(args.eval_episodes), "--threads", str(threads or 1),
               "--budgets", *map(str, budgets)]
    report = timed_process(command, run_dir / "sb3.log", threads,
                           f"sb3 run {env_id} seed {seed}")
    report.update(side="sb3", reused=False, segments=1)
    report.setdefault("eval_seconds", 0.0)
    if cached is not None and args.eval_episodes > 0:
        bench_common.write_json(cached, {**report, "cache_key": {
            "env_id": env_id, "seed": seed, "budgets": sorted(budgets),
            "sb3_contrib": version}})
    return report


def run_floor(env_id: str, steps: int, n_envs: int, out_dir: Path, threads: int) -> dict:
    """The bare simulator's time for ``steps`` (``sim_floor.py``), kept in ``out_dir``."""
    path = out_dir / f"{env_id.replace('/', '_')}-{steps}-x{n_envs}.json"
    if (report := read_json(path)) is not None:
        return {**report, "reused": True}
    command = [sys.executable, str(FLOOR_SCRIPT), env_id, "--steps", str(steps),
               "--n-envs", str(n_envs)]
    report = timed_process(command, path.with_suffix(".log"), threads, f"floor {env_id}")
    bench_common.write_json(path, report)
    return {**report, "reused": False}


def find_peer(requested: str | None) -> tuple[str | None, str, str]:
    """``(python, sb3-contrib version, why)``: an interpreter that can import sb3_contrib and
    torch, or None and the reason."""
    if requested == "none":
        return None, "", "--peer-python none"
    candidates = [requested] if requested else [os.environ.get("NATGRAD_PEER_PYTHON"),
                                                sys.executable]
    why = "no interpreter to try"
    for python in filter(None, candidates):
        try:
            probe = subprocess.run(
                [python, "-c", "import sb3_contrib, torch; print(sb3_contrib.__version__)"],
                capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as exc:
            why = f"{python}: {exc}"
            continue
        if probe.returncode == 0:
            return python, probe.stdout.strip().splitlines()[-1], ""
        why = f"{python} cannot import sb3_contrib and torch"
    return None, "", why
