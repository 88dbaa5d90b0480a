"""natgrad.curvature: Hessian, Hessian-vector, Gauss-Newton and Fisher products.

Every product is compared with a dense matrix built independently in the test: a hand-computed
Hessian, a Hessian assembled block by block from ``tape.jacobian`` of ``tape.gradient``, central
finite differences of the gradient in float64, or ``Jᵀ H_out J`` from a dense Jacobian and an
output-space curvature written out in NumPy.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import (
    BATCH,
    NUM_CLASSES,
    OUT_DIM,
    make_batch,
    make_classifier,
    make_gaussian_policy,
    make_tanh_mlp,
    make_two_head_gaussian,
    numpy_flat,
    random_vector,
)

import natgrad
from natgrad import distributions as D

METHODS = natgrad.HVP_METHODS
TOLS = {"float32": {"rtol": 1e-4, "atol": 1e-5}, "float64": {"rtol": 1e-10, "atol": 1e-12}}


def _size(v) -> int:
    return int(np.prod(tuple(v.shape)))


def _dense_block(block, rows, cols) -> np.ndarray:
    # ``UnconnectedGradients.ZERO`` fails on Keras 3 variables, so None blocks are zero-filled.
    if block is None:
        return np.zeros((rows, cols))
    return np.reshape(block.numpy(), (rows, cols))


def reference_hessian(fn, variables) -> np.ndarray:
    """Dense Hessian from per-variable ``tape.jacobian`` blocks of ``tape.gradient``.

    Built row block by row block with a ``while_loop`` Jacobian (no ``pfor``), unlike
    ``natgrad.hessian``, which takes one ``pfor`` Jacobian of the flattened gradient.
    """
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = fn()
        grads = inner.gradient(value, variables)
    rows = []
    for g, v in zip(grads, variables, strict=True):
        blocks = (
            outer.jacobian(g, variables, experimental_use_pfor=False)
            if g is not None
            else [None] * len(variables)
        )
        rows.append(
            np.concatenate([_dense_block(b, _size(v), _size(w))
                            for b, w in zip(blocks, variables, strict=True)], axis=1)
        )
    del outer
    return np.concatenate(rows, axis=0).astype(np.float64)


def finite_difference_hvp(fn, variables, vector, eps=1e-5) -> np.ndarray:
    """``(∇f(θ + εv) − ∇f(θ − εv)) / 2ε`` in float64 (error O(ε²))."""
    originals = [v.numpy() for v in variables]

    def grad_at(sign):
        for var, orig, d in zip(variables, originals, vector, strict=True):
            var.assign(orig + sign * eps * np.asarray(d))
        with tf.GradientTape() as tape:
            value = fn()
        return numpy_flat(tape.gradient(value, variables))

    try:
        return (grad_at(+1.0) - grad_at(-1.0)) / (2.0 * eps)
    finally:
        for var, orig in zip(variables, originals, strict=True):
            var.assign(orig)


def dense_jacobian(outputs_fn, variables) -> np.ndarray:
    """``∂ flat(outputs) / ∂ flat(θ)``, rows in ``tf.nest.flatten`` order of the outputs."""
    with tf.GradientTape(persistent=True) as tape:
        outputs = tf.nest.map_structure(tf.convert_to_tensor, outputs_fn())
    blocks = []
    for z in tf.nest.flatten(outputs):
        jac = tape.jacobian(z, variables, experimental_use_pfor=False)
        rows = _size(z)
        blocks.append(
            np.concatenate([_dense_block(j, rows, _size(v))
                            for j, v in zip(jac, variables, strict=True)], axis=1)
        )
    del tape
    return np.concatenate(blocks, axis=0).astype(np.float64)


def _softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _block_diag(blocks):
    n = sum(b.shape[0] for b in blocks)
    out = np.zeros((n, n))
    i = 0
    for b in blocks:
        out[i:i + b.shape[0], i:i + b.shape[0]] = b
        i += b.shape[0]
    return out


# Worked examples with hand-computed Hessians --------------------------------------------------


def _cubic(x0, x1):
    return x0**3 + 2.0 * x0 * x1 + x1**2 - x0


@pytest.fixture(params=["one-vector", "two-scalars"])
def cubic_problem(request):
    """``f(x) = x0³ + 2 x0 x1 + x1² − x0`` at ``x = (1, 1)``, as one variable or two."""
    if request.param == "one-vector":
        x = tf.Variable([1.0, 1.0], dtype=tf.float64)
        return (lambda: _cubic(x[0], x[1])), [x], lambda a, b: [tf.constant([a, b], tf.float64)]
    x0 = tf.Variable(1.0, dtype=tf.float64)
    x1 = tf.Variable(1.0, dtype=tf.float64)
    return (lambda: _cubic(x0, x1)), [x0, x1], lambda a, b: [
        tf.constant(a, tf.float64), tf.constant(b, tf.float64)
    ]


def test_worked_example_hessian(cubic_problem):
    fn, variables, _ = cubic_problem
    np.testing.assert_allclose(natgrad.hessian(fn, variables).numpy(), [[6.0, 2.0], [2.0, 2.0]])


@pytest.mark.parametrize("method", METHODS)
def test_worked_example_hvp(cubic_problem, method):
    fn, variables, vec = cubic_problem
    hv = natgrad.hessian_vector_product(fn, variables, vec(8.0, 4.0), method=method)
    assert len(hv) == len(variables)
    np.testing.assert_allclose(numpy_flat(hv), [56.0, 24.0], rtol=1e-12)


def test_worked_example_cg_solve(cubic_problem):
    fn, variables, vec = cubic_problem
    result = natgrad.conjugate_gradient(
        lambda v: natgrad.hessian_vector_product(fn, variables, v), vec(16.0, 12.0), max_iters=2
    )
    assert result.reason == "converged"
    np.testing.assert_allclose(numpy_flat(result.x), [1.0, 5.0], rtol=1e-10)
    # xᵀHx = (1, 5)·(16, 12)
    assert result.x_dot_ax.numpy() == pytest.approx(76.0)


def test_three_parameter_example():
    """``f = p0³ + 2 p0 p1 + p1² − p0 + p2²`` at ``p = (3, 1, 5)``, ``b = (3, 12, 6)``."""
    p = tf.Variable([3.0, 1.0, 5.0], dtype=tf.float64)

    def f():
        return p[0] ** 3 + 2.0 * p[0] * p[1] + p[1] ** 2 - p[0] + p[2] ** 2

    b = np.array([3.0, 12.0, 6.0])
    expected = np.array([-0.5625, 6.5625, 3.0])
    hess = natgrad.hessian(f, [p]).numpy()
    np.testing.assert_allclose(hess, [[18.0, 2.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 2.0]])
    np.testing.assert_allclose(np.linalg.solve(hess, b), expected, rtol=1e-12)

    result = natgrad.conjugate_gradient(
        lambda v: natgrad.hessian_vector_product(f, [p], v),
        [tf.constant(b)],
        damping=1e-3,
        max_iters=10,
    )
    np.testing.assert_allclose(result.x[0].numpy(), expected, atol=1e-2)
    np.testing.assert_allclose(
        result.x[0].numpy(), np.linalg.solve(hess + 1e-3 * np.eye(3), b), rtol=1e-8
    )


def test_unused_variable_gets_zero_curvature():
    used = tf.Variable([1.0, 2.0], dtype=tf.float64)
    unused = tf.Variable([[3.0]], dtype=tf.float64)

    def fn():
        return tf.reduce_sum(used**3)

    hess = natgrad.hessian(fn, [used, unused]).numpy()
    np.testing.assert_allclose(hess, np.diag([6.0, 12.0, 0.0]))
    vec = [tf.constant([1.0, 1.0], tf.float64), tf.constant([[1.0]], tf.float64)]
    for method in METHODS:
        hv = natgrad.hessian_vector_product(fn, [used, unused], vec, method=method)
        np.testing.assert_allclose(hv[0].numpy(), [6.0, 12.0])
        np.testing.assert_array_equal(hv[1].numpy(), [[0.0]])


def test_hessian_keras_variables_without_curvature():
    """Keras variables that ``fn`` ignores, or enters linearly, get zero rows and columns."""
    a = keras.Variable([1.0, 2.0], dtype="float64")
    b = keras.Variable([3.0, 4.0, 5.0], dtype="float64")
    c = keras.Variable([[1.0]], dtype="float64")

    def fn():
        return tf.reduce_sum(a**3) + 2.0 * tf.reduce_sum(b)

    expected = np.zeros((6, 6))
    expected[0, 0], expected[1, 1] = 6.0, 12.0
    np.testing.assert_allclose(natgrad.hessian(fn, [a, b, c]).numpy(), expected)
    np.testing.assert_allclose(tf.function(lambda: natgrad.hessian(fn, [a, b, c]))(), expected)
    np.testing.assert_allclose(reference_hessian(fn, [a, b, c]), expected)


# Hessian-vector products on Keras models ------------------------------------------------------


def _mse_problem(dtype):
    model, batch = make_tanh_mlp(dtype), make_batch(dtype)
    return model, lambda: tf.reduce_mean(tf.square(model(batch["x"]) - batch["y"]))


def _cross_entropy_problem(dtype):
    model, _ = make_classifier(dtype)
    batch = make_batch(dtype)
    return model, lambda: tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(batch["labels"], model(batch["x"]))
    )


PROBLEMS = {"tanh-mse": _mse_problem, "softmax-cross-entropy": _cross_entropy_problem}


@pytest.fixture(
    scope="module",
    params=[(k, d) for k in PROBLEMS for d in ("float32", "float64")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def keras_problem(request):
    """A scalar loss of a Keras model, a tangent ``v`` and two dense Hessians of the loss."""
    kind, dtype = request.param
    model, loss = PROBLEMS[kind](dtype)
    variables = model.trainable_variables
    return {
        "dtype": dtype,
        "loss": loss,
        "variables": variables,
        "vector": random_vector(variables),
        "hessian": natgrad.hessian(loss, variables).numpy().astype(np.float64),
        "reference": reference_hessian(loss, variables),
    }


def test_dense_hessian_matches_reference(keras_problem):
    hess = keras_problem["hessian"]
    n = sum(_size(v) for v in keras_problem["variables"])
    assert hess.shape == (n, n)
    np.testing.assert_allclose(hess, keras_problem["reference"], **TOLS[keras_problem["dtype"]])
    np.testing.assert_allclose(hess, hess.T, **TOLS[keras_problem["dtype"]])


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("method", METHODS)
def test_hvp_matches_dense_hessian(keras_problem, method, compiled):
    loss, variables, vector = (keras_problem[k] for k in ("loss", "variables", "vector"))

    def hvp(vec):
        return natgrad.hessian_vector_product(loss, variables, vec, method=method)

    if compiled:
        hvp = tf.function(hvp)
    out = hvp(vector)
    assert [tuple(t.shape) for t in out] == [tuple(v.shape) for v in variables]
    assert all(t.dtype == v.dtype for t, v in zip(out, variables, strict=True))
    v = numpy_flat(vector)
    tols = TOLS[keras_problem["dtype"]]
    np.testing.assert_allclose(numpy_flat(out), keras_problem["hessian"] @ v, **tols)
    np.testing.assert_allclose(numpy_flat(out), keras_problem["reference"] @ v, **tols)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_hvp_matches_finite_differences_float64(kind, method):
    model, loss = PROBLEMS[kind]("float64")
    variables = model.trainable_variables
    vector = random_vector(variables, seed=5)
    hv = natgrad.hessian_vector_product(loss, variables, vector, method=method)
    fd = finite_difference_hvp(loss, variables, vector)
    np.testing.assert_allclose(numpy_flat(hv), fd, rtol=1e-6, atol=1e-8)


def test_hvp_is_linear_in_vector(tanh_mlp64, batch64):
    variables = tanh_mlp64.trainable_variables

    def loss():
        return tf.reduce_mean(tf.square(tanh_mlp64(batch64["x"]) - batch64["y"]))

    u, w = random_vector(variables, seed=1), random_vector(variables, seed=2)
    combo = [2.0 * a - 3.0 * b for a, b in zip(u, w, strict=True)]
    hu, hw, hc = (
        numpy_flat(natgrad.hessian_vector_product(loss, variables, t)) for t in (u, w, combo)
    )
    np.testing.assert_allclose(hc, 2.0 * hu - 3.0 * hw, rtol=1e-10, atol=1e-12)


# Gauss-Newton products against a dense Jᵀ H_out J --------------------------------------------


def _gn_softmax(dtype):
    model, _ = make_classifier(dtype)
    x = make_batch(dtype)["x"]
    logits = model(x).numpy().astype(np.float64)
    per_sample = [(np.diag(p) - np.outer(p, p)) / BATCH for p in _softmax(logits)]
    return (
        lambda: model(x),
        model.trainable_variables,
        D.categorical_fisher_vector_product,
        _block_diag(per_sample),
    )


def _gn_mse(dtype):
    model = make_tanh_mlp(dtype)
    x = make_batch(dtype)["x"]
    h_out = 2.0 / (BATCH * OUT_DIM) * np.eye(BATCH * OUT_DIM)
    return lambda: model(x), model.trainable_variables, D.squared_error_fisher_vector_product, h_out


def _gn_gaussian(dtype):
    model, log_std = make_gaussian_policy(dtype)
    x = make_batch(dtype)["x"]
    inv_var = np.exp(-2.0 * log_std.numpy().astype(np.float64))
    # Output order (mean [N, D] row-major, then log_std [D]).
    h_mean = np.diag(np.tile(inv_var, BATCH)) / BATCH
    h_out = _block_diag([h_mean, 2.0 * np.eye(OUT_DIM)])
    return (
        lambda: (model(x), log_std),
        [*model.trainable_variables, log_std],
        D.diagonal_gaussian_fisher_vector_product,
        h_out,
    )


GN_CASES = {"softmax-cross-entropy": _gn_softmax, "mse": _gn_mse, "gaussian": _gn_gaussian}


@pytest.mark.parametrize("case", list(GN_CASES))
def test_gauss_newton_matches_dense_jt_h_j(case, dtype):
    outputs_fn, variables, curvature, h_out = GN_CASES[case](dtype)
    jac = dense_jacobian(outputs_fn, variables)
    assert jac.shape == (h_out.shape[0], sum(_size(v) for v in variables))
    dense = jac.T @ h_out @ jac
    for seed in (0, 1):
        vector = random_vector(variables, seed=seed)
        gn = natgrad.gauss_newton_vector_product(outputs_fn, variables, vector, curvature)
        assert [tuple(t.shape) for t in gn] == [tuple(v.shape) for v in variables]
        np.testing.assert_allclose(numpy_flat(gn), dense @ numpy_flat(vector), **TOLS[dtype])


@pytest.mark.parametrize("case", list(GN_CASES))
def test_gauss_newton_operator_matches_dense_jt_h_j(case, dtype):
    """The linearized operator reuses one forward pass for many products: same matrix."""
    outputs_fn, variables, curvature, h_out = GN_CASES[case](dtype)
    jac = dense_jacobian(outputs_fn, variables)
    dense = jac.T @ h_out @ jac
    matvec = natgrad.gauss_newton_operator(outputs_fn, variables, curvature)
    for seed in (0, 1, 2):
        vector = random_vector(variables, seed=seed)
        np.testing.assert_allclose(numpy_flat(matvec(vector)), dense @ numpy_flat(vector),
                                   **TOLS[dtype])


def test_linearize_gauss_newton_returns_the_outputs_it_linearized_at():
    outputs_fn, variables, curvature, _ = _gn_gaussian("float64")
    outputs, matvec = natgrad.linearize_gauss_newton(outputs_fn, variables, curvature)
    for got, want in zip(tf.nest.flatten(outputs), tf.nest.flatten(outputs_fn()), strict=True):
        np.testing.assert_array_equal(got.numpy(), want.numpy())
    vector = random_vector(variables)
    np.testing.assert_allclose(
        numpy_flat(matvec(vector)),
        numpy_flat(natgrad.gauss_newton_vector_product(outputs_fn, variables, vector, curvature)),
        rtol=1e-12, atol=1e-14)


def test_gauss_newton_operator_inside_compiled_cg_matches_dense_solve():
    outputs_fn, variables, curvature, h_out = _gn_softmax("float64")
    jac = dense_jacobian(outputs_fn, variables)
    n = jac.shape[1]
    b = random_vector(variables, seed=3)
    damping = 0.05

    @tf.function
    def solve():
        matvec = natgrad.gauss_newton_operator(outputs_fn, variables, curvature)
        return natgrad.conjugate_gradient(matvec, b, max_iters=4 * n, tol=1e-13,
                                          damping=damping).x

    exact = np.linalg.solve(jac.T @ h_out @ jac + damping * np.eye(n), numpy_flat(b))
    np.testing.assert_allclose(numpy_flat(solve()), exact, rtol=1e-6, atol=1e-9)


def test_gauss_newton_in_tf_function_matches_eager():
    outputs_fn, variables, curvature, _ = _gn_gaussian("float64")
    vector = random_vector(variables)

    def gnvp(vec):
        return natgrad.gauss_newton_vector_product(outputs_fn, variables, vec, curvature)

    eager = numpy_flat(gnvp(vector))
    compiled = numpy_flat(tf.function(gnvp)(vector))
    np.testing.assert_allclose(compiled, eager, rtol=1e-12, atol=1e-14)


def test_gauss_newton_equals_hessian_for_linear_model():
    """For outputs linear in θ, ``Jᵀ H_out J`` is the exact Hessian of the loss."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(BATCH, 3)))
    w = tf.Variable(rng.normal(size=(3, NUM_CLASSES)))
    bias = tf.Variable(rng.normal(size=(NUM_CLASSES,)))
    labels = tf.constant(rng.integers(0, NUM_CLASSES, BATCH), dtype=tf.int32)

    def loss():
        logits = x @ w + bias
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))

    hess = natgrad.hessian(loss, [w, bias]).numpy()
    vector = random_vector([w, bias])
    gn = natgrad.gauss_newton_vector_product(
        lambda: x @ w + bias, [w, bias], vector, D.categorical_fisher_vector_product
    )
    np.testing.assert_allclose(numpy_flat(gn), hess @ numpy_flat(vector), rtol=1e-10)


