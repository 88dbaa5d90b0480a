"""Rollback: an update that meets a NaN or infinity is undone whole, then stopped or skipped.

Before each update the agent takes a :class:`Snapshot` of everything the update changes: every
variable (weights and optimizer slots) and the normalizers' state. When a quantity of the
update is not finite (:class:`agents.rollout.NonFiniteError`), :meth:`Snapshot.restore` puts
them back bit for bit. With ``on_non_finite="stop"`` the agent then checkpoints this last good
state and raises; with ``"skip"`` it drops the batch, counts it and logs :func:`skipped_row`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from agents.envs.normalization import load_normalizer_state, normalizer_state
from agents.runs.progress import PROGRESS_KEYS


class Snapshot(NamedTuple):
    """The values of ``variables`` and the normalizers' state at one moment."""

    values: list
    normalizers: tuple

    @classmethod
    def take(cls, variables, obs_rms, reward_scaler, normalizers: tuple | None = None):
        """The variables' values now, and ``normalizers`` (their state now if ``None``)."""
        state = normalizer_state(obs_rms, reward_scaler) if normalizers is None else normalizers
        return cls([v.numpy() for v in variables], state)

    def restore(self, variables, obs_rms, reward_scaler) -> None:
        """Puts the values back into ``variables`` (the same list, in order) and the
        normalizers."""
        for variable, value in zip(variables, self.values, strict=True):
            variable.assign(value)
        load_normalizer_state(obs_rms, reward_scaler, self.normalizers)


def skipped_row(env_steps: int, wall_time: float, mean_return: float,
                skipped_batches: int) -> dict:
    """The progress row of a skipped batch: its counters, every statistic NaN."""
    row = dict.fromkeys(PROGRESS_KEYS, math.nan)
    row.update(env_steps=env_steps, wall_time=wall_time, accepted=0, mean_return=mean_return,
               skipped_batches=skipped_batches)
    return row
