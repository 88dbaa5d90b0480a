"""What several workers agree on once per update, before the update itself: whether every
worker's batch is finite, and the normalizers' statistics.

Each worker collects its batch alone (its own envs, its own running statistics). Then, in one
collective, every worker learns every other's

* **verdict**: whether its batch (observations, rewards, returns, advantages) is finite. If one
  is not, every worker raises :class:`agents.rollout.NonFiniteError` at this same update and
  undoes it (:mod:`agents.rollback`): none is left waiting in a collective the others skipped;
* **new samples**: the :class:`agents.envs.normalization.Moments` of the observations (and
  discounted returns, for reward scaling) it saw since the last update. Every worker merges
  them in worker order into the statistics of the last update
  (:meth:`~agents.envs.normalization.RunningMeanStd.merge`), so all hold identical
  statistics: those of one process that saw every worker's samples.

The collective is an all-reduce (sum) of a ``[workers, width]`` float64 table in which each
worker fills only its own row: every other entry adds zeros, so the sum is each worker's row
exactly, an all-gather. With one worker nothing is exchanged and nothing is tracked: a
single process runs exactly as before.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np

from agents.envs.normalization import Moments, RewardScaler, RunningMeanStd
from agents.rollout import NonFiniteError
from agents.workers import worker_position


class WorkerSync:
    """The per-update agreement of a cluster's workers (a no-op for one process).

    Args:
      obs_rms: the observation statistics, or ``None`` when ``normalize_obs`` is off.
      reward_scaler: the reward scaler, or ``None`` when ``normalize_reward`` is off.
      index: this worker's index, ``0 <= index < workers``.
      workers: the number of workers (1: nothing is exchanged or tracked).
      all_reduce: ``table [workers, width] -> sum of every worker's table`` (NumPy), a
        collective every worker calls; :meth:`from_strategy` makes it from the strategy.
    """

    def __init__(self, obs_rms: RunningMeanStd | None, reward_scaler: RewardScaler | None, *,
                 index: int = 0, workers: int = 1,
                 all_reduce: Callable[[np.ndarray], np.ndarray] | None = None):
        self.index, self.workers, self.all_reduce = index, workers, all_reduce
        self.statistics = [rms for rms in (obs_rms, None if reward_scaler is None
                                           else reward_scaler.rms) if rms is not None]
        if workers > 1:
            for rms in self.statistics:
                rms.track_unmerged()

    @classmethod
    def from_strategy(cls, strategy, obs_rms: RunningMeanStd | None,
                      reward_scaler: RewardScaler | None) -> WorkerSync:
        """The agreement of the workers of ``strategy`` (``None``: one process)."""
        index, workers = worker_position(strategy)
        return cls(obs_rms, reward_scaler, index=index, workers=workers,
                   all_reduce=None if workers == 1 else table_all_reduce(strategy))

    @property
    def width(self) -> int:
        """Entries of a worker's row: its verdict, then count, mean and M2 of each statistic."""
        return 1 + sum(1 + 2 * rms.mean.size for rms in self.statistics)

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Around collecting and checking a batch: with several workers, on leaving, every
        worker goes on with merged statistics, or every worker raises
        :class:`NonFiniteError` (this worker's own, if its batch was the one)."""
        if self.workers == 1:
            yield
            return
        try:
            yield
        except NonFiniteError as exc:
            self.agree(exc)
            raise
        self.agree(None)

    def agree(self, error: NonFiniteError | None) -> None:
        """The collective: sends this worker's verdict (``error``) and new samples, merges
        everyone's samples, or raises :class:`NonFiniteError` when a batch was not finite
        (``error`` itself on the worker that met it)."""
        table = np.zeros((self.workers, self.width), np.float64)
        table[self.index] = self.row(error is None)
        rows = self.all_reduce(table)
        failed = [k for k in range(self.workers) if rows[k, 0] != 1.0]
        if failed:
            if error is not None:
                raise error
            raise NonFiniteError(
                f"worker {failed[0]}'s batch is not finite (that worker's log names the "
                "quantity and the env step); every worker undoes this update")
        for number, rms in enumerate(self.statistics):
            rms.merge([unpack(row, self.statistics, number) for row in rows])

    def row(self, finite: bool) -> np.ndarray:
        """This worker's row: ``[finite, (count, mean..., m2...) of each statistic]``."""
        parts = [np.array([1.0 if finite else 0.0])]
        for rms in self.statistics:
            moments = rms.unmerged
            parts += [np.array([moments.count]), np.ravel(moments.mean), np.ravel(moments.m2)]
        return np.concatenate(parts)


def unpack(row: np.ndarray, statistics: list[RunningMeanStd], number: int) -> Moments:
    """The :class:`Moments` of statistic ``number`` in a row made by :meth:`WorkerSync.row`."""
    start = 1 + sum(1 + 2 * rms.mean.size for rms in statistics[:number])
    shape, size = statistics[number].mean.shape, statistics[number].mean.size
    return Moments(float(row[start]), row[start + 1:start + 1 + size].reshape(shape).copy(),
                   row[start + 1 + size:start + 1 + 2 * size].reshape(shape).copy())


def table_all_reduce(strategy) -> Callable[[np.ndarray], np.ndarray]:
    """``table -> sum of every worker's table`` (NumPy float64 in and out) under ``strategy``;
    compiled on its first call (the table's shape stays the same)."""
    import tensorflow as tf

    def replica_sum(table):
        context = tf.distribute.get_replica_context()
        # (tf.identity: a collective needs a tensor placed on the replica's device)
        return context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(table))

    @tf.function(autograph=False)
    def all_reduce(table):
        return strategy.experimental_local_results(strategy.run(replica_sum, args=(table,)))[0]

    return lambda table: all_reduce(tf.constant(table, tf.float64)).numpy()
