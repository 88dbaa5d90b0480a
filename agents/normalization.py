"""Running observation statistics and the standardization they define.

``RunningMeanStd`` keeps the mean and variance of every observation seen so far and merges a
new batch with the parallel-variance formula of Chan et al. (1979): for counts ``n_a, n_b``,
means ``μ_a, μ_b`` and variances ``σ²_a, σ²_b``, with ``δ = μ_b − μ_a`` and ``n = n_a + n_b``,

    μ = μ_a + δ n_b / n,    σ² = (n_a σ²_a + n_b σ²_b + δ² n_a n_b / n) / n.

``normalize(x) = clip((x − μ) / sqrt(σ² + ε), −clip, clip)``.
"""

from __future__ import annotations

import numpy as np


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
        batch_mean = batch.mean(axis=0)
        batch_var = batch.var(axis=0)
        delta = batch_mean - self.mean
        total = self.count + batch_count
        self.mean = self.mean + delta * batch_count / total
        m2 = self.var * self.count + batch_var * batch_count
        self.var = (m2 + np.square(delta) * self.count * batch_count / total) / total
        self.count = total

    def normalize(self, x: np.ndarray) -> np.ndarray:
        """``clip((x − μ) / sqrt(σ² + ε))`` as float32, same shape as ``x``."""
        z = (np.asarray(x, np.float64) - self.mean) / np.sqrt(self.var + self.epsilon)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def state(self) -> dict:
        return {"mean": self.mean.copy(), "var": self.var.copy(), "count": self.count,
                "clip": self.clip, "epsilon": self.epsilon}

    def load_state(self, state: dict) -> None:
        self.mean = np.array(state["mean"], np.float64)
        self.var = np.array(state["var"], np.float64)
        self.count = float(state["count"])
        self.clip = float(state["clip"])
        self.epsilon = float(state["epsilon"])
