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


def _blas_threads() -> set[int]:
    from threadpoolctl import threadpool_info

    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_blas_threads_limits_numpy_inside_the_block_and_gives_back_what_was_there():
    from threadpoolctl import threadpool_limits

    from agents.tf_threads import blas_threads

    with threadpool_limits(limits=2, user_api="blas"):  # a known start, whatever the machine
        assert _blas_threads() == {2}
        with blas_threads(1):
            assert _blas_threads() == {1}
        assert _blas_threads() == {2}
        with blas_threads(0):  # 0 asks for nothing
            assert _blas_threads() == {2}


@pytest.mark.parametrize("threads, during", [(1, {1}), (0, {2})])
def test_learn_runs_numpy_on_the_configured_blas_threads_and_restores_them(
        threads, during, tiny_config):
    from threadpoolctl import threadpool_limits

    from agents import TRPO

    with threadpool_limits(limits=2, user_api="blas"):
        agent = TRPO("CartPole-v1", tf_threads=threads, **tiny_config)
        seen = []
        estimate = agent.estimate_advantages

        def watched(rollout):  # runs inside learn(), once an update
            seen.append(_blas_threads())
            return estimate(rollout)

        agent.estimate_advantages = watched
        agent.learn(2 * TINY_BATCH)
        assert seen == [during, during]
        assert _blas_threads() == {2}


def test_one_blas_thread_trains_the_same_run_bit_for_bit_as_several():
    """The limit changes which threads compute NumPy's products, not what they compute: a
    batch of 2,048 states (value predictions of ``[2048, 4] x [4, 64]`` and ``[2048, 64] x
    [64, 64]``, large enough for the BLAS library to split) gives the same weights."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from agents import TRPO

    def trained(tf_threads: int) -> list:
        agent = TRPO("CartPole-v1", tf_threads=tf_threads, n_envs=2, n_steps=1024,
                     critic_epochs=2, seed=5)
        agent.learn(2 * 2048)
        return [v.numpy() for v in (*agent.policy.trainable_variables,
                                    *agent.value.trainable_variables)]

    with threadpool_limits(limits=2, user_api="blas"):
        several = trained(0)  # the BLAS threads left at 2
        one = trained(1)  # learn() limits them to 1 (TensorFlow's pools are fixed by now)
    assert all(np.array_equal(a, b) for a, b in zip(several, one, strict=True))
