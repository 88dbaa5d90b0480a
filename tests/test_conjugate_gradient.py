"""natgrad.conjugate_gradient against dense NumPy solves and hand-worked iterations."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import natgrad
from natgrad import conjugate_gradient

CG_SETTINGS = settings(max_examples=25, deadline=None)


def random_spd(n: int, seed: int, low: float = 0.5, high: float = 10.0) -> np.ndarray:
    """``Q diag(λ) Qᵀ`` with ``λ ∈ [low, high]``: symmetric, condition number ≤ high/low."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    a = q @ np.diag(rng.uniform(low, high, size=n)) @ q.T
    return 0.5 * (a + a.T)


def matvec_of(a: np.ndarray):
    a_t = tf.constant(a)
    return lambda v: tf.linalg.matvec(a_t, v)


def rel_err(x, expected) -> float:
    return float(np.linalg.norm(np.asarray(x) - expected) / np.linalg.norm(expected))


def krylov_iterate(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """The k-th CG iterate from 0: the minimizer of ½xᵀAx − bᵀx over span{b, Ab, …, A^(k−1)b}."""
    basis = [b]
    for _ in range(k - 1):
        basis.append(a @ basis[-1])
    q, _ = np.linalg.qr(np.stack(basis, axis=1))
    return q @ np.linalg.solve(q.T @ a @ q, q.T @ b)


# Property: CG solves random SPD systems ------------------------------------------------------


@CG_SETTINGS
@given(n=st.integers(2, 12), seed=st.integers(0, 2**31 - 1))
def test_solves_random_spd_systems(n, seed):
    a = random_spd(n, seed)
    b = np.random.default_rng(seed + 1).normal(size=n)
    result = conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=n, tol=1e-12)
    expected = np.linalg.solve(a, b)
    assert rel_err(result.x.numpy(), expected) < 1e-6
    assert result.reason == "converged"
    assert 1 <= int(result.iterations) <= n
    # The tracked residual is the true one, and x_dot_ax is xᵀAx.
    x = result.x.numpy()
    assert float(result.residual_norm) <= 1e-12 * np.linalg.norm(b) * 1.0001
    assert np.linalg.norm(b - a @ x) <= 1e-9 * np.linalg.norm(b)
    assert float(result.x_dot_ax) == pytest.approx(x @ a @ x, rel=1e-9)


@CG_SETTINGS
@given(
    n=st.integers(2, 12),
    seed=st.integers(0, 2**31 - 1),
    damping=st.floats(0.0, 5.0),
)
def test_solves_damped_system_with_list_structure(n, seed, damping):
    """``b`` as a list of two tensors (shapes ``[k]`` and ``[1, n − k]``); damping honoured."""
    a = random_spd(n, seed)
    b = np.random.default_rng(seed + 1).normal(size=n)
    k = 1 + seed % (n - 1)
    a_t = tf.constant(a)

    def matvec(parts):
        flat = tf.concat([tf.reshape(p, [-1]) for p in parts], axis=0)
        out = tf.linalg.matvec(a_t, flat)
        return [out[:k], tf.reshape(out[k:], [1, n - k])]

    b_list = [tf.constant(b[:k]), tf.constant(b[k:].reshape(1, n - k))]
    result = conjugate_gradient(matvec, b_list, max_iters=n, tol=1e-12, damping=damping)
    assert isinstance(result.x, list) and len(result.x) == 2
    assert result.x[0].shape == (k,) and result.x[1].shape == (1, n - k)
    x = np.concatenate([result.x[0].numpy(), result.x[1].numpy().ravel()])
    damped = a + damping * np.eye(n)
    assert rel_err(x, np.linalg.solve(damped, b)) < 1e-6
    assert result.reason == "converged"
    assert float(result.x_dot_ax) == pytest.approx(x @ damped @ x, rel=1e-9)


