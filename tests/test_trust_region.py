"""Trust-region pieces: step size and its guard, backtracking line search, LM damping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf

from natgrad.trust_region import (
    backtracking_line_search,
    levenberg_marquardt_damping,
    trust_region_step_size,
)

# trust_region_step_size ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_kl", "s_dot_fs", "expected"),
    [(0.01, 0.02, 1.0), (0.5, 4.0, 0.5), (2.0, 1.0, 2.0), (1e-3, 8.0, math.sqrt(2.5e-4))],
)
def test_step_size_hand_values(max_kl, s_dot_fs, expected):
    beta, ok = trust_region_step_size(max_kl, tf.constant(s_dot_fs, tf.float64))
    assert bool(ok)
    assert beta.dtype == tf.float64
    np.testing.assert_allclose(float(beta), expected, rtol=1e-14)
    # The quadratic KL model at the scaled step lands on the boundary.
    np.testing.assert_allclose(0.5 * float(beta) ** 2 * s_dot_fs, max_kl, rtol=1e-13)


@pytest.mark.parametrize("bad", [0.0, -1.0, -1e-30, float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_step_size_guard(bad, dtype):
    beta, ok = trust_region_step_size(0.01, tf.constant(bad, dtype))
    assert not bool(ok)
    assert float(beta) == 0.0
    assert beta.dtype == dtype


def test_step_size_tiny_positive_overflows_to_not_ok():
    # 2·δ / 1e-320 overflows float64 to inf: not a usable step.
    beta, ok = trust_region_step_size(1.0, tf.constant(1e-320, tf.float64))
    assert not bool(ok)
    assert float(beta) == 0.0


def test_step_size_in_tf_function():
    fn = tf.function(trust_region_step_size)
    beta, ok = fn(tf.constant(0.5, tf.float64), tf.constant(4.0, tf.float64))
    assert bool(ok) and float(beta) == pytest.approx(0.5)
    beta, ok = fn(tf.constant(0.5, tf.float64), tf.constant(-4.0, tf.float64))
    assert not bool(ok) and float(beta) == 0.0


# backtracking_line_search ---------------------------------------------------------------------


def _quadratic_setup(x0: float, step: float):
    """One variable ``x``, loss ``x²``; ``evaluate`` counts its calls and reports KL ``(x−x0)²``."""
    x = tf.Variable([x0], dtype=tf.float64)
    calls = []

    def evaluate():
        calls.append(float(x.numpy()[0]))
        return tf.reduce_sum(tf.square(x)), tf.reduce_sum(tf.square(x - x0))

    loss_before = tf.constant(x0**2, tf.float64)
    return x, [tf.constant([step], tf.float64)], evaluate, loss_before, calls


def test_line_search_accepts_first_improving_point():
    # x0 = 4, loss x²: θ0 − shrinkᵏ·16 is −12 (144), −4 (16, not < 16), 0 (accepted).
    x, step, evaluate, loss_before, calls = _quadratic_setup(4.0, 16.0)
    result = backtracking_line_search(
        [x], step, evaluate, loss_before=loss_before, shrink=0.5, max_tries=10
    )
    assert bool(result.accepted)
    assert int(result.tries) == 3
    assert calls == [-12.0, -4.0, 0.0]
    assert float(result.fraction) == 0.25
    assert float(result.loss) == 0.0
    assert float(result.kl) == 16.0
    assert float(x.numpy()[0]) == 0.0


def test_line_search_first_try_accepted():
    x, step, evaluate, loss_before, calls = _quadratic_setup(4.0, 2.0)
    result = backtracking_line_search([x], step, evaluate, loss_before=loss_before, max_tries=5)
    assert bool(result.accepted) and int(result.tries) == 1 and len(calls) == 1
    assert float(result.fraction) == 1.0
    assert float(x.numpy()[0]) == 2.0


def test_line_search_honours_kl_bound():
    # Full step to 0 is best for the loss, but KL (x − 4)² is 16, 4, 1 along shrink 0.5.
    x, step, evaluate, loss_before, calls = _quadratic_setup(4.0, 4.0)
    result = backtracking_line_search(
        [x], step, evaluate, loss_before=loss_before, max_kl=1.5, shrink=0.5, max_tries=10
    )
    assert bool(result.accepted)
    assert int(result.tries) == 3
    assert calls == [0.0, 2.0, 3.0]
    assert float(result.kl) == 1.0 <= 1.5
    assert float(x.numpy()[0]) == 3.0


def test_line_search_kl_equal_to_bound_is_accepted():
    x, step, evaluate, loss_before, _ = _quadratic_setup(4.0, 4.0)
    result = backtracking_line_search(
        [x], step, evaluate, loss_before=loss_before, max_kl=1.0, shrink=0.5, max_tries=10
    )
    assert bool(result.accepted) and int(result.tries) == 3


def _awkward_variables():
    rng = np.random.default_rng(7)
    return [
        tf.Variable(rng.normal(size=(3, 2)).astype(np.float32) * np.float32(1.0 / 3.0)),
        tf.Variable(rng.normal(size=(5,)) * np.pi),
    ]


def _raw(variables):
    return [v.numpy().tobytes() for v in variables]


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("max_kl", [None, 1e-6])
def test_line_search_failure_restores_bitwise(compiled, max_kl):
    variables = _awkward_variables()
    before = _raw(variables)
    rng = np.random.default_rng(8)
    # An uphill step: every point of θ0 − fraction·step has a larger loss.
    step = [tf.constant(-np.abs(rng.normal(size=v.shape)) - 0.1, v.dtype) for v in variables]

    def evaluate():
        loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in variables])
        return loss, tf.constant(1.0, tf.float64)

    loss_before = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in variables])

    def run():
        return backtracking_line_search(
            variables, step, evaluate, loss_before=loss_before, max_kl=max_kl, max_tries=7
        )

    result = tf.function(run)() if compiled else run()
    assert not bool(result.accepted)
    assert int(result.tries) == 7
    assert float(result.fraction) == 0.0
    assert float(result.loss) == float(loss_before)
    assert _raw(variables) == before


def test_line_search_kl_failure_restores_bitwise():
    # The loss improves everywhere, but the KL is always over budget.
    variables = _awkward_variables()
    before = _raw(variables)
    step = [tf.ones_like(v) for v in variables]

    def evaluate():
        loss = tf.add_n([tf.reduce_sum(tf.cast(v, tf.float64)) for v in variables])
        return loss, tf.constant(1.0, tf.float64)

    loss_before = evaluate()[0]
    result = backtracking_line_search(
        variables, step, evaluate, loss_before=loss_before, max_kl=0.5, max_tries=4
    )
    assert not bool(result.accepted) and int(result.tries) == 4
    assert _raw(variables) == before


def test_line_search_nan_kl_is_rejected():
    x, step, _, loss_before, _ = _quadratic_setup(4.0, 2.0)
    before = _raw([x])

    def evaluate():
        return tf.reduce_sum(tf.square(x)), tf.constant(float("nan"), tf.float64)

    result = backtracking_line_search(
        [x], step, evaluate, loss_before=loss_before, max_kl=10.0, max_tries=3
    )
    assert not bool(result.accepted)
    assert _raw([x]) == before


@pytest.mark.parametrize("compiled", [False, True])
def test_line_search_disabled_leaves_variables_untouched(compiled):
    variables = _awkward_variables()
    before = _raw(variables)
    calls = []

    def evaluate():
        calls.append(1)
        return tf.constant(-1.0, tf.float64), tf.constant(0.0, tf.float64)

    def run():
        return backtracking_line_search(
            variables,
            [tf.ones_like(v) for v in variables],
            evaluate,
            loss_before=tf.constant(0.0, tf.float64),
            enabled=tf.constant(False),
        )

    result = tf.function(run)() if compiled else run()
    assert not bool(result.accepted)
    assert int(result.tries) == 0
    if not compiled:
        assert calls == []
    assert _raw(variables) == before


def test_line_search_max_tries_zero_applies_full_step():
    # The full step raises the loss (4² -> 12²) but max_tries=0 takes it without checking.
    x, step, evaluate, loss_before, calls = _quadratic_setup(4.0, 16.0)
    result = backtracking_line_search(
        [x], step, evaluate, loss_before=loss_before, max_kl=1e-9, max_tries=0
    )
    assert bool(result.accepted)
    assert int(result.tries) == 1
    assert calls == [-12.0]
    assert float(result.fraction) == 1.0
    assert float(result.loss) == 144.0
    assert float(x.numpy()[0]) == -12.0


def test_line_search_max_tries_zero_rejects_non_finite_loss():
    x, step, _, loss_before, _ = _quadratic_setup(4.0, 1.0)
    before = _raw([x])

    def evaluate():
        return tf.constant(float("inf"), tf.float64), tf.constant(0.0, tf.float64)

    result = backtracking_line_search([x], step, evaluate, loss_before=loss_before, max_tries=0)
    assert not bool(result.accepted)
    assert _raw([x]) == before


# levenberg_marquardt_damping --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rho", "accepted", "expected_factor"),
    [
        (0.9, True, 0.5),  # good model: shrink
        (1.5, True, 0.5),
        (0.76, True, 0.5),
        (0.75, True, 1.0),  # boundary: unchanged
        (0.5, True, 1.0),
        (0.25, True, 1.0),  # boundary: unchanged
        (0.24, True, 2.0),  # poor model: grow
        (-3.0, True, 2.0),
        (0.9, False, 2.0),  # rejected step: grow
        (float("nan"), True, 2.0),  # non-finite ratio: grow
        (float("inf"), True, 2.0),
    ],
)
def test_lm_damping_rule(rho, accepted, expected_factor):
    new = levenberg_marquardt_damping(
        tf.constant(0.1, tf.float64),
        tf.constant(rho, tf.float64),
        tf.constant(accepted),
        decay=0.5,
        min_damping=1e-8,
        max_damping=1e4,
    )
    assert new.dtype == tf.float64
    np.testing.assert_allclose(float(new), 0.1 * expected_factor, rtol=1e-15)


def test_lm_damping_default_decay():
    new = levenberg_marquardt_damping(
        tf.constant(0.3, tf.float64), tf.constant(1.0, tf.float64), tf.constant(True)
    )
    np.testing.assert_allclose(float(new), 0.3 * 2.0 / 3.0, rtol=1e-12)


def test_lm_damping_clipped():
    low = levenberg_marquardt_damping(
        tf.constant(1e-8, tf.float64),
        tf.constant(1.0, tf.float64),
        tf.constant(True),
        min_damping=1e-8,
    )
    assert float(low) == 1e-8
    high = levenberg_marquardt_damping(
        tf.constant(1e4, tf.float64),
        tf.constant(0.0, tf.float64),
        tf.constant(False),
        max_damping=1e4,
    )
    assert float(high) == 1e4


@pytest.mark.parametrize("direction, accepted", [([1.0, 1.0], True), ([-5.0, -5.0], False)])
def test_unrolled_line_search_matches_the_loop(direction, accepted):
    """``unroll=True`` (no graph control flow, for tf.distribute): same result, same variables,
    and an exact restore when nothing passes."""
    results = []
    for unroll in (False, True):
        v = tf.Variable([1.0, 2.0], dtype=tf.float64)

        def evaluate(v=v):
            return tf.reduce_sum((v - 0.7) ** 2), tf.reduce_sum((v - 1.0) ** 2) / 1e3

        @tf.function
        def search(v=v, evaluate=evaluate, unroll=unroll):
            return backtracking_line_search(
                [v], [tf.constant(direction, tf.float64)], evaluate,
                loss_before=evaluate()[0], max_kl=0.01, unroll=unroll)

        result = search()
        results.append(([np.asarray(x) for x in result], v.numpy().copy()))
    (loop, loop_v), (unrolled, unrolled_v) = results
    for a, b in zip(loop, unrolled, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loop_v, unrolled_v)
    assert bool(loop[0]) is accepted
    if not accepted:
        np.testing.assert_array_equal(unrolled_v, [1.0, 2.0])
