"""Ctrl-C and ``SIGTERM`` as requests to stop at the next safe point, not mid-update.

Inside ``with StopSignals() as stop:``, the first ``SIGINT`` or ``SIGTERM`` only sets
``stop.signal``; the training loop checks it between updates, writes a checkpoint and raises
:class:`TrainingInterrupted`. A second signal interrupts at once (``KeyboardInterrupt``), for a
user who does not want to wait for the update to finish. Outside the main thread, where Python
cannot install handlers, signals keep their usual behaviour.
"""

from __future__ import annotations

import signal
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on a signal after saving ``checkpoint`` (None without a run dir)."""

    def __init__(self, signum: int, num_timesteps: int, checkpoint=None):
        self.signum, self.num_timesteps, self.checkpoint = signum, num_timesteps, checkpoint
        super().__init__(f"{signal.Signals(signum).name} at {num_timesteps:,} env steps")

    @property
    def exit_status(self) -> int:
        """The shell convention for death by this signal: 128 + its number."""
        return 128 + self.signum


class StopSignals:
    """Defers ``SIGINT``/``SIGTERM`` to the next :attr:`signal` check; restores on exit."""

    def __init__(self):
        self.signal: int | None = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signal is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signal = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
