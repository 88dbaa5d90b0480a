"""Running observation statistics and the standardization they define; reward scaling.

``RunningMeanStd`` keeps the mean and variance of every observation seen so far and merges a
new batch with the parallel-variance formula of Chan et al. (1979): for counts ``n_a, n_b``,
means ``μ_a, μ_b`` and variances ``σ²_a, σ²_b``, with ``δ = μ_b − μ_a`` and ``n = n_a + n_b``,

    μ = μ_a + δ n_b / n,    σ² = (n_a σ²_a + n_b σ²_b + δ² n_a n_b / n) / n.

``normalize(x) = clip((x − μ) / sqrt(σ² + ε), −clip, clip)``.
"""

from __future__ import annotations

import numpy as np


def clip(x: np.ndarray, bound: float) -> np.ndarray:
    """``np.clip(x, -bound, bound)`` (same values, NaN kept) at a third of its call cost."""
    return np.minimum(np.maximum(x, -bound), bound)


class RunningMeanStd:
    """Mean and variance of a stream of ``[batch, *shape]`` arrays, in float64."""

    def __init__(self, shape: tuple, *, clip: float = 10.0, epsilon: float = 1e-8):
        self.mean = np.zeros(shape, np.float64)
        self.var = np.ones(shape, np.float64)
        self.count = 1e-4  # as SB3's VecNormalize: a tiny prior so the first update is defined
        self.clip = float(clip)
        self.epsilon = float(epsilon)

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
