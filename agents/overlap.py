"""The value fit of one update, run while the next update's batch is collected
(``TRPOConfig.overlap_value_fit``; off by default, on in the MuJoCo presets).

An update's value fit touches only the value network and its optimizer; the next rollout
reads only the new policy (and the normalizers). :class:`ValueFitOverlap` runs the fit on a
second thread (TensorFlow releases the GIL while it computes) and collects the next batch on
this one, then waits for the fit. The minibatch order of the fit is drawn before the rollout
draws its actions, so the random numbers, and the whole run, are those of running the two one
after the other. It pays off only with a core to spare: otherwise TensorFlow's threads and the
rollout thread share the cores, and the overlapped run takes as long as the sequential one.

A batch collected early is held as :class:`Prefetched` until the next update takes it. The
agent never checkpoints while holding one (see :func:`may_prefetch`): a checkpoint's
environment and random state must be those from before the batch it has not trained on.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import NamedTuple

from agents.envs.normalization import load_normalizer_state, normalizer_state
from agents.rollout import NonFiniteError, Rollout


class Prefetched(NamedTuple):
    """The next update's batch, or the :class:`NonFiniteError` its collection met (raised by
    that update, as if it had collected the batch itself), and what the collection changed,
    as it was before: the normalizers, the random generator and the worker's episode
    bookkeeping (``RolloutWorker.state``). A batch that is dropped (its update failed, or
    training stopped on an error) is undone with them; the envs, which cannot be wound back,
    are re-seeded (:func:`undo_prefetch`)."""

    rollout: Rollout | None
    error: NonFiniteError | None
    normalizers: tuple
    rng_state: dict
    worker_state: dict


def may_prefetch(cfg, *, num_workers: int, stop_requested: bool, checkpoint_follows: bool,
                 num_timesteps: int, total: int) -> bool:
    """Whether the coming update may collect the next batch while its value fit runs
    (``overlap_value_fit``): not with several workers, nor when a checkpoint or the end
    follows it (a checkpoint must not hold a batch already collected), nor once a stop was
    asked for."""
    return (cfg.overlap_value_fit and num_workers == 1 and not stop_requested
            and not checkpoint_follows and num_timesteps + cfg.batch_size < total)


def policy_step_and_value_fit(fns, overlap: ValueFitOverlap | None, obs, actions, advantages,
                              returns, critic_order, *, worker, collect_next, rng,
                              obs_rms, reward_scaler) -> dict:
    """Steps 3 and 4 of an update on the flat batch, with the compiled ``fns``
    (:class:`agents.update.UpdateFunctions`), as NumPy values.

    Without ``overlap`` (``overlap_value_fit`` off): ``fns.both``, one graph. With it: the
    policy step, then the value fit; when ``collect_next`` is given, the next batch is
    collected (``collect_next()``) while the fit runs and kept in ``overlap.pending`` with the
    state it changes as it was before (normalizers, ``rng``, ``worker``).

    Raises:
      NonFiniteError: the policy weights are not finite after the step.
    """
    if overlap is None:  # one graph: TensorFlow runs the halves side by side
        stats = fns.both(obs, actions, advantages, returns, critic_order)
    else:
        stats = fns.policy(obs, actions, advantages)
        if not stats["policy_finite"]:
            raise NonFiniteError("the policy weights are not finite after the step")
        if collect_next is not None:
            stats.update(overlap.fit_while_collecting(
                lambda: fns.value(obs, returns, critic_order), collect_next,
                (normalizer_state(obs_rms, reward_scaler), rng.bit_generator.state,
                 worker.state())))
        else:
            stats.update(fns.value(obs, returns, critic_order))
    stats = {k: v.numpy() for k, v in stats.items()}
    if not stats["policy_finite"]:
        raise NonFiniteError("the policy weights are not finite after the step")
    return stats


def undo_prefetch(dropped: Prefetched, *, rng, obs_rms, reward_scaler, worker,
                  reseed: int) -> None:
    """Undoes a batch collected early that will not be trained on: random state, episode
    bookkeeping and normalizers as before it; the envs, which moved on, re-seeded
    ``reseed``."""
    rng.bit_generator.state = dropped.rng_state
    load_normalizer_state(obs_rms, reward_scaler, dropped.normalizers)
    worker.restore({"sub_envs": None, "worker": dropped.worker_state}, reseed)


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