# Fisher products against the Hessian of the KL at θ_old --------------------------------------


def _fisher_categorical():
    model, _ = make_classifier("float64")
    x = make_batch("float64")["x"]
    return D.CATEGORICAL, lambda: model(x), model.trainable_variables


def _fisher_categorical_probs():
    _, probs_model = make_classifier("float64")
    x = make_batch("float64")["x"]
    return D.CATEGORICAL_PROBS, lambda: probs_model(x), probs_model.trainable_variables


def _fisher_bernoulli():
    model = make_tanh_mlp("float64")
    x = make_batch("float64")["x"]
    return D.BERNOULLI, lambda: model(x), model.trainable_variables


def _fisher_bernoulli_probs():
    model = make_tanh_mlp("float64")
    x = make_batch("float64")["x"]
    return D.BERNOULLI_PROBS, lambda: tf.sigmoid(model(x)), model.trainable_variables


def _fisher_squared_error():
    model = make_tanh_mlp("float64")
    x = make_batch("float64")["x"]
    return D.SQUARED_ERROR, lambda: model(x), model.trainable_variables


def _fisher_gaussian_shared():
    model, log_std = make_gaussian_policy("float64")
    x = make_batch("float64")["x"]
    return (
        D.DIAGONAL_GAUSSIAN,
        lambda: (model(x), log_std),
        [*model.trainable_variables, log_std],
    )


