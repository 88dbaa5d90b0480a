"""Running observation statistics and the standardization they define; reward scaling.

``RunningMeanStd`` keeps the mean and variance of every observation seen so far and merges a
new batch with the parallel-variance formula of Chan et al. (1979): for counts ``n_a, n_b``,
means ``μ_a, μ_b`` and variances ``σ²_a, σ²_b``, with ``δ = μ_b − μ_a`` and ``n = n_a + n_b``,

    μ = μ_a + δ n_b / n,    σ² = (n_a σ²_a + n_b σ²_b + δ² n_a n_b / n) / n.

``normalize(x) = clip((x − μ) / sqrt(σ² + ε), −clip, clip)``.

With several workers (:mod:`agents.worker_sync`) each worker updates its statistics with the
samples it sees, and at every update the workers merge them: each worker's samples since the
last merge, as :class:`Moments` (count ``n``, mean ``μ``, ``M2 = n σ²``), are merged in worker
order into the statistics of the last merge, the same formula in ``M2`` form,

    M2 = M2_a + M2_b + δ² n_a n_b / n,

so every worker ends with the same statistics, those of one process that saw every worker's
samples (up to rounding).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def clip(x: np.ndarray, bound: float) -> np.ndarray:
    """``np.clip(x, -bound, bound)`` (same values, NaN kept) at a third of its call cost."""
    return np.minimum(np.maximum(x, -bound), bound)


class Moments(NamedTuple):
    """A set of samples summarized: ``count``, ``mean`` and ``m2``, the sum of squared
    deviations from the mean (``count × variance``), both float64 of the sample shape."""

    count: float
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, shape: tuple) -> Moments:
        """No samples."""
        return cls(0.0, np.zeros(shape, np.float64), np.zeros(shape, np.float64))

    def combine(self, other: Moments) -> Moments:
        """The moments of both sets of samples together (Chan et al., 1979)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        total = self.count + other.count
        delta = other.mean - self.mean
        return Moments(total, self.mean + delta * other.count / total,
                       self.m2 + other.m2 + np.square(delta) * self.count * other.count / total)


class RunningMeanStd:
    """Mean and variance of a stream of ``[batch, *shape]`` arrays, in float64.

    After :meth:`track_unmerged` (several workers), it also keeps :attr:`unmerged`, the
    moments of the samples seen since the last :meth:`merge`.
    """

    def __init__(self, shape: tuple, *, clip: float = 10.0, epsilon: float = 1e-8):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4  # as SB3's VecNormalize: a tiny prior so the first update is defined
        self.clip = float(clip)
        self.epsilon = float(epsilon)
        self.unmerged: Moments | None = None  # kept only after track_unmerged()
        self._merged: Moments | None = None  # the statistics at the last merge

    def update(self, batch: np.ndarray) -> None:
        """Merges a batch ``[B, *shape]`` into the statistics."""
        batch = np.asarray(batch, np.float64)
        batch_count = batch.shape[0]
        # np.mean / np.var's arithmetic, without their per-call overhead (this runs every env
        # step, on a few rows).
        batch_mean = np.add.reduce(batch, axis=0) / batch_count
        deviation = batch - batch_mean
        batch_var = np.add.reduce(deviation * deviation, axis=0) / batch_count
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        self.var = (m2 + np.square(delta) * self.count * batch_count / total) / total
        self.count = total
        if self.unmerged is not None:
            self.unmerged = self.unmerged.combine(
                Moments(float(batch_count), batch_mean, batch_var * batch_count))

    def moments(self) -> Moments:
        """The statistics as :class:`Moments`."""
        return Moments(self.count, self.mean, self.var * self.count)

    def track_unmerged(self) -> None:
        """From now on, keeps the moments of the samples seen since the last :meth:`merge` (or
        :meth:`load_state`) in :attr:`unmerged`."""
        self._merged = self.moments()
        self.unmerged = Moments.empty(self.mean.shape)

    def merge(self, parts: list[Moments]) -> None:
        """Sets the statistics to those at the last merge combined with ``parts`` in order
        (every worker's :attr:`unmerged`, this one's included), and empties :attr:`unmerged`.
        Workers that merge the same parts end with identical statistics."""
        merged = self._merged
        for part in parts:
            merged = merged.combine(part)
        self.count, self.mean = float(merged.count), merged.mean
        self.var = merged.m2 / merged.count
        self._merged, self.unmerged = merged, Moments.empty(self.mean.shape)

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``clip((x − μ) / sqrt(σ² + ε))`` as float32, same shape as ``x``."""
        z = (np.asarray(x, np.float64) - self.mean) / np.sqrt(self.var + self.epsilon)
        return clip(z, self.clip).astype(np.float32)

    def state(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count,
                "clip": self.clip, "epsilon": self.epsilon}

    def load_state(self, state: dict) -> None:
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.count = float(state["count"])
        self.clip = float(state["clip"])
        self.epsilon = float(state["epsilon"])
        if self.unmerged is not None:  # samples seen since the last merge are dropped too
            self.track_unmerged()


class RewardScaler:
    """Rewards divided by the running std of the discounted return, as SB3's ``VecNormalize``.

    Per env a discounted return ``G ← γ G + r`` is kept (zeroed when an episode ends); its
    running variance ``σ²_G`` (a :class:`RunningMeanStd` over every env's ``G``, updated each
    step) sets the scale: ``r̃ = clip(r / sqrt(σ²_G + ε), −clip, clip)``. The mean is not
    subtracted, so the sign of every reward, and thus which outcomes are better, is kept.
    """

    def __init__(self, n_envs: int, gamma: float, *, clip: float = 10.0,
                 epsilon: float = 1e-8):
        self.rms = RunningMeanStd((), clip=clip, epsilon=epsilon)
        self.gamma = float(gamma)
        self.returns = np.zeros(n_envs, np.float64)

    def scale(self, rewards: np.ndarray, dones: np.ndarray) -> np.ndarray:
        """Updates the statistics with one vector step; returns the scaled rewards ``[E]``."""
        rewards = np.asarray(rewards, np.float64)
        self.returns = self.gamma * self.returns + rewards
        self.rms.update(self.returns)
        scaled = clip(rewards / np.sqrt(self.rms.var + self.rms.epsilon), self.rms.clip)
        self.returns = np.where(dones, 0.0, self.returns)
        return scaled

    def state(self) -> dict:
        return {**self.rms.state(), "gamma": self.gamma, "returns": self.returns.copy()}

    def load_state(self, state: dict) -> None:
        self.rms.load_state(state)
        self.gamma = float(state["gamma"])
        returns = np.array(state["returns"], np.float64)
        if returns.shape != self.returns.shape:
            raise ValueError(f"reward scaler state for {returns.shape[0]} envs, "
                             f"not {self.returns.shape[0]}")
        self.returns = returns


def normalizer_state(obs_rms: RunningMeanStd | None, reward_scaler: RewardScaler | None) -> tuple:
    """``(observation statistics, reward scaler)`` states (``None`` where off)."""
    return (None if obs_rms is None else obs_rms.state(),
            None if reward_scaler is None else reward_scaler.state())


def load_normalizer_state(obs_rms: RunningMeanStd | None, reward_scaler: RewardScaler | None,
                          state: tuple) -> None:
    """Puts back what :func:`normalizer_state` returned (``None`` parts are left as they are)."""
    obs_state, reward_state = state
    if obs_state is not None:
        obs_rms.load_state(obs_state)
    if reward_state is not None:
        reward_scaler.load_state(reward_state)
