"""``agents.workers``: a worker's place in a ``TF_CONFIG`` cluster, the setting several workers
refuse, and the cluster descriptions ``natgrad-trpo train --workers N`` starts its processes
with. (Training on two worker processes is ``test_distribute.py``'s.)"""

from __future__ import annotations

import json

import pytest

from agents.config import resolve_config
from agents.workers import (
    TF_CONFIG,
    check_worker_settings,
    cluster_configs,
    cluster_size,
    strategy_from_environment,
    task_index,
    worker_position,
)


def test_several_workers_refuse_skipping_a_batch_but_take_the_normalizers():
    skip = resolve_config("CartPole-v1", on_non_finite="skip")
    check_worker_settings(skip, 1)  # one worker: fine
    with pytest.raises(ValueError, match="with several workers, on_non_finite must be 'stop'"):
        check_worker_settings(skip, 2)
    for preset in ("Hopper-v5", "HalfCheetah-v5", "Walker2d-v5"):  # both normalizers on
        cfg = resolve_config(preset)
        assert cfg.normalize_obs and cfg.normalize_reward
        check_worker_settings(cfg, 2)


def test_cluster_configs_name_every_worker_on_free_loopback_ports():
    configs = [json.loads(c) for c in cluster_configs(3)]
    workers = configs[0]["cluster"]["worker"]
    assert len(workers) == len(set(workers)) == 3
    assert all(w.startswith("127.0.0.1:") and int(w.split(":")[1]) > 0 for w in workers)
    for index, config in enumerate(configs):
        assert config == {"cluster": {"worker": workers},
                          "task": {"type": "worker", "index": index}}


def test_a_worker_reads_its_place_from_tf_config(monkeypatch):
    monkeypatch.delenv(TF_CONFIG, raising=False)
    assert (cluster_size(), task_index(), worker_position(None)) == (1, 0, (0, 1))
    assert strategy_from_environment() is None  # one process: no strategy, TensorFlow unused
    monkeypatch.setenv(TF_CONFIG, cluster_configs(2)[1])
    assert (cluster_size(), task_index()) == (2, 1)
    monkeypatch.setenv(TF_CONFIG, "{not json")
    with pytest.raises(ValueError, match="not a valid cluster description"):
        cluster_size()
    assert task_index() == 0
