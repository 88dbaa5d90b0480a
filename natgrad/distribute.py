"""A natural-gradient step under ``tf.distribute``: supported strategies and replica means.

Under ``MirroredStrategy`` (several devices) and ``MultiWorkerMirroredStrategy`` (several
machines), ``strategy.run`` calls :meth:`natgrad.NaturalGradient.minimize` once per replica,
each on its shard of the global batch. For one distributed step to equal the single-device
step on the whole batch, every quantity the step derives from the data is averaged over the
replicas, weighted by shard size (one all-reduce each):

* the loss and its gradient (one collective for both),
* each curvature-vector product inside conjugate gradient (one per CG iteration),
* each line-search trial's loss and KL (one per trial).

Every replica then holds the same numbers, computes the same step and writes it into its own
copy of each variable, so the copies stay identical (Keras variables are mirrored with
``aggregation="none"``: a replica writes only its local copy). On CPU, TensorFlow performs these
collectives through ``merge_call``, which may not sit inside graph control flow; so under a
strategy the CG iterations and the line-search trials are unrolled (always ``cg_iters``
products and ``line_search_max_tries`` trials; results identical).

Other strategies (``ParameterServerStrategy``, ``TPUStrategy``, ``CentralStorageStrategy``)
are refused with an error rather than giving a silently different result.
"""

from __future__ import annotations

import tensorflow as tf

SUPPORTED_STRATEGIES = ("the default (no) strategy", "OneDeviceStrategy", "MirroredStrategy",
                        "MultiWorkerMirroredStrategy")


def check_strategy(strategy: tf.distribute.Strategy | None = None) -> None:
    """Raises ``ValueError`` unless ``strategy`` (default: the current one) is supported."""
    if strategy is None:
        if not tf.distribute.has_strategy():
            return
        strategy = tf.distribute.get_strategy()
    supported = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy,
                 tf.distribute.OneDeviceStrategy)
    if isinstance(strategy, supported) or type(strategy).__name__.startswith("_Default"):
        return
    raise ValueError(
        f"NaturalGradient does not support {type(strategy).__name__}: its step needs every "
        "curvature product and line-search trial averaged over all replicas in lock step. "
        f"Supported: {', '.join(SUPPORTED_STRATEGIES)}.")


def replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context a step must average over, or ``None`` (one replica, or a call in
    cross-replica context, where there is nothing to average)."""
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return None
    context = tf.distribute.get_replica_context()
    return context if context is not None and context.num_replicas_in_sync > 1 else None


class ReplicaMean:
    """``mean(structure)``: the shard-size-weighted mean of a structure over all replicas.

    ``weight`` is this replica's share (its local batch size); ``None`` weighs replicas
    equally, which is exact for equal shards. Without a replica context it is the identity.
    """

    def __init__(self, context: tf.distribute.ReplicaContext | None, weight=None):
        self.context = context
        self.weight = weight
        self._total = None

    @property
    def active(self) -> bool:
        return self.context is not None

    def __call__(self, structure):
        if self.context is None:
            return structure
        if self.weight is None:
            return self.context.all_reduce(tf.distribute.ReduceOp.MEAN, structure)
        if self._total is None:
            self._total = self.context.all_reduce(tf.distribute.ReduceOp.SUM,
                                                  tf.cast(self.weight, tf.float64))
        weighted = tf.nest.map_structure(lambda t: t * tf.cast(self.weight, t.dtype), structure)
        summed = self.context.all_reduce(tf.distribute.ReduceOp.SUM, weighted)
        return tf.nest.map_structure(lambda t: t / tf.cast(self._total, t.dtype), summed)