def _fisher_gaussian_per_sample():
    model = make_two_head_gaussian("float64")
    x = make_batch("float64")["x"]
    return D.DIAGONAL_GAUSSIAN, lambda: tuple(model(x)), model.trainable_variables


FISHER_CASES = {
    "categorical": _fisher_categorical,
    "categorical-probs": _fisher_categorical_probs,
    "bernoulli": _fisher_bernoulli,
    "bernoulli-probs": _fisher_bernoulli_probs,
    "squared-error": _fisher_squared_error,
    "gaussian-shared-log-std": _fisher_gaussian_shared,
    "gaussian-per-sample-log-std": _fisher_gaussian_per_sample,
}


@pytest.mark.parametrize("case", list(FISHER_CASES))
def test_fisher_product_is_hessian_of_kl_at_old_parameters(case):
    dist, outputs_fn, variables = FISHER_CASES[case]()
    old = tf.nest.map_structure(lambda t: tf.constant(np.asarray(t)), outputs_fn())

    def kl():
        return dist.kl(old, outputs_fn())

    assert abs(float(kl())) < 1e-12  # KL(old ‖ new) vanishes at θ = θ_old
    kl_hessian = natgrad.hessian(kl, variables).numpy()
    assert np.linalg.eigvalsh(kl_hessian).min() > -1e-10  # PSD at the minimum
    for seed in (0, 1):
        vector = random_vector(variables, seed=seed)
        fvp = natgrad.gauss_newton_vector_product(
            outputs_fn, variables, vector, dist.fisher_vector_product
        )
        np.testing.assert_allclose(
            numpy_flat(fvp), kl_hessian @ numpy_flat(vector), rtol=1e-7, atol=1e-10
        )