@CG_SETTINGS
@given(n=st.integers(2, 12), seed=st.integers(0, 2**31 - 1))
def test_jacobi_preconditioned_solve(n, seed):
    a = random_spd(n, seed)
    b = np.random.default_rng(seed + 1).normal(size=n)
    inv_diag = tf.constant(1.0 / np.diag(a))
    result = conjugate_gradient(
        matvec_of(a), tf.constant(b), max_iters=n, tol=1e-12,
        preconditioner=lambda r: inv_diag * r,
    )
    assert rel_err(result.x.numpy(), np.linalg.solve(a, b)) < 1e-6
    assert result.reason == "converged"


# Hand-worked iterations ------------------------------------------------------------------------


def test_two_by_two_by_hand():
    """A = [[4, 1], [1, 3]], b = (1, 2): x = (1/11, 7/11) in two steps."""
    a = np.array([[4.0, 1.0], [1.0, 3.0]])
    result = conjugate_gradient(matvec_of(a), tf.constant([1.0, 2.0], tf.float64), max_iters=5)
    np.testing.assert_allclose(result.x.numpy(), [1 / 11, 7 / 11], rtol=1e-12)
    assert int(result.iterations) == 2
    assert result.reason == "converged"
    # xᵀAx = xᵀb = 15/11
    assert float(result.x_dot_ax) == pytest.approx(15 / 11)


def test_max_iters_cap_gives_krylov_iterate():
    n = 12
    a = random_spd(n, 0, low=0.1, high=100.0)
    b = np.random.default_rng(1).normal(size=n)
    for k in (1, 3, 5):
        result = conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=k, tol=1e-12)
        assert result.reason == "max_iters"
        assert int(result.iterations) == k
        np.testing.assert_allclose(result.x.numpy(), krylov_iterate(a, b, k), rtol=1e-8)
        x = result.x.numpy()
        assert float(result.residual_norm) == pytest.approx(np.linalg.norm(b - a @ x), rel=1e-6)


def test_zero_rhs_converges_immediately_to_zero():
    a = random_spd(4, 2)
    result = conjugate_gradient(matvec_of(a), tf.zeros(4, tf.float64), max_iters=4)
    assert result.reason == "converged"
    assert int(result.iterations) == 0
    np.testing.assert_array_equal(result.x.numpy(), np.zeros(4))


def test_float32():
    a = random_spd(6, 3).astype(np.float32)
    b = np.random.default_rng(4).normal(size=6).astype(np.float32)
    result = conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=20, tol=1e-5)
    assert result.x.dtype == tf.float32
    assert result.reason == "converged"
    assert rel_err(result.x.numpy(), np.linalg.solve(a.astype(np.float64), b)) < 1e-4


# Breakdowns: negative curvature and non-finite values -----------------------------------------


def test_negative_curvature_at_first_step():
    """b along an eigenvector with eigenvalue −2: pᵀAp < 0 at once, x stays 0."""
    rng = np.random.default_rng(5)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    a = q @ np.diag([3.0, 1.0, -2.0]) @ q.T
    result = conjugate_gradient(matvec_of(a), tf.constant(q[:, 2]), max_iters=3)
    assert result.reason == "negative_curvature"
    assert int(result.iterations) == 0
    np.testing.assert_array_equal(result.x.numpy(), np.zeros(3))


def test_negative_curvature_at_second_step_keeps_first_iterate():
    """A = diag(1, −1), b = (2, 1): step 1 gives x = 5/3·(2, 1); the next A-conjugate
    direction must have pᵀAp < 0 (A has one negative eigenvalue)."""
    a = np.diag([1.0, -1.0])
    result = conjugate_gradient(matvec_of(a), tf.constant([2.0, 1.0], tf.float64), max_iters=5)
    assert result.reason == "negative_curvature"
    assert int(result.iterations) == 1
    np.testing.assert_allclose(result.x.numpy(), [10 / 3, 5 / 3], rtol=1e-12)
    assert np.all(np.isfinite(result.x.numpy()))


@CG_SETTINGS
@given(n=st.integers(2, 12), seed=st.integers(0, 2**31 - 1))
def test_negative_definite_reports_negative_curvature(n, seed):
    a = -random_spd(n, seed)
    b = np.random.default_rng(seed + 1).normal(size=n)
    result = conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=n)
    assert result.reason == "negative_curvature"
    assert np.all(np.isfinite(result.x.numpy()))


