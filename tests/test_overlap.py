"""``agents.overlap``: the value fit run while the next batch is collected gives the sequential
run bit for bit, and a batch collected early is finished or undone, never half used."""

from __future__ import annotations

import itertools
import signal
import types

import numpy as np
import pytest
import tensorflow as tf

import agents.trpo
from agents import TRPO
from agents.overlap import may_prefetch
from agents.stop_signals import TrainingInterrupted


@pytest.mark.parametrize(
    "overlap, num_workers, stop_requested, checkpoint_follows, last_update",
    list(itertools.product([True, False], [1, 2], [False, True], [False, True], [False, True])))
def test_may_prefetch_only_with_overlap_one_worker_and_neither_stop_checkpoint_nor_end(
        overlap, num_workers, stop_requested, checkpoint_follows, last_update):
    cfg = types.SimpleNamespace(overlap_value_fit=overlap, batch_size=128)
    total = 5 * 128
    num_timesteps = total - 128 if last_update else 2 * 128
    expected = (overlap and num_workers == 1 and not stop_requested and not checkpoint_follows
                and not last_update)
    assert may_prefetch(cfg, num_workers=num_workers, stop_requested=stop_requested,
                        checkpoint_follows=checkpoint_follows, num_timesteps=num_timesteps,
                        total=total) is expected


def test_may_prefetch_only_when_another_update_follows_the_coming_one():
    cfg = types.SimpleNamespace(overlap_value_fit=True, batch_size=128)
    common = {"num_workers": 1, "stop_requested": False, "checkpoint_follows": False}
    assert may_prefetch(cfg, **common, num_timesteps=0, total=129)
    assert not may_prefetch(cfg, **common, num_timesteps=0, total=128)
    assert not may_prefetch(cfg, **common, num_timesteps=100, total=228)


def _sequential(monkeypatch):
    """Agents built and trained in this context never collect a batch early: each update
    collects its own (with ``overlap_value_fit``, the policy step and the value fit still run
    as two calls)."""
    monkeypatch.setattr(agents.trpo, "may_prefetch", lambda cfg, **kwargs: False)


def _collect_calls(agent):
    """Records, per rollout, whether it collected the next update's batch (during this one)."""
    worker = agent.worker
    inner, early = worker.collect, []

    def collect(*args, first_step, **kwargs):
        early.append(first_step > agent.num_timesteps)
        return inner(*args, first_step=first_step, **kwargs)

    worker.collect = collect
    return early


@pytest.mark.slow
@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {}),
                                           ("Pendulum-v1", {"normalize_obs": True,
                                                            "normalize_reward": True}),
                                           ("Hopper-v5", {})])  # its preset: both normalizers
def test_overlapped_value_fit_gives_the_sequential_run_bit_for_bit(tmp_path, tiny_config, env_id,
                                                                   extra):
    settings = {**tiny_config, **extra, "checkpoint_every": 3, "overlap_value_fit": True}
    overlapped = TRPO(env_id, run_dir=tmp_path / "overlapped", **settings)
    calls = _collect_calls(overlapped)
    overlapped.learn(7 * 128)
    sequential = TRPO(env_id, run_dir=tmp_path / "sequential",
                      **{**settings, "overlap_value_fit": False})  # the one-graph update
    sequential.learn(7 * 128)
    # 7 batches; updates 3 and 6 are checkpointed and update 7 is the last, so the batches of
    # updates 2, 3, 5 and 6 were collected early, during the value fit of the update before.
    assert len(calls) == 7 and sum(calls) == 4
    for a, b in zip(overlapped.policy.trainable_variables + overlapped.value.trainable_variables,
                    sequential.policy.trainable_variables + sequential.value.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    keep = [k for k in overlapped.history[0] if k not in ("wall_time", "steps_per_second")]
    np.testing.assert_equal([{k: r[k] for k in keep} for r in overlapped.history],
                            [{k: r[k] for k in keep} for r in sequential.history])  # NaN == NaN


@pytest.mark.slow
def test_a_stop_signal_during_an_early_rollout_finishes_that_update_then_checkpoints(
        tmp_path, tiny_config):
    settings = {**tiny_config, "checkpoint_every": 100, "save_env_state": True,
                "overlap_value_fit": True}
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", run_dir=run, **settings)
    worker = agent.worker
    inner, count = worker.collect, [0]

    def collect(*args, **kwargs):
        count[0] += 1
        if count[0] == 3:  # the batch of update 3, collected early during update 2
            signal.raise_signal(signal.SIGINT)
        return inner(*args, **kwargs)

    worker.collect = collect
    with pytest.raises(TrainingInterrupted) as stopped:
        agent.learn(8 * 128)
    # The batch collected when the signal came was used: update 3 ran, then the checkpoint.
    assert stopped.value.num_timesteps == 3 * 128 and count[0] == 3
    assert stopped.value.checkpoint.name == "update_000003.ckpt"
    resumed = TRPO.resume(run, trust_env_state=True).learn(8 * 128)
    straight = TRPO("CartPole-v1", run_dir=tmp_path / "straight", **settings).learn(8 * 128)
    for a, b in zip(resumed.policy.trainable_variables, straight.policy.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.slow
def test_a_failed_value_fit_undoes_the_batch_collected_beside_it(monkeypatch, tiny_config):
    def run():
        agent = TRPO("CartPole-v1", **{**tiny_config, "on_non_finite": "skip",
                                       "overlap_value_fit": True})
        inner, calls = agent.update_fns.value, [0]

        def value(*args):  # the second value fit reports non-finite weights
            calls[0] += 1
            out = inner(*args)
            return {**out, "value_finite": tf.constant(calls[0] != 2)}

        agent.update_fns = agent.update_fns._replace(value=value)
        return agent, _collect_calls(agent)

    overlapped, overlapped_early = run()
    overlapped.learn(5 * 128)
    with monkeypatch.context() as patch:
        _sequential(patch)
        sequential, sequential_early = run()
        sequential.learn(5 * 128)
    assert any(overlapped_early) and not any(sequential_early)
    assert overlapped.skipped_batches == sequential.skipped_batches == 1
    assert overlapped.rng.bit_generator.state == sequential.rng.bit_generator.state
    assert overlapped.worker.episodes == sequential.worker.episodes
    for a, b in zip(overlapped.policy.trainable_variables, sequential.policy.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_equal([r["mean_return"] for r in overlapped.history],
                            [r["mean_return"] for r in sequential.history])