def test_probs_fisher_equals_logits_fisher(dtype):
    logits_model, probs_model = make_classifier(dtype)
    x = make_batch(dtype)["x"]
    variables = logits_model.trainable_variables
    assert [id(v) for v in variables] == [id(v) for v in probs_model.trainable_variables]
    for seed in (0, 1):
        vector = random_vector(variables, seed=seed)
        from_logits = natgrad.gauss_newton_vector_product(
            lambda: logits_model(x), variables, vector, D.categorical_fisher_vector_product
        )
        from_probs = natgrad.gauss_newton_vector_product(
            lambda: probs_model(x), variables, vector, D.categorical_probs_fisher_vector_product
        )
        np.testing.assert_allclose(
            numpy_flat(from_probs), numpy_flat(from_logits), **TOLS[dtype]
        )


# Bad input -------------------------------------------------------------------------------------


@pytest.fixture
def quadratic():
    a = tf.Variable([1.0, 2.0], dtype=tf.float64)
    b = tf.Variable([[3.0, 4.0, 5.0]], dtype=tf.float64)

    def fn():
        return tf.reduce_sum(a**2) * tf.reduce_sum(b**2)

    good = [tf.ones(2, tf.float64), tf.ones((1, 3), tf.float64)]
    return fn, [a, b], good


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "make_vector, pattern",
    [
        (lambda good: good[:1], r"expected 2 entries, got 1"),
        (lambda good: [*good, good[0]], r"expected 2 entries, got 3"),
        (lambda good: [good[0], tf.ones(3, tf.float64)], r"vector\[1\] has shape \(3,\)"),
        (lambda good: [tf.ones(2, tf.float32), good[1]], r"vector\[0\] has dtype float32"),
        (lambda good: tf.ones(5, tf.float64), r"must be a list of tensors"),
    ],
    ids=["too-short", "too-long", "wrong-shape", "wrong-dtype", "flat-vector"],
)
def test_hvp_bad_vector_raises(quadratic, method, make_vector, pattern):
    fn, variables, good = quadratic
    with pytest.raises(ValueError, match=pattern):
        natgrad.hessian_vector_product(fn, variables, make_vector(good), method=method)