def test_damping_restores_positive_definiteness():
    a = np.diag([3.0, 1.0, -2.0])
    b = np.array([1.0, 1.0, 1.0])
    assert conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=3).reason != "converged"
    result = conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=3, damping=2.5)
    assert result.reason == "converged"
    np.testing.assert_allclose(result.x.numpy(), b / (np.diag(a) + 2.5), rtol=1e-10)


def test_damping_and_tol_keep_float64_precision():
    """λ = 0.1 is not a float32 number: a float64 solve must not round it to one."""
    result = conjugate_gradient(
        lambda v: v, tf.ones(3, tf.float64), damping=0.1, max_iters=3, tol=1e-14
    )
    np.testing.assert_allclose(result.x.numpy(), np.full(3, 1.0 / 1.1), rtol=1e-15)
    assert result.reason == "converged"
    # Tensor arguments of another dtype are cast.
    cast = conjugate_gradient(
        lambda v: v, tf.ones(2, tf.float64), damping=tf.constant(1.0, tf.float32), max_iters=2
    )
    np.testing.assert_allclose(cast.x.numpy(), [0.5, 0.5], rtol=1e-15)


def test_nan_in_b_reports_non_finite():
    a = random_spd(4, 6)
    b = tf.constant([1.0, np.nan, 0.0, 2.0], tf.float64)
    result = conjugate_gradient(matvec_of(a), b, max_iters=4)
    assert result.reason == "non_finite"
    assert int(result.iterations) == 0
    np.testing.assert_array_equal(result.x.numpy(), np.zeros(4))
    assert np.isnan(float(result.residual_norm))


def test_nan_in_list_b_reports_non_finite():
    b = [tf.constant([1.0, 2.0], tf.float64), tf.constant([[np.inf]], tf.float64)]
    result = conjugate_gradient(lambda v: v, b, max_iters=3)
    assert result.reason == "non_finite"
    assert all(np.all(np.isfinite(t.numpy())) for t in result.x)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
@pytest.mark.parametrize("good_calls", [0, 1, 3])
def test_matvec_turning_non_finite_keeps_last_good_iterate(good_calls, bad_value):
    n = 8
    a = random_spd(n, 7, low=0.1, high=50.0)
    b = np.random.default_rng(8).normal(size=n)
    calls = {"n": 0}
    base = matvec_of(a)

    def flaky(v):
        calls["n"] += 1
        out = base(v)
        return out * bad_value if calls["n"] > good_calls else out

    result = conjugate_gradient(flaky, tf.constant(b), max_iters=n, tol=1e-14)
    assert result.reason == "non_finite"
    assert int(result.iterations) == good_calls
    x = result.x.numpy()
    assert np.all(np.isfinite(x))
    if good_calls == 0:
        np.testing.assert_array_equal(x, np.zeros(n))
    else:
        clean = conjugate_gradient(base, tf.constant(b), max_iters=good_calls, tol=1e-14)
        np.testing.assert_allclose(x, clean.x.numpy(), rtol=1e-12)
        np.testing.assert_allclose(x, krylov_iterate(a, b, good_calls), rtol=1e-8)
    assert np.isfinite(float(result.x_dot_ax))


# Starting point --------------------------------------------------------------------------------


def test_x0_at_solution_converges_in_zero_iterations():
    n = 6
    a = random_spd(n, 9)
    b = np.random.default_rng(10).normal(size=n)
    exact = np.linalg.solve(a, b)
    calls = {"n": 0}
    base = matvec_of(a)

    def counting(v):
        calls["n"] += 1
        return base(v)

    result = conjugate_gradient(counting, tf.constant(b), x0=tf.constant(exact), tol=1e-10)
    assert result.reason == "converged"
    assert int(result.iterations) == 0
    assert calls["n"] == 1  # only the initial residual b − A x0
    np.testing.assert_allclose(result.x.numpy(), exact, rtol=1e-12)
    assert float(result.x_dot_ax) == pytest.approx(exact @ a @ exact, rel=1e-9)


