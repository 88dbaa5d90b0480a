"""The value fit of one update, run while the next update's batch is collected
(``TRPOConfig.overlap_value_fit``, off by default).

An update's value fit touches only the value network and its optimizer; the next rollout
reads only the new policy (and the normalizers). :class:`ValueFitOverlap` runs the fit on a
second thread (TensorFlow releases the GIL while it computes) and collects the next batch on
this one, then waits for the fit. The minibatch order of the fit is drawn before the rollout
draws its actions, so the random numbers, and the whole run, are those of running the two one
after the other. It pays off only with a core to spare: TensorFlow's threads and the rollout
thread then share the cores, and on 2 cores (CartPole-v1, 100k steps) the overlapped run took
as long as the sequential one.

A batch collected early is held as :class:`Prefetched` until the next update takes it. The
agent never checkpoints while holding one (see ``TRPO._may_prefetch``): a checkpoint's
environment and random state must be those from before the batch it has not trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import NamedTuple

from agents.rollout import NonFiniteError, Rollout


class Prefetched(NamedTuple):
    """The next update's batch, or the :class:`NonFiniteError` its collection met (raised by
    that update, as if it had collected the batch itself), and what the collection changed,
    as it was before: the normalizers, the random generator and the worker's episode
    bookkeeping (``RolloutWorker.state``). A batch that is dropped (its update failed, or
    training stopped on an error) is undone with them; the envs, which cannot be wound back,
    are re-seeded (``TRPO._unwind_prefetch``)."""

    rollout: Rollout | None
    error: NonFiniteError | None
    normalizers: tuple
    rng_state: dict
    worker_state: dict


class ValueFitOverlap:
    """One worker thread for value fits, and the batch collected beside the latest one."""

    def __init__(self):
        self.pending: Prefetched | None = None
        self._executor: ThreadPoolExecutor | None = None

    def take(self) -> Prefetched | None:
        """The batch collected early, now the caller's to use or undo (``None`` if none)."""
        pending, self.pending = self.pending, None
        return pending

    def fit_while_collecting(self, fit: Callable[[], dict], collect: Callable[[], Rollout],
                             before: tuple) -> dict:
        """Runs ``fit()`` on the worker thread and ``collect()`` here; keeps the batch as
        :attr:`pending` (with ``before``: normalizers, random state, worker state) and returns
        what ``fit()`` returned, or raises what it raised. Whatever happens, the fit has
        finished when this returns or raises: its variables are never written behind the
        caller's back."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="natgrad-value-fit")
        future = self._executor.submit(fit)
        try:
            try:
                self.pending = Prefetched(collect(), None, *before)
            except NonFiniteError as exc:
                self.pending = Prefetched(None, exc, *before)
            return future.result()
        except BaseException:  # the fit failed, or an env error, or a second Ctrl-C
            _wait_through_interrupts(future)
            raise

    def close(self) -> None:
        """Ends the worker thread (a later fit starts a new one)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None


def _wait_through_interrupts(future: Future) -> None:
    """Waits for ``future`` even through further Ctrl-C: a value fit takes well under a
    second, and returning earlier would leave it writing variables the caller goes on using."""
    while not future.done():
        try:
            wait([future])
        except KeyboardInterrupt:
            continue