def test_gauss_newton_bad_vector_raises(quadratic):
    _, variables, good = quadratic
    with pytest.raises(ValueError, match=r"vector\[1\] has shape \(1, 2\)"):
        natgrad.gauss_newton_vector_product(
            lambda: variables[0] * 2.0,
            variables,
            [good[0], tf.ones((1, 2), tf.float64)],
            D.squared_error_fisher_vector_product,
        )


@pytest.mark.parametrize("method", METHODS)
def test_hvp_non_scalar_fn_raises(quadratic, method):
    _, variables, good = quadratic
    with pytest.raises(ValueError, match=r"must return a scalar tensor.*shape \(2,\)"):
        natgrad.hessian_vector_product(lambda: variables[0] ** 2, variables, good, method=method)


def test_hessian_non_scalar_fn_raises(quadratic):
    _, variables, _ = quadratic
    with pytest.raises(ValueError, match=r"must return a scalar tensor.*shape \(1, 3\)"):
        natgrad.hessian(lambda: variables[1] ** 2, variables)


def test_non_scalar_fn_raises_inside_tf_function(quadratic):
    _, variables, good = quadratic
    with pytest.raises(ValueError, match=r"must return a scalar tensor"):
        tf.function(
            lambda v: natgrad.hessian_vector_product(lambda: variables[0] * 3.0, variables, v)
        )(good)