@pytest.mark.parametrize("damping", [0.0, 0.7])
def test_x0_elsewhere_converges_to_solution(damping):
    n = 7
    a = random_spd(n, 11)
    rng = np.random.default_rng(12)
    b, x0 = rng.normal(size=n), 10.0 * rng.normal(size=n)
    damped = a + damping * np.eye(n)
    result = conjugate_gradient(
        matvec_of(a), tf.constant(b), x0=tf.constant(x0), max_iters=n, tol=1e-12,
        damping=damping,
    )
    assert result.reason == "converged"
    assert rel_err(result.x.numpy(), np.linalg.solve(damped, b)) < 1e-8
    x = result.x.numpy()
    assert float(result.x_dot_ax) == pytest.approx(x @ damped @ x, rel=1e-8)


def test_x0_changes_the_first_iterate():
    """One step from x0 is x0 + α r0 with r0 = b − A x0, α = r0ᵀr0 / r0ᵀA r0."""
    a = np.array([[4.0, 1.0], [1.0, 3.0]])
    b, x0 = np.array([1.0, 2.0]), np.array([1.0, -1.0])
    r0 = b - a @ x0
    expected = x0 + (r0 @ r0) / (r0 @ a @ r0) * r0
    result = conjugate_gradient(matvec_of(a), tf.constant(b), x0=tf.constant(x0), max_iters=1)
    assert result.reason == "max_iters"
    np.testing.assert_allclose(result.x.numpy(), expected, rtol=1e-12)
    # Away from the solution and from 0, xᵀAx differs from xᵀb: check the former is reported.
    assert float(result.x_dot_ax) == pytest.approx(expected @ a @ expected, rel=1e-12)
    assert abs(expected @ a @ expected - expected @ b) > 0.1
    assert float(result.residual_norm) == pytest.approx(np.linalg.norm(b - a @ expected))


def test_x0_list_structure_and_dtype_cast():
    b = [tf.constant([1.0, 2.0], tf.float64), tf.constant([4.0], tf.float64)]
    x0 = [tf.constant([0.0, 0.0], tf.float32), tf.constant([1.0], tf.float32)]
    result = conjugate_gradient(lambda v: [2.0 * t for t in v], b, x0=x0, max_iters=3)
    assert result.x[0].dtype == tf.float64
    np.testing.assert_allclose(result.x[0].numpy(), [0.5, 1.0])
    np.testing.assert_allclose(result.x[1].numpy(), [2.0])


# Preconditioning -------------------------------------------------------------------------------


def test_jacobi_preconditioner_needs_fewer_iterations():
    """Diagonal dominant, diagonal spanning 1 … 10⁴: Jacobi makes it nearly the identity."""
    n = 40
    rng = np.random.default_rng(13)
    d = np.logspace(0, 4, n)
    s = rng.normal(size=(n, n))
    s = 0.5 * (s + s.T) / n  # ‖S‖ well below 1
    a = np.sqrt(d)[:, None] * (np.eye(n) + 0.3 * s) * np.sqrt(d)[None, :]
    assert np.linalg.eigvalsh(a).min() > 0 and np.linalg.cond(a) > 1e3
    b = rng.normal(size=n)
    expected = np.linalg.solve(a, b)
    inv_diag = tf.constant(1.0 / np.diag(a))

    plain = conjugate_gradient(matvec_of(a), tf.constant(b), max_iters=500, tol=1e-8)
    jacobi = conjugate_gradient(
        matvec_of(a), tf.constant(b), max_iters=500, tol=1e-8,
        preconditioner=lambda r: inv_diag * r,
    )
    assert plain.reason == "converged" and jacobi.reason == "converged"
    assert rel_err(jacobi.x.numpy(), expected) < 1e-6
    assert rel_err(plain.x.numpy(), expected) < 1e-6
    assert int(jacobi.iterations) < int(plain.iterations) // 2


# Compiled path ---------------------------------------------------------------------------------


