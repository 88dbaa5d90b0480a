"""A fixed-size ring of recent model inputs, so a small batch's trust region is not small.

A KL trust region measured on ``n`` samples bounds the change of the model on those ``n``
samples only; with the 5-sample last batch of an epoch, the rest of the data is unconstrained
(``scripts/keras_step_safety.py`` measures how much one such step can raise the loss on the
whole training set). ``model.fit`` keeps the last ``capacity`` training inputs in
non-trainable ``tf.Variable``s and tops a small batch up with them for the curvature products
and the line search's KL (Hessian-free optimization likewise measures curvature and the
accepted step on more data than the gradient's batch). Only inputs are kept: the Fisher and the
KL of the supported losses do not depend on labels.
"""

from __future__ import annotations

import tensorflow as tf

from natgrad.checks import check_int


class RecentInputs:
    """The most recent ``capacity`` samples of a (nested) input structure, ring-filled.

    Each leaf ``x`` of shape ``[n, *shape]`` is kept in a variable ``[capacity, *shape]``;
    :meth:`add` writes a batch at the ring position (the last ``capacity`` rows if
    ``n > capacity``) and :meth:`take` returns up to ``k`` stored rows. Variables are created
    on the first :meth:`add` / :meth:`take` (under ``tf.init_scope``, so inside a
    ``tf.function`` too) from the batch's static per-sample shape and dtype.
    """

    def __init__(self, capacity: int):
        self.capacity = check_int("capacity", capacity, at_least=0)
        self._buffers: list[tf.Variable] | None = None
        self._count: tf.Variable | None = None

    def supports(self, x) -> bool:
        """Whether ``x``'s leaves have fully known per-sample shapes (and capacity > 0)."""
        return self.capacity > 0 and all(
            t is not None and tf.TensorShape(t.shape)[1:].is_fully_defined()
            for t in tf.nest.flatten(x)
        )

    def _build(self, x) -> None:
        if self._buffers is not None:
            return
        with tf.init_scope():
            self._buffers = [
                tf.Variable(
                    tf.zeros([self.capacity, *t.shape[1:]], dtype=t.dtype),
                    trainable=False,
                    name="recent_inputs",
                )
                for t in tf.nest.flatten(x)
            ]
            self._count = tf.Variable(0, dtype=tf.int64, trainable=False, name="recent_count")

    def size(self) -> tf.Tensor:
        """int32 scalar: how many rows are filled (``min(count, capacity)``)."""
        return tf.cast(tf.minimum(self._count, self.capacity), tf.int32)

    def take(self, x_like, k) -> object:
        """Up to ``k`` stored rows (``min(k, size())``), structured like ``x_like``."""
        self._build(x_like)
        k = tf.minimum(tf.maximum(tf.cast(k, tf.int32), 0), self.size())
        rows = [b[:k] for b in self._buffers]
        return tf.nest.pack_sequence_as(x_like, rows)

    def all_rows(self, x_like) -> list[tf.Tensor]:
        """Every buffer, all ``capacity`` rows (the first ``size()`` filled), flattened as
        ``tf.nest.flatten(x_like)``: a shape that does not depend on how full the ring is."""
        self._build(x_like)
        return [tf.convert_to_tensor(b) for b in self._buffers]

    def add(self, x, enabled=True) -> None:
        """Writes the batch ``x`` (its last ``capacity`` rows) into the ring, if ``enabled``
        (a bool, or a bool tensor: false writes nothing).

        Every shape here follows from ``x``'s shape alone (a disabled batch writes the rows
        back unchanged), so the write compiles under XLA (``jit_compile=True``).
        """
        self._build(x)
        flat = tf.nest.flatten(x)
        n = tf.shape(flat[0], out_type=tf.int64)[0]
        m = tf.minimum(n, self.capacity)
        positions = (self._count + tf.range(m, dtype=tf.int64)) % self.capacity
        for buffer, t in zip(self._buffers, flat, strict=True):
            rows = tf.where(enabled, tf.cast(t[n - m:], buffer.dtype),
                            tf.gather(buffer, positions))
            buffer.scatter_nd_update(positions[:, None], rows)
        self._count.assign_add(tf.where(enabled, m, tf.constant(0, tf.int64)))


def top_up(x, recent: RecentInputs, target: int):
    """``x`` followed by ``target − n`` recent rows when the batch has ``n < target`` samples.

    Returns ``x`` itself when ``n ≥ target`` (large batches are used exactly as before), and
    fewer extra rows when the ring holds fewer. Leaves are concatenated on the batch axis.
    """
    n = tf.shape(tf.nest.flatten(x)[0])[0]
    extra = recent.take(x, tf.maximum(target - n, 0))
    return tf.nest.map_structure(
        lambda a, b: tf.concat([a, tf.cast(b, a.dtype)], axis=0), x, extra
    )


def top_up_to_fixed_size(x, recent: RecentInputs, target: int) -> tuple[object, tf.Tensor]:
    """``(rows, real)``: :func:`top_up` with a shape that follows from ``x``'s shape alone.

    ``rows`` has ``max(n, target)`` rows, whatever the ring holds, as XLA
    (``jit_compile=True``) needs: its first ``real`` rows are :func:`top_up`'s rows, and the
    rest, while the ring holds fewer than ``target − n`` rows, repeat them cyclically (row
    ``i`` is row ``i mod real``) to fill the shape; a caller averaging over rows masks them.
    """
    n = tf.shape(tf.nest.flatten(x)[0])[0]
    buffers = recent.all_rows(x)  # the first size() rows are filled, in take()'s order
    real = tf.minimum(n + recent.size(), tf.maximum(n, target))
    index = tf.range(tf.maximum(n, target)) % real
    rows = [tf.gather(tf.concat([a, tf.cast(b, a.dtype)], axis=0), index)
            for a, b in zip(tf.nest.flatten(x), buffers, strict=True)]
    return tf.nest.pack_sequence_as(x, rows), real


__all__ = ["RecentInputs", "top_up", "top_up_to_fixed_size"]
