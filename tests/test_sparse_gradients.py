"""Curvature products for variables whose gradient is ``tf.IndexedSlices`` (an embedding
table read with ``tf.gather``), against the same function written with a dense one-hot matmul.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import natgrad
from natgrad import distributions as D

VOCAB, DIM, CLASSES, N = 7, 3, 4, 6


def _setup():
    rng = np.random.default_rng(0)
    table = tf.Variable(rng.normal(size=(VOCAB, DIM)), name="table")
    w = tf.Variable(rng.normal(size=(DIM, CLASSES)), name="w")
    ids = tf.constant(rng.integers(0, VOCAB, size=N), tf.int32)
    labels = tf.constant(rng.integers(0, CLASSES, size=N), tf.int32)
    vector = [tf.constant(rng.normal(size=(VOCAB, DIM))),
              tf.constant(rng.normal(size=(DIM, CLASSES)))]

    def sparse_outputs():  # gradient w.r.t. table: IndexedSlices
        return tf.tanh(tf.gather(table, ids)) @ w

    def dense_outputs():  # the same function; dense gradients
        return tf.tanh(tf.one_hot(ids, VOCAB, dtype=tf.float64) @ table) @ w

    def loss(outputs_fn):
        return lambda: tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, outputs_fn())
        )

    return [table, w], vector, sparse_outputs, dense_outputs, loss


def test_the_sparse_function_really_has_an_indexed_slices_gradient():
    variables, _, sparse_outputs, _, loss = _setup()
    with tf.GradientTape() as tape:
        value = loss(sparse_outputs)()
    assert isinstance(tape.gradient(value, variables)[0], tf.IndexedSlices)


@pytest.mark.parametrize("method", natgrad.HVP_METHODS)
def test_hessian_vector_product(method):
    variables, vector, sparse_outputs, dense_outputs, loss = _setup()
    got = natgrad.hessian_vector_product(loss(sparse_outputs), variables, vector, method=method)
    want = natgrad.hessian_vector_product(loss(dense_outputs), variables, vector, method=method)
    for g, t in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("form", ["product", "linearized"])
def test_gauss_newton_products(form):
    variables, vector, sparse_outputs, dense_outputs, _ = _setup()
    fvp = D.CATEGORICAL.fisher_vector_product
    if form == "product":
        got = natgrad.gauss_newton_vector_product(sparse_outputs, variables, vector, fvp)
    else:
        got = natgrad.gauss_newton_operator(sparse_outputs, variables, fvp)(vector)
    want = natgrad.gauss_newton_vector_product(dense_outputs, variables, vector, fvp)
    for g, t in zip(got, want, strict=True):
        assert not isinstance(g, tf.IndexedSlices)
        np.testing.assert_allclose(g.numpy(), t.numpy(), rtol=1e-10, atol=1e-12)


def test_natural_gradient_step_matches_dense():
    variables, _, sparse_outputs, dense_outputs, loss = _setup()
    start = [v.numpy() for v in variables]
    results = []
    for outputs_fn in (sparse_outputs, dense_outputs):
        for v, s in zip(variables, start, strict=True):
            v.assign(s)
        opt = natgrad.NaturalGradient(max_kl=0.01)
        stats = opt.minimize(loss(outputs_fn), variables, outputs_fn=outputs_fn,
                             output_distribution=D.CATEGORICAL)
        assert bool(stats["accepted"])
        results.append([v.numpy() for v in variables])
    for a, b in zip(*results, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-10)