def test_tf_function_matches_eager():
    n = 9
    a = random_spd(n, 14, low=0.2, high=20.0)
    b = tf.constant(np.random.default_rng(15).normal(size=n))
    a_t = tf.constant(a)
    inv_diag = tf.constant(1.0 / np.diag(a))

    def solve(rhs, max_iters, preconditioned):
        return conjugate_gradient(
            lambda v: tf.linalg.matvec(a_t, v), rhs, max_iters=max_iters, tol=1e-12,
            damping=0.1, preconditioner=(lambda r: inv_diag * r) if preconditioned else None,
        )

    compiled = tf.function(solve)
    for max_iters, preconditioned in ((3, False), (n, False), (n, True)):
        eager = solve(b, max_iters, preconditioned)
        graph = compiled(b, max_iters, preconditioned)
        np.testing.assert_allclose(graph.x.numpy(), eager.x.numpy(), rtol=1e-10)
        assert int(graph.iterations) == int(eager.iterations)
        assert int(graph.status) == int(eager.status)
        assert float(graph.x_dot_ax) == pytest.approx(float(eager.x_dot_ax), rel=1e-10)
    assert natgrad.STATUS_NAMES[int(graph.status)] == "converged"
    np.testing.assert_allclose(
        graph.x.numpy(), np.linalg.solve(a + 0.1 * np.eye(n), b.numpy()), rtol=1e-8
    )


def test_tf_function_reports_breakdowns():
    @tf.function
    def solve(b):
        r = conjugate_gradient(lambda v: -v, b, max_iters=4)
        return r.x, r.status

    x, status = solve(tf.constant([1.0, 2.0], tf.float64))
    assert natgrad.STATUS_NAMES[int(status)] == "negative_curvature"
    np.testing.assert_array_equal(x.numpy(), [0.0, 0.0])


# Argument checks -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"max_iters": 0}, r"max_iters must be an integer >= 1; got 0"),
        ({"max_iters": 2.0}, r"max_iters must be an integer >= 1; got 2.0"),
        ({"tol": -1e-3}, r"tol must be a finite number >= 0; got -0.001"),
        ({"tol": float("nan")}, r"tol must be a finite number >= 0; got nan"),
        ({"damping": -0.5}, r"damping must be a finite number >= 0; got -0.5"),
        ({"x0": [tf.zeros(2, tf.float64)]}, r"x0 must have the same structure as b"),
    ],
)
def test_bad_arguments_raise(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        conjugate_gradient(lambda v: v, tf.ones(2, tf.float64), **kwargs)


def test_status_names_and_result_fields():
    assert natgrad.STATUS_NAMES == ("converged", "max_iters", "negative_curvature", "non_finite")
    result = conjugate_gradient(lambda v: 2.0 * v, tf.ones(3, tf.float64), max_iters=3)
    assert isinstance(result, natgrad.CGResult)
    assert result.iterations.dtype == tf.int32 and result.status.dtype == tf.int32
    np.testing.assert_allclose(result.x.numpy(), [0.5, 0.5, 0.5])


@pytest.mark.parametrize("case", ["spd", "early_convergence", "indefinite"])
def test_unrolled_iterations_give_the_loop_s_result_bit_for_bit(case):
    """``unroll=True`` (what tf.distribute needs) against the ``tf.while_loop`` version."""
    rng = np.random.default_rng(7)
    n = 3 if case == "early_convergence" else 12
    a = rng.normal(size=(n, n))
    matrix = a @ a.T + 0.1 * np.eye(n) if case != "indefinite" else a + a.T
    b = tf.constant(rng.normal(size=n))

    def matvec(v):
        return tf.linalg.matvec(tf.constant(matrix), v)

    loop = conjugate_gradient(matvec, b, max_iters=8)
    unrolled = tf.function(lambda: conjugate_gradient(matvec, b, max_iters=8, unroll=True))()
    for got, want in zip(unrolled, loop, strict=True):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    if case == "early_convergence":
        assert natgrad.STATUS_NAMES[int(loop.status)] == "converged" and int(loop.iterations) <= 4
    with pytest.raises(ValueError, match="Python int"):
        conjugate_gradient(matvec, b, max_iters=tf.constant(3), unroll=True)
