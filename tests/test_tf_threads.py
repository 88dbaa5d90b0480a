"""tf_threads sizes TensorFlow's pools before its first op, and says so when it no longer can."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from conftest import TINY_BATCH, TINY_CONFIG

from agents import TRPOConfig


def test_tf_threads_must_be_a_non_negative_integer():
    TRPOConfig(env_id="CartPole-v1", tf_threads=0).validate()
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="tf_threads"):
            TRPOConfig(env_id="CartPole-v1", tf_threads=bad).validate()


def test_a_new_process_gets_the_pools_the_config_asks_for():
    code = (
        "import tensorflow as tf\n"
        "from agents import TRPO\n"
        f"TRPO('CartPole-v1', tf_threads=1, **{TINY_CONFIG!r})\n"
        "t = tf.config.threading\n"
        "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": os.defpath},
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "1"]


def test_after_tensorflow_started_it_warns_once_and_training_goes_on(caplog, monkeypatch,
                                                                     tiny_config):
    import tensorflow as tf

    from agents import TRPO, tf_threads

    tf.constant(1.0) + 1.0  # TensorFlow's context is up: the pools are fixed from here on
    monkeypatch.setattr(tf_threads, "_reported", False)
    wanted = tf.config.threading.get_intra_op_parallelism_threads() + 3
    with caplog.at_level(logging.WARNING, logger="agents"):
        assert tf_threads.apply_tf_threads(wanted) is False
        TRPO("CartPole-v1", tf_threads=wanted, **tiny_config).learn(TINY_BATCH)
    warnings = [r.getMessage() for r in caplog.records if "tf_threads" in r.getMessage()]
    assert len(warnings) == 1 and f"tf_threads={wanted} not applied" in warnings[0]
    assert tf_threads.apply_tf_threads(0) is True  # 0 asks for nothing
