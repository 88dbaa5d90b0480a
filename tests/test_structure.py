"""natgrad.structure: flat <-> list-of-tensors conversions and the vector / variable checks."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import natgrad
from natgrad.structure import (
    as_tf_variables,
    check_variables,
    check_vector,
    dot,
    flatten,
    unflatten,
    zeros_if_none,
)

SHAPES = [(2, 3), (), (4,), (1, 2, 2)]


def _tensors(shapes, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [tf.constant(rng.normal(size=s).astype(dtype)) for s in shapes]


def _variables(shapes=((2, 3), (3,)), dtype="float64"):
    return [tf.Variable(tf.zeros(s, dtype=dtype), name=f"v{i}") for i, s in enumerate(shapes)]


def test_public_api_reexports_structure_helpers():
    assert natgrad.flatten is flatten
    assert natgrad.unflatten is unflatten


def test_flatten_concatenates_in_list_order_row_major():
    a = tf.constant([[1.0, 2.0], [3.0, 4.0]])
    b = tf.constant(5.0)
    c = tf.constant([6.0, 7.0])
    np.testing.assert_array_equal(flatten([a, b, c]).numpy(), [1, 2, 3, 4, 5, 6, 7])


def test_unflatten_splits_by_hand():
    like = [tf.zeros((2, 2)), tf.zeros(()), tf.zeros((2,))]
    out = unflatten(tf.constant([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]), like)
    assert [tuple(t.shape) for t in out] == [(2, 2), (), (2,)]
    np.testing.assert_array_equal(out[0].numpy(), [[1, 2], [3, 4]])
    assert out[1].numpy() == 5.0
    np.testing.assert_array_equal(out[2].numpy(), [6, 7])


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(
        st.lists(st.integers(1, 3), min_size=0, max_size=3).map(tuple), min_size=1, max_size=4
    ),
    seed=st.integers(0, 2**16),
)
def test_flatten_unflatten_round_trip(shapes, seed):
    tensors = _tensors(shapes, seed)
    flat = flatten(tensors)
    assert flat.shape == (sum(int(np.prod(s)) for s in shapes),)
    back = unflatten(flat, tensors)
    assert len(back) == len(tensors)
    for t, b in zip(tensors, back, strict=True):
        assert b.shape == t.shape
        np.testing.assert_array_equal(b.numpy(), t.numpy())
    np.testing.assert_array_equal(flatten(back).numpy(), flat.numpy())


def test_unflatten_like_variables_round_trip():
    variables = _variables(((2, 3), (3,), ()))
    flat = tf.range(10, dtype=tf.float64)
    back = unflatten(flat, variables)
    assert [tuple(t.shape) for t in back] == [(2, 3), (3,), ()]
    np.testing.assert_array_equal(flatten(back).numpy(), np.arange(10))


def test_unflatten_inside_tf_function():
    like = _tensors(SHAPES)
    flat = flatten(like)
    back = tf.function(lambda v: unflatten(v, like))(flat)
    for t, b in zip(like, back, strict=True):
        np.testing.assert_array_equal(b.numpy(), t.numpy())


@pytest.mark.parametrize("length", [0, 16, 18])
def test_unflatten_wrong_length_raises(length):
    like = _tensors(SHAPES)  # 6 + 1 + 4 + 4 = 15 numbers
    with pytest.raises(ValueError, match=r"length 15.*got shape \(" + str(length) + r",\)"):
        unflatten(tf.zeros(length, dtype=tf.float64), like)


def test_unflatten_rejects_non_vector():
    like = _tensors([(2,), (2,)])
    with pytest.raises(ValueError, match="length 4"):
        unflatten(tf.zeros((2, 2), dtype=tf.float64), like)


def test_check_vector_accepts_matching_and_converts_lists():
    variables = _variables()
    vec = check_vector(variables, [np.ones((2, 3)), [1.0, 2.0, 3.0]])
    assert [t.dtype for t in vec] == [tf.float64, tf.float64]
    assert all(isinstance(t, tf.Tensor) for t in vec)
    np.testing.assert_array_equal(vec[1].numpy(), [1, 2, 3])
    # A tuple is as good as a list, and tensors pass through unchanged.
    same = check_vector(variables, (tf.ones((2, 3), tf.float64), tf.ones(3, tf.float64)))
    assert len(same) == 2


@pytest.mark.parametrize(
    "vector, pattern",
    [
        ([tf.zeros((2, 3), tf.float64)], r"expected 2 entries, got 1"),
        ([tf.zeros((2, 3), tf.float64)] * 3, r"expected 2 entries, got 3"),
        ([], r"expected 2 entries, got 0"),
        (
            [tf.zeros((3, 2), tf.float64), tf.zeros(3, tf.float64)],
            r"vector\[0\] has shape \(3, 2\).*variables\[0\].*shape \(2, 3\)",
        ),
        (
            [tf.zeros((2, 3), tf.float64), tf.zeros(4, tf.float64)],
            r"vector\[1\] has shape \(4,\).*shape \(3,\)",
        ),
        (
            [tf.zeros((2, 3), tf.float64), [1.0, 2.0]],
            r"vector\[1\] has shape \(2,\).*shape \(3,\)",
        ),
        (
            [tf.zeros((2, 3), tf.float32), tf.zeros(3, tf.float64)],
            r"vector\[0\] has dtype float32 but variables\[0\].*float64",
        ),
        (
            [tf.zeros((2, 3), tf.float64), tf.zeros(3, tf.int32)],
            r"vector\[1\] has dtype int32.*float64",
        ),
        (tf.zeros(9, tf.float64), r"must be a list of tensors.*length 2.*got EagerTensor"),
        (np.zeros(9), r"must be a list of tensors.*got ndarray"),
        ({"a": 1}, r"must be a list of tensors.*got dict"),
        (None, r"must be a list of tensors.*got NoneType"),
    ],
    ids=[
        "too-short",
        "too-long",
        "empty",
        "wrong-shape-0",
        "wrong-shape-1",
        "wrong-shape-list",
        "wrong-dtype-float",
        "wrong-dtype-int",
        "flat-tensor",
        "ndarray",
        "dict",
        "none",
    ],
)
def test_check_vector_errors(vector, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_vector(_variables(), vector)


def test_check_vector_uses_given_name():
    with pytest.raises(ValueError, match=r"^tangent must be"):
        check_vector(_variables(), tf.zeros(9, tf.float64), name="tangent")


def test_check_vector_unconvertible_entry_raises_value_error():
    with pytest.raises(ValueError, match=r"vector\[1\].*float64"):
        check_vector(_variables(), [tf.zeros((2, 3), tf.float64), None])


def test_check_vector_keras_variables():
    layer = keras.layers.Dense(2, dtype="float64")
    layer.build((None, 3))
    variables = layer.trainable_variables
    assert len(check_vector(variables, [np.zeros((3, 2)), np.zeros(2)])) == 2
    with pytest.raises(ValueError, match=r"vector\[1\] has shape \(3,\).*\(2,\)"):
        check_vector(variables, [np.zeros((3, 2)), np.zeros(3)])


@pytest.mark.parametrize(
    "variables, pattern",
    [
        ([], r"non-empty"),
        (tf.Variable([1.0]), r"list of tf.Variable.*got ResourceVariable"),
        ([tf.Variable([1.0]), tf.constant([1.0])], r"variables\[1\] must be a tf.Variable"),
        ("abc", r"variables\[0\] must be a tf.Variable.*got str"),
    ],
    ids=["empty", "single-variable", "tensor-entry", "string"],
)
def test_check_variables_errors(variables, pattern):
    with pytest.raises(ValueError, match=pattern):
        check_variables(variables)


def test_as_tf_variables_unwraps_keras_variables():
    layer = keras.layers.Dense(2)
    layer.build((None, 3))
    raw = tf.Variable(1.0)
    unwrapped = as_tf_variables([*layer.trainable_variables, raw])
    assert all(isinstance(v, tf.Variable) for v in unwrapped)
    assert unwrapped[-1] is raw
    np.testing.assert_array_equal(unwrapped[0].numpy(), layer.kernel.numpy())


def test_dot_and_zeros_if_none():
    a = [tf.constant([1.0, 2.0]), tf.constant([[3.0]])]
    b = [tf.constant([4.0, 5.0]), tf.constant([[6.0]])]
    assert dot(a, b).numpy() == pytest.approx(1 * 4 + 2 * 5 + 3 * 6)
    variables = _variables(((2,), (1, 3)))
    filled = zeros_if_none([tf.ones(2, tf.float64), None], variables)
    assert filled[1].shape == (1, 3) and filled[1].dtype == tf.float64
    np.testing.assert_array_equal(filled[1].numpy(), np.zeros((1, 3)))
