"""Lists of variables and the vectors that live in their space.

Every curvature product in natgrad maps a *vector shaped like the variables* (a list of
tensors, ``vector[i].shape == variables[i].shape``) to another such list. This module holds
the conversions between that form and one flat vector, and the input checks that give a
clear error when a vector does not match its variables.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


def as_tf_variables(variables: Sequence) -> list[tf.Variable]:
    """Returns the underlying ``tf.Variable`` of each Keras 3 or TF variable.

    Keras 3 variables wrap a ``tf.Variable`` in ``.value``; ``tf.autodiff.ForwardAccumulator``
    only accepts the wrapped variable.
    """
    return [v.value if not isinstance(v, tf.Variable) and hasattr(v, "value") else v
            for v in variables]


def check_variables(variables) -> list:
    """Checks that ``variables`` is a non-empty list of variables; returns it as a list."""
    if isinstance(variables, (tf.Variable, tf.Tensor)) or not isinstance(
        variables, Sequence
    ):
        raise ValueError(
            "variables must be a list of tf.Variable or Keras variables; "
            f"got {type(variables).__name__}"
        )
    variables = list(variables)
    if not variables:
        raise ValueError("variables must be a non-empty list of variables; got an empty list")
    for i, v in enumerate(variables):
        if not (isinstance(v, tf.Variable) or hasattr(v, "assign")):
            raise ValueError(
                f"variables[{i}] must be a tf.Variable or Keras variable; got {type(v).__name__}"
            )
    return variables


def check_vector(variables: Sequence, vector, name: str = "vector") -> list[tf.Tensor]:
    """Converts ``vector`` to a list of tensors and checks it is shaped like ``variables``.

    Entries that are tensors must already have their variable's dtype; other entries (NumPy
    arrays, Python numbers and lists) are converted to it.

    Raises:
        ValueError: if ``vector`` is not a list of the same length as ``variables``, if one of
            its tensors has a different shape or dtype than its variable, or if an entry cannot
            be converted to a tensor of its variable's dtype.
    """
    if isinstance(vector, (tf.Tensor, tf.Variable)) or not isinstance(vector, Sequence):
        raise ValueError(
            f"{name} must be a list of tensors shaped like variables (length {len(variables)}); "
            f"got {type(vector).__name__}"
        )
    if len(vector) != len(variables):
        raise ValueError(
            f"{name} must be a list with one tensor per variable: expected {len(variables)} "
            f"entries, got {len(vector)}"
        )
    out = []
    for i, (v, t) in enumerate(zip(variables, vector, strict=True)):
        dtype = tf.as_dtype(v.dtype)
        if isinstance(t, (tf.Tensor, tf.Variable)):
            if t.dtype != dtype:
                raise ValueError(
                    f"{name}[{i}] has dtype {t.dtype.name} but variables[{i}] "
                    f"({getattr(v, 'name', '?')}) has dtype {dtype.name}; they must match"
                )
        else:
            try:
                t = tf.convert_to_tensor(t, dtype=dtype)
            except (TypeError, ValueError) as e:
                raise ValueError(
                    f"{name}[{i}] could not be converted to a {dtype.name} tensor shaped like "
                    f"variables[{i}] ({getattr(v, 'name', '?')}): {e}"
                ) from None
        if not t.shape.is_compatible_with(v.shape):
            raise ValueError(
                f"{name}[{i}] has shape {t.shape} but variables[{i}] "
                f"({getattr(v, 'name', '?')}) has shape {tuple(v.shape)}; "
                f"each entry of {name} must have its variable's shape"
            )
        out.append(t)
    return out


def flatten(tensors: Sequence) -> tf.Tensor:
    """Concatenates a list of tensors into one vector ``[sum of sizes]`` in list order."""
    return tf.concat([tf.reshape(t, [-1]) for t in tensors], axis=0)


def unflatten(vector: tf.Tensor, like: Sequence) -> list[tf.Tensor]:
    """Splits a flat vector back into tensors shaped like ``like`` (variables or tensors).

    Inverse of :func:`flatten`: ``unflatten(flatten(ts), ts) == ts``.
    """
    shapes = [tuple(t.shape) for t in like]
    sizes = [int(tf.TensorShape(s).num_elements()) for s in shapes]
    vector = tf.convert_to_tensor(vector)
    if vector.shape.rank != 1 or (
        vector.shape[0] is not None and vector.shape[0] != sum(sizes)
    ):
        raise ValueError(
            f"unflatten needs a vector of length {sum(sizes)} (the total size of `like`); "
            f"got shape {vector.shape}"
        )
    return [tf.reshape(p, s) for p, s in zip(tf.split(vector, sizes), shapes, strict=True)]


def as_dtype(value, dtype) -> tf.Tensor:
    """A scalar hyperparameter as a tensor of ``dtype``.

    ``tf.cast`` of a Python float goes through float32 and rounds (``0.01`` or ``2/3`` lose
    digits in a float64 computation), so Python numbers are converted to ``dtype`` directly;
    tensors are cast.
    """
    if tf.is_tensor(value):
        return tf.cast(value, dtype)
    return tf.convert_to_tensor(value, dtype=dtype)


def dot(a, b) -> tf.Tensor:
    """Inner product ``sum_i <a_i, b_i>`` of two equally structured (nested) tensor lists."""
    terms = [tf.reduce_sum(x * y) for x, y in zip(tf.nest.flatten(a), tf.nest.flatten(b),
                                                  strict=True)]
    return tf.add_n(terms)


def all_finite(*structures) -> tf.Tensor:
    """Scalar bool: every element of every tensor in the (nested) structures is finite."""
    flags = [tf.reduce_all(tf.math.is_finite(t)) for s in structures for t in tf.nest.flatten(s)]
    return tf.reduce_all(tf.stack(flags))


def zeros_if_none(tensors: Sequence, variables: Sequence) -> list[tf.Tensor]:
    """Dense gradients: zeros for ``None`` (variables ``fn`` does not use), and
    ``tf.IndexedSlices`` (the gradient of a gather, e.g. an ``Embedding`` table) made dense.

    Every curvature product differentiates gradients again or adds them up; TensorFlow does
    neither with ``IndexedSlices`` (``AttributeError: 'IndexedSlices' object has no attribute
    '_id'``), and a curvature-vector product is dense in any case.
    """
    return [
        tf.zeros(v.shape, dtype=v.dtype) if t is None else tf.convert_to_tensor(t)
        for t, v in zip(tensors, variables, strict=True)
    ]
