"""The value fit of one update, run while the next update's batch is collected.

An update's value fit touches only the value network and its optimizer; the next rollout
reads only the new policy (and the normalizers). :class:`ValueFitOverlap` runs the fit on a
second thread (TensorFlow releases the GIL while it computes) and collects the next batch on
this one, then waits for the fit. The minibatch order of the fit is drawn before the rollout
draws its actions, so the random numbers, and the whole run, are those of running the two one
after the other.

A batch collected early is held as :class:`Prefetched` until the next update takes it. The
agent never checkpoints while holding one (see ``TRPO._may_prefetch``): a checkpoint's
environment and random state must be those from before the batch it has not trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import NamedTuple

from agents.rollout import NonFiniteError, Rollout


class Prefetched(NamedTuple):
    """The next update's batch, or the :class:`NonFiniteError` its collection met (raised by
    that update, as if it had collected the batch itself), and the normalizers' state from
    before it (the state that update is undone to if it fails)."""

    rollout: Rollout | None
    error: NonFiniteError | None
    normalizers: tuple


class ValueFitOverlap:
    """One worker thread for value fits, and the batch collected beside the latest one."""

    def __init__(self):
        self.pending: Prefetched | None = None
        self._executor: ThreadPoolExecutor | None = None

    def take(self) -> Prefetched | None:
        """The batch collected early for this update (``None`` if there is none)."""
        pending, self.pending = self.pending, None
        return pending

    def drop(self) -> None:
        self.pending = None

    def fit_while_collecting(self, fit: Callable[[], dict], collect: Callable[[], Rollout],
                             normalizers: tuple) -> dict:
        """Runs ``fit()`` on the worker thread and ``collect()`` here; keeps the batch as
        :attr:`pending` and returns what ``fit()`` returned (or raises what it raised)."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="natgrad-value-fit")
        future = self._executor.submit(fit)
        try:
            try:
                self.pending = Prefetched(collect(), None, normalizers)
            except NonFiniteError as exc:
                self.pending = Prefetched(None, exc, normalizers)
        except BaseException:  # an env error or a second Ctrl-C: let the fit finish first
            self.pending = None
            wait([future])
            raise
        return future.result()
