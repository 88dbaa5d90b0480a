"""A run's settings against a checkpoint's: which fields differ, and what to tell the user.

Pure functions of JSON dicts (a run's ``config.json`` settings, a checkpoint's ``meta``), used
by :mod:`agents.runs.run_dir` to refuse a foreign checkpoint and to explain an edited
``config.json`` without suggesting anything that loses progress.
"""

from __future__ import annotations

import shlex
from pathlib import Path

from agents.config import complete_saved_config
from agents.runs.layout import CONFIG_FILE


def checkpoint_config(meta: dict) -> dict:
    """The configuration a checkpoint's ``meta`` was trained with (``env_id`` included)."""
    theirs = (complete_saved_config(meta["config"]) if isinstance(meta.get("config"), dict)
              else {})
    return {**theirs, "env_id": meta.get("env_id")}


def config_differences(meta: dict, config: dict) -> dict[str, tuple]:
    """``{field: (checkpoint's value, config's value)}`` for each field of a checkpoint's
    ``meta`` and a run ``config`` that differ, the env id first."""
    theirs, config = checkpoint_config(meta), complete_saved_config(config)
    keys = sorted(set(theirs) | set(config), key=lambda k: (k != "env_id", k))
    return {k: (theirs.get(k), config.get(k)) for k in keys if theirs.get(k) != config.get(k)}


def describe_mismatch(meta: dict, run_id: str | None, config: dict) -> str | None:
    """Why a checkpoint's ``meta`` does not belong to the run ``(run_id, config)``, or None."""
    differing = config_differences(meta, config)
    if "env_id" in differing:
        return (f"it was written for env {meta.get('env_id')!r}, this run is "
                f"{config.get('env_id')!r}")
    if differing:
        return "it comes from a run with other settings: " + ", ".join(
            f"{k} {theirs!r} (this run: {ours!r})" for k, (theirs, ours) in differing.items())
    if run_id is not None and meta.get("run_id") != run_id:
        return (f"it comes from another run of the same settings (run id "
                f"{meta.get('run_id')!r}, this run's is {run_id!r})")
    return None


def edited_config_message(run_dir, path: Path, meta: dict, config: dict) -> str:
    """Why ``config.json`` of ``run_dir`` no longer fits its own checkpoint ``path`` (of
    ``meta``): each field with both values, and how to resume keeping all progress."""
    fields = "; ".join(f"{k} {theirs!r} in the checkpoint, {ours!r} in {CONFIG_FILE}"
                       for k, (theirs, ours) in config_differences(meta, config).items())
    return (f"{Path(run_dir) / CONFIG_FILE} no longer matches this run's checkpoint "
            f"{path.name}: {fields}. To continue from the checkpoint with the settings it was "
            f"trained with, keeping all progress: natgrad-trpo train --resume "
            f"{shlex.quote(str(run_dir))} --use-checkpoint-config (TRPO.resume(..., "
            f"use_checkpoint_config=True)), which rewrites {CONFIG_FILE} to them; or put "
            f"those values back into {CONFIG_FILE}")
