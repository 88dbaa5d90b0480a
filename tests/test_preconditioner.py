"""``cg_preconditioner="diagonal"``: the preconditioner's formula against NumPy, the step it
gives against a dense solve, and its state. (What it buys per second of training is measured
by ``scripts/bench_keras.py``, not here.)"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from conftest import make_batch, make_classifier, numpy_flat

import natgrad
from natgrad import distributions as D
from natgrad.preconditioner import (
    EXPONENT,
    RELATIVE_FLOOR,
    diagonal_preconditioner,
    update_second_moments,
)


def _classifier_problem():
    logits_model, _ = make_classifier("float64", seed=3)
    batch = make_batch("float64")
    variables = logits_model.trainable_variables

    def loss_fn():
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            batch["labels"], logits_model(batch["x"])))

    return variables, loss_fn, lambda: logits_model(batch["x"])


def test_formula_matches_numpy_by_hand():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(3, 2)), rng.normal(size=4)]
    moments = [tf.Variable(np.zeros(g.shape), dtype=tf.float64) for g in grads]
    decay = 0.9
    update_second_moments(moments, [tf.constant(g) for g in grads], decay, tf.constant(True))
    update_second_moments(moments, [tf.constant(2 * g) for g in grads], decay, tf.constant(True))
    expected = [(1 - decay) * (decay * g**2 + 4 * g**2) for g in grads]
    for m, e in zip(moments, expected, strict=True):
        np.testing.assert_allclose(m.numpy(), e, rtol=1e-12)
    residual = [rng.normal(size=g.shape) for g in grads]
    apply = diagonal_preconditioner(moments, 2, decay, [tf.float64, tf.float64])
    corrected = [e / (1 - decay**2) for e in expected]
    mean = np.concatenate([c.ravel() for c in corrected]).mean()
    for out, r, c in zip(apply([tf.constant(r) for r in residual]), residual, corrected,
                         strict=True):
        np.testing.assert_allclose(out.numpy(), r / (c + RELATIVE_FLOOR * mean) ** EXPONENT,
                                   rtol=1e-5)  # the scales are formed in float32


def test_non_finite_gradient_leaves_the_average_and_zero_moments_are_the_identity():
    moments = [tf.Variable(np.full(3, 0.5), dtype=tf.float64)]
    update_second_moments(moments, [tf.constant([np.nan, 1.0, 2.0], tf.float64)], 0.9,
                          tf.constant(False))
    np.testing.assert_array_equal(moments[0].numpy(), np.full(3, 0.5))
    zero = [tf.Variable(np.zeros(3), dtype=tf.float64)]
    r = tf.constant([1.0, -2.0, 3.0], tf.float64)
    np.testing.assert_array_equal(diagonal_preconditioner(zero, 1, 0.9, [tf.float64])([r])[0],
                                  r)


def test_preconditioned_step_converges_to_the_dense_natural_gradient():
    """Preconditioning changes CG's path, not its answer: run to convergence, the step is
    ``(F + λI)⁻¹ g`` from a dense Fisher."""
    variables, loss_fn, outputs_fn = _classifier_problem()
    theta0 = numpy_flat(variables)
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grad = numpy_flat(tape.gradient(loss, variables))
    old = tf.stop_gradient(outputs_fn())
    fisher = natgrad.hessian(lambda: D.categorical_kl(old, outputs_fn()), variables).numpy()
    damping = 1e-2
    expected = np.linalg.solve(fisher + damping * np.eye(len(grad)), grad)
    opt = natgrad.NaturalGradient(damping=damping, cg_iters=200, cg_tol=1e-12,
                                  cg_preconditioner="diagonal", line_search_max_tries=0)
    opt.minimize(loss_fn, variables, outputs_fn=outputs_fn,
                 output_distribution=D.CATEGORICAL)
    step = theta0 - numpy_flat(variables)
    np.testing.assert_allclose(step, expected, rtol=1e-6, atol=1e-10)


def test_state_exists_only_with_the_option_and_round_trips(tmp_path):
    variables, loss_fn, outputs_fn = _classifier_problem()
    plain = natgrad.NaturalGradient(max_kl=0.01, cg_preconditioner=None)
    plain.build(variables)
    with_it = natgrad.NaturalGradient(max_kl=0.01, cg_preconditioner="diagonal",
                                      preconditioner_decay=0.9)
    with_it.build(variables)
    assert len(with_it.variables) == len(plain.variables) + len(variables)
    assert plain.get_config()["cg_preconditioner"] is None
    config = with_it.get_config()
    assert config["cg_preconditioner"] == "diagonal" and config["preconditioner_decay"] == 0.9
    again = natgrad.NaturalGradient.from_config(config)
    assert again.cg_preconditioner == "diagonal"
    with pytest.raises(ValueError, match="cg_preconditioner must be one of 'diagonal', 'kfac'"):
        natgrad.NaturalGradient(cg_preconditioner="shampoo")
    with pytest.raises(ValueError, match="preconditioner_decay"):
        natgrad.NaturalGradient(preconditioner_decay=1.0)
