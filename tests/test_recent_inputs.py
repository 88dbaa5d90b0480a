"""The ring of recent inputs that tops small batches up (natgrad.recent_inputs)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from natgrad.recent_inputs import RecentInputs, top_up


def _rows(start, n):
    return {"a": tf.range(start, start + n, dtype=tf.float32)[:, None] * [1.0, 1.0],
            "b": tf.range(start, start + n)}


def test_ring_keeps_the_most_recent_rows():
    ring = RecentInputs(5)
    ring.add(_rows(0, 3))
    assert sorted(ring.take(_rows(0, 1), 10)["b"].numpy()) == [0, 1, 2]
    ring.add(_rows(3, 4))  # 7 rows written: 2..6 remain
    got = ring.take(_rows(0, 1), 10)
    assert sorted(got["b"].numpy()) == [2, 3, 4, 5, 6]
    np.testing.assert_array_equal(got["a"][:, 0].numpy(), got["b"].numpy())
    ring.add(_rows(100, 8))  # more than the capacity: its last 5 rows
    assert sorted(ring.take(_rows(0, 1), 5)["b"].numpy()) == [103, 104, 105, 106, 107]
    assert len(ring.take(_rows(0, 1), 2)["b"]) == 2
    ring.add(_rows(200, 2), enabled=tf.constant(False))  # writes nothing
    assert sorted(ring.take(_rows(0, 1), 5)["b"].numpy()) == [103, 104, 105, 106, 107]


def test_top_up_only_small_batches_and_inside_tf_function():
    ring = RecentInputs(4)

    @tf.function
    def step(x):
        padded = top_up(x, ring, 4)
        ring.add(x)
        return padded

    assert step(_rows(0, 3))["b"].numpy().tolist() == [0, 1, 2]  # empty ring: nothing added
    assert step(_rows(10, 1))["b"].numpy().tolist() == [10, 0, 1, 2]
    assert step(_rows(20, 6))["b"].numpy().tolist() == list(range(20, 26))


def test_unknown_sample_shapes_are_not_supported():
    assert RecentInputs(4).supports(tf.zeros([2, 3]))
    assert not RecentInputs(0).supports(tf.zeros([2, 3]))
    seen = {}

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)])
    def trace(x):  # variable-length samples: the per-sample shape is unknown
        seen["supports"] = RecentInputs(4).supports(x)
        return x

    trace.get_concrete_function()
    assert seen["supports"] is False


def test_capacity_must_be_a_non_negative_integer():
    with pytest.raises(ValueError, match="capacity"):
        RecentInputs(-1)
