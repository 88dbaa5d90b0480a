"""``agents.worker_sync``: the workers' per-update agreement, on a cluster simulated by threads
(the collective a sum over every thread's table; the real one is ``test_distribute.py``'s)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from agents.envs.normalization import RewardScaler, RunningMeanStd
from agents.rollout import NonFiniteError
from agents.worker_sync import WorkerSync

WORKERS = 2


def _cluster_all_reduces(workers: int) -> list:
    """One ``all_reduce(table)`` per worker: each returns the sum of every worker's table
    once all have called it (a barrier, as a collective is)."""
    barrier, tables = threading.Barrier(workers, timeout=10), [None] * workers

    def all_reduce_of(index):
        def all_reduce(table):
            tables[index] = table
            barrier.wait()
            total = sum(tables)
            barrier.wait()  # everyone has summed before a table is replaced
            return total

        return all_reduce

    return [all_reduce_of(k) for k in range(workers)]


def _run_workers(work) -> list:
    """``work(k)`` on a thread per worker; returns what each returned or raised."""
    results = [None] * WORKERS

    def run(k):
        try:
            results[k] = work(k)
        except Exception as exc:  # noqa: BLE001 - handed to the test
            results[k] = exc

    threads = [threading.Thread(target=run, args=(k,)) for k in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return results


def _syncs():
    reduces = _cluster_all_reduces(WORKERS)
    normalizers = [(RunningMeanStd((2,)), RewardScaler(3, 0.9)) for _ in range(WORKERS)]
    syncs = [WorkerSync(obs, reward, index=k, workers=WORKERS, all_reduce=reduces[k])
             for k, (obs, reward) in enumerate(normalizers)]
    return syncs, normalizers


def test_every_worker_ends_an_update_with_the_statistics_of_all_samples():
    """Both normalizers: after each update every worker holds the same statistics, those of
    one process fed every worker's samples (each worker's discounted returns by hand)."""
    syncs, normalizers = _syncs()
    rng = np.random.default_rng(0)
    data = [[(rng.normal(3 * k, 1 + k, size=(4, 2)), rng.normal(k, 2.0, size=(4, 3)))
             for _ in range(2)] for k in range(WORKERS)]  # per worker, per update
    one_process = (RunningMeanStd((2,)), RunningMeanStd(()))
    discounted = [np.zeros(3) for _ in range(WORKERS)]
    for update in range(2):
        def work(k, update=update):
            obs_rms, scaler = normalizers[k]
            with syncs[k].batch():
                obs, rewards = data[k][update]
                for t in range(len(obs)):
                    obs_rms.update(obs[t:t + 1])
                    scaler.scale(rewards[t], np.zeros(3, bool))

        assert _run_workers(work) == [None, None]
        for k in range(WORKERS):  # the same samples, in worker order, for one process
            obs, rewards = data[k][update]
            for t in range(len(obs)):
                one_process[0].update(obs[t:t + 1])
                discounted[k] = 0.9 * discounted[k] + rewards[t]
                one_process[1].update(discounted[k])
        for obs_rms, scaler in normalizers:
            for mine, chief, alone in ((obs_rms, normalizers[0][0], one_process[0]),
                                       (scaler.rms, normalizers[0][1].rms, one_process[1])):
                np.testing.assert_array_equal(mine.mean, chief.mean)
                np.testing.assert_array_equal(mine.var, chief.var)
                assert mine.count == chief.count == pytest.approx(alone.count, rel=1e-14)
                np.testing.assert_allclose(mine.mean, alone.mean, rtol=1e-12)
                np.testing.assert_allclose(mine.var, alone.var, rtol=1e-12)
    # Each worker's own discounted returns stay its own (its envs' episodes).
    for (_, scaler), mine in zip(normalizers, discounted, strict=True):
        np.testing.assert_allclose(scaler.returns, mine, rtol=1e-14)


def test_a_batch_that_is_not_finite_on_one_worker_stops_every_worker_at_that_update():
    syncs, normalizers = _syncs()
    own = NonFiniteError("the reward is not finite (nan) at env step 9 (env 1)")
    before = [obs_rms.state() for obs_rms, _ in normalizers]

    def work(k):
        with syncs[k].batch():
            normalizers[k][0].update(np.full((1, 2), float(k)))
            if k == 1:
                raise own
        return "went on"

    first, second = _run_workers(work)
    assert second is own
    assert isinstance(first, NonFiniteError) and "worker 1's batch is not finite" in str(first)
    for (obs_rms, _), state in zip(normalizers, before, strict=True):
        assert obs_rms.count > state["count"]  # not merged: the agent's rollback restores it
    # The next update agrees again (the failed one's unmerged samples are the rollback's).
    for (obs_rms, _), state in zip(normalizers, before, strict=True):
        obs_rms.load_state(state)
    assert _run_workers(lambda k: work(0) if k == 0 else _quiet(syncs[1])) == ["went on", None]


def _quiet(sync):
    with sync.batch():
        pass


def test_one_process_exchanges_and_tracks_nothing():
    obs_rms = RunningMeanStd((2,))
    sync = WorkerSync(obs_rms, None)
    with sync.batch():
        obs_rms.update(np.ones((3, 2)))
    assert obs_rms.unmerged is None and sync.all_reduce is None
    with pytest.raises(NonFiniteError, match="own"), sync.batch():
        raise NonFiniteError("own")