def test_unknown_method_raises(quadratic):
    fn, variables, good = quadratic
    pattern = ("^method must be one of 'forward_over_reverse', 'reverse_over_reverse'; "
               "got 'forward'$")
    with pytest.raises(ValueError, match=pattern):
        natgrad.hessian_vector_product(fn, variables, good, method="forward")


def test_bad_variables_raise(quadratic):
    fn, variables, good = quadratic
    with pytest.raises(ValueError, match=r"non-empty"):
        natgrad.hessian_vector_product(fn, [], [])
    with pytest.raises(ValueError, match=r"list of tf.Variable"):
        natgrad.hessian(fn, variables[0])


def test_negative_damping_raises(quadratic):
    fn, variables, good = quadratic
    with pytest.raises(ValueError, match=r"damping must be a finite number >= 0; got -0.1"):
        natgrad.conjugate_gradient(
            lambda v: natgrad.hessian_vector_product(fn, variables, v), good, damping=-0.1
        )


# CG with a Hessian-vector product on Keras models ---------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", list(PROBLEMS))
def test_cg_direction_matches_dense_solve(kind, method):
    model, loss = PROBLEMS[kind]("float64")
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, variables)
    hess = reference_hessian(loss, variables)
    n = hess.shape[0]
    # Damping that makes H + λI positive definite (these small tanh losses are not convex).
    damping = max(0.0, -np.linalg.eigvalsh(hess).min()) + 0.5
    expected = np.linalg.solve(hess + damping * np.eye(n), numpy_flat(grads))

    # The product is compiled once; the CG loop itself runs eagerly.
    matvec = tf.function(
        lambda v: natgrad.hessian_vector_product(loss, variables, v, method=method)
    )
    result = natgrad.conjugate_gradient(
        matvec,
        grads,
        damping=damping,
        max_iters=n,
        tol=1e-12,
    )
    x = numpy_flat(result.x)
    assert np.linalg.norm(x - expected) <= 1e-4 * np.linalg.norm(expected)
    assert result.x_dot_ax.numpy() == pytest.approx(
        x @ (hess + damping * np.eye(n)) @ x, rel=1e-6
    )


def test_cg_with_hvp_compiles_to_same_result(tanh_mlp64, batch64):
    variables = tanh_mlp64.trainable_variables

    def loss():
        return tf.reduce_mean(tf.square(tanh_mlp64(batch64["x"]) - batch64["y"]))

    def solve(b):
        result = natgrad.conjugate_gradient(
            lambda v: natgrad.hessian_vector_product(loss, variables, v),
            b,
            damping=2.0,
            max_iters=8,
        )
        return result.x, result.iterations

    b = random_vector(variables)
    x_eager, it_eager = solve(b)
    x_graph, it_graph = tf.function(solve)(b)
    assert int(it_graph) == int(it_eager)
    np.testing.assert_allclose(numpy_flat(x_graph), numpy_flat(x_eager), rtol=1e-9, atol=1e-12)
