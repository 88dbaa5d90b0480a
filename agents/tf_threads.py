"""The threads of a training process, sized by ``TRPOConfig.tf_threads``.

* TensorFlow's pools (:func:`apply_tf_threads`), before TensorFlow starts. A TRPO update of a
  small MLP is thousands of tiny ops. With TensorFlow's default pools (one thread per core),
  handing them between threads costs more than running them, and the pools' idle threads
  spin on the cores the envs step on (``scripts/profile_trpo.py --set tf_threads=0`` against
  ``tf_threads=1`` measures it; ``bench_results/profile/`` holds runs). The pools can be sized
  only before TensorFlow runs its first op in the process; after that the request is reported
  once and the run goes on with the pools it has.
* NumPy's BLAS (:func:`blas_threads`), while ``TRPO.learn`` runs. The rollout's forward passes
  and the batch's value predictions are NumPy matrix products. The BLAS library splits the
  larger ones (a batch of 2,048 states) over every core, and its threads then wait for a core
  that the envs, or a second run, are using: on 2 cores busy with other runs, Hopper's
  advantages took 19-29 ms an update with the default threads and 7-9 ms with one. The split
  is over the product's rows, so each entry is computed alike and the run is the same, bit
  for bit (``tests/test_tf_threads.py``).
"""

from __future__ import annotations

import contextlib
import logging

log = logging.getLogger("agents")
_reported = False


def apply_tf_threads(threads: int) -> bool:
    """Sizes TensorFlow's intra- and inter-op pools to ``threads`` (0 leaves them as they are).

    Returns whether the pools now have that size. When TensorFlow has already started (a
    notebook that ran TensorFlow before, a test session), the size cannot change: one warning
    per process says so, and False is returned.
    """
    global _reported
    if threads <= 0:
        return True
    import tensorflow as tf

    threading = tf.config.threading
    if (threading.get_intra_op_parallelism_threads() == threads
            and threading.get_inter_op_parallelism_threads() == threads):
        return True
    try:
        threading.set_intra_op_parallelism_threads(threads)
        threading.set_inter_op_parallelism_threads(threads)
        return True
    except RuntimeError:  # TensorFlow's context is initialized: the pools are fixed
        if not _reported:
            _reported = True
            log.warning("tf_threads=%d not applied: TensorFlow already runs in this process "
                        "with its own thread pools (set tf.config.threading before its first "
                        "op, or TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS)", threads)
        return False


@contextlib.contextmanager
def blas_threads(threads: int):
    """Inside the block, NumPy's BLAS libraries (OpenBLAS, MKL, BLIS; through
    ``threadpoolctl``) use at most ``threads`` threads; on leaving it, what they had (0 leaves
    them as they are). The limit is the process's: other threads' NumPy products share it while
    the block runs."""
    if threads <= 0:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        yield
