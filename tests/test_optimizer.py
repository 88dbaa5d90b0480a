"""NaturalGradient.minimize against dense exact solves, its safety guarantees and its API.

The reference step is built independently: the dense curvature from ``natgrad.hessian`` of the
categorical KL (or of the loss) at the old parameters, the gradient from a plain tape, and
``numpy.linalg.solve``.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import make_batch, make_classifier, numpy_flat

import natgrad
from natgrad import distributions as D
from natgrad.trust_region import levenberg_marquardt_damping

CG_EXACT = {"cg_iters": 200, "cg_tol": 1e-15}


def _problem(dtype="float64", seed=1):
    logits_model, probs_model = make_classifier(dtype, seed=seed)
    batch = make_batch(dtype)
    x, labels = batch["x"], batch["labels"]
    variables = logits_model.trainable_variables

    def loss_fn():
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits_model(x))
        )

    def outputs_fn():
        return logits_model(x)

    return logits_model, probs_model, variables, x, loss_fn, outputs_fn


def _raw(variables):
    return [np.asarray(v.numpy()).tobytes() for v in variables]


def _flat(variables) -> np.ndarray:
    return numpy_flat([v.numpy() for v in variables])


def _gradient(loss_fn, variables) -> np.ndarray:
    with tf.GradientTape() as tape:
        loss = loss_fn()
    return numpy_flat(tape.gradient(loss, variables))


def _dense_fisher(outputs_fn, variables) -> np.ndarray:
    old = tf.stop_gradient(outputs_fn())
    return natgrad.hessian(lambda: D.categorical_kl(old, outputs_fn()), variables).numpy()


def _exact_step(matrix, grad, damping) -> np.ndarray:
    return np.linalg.solve(matrix + damping * np.eye(len(grad)), grad)


def _rel_err(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _cosine(a, b) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# Exactness of one step ------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["outputs", "kl_fn"])
def test_fisher_step_equals_dense_solve_float64(source):
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    damping = 1e-2
    theta0 = _flat(variables)
    fisher = _dense_fisher(outputs_fn, variables)
    expected = _exact_step(fisher, _gradient(loss_fn, variables), damping)

    opt = natgrad.NaturalGradient(
        learning_rate=1.0, damping=damping, line_search_max_tries=0, **CG_EXACT
    )
    if source == "outputs":
        kwargs = {"outputs_fn": outputs_fn, "output_distribution": D.CATEGORICAL}
    else:  # curvature="fisher" given only a kl_fn: the Hessian of the KL.
        old = tf.stop_gradient(outputs_fn())
        kwargs = {"kl_fn": lambda: D.categorical_kl(old, outputs_fn())}
    stats = opt.minimize(loss_fn, variables, **kwargs)
    assert bool(stats["accepted"])
    assert int(stats["line_search_tries"]) == 1
    step = theta0 - _flat(variables)
    assert _rel_err(step, expected) <= 1e-4
    np.testing.assert_allclose(float(stats["step_norm"]), np.linalg.norm(expected), rtol=1e-4)
    np.testing.assert_allclose(float(stats["loss_after"]), float(loss_fn()), rtol=1e-12)
    assert float(stats["kl"]) >= 0.0


def test_probs_output_gives_same_step_as_logits():
    logits_model, probs_model, variables, x, loss_fn, outputs_fn = _problem()
    theta0 = [v.numpy() for v in variables]
    expected = _exact_step(
        _dense_fisher(outputs_fn, variables), _gradient(loss_fn, variables), 1e-2
    )
    opt = natgrad.NaturalGradient(damping=1e-2, line_search_max_tries=0, **CG_EXACT)
    opt.minimize(
        loss_fn,
        variables,
        outputs_fn=lambda: probs_model(x),
        output_distribution=D.CATEGORICAL_PROBS,
    )
    step = numpy_flat(theta0) - _flat(variables)
    assert _rel_err(step, expected) <= 1e-4


def test_fisher_step_float32_close_to_float64_reference():
    model32, _, vars32, _, loss32, outputs32 = _problem("float32")
    model64, _, vars64, _, loss64, outputs64 = _problem("float64")
    model64.set_weights([w.astype(np.float64) for w in model32.get_weights()])
    damping = 1e-2
    expected = _exact_step(_dense_fisher(outputs64, vars64), _gradient(loss64, vars64), damping)

    theta0 = _flat(vars32)
    opt = natgrad.NaturalGradient(damping=damping, line_search_max_tries=0, **CG_EXACT)
    stats = opt.minimize(loss32, vars32, outputs_fn=outputs32, output_distribution=D.CATEGORICAL)
    assert bool(stats["accepted"])
    assert stats["loss_before"].dtype == tf.float32
    assert all(v.dtype == "float32" for v in vars32)
    step = theta0 - _flat(vars32)
    assert _cosine(step, expected) >= 0.999
    np.testing.assert_allclose(np.linalg.norm(step), np.linalg.norm(expected), rtol=1e-2)


def test_hessian_step_equals_dense_solve():
    _, _, variables, _, loss_fn, _ = _problem()
    hess = natgrad.hessian(loss_fn, variables).numpy()
    hess = 0.5 * (hess + hess.T)
    min_eig = float(np.linalg.eigvalsh(hess).min())
    damping = max(0.0, -min_eig) + 0.05  # H + λI is SPD, smallest eigenvalue >= 0.05
    expected = _exact_step(hess, _gradient(loss_fn, variables), damping)

    theta0 = _flat(variables)
    opt = natgrad.NaturalGradient(
        curvature="hessian", damping=damping, line_search_max_tries=0, **CG_EXACT
    )
    stats = opt.minimize(loss_fn, variables)
    assert bool(stats["accepted"])
    assert natgrad.STATUS_NAMES[int(stats["cg_status"])] == "converged"
    assert _rel_err(theta0 - _flat(variables), expected) <= 1e-4
    # No KL is available: reported as NaN.
    assert np.isnan(float(stats["kl"]))


def test_learning_rate_scales_the_step():
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    expected = _exact_step(
        _dense_fisher(outputs_fn, variables), _gradient(loss_fn, variables), 1e-2
    )
    theta0 = _flat(variables)
    opt = natgrad.NaturalGradient(
        learning_rate=0.25, damping=1e-2, line_search_max_tries=0, **CG_EXACT
    )
    opt.minimize(loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL)
    assert _rel_err(theta0 - _flat(variables), 0.25 * expected) <= 1e-4


def test_learning_rate_schedule():
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.5, decay_steps=1, decay_rate=0.5)
    opt = natgrad.NaturalGradient(
        learning_rate=schedule, damping=1e-2, line_search_max_tries=0, **CG_EXACT
    )
    for lr in (0.5, 0.25, 0.125):
        expected = _exact_step(
            _dense_fisher(outputs_fn, variables), _gradient(loss_fn, variables), 1e-2
        )
        theta0 = _flat(variables)
        opt.minimize(loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL)
        assert _rel_err(theta0 - _flat(variables), lr * expected) <= 1e-4
    assert int(opt.iterations) == 3
    restored = natgrad.NaturalGradient.from_config(opt.get_config())
    learning_rate = keras.optimizers.schedules.deserialize(restored.get_config()["learning_rate"])
    assert isinstance(learning_rate, keras.optimizers.schedules.ExponentialDecay)
    assert learning_rate.get_config() == schedule.get_config()


# Trust region ---------------------------------------------------------------------------------


@pytest.mark.parametrize("max_kl", [1e-3, 1e-2])
def test_trust_region_step_lands_on_kl_boundary(max_kl):
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    damping = 1e-2  # enough that the quadratic KL model holds at the full step here
    theta0 = _flat(variables)
    fisher = _dense_fisher(outputs_fn, variables)
    old_logits = tf.stop_gradient(outputs_fn())

    opt = natgrad.NaturalGradient(max_kl=max_kl, damping=damping, **CG_EXACT)
    stats = opt.minimize(
        loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
    )
    assert bool(stats["accepted"])
    measured_kl = float(D.categorical_kl(old_logits, outputs_fn()))
    np.testing.assert_allclose(float(stats["kl"]), measured_kl, rtol=1e-10)
    assert measured_kl <= max_kl
    assert float(stats["loss_after"]) < float(stats["loss_before"])
    s = theta0 - _flat(variables)
    quadratic_kl = 0.5 * s @ (fisher + damping * np.eye(len(s))) @ s
    assert int(stats["line_search_tries"]) == 1, "expected the full step to be accepted"
    assert float(stats["step_fraction"]) == 1.0
    np.testing.assert_allclose(quadratic_kl, max_kl, rtol=1e-6)
    # The direction is still the exact damped natural gradient.
    expected = _exact_step(fisher, _gradient_at(loss_fn, variables, theta0), damping)
    assert _cosine(s, expected) >= 1.0 - 1e-8


def _gradient_at(loss_fn, variables, theta):
    current = [v.numpy() for v in variables]
    offset = 0
    for v in variables:
        n = int(np.prod(v.shape))
        v.assign(np.reshape(theta[offset : offset + n], v.shape))
        offset += n
    g = _gradient(loss_fn, variables)
    for v, c in zip(variables, current, strict=True):
        v.assign(c)
    return g


def test_trust_region_backtracks_when_full_step_overshoots():
    # A KL measured 100x larger than the curvature predicts forces backtracking.
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    old = tf.stop_gradient(outputs_fn())
    max_kl = 1e-2
    opt = natgrad.NaturalGradient(max_kl=max_kl, line_search_shrink=0.5, **CG_EXACT)
    stats = opt.minimize(
        loss_fn,
        variables,
        kl_fn=lambda: 100.0 * D.categorical_kl(old, outputs_fn()),
        outputs_fn=outputs_fn,
        output_distribution=D.CATEGORICAL,
    )
    assert bool(stats["accepted"])
    assert int(stats["line_search_tries"]) > 1
    assert float(stats["step_fraction"]) == 0.5 ** (int(stats["line_search_tries"]) - 1)
    assert float(stats["kl"]) <= max_kl


# Rejected steps leave every variable bit for bit ----------------------------------------------


def test_failed_line_search_kl_restores_bitwise():
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    before = _raw(variables)
    old = tf.stop_gradient(outputs_fn())
    opt = natgrad.NaturalGradient(max_kl=1e-3, line_search_max_tries=5)
    stats = opt.minimize(
        loss_fn,
        variables,
        kl_fn=lambda: 1e8 * D.categorical_kl(old, outputs_fn()),
        outputs_fn=outputs_fn,
        output_distribution=D.CATEGORICAL,
    )
    assert not bool(stats["accepted"])
    assert int(stats["line_search_tries"]) == 5
    assert float(stats["step_fraction"]) == 0.0
    assert float(stats["loss_after"]) == float(stats["loss_before"])
    assert _raw(variables) == before
    assert int(opt.iterations) == 1


@pytest.mark.parametrize("compiled", [False, True])
def test_failed_line_search_no_improvement_restores_bitwise(compiled):
    # A steep penalty away from θ0 (with zero gradient at θ0): every tried point is worse.
    _, _, variables, _, ce_fn, outputs_fn = _problem()
    anchors = [tf.constant(v.numpy()) for v in variables]

    def loss_fn():
        penalty = tf.add_n(
            [tf.reduce_sum(tf.square(v - a)) for v, a in zip(variables, anchors, strict=True)]
        )
        return ce_fn() + 1e8 * penalty

    before = _raw(variables)
    opt = natgrad.NaturalGradient(line_search_max_tries=4)

    def step():
        return opt.minimize(
            loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
        )

    stats = tf.function(step)() if compiled else step()
    assert not bool(stats["accepted"])
    assert int(stats["line_search_tries"]) == 4
    assert _raw(variables) == before


def test_constant_loss_is_rejected_and_unchanged():
    _, _, variables, _, _, outputs_fn = _problem()
    before = _raw(variables)

    def loss_fn():  # reads the variables, but no point can lower it
        return tf.constant(2.0, tf.float64) + 0.0 * tf.reduce_sum(variables[0])

    opt = natgrad.NaturalGradient()
    stats = opt.minimize(
        loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
    )
    assert not bool(stats["accepted"])
    assert _raw(variables) == before


@pytest.mark.parametrize("compiled", [False, True])
@pytest.mark.parametrize("kind", ["nan_loss", "nan_gradient"])
def test_non_finite_loss_or_gradient_rejected(kind, compiled):
    _, _, variables, _, ce_fn, outputs_fn = _problem()
    anchor = tf.constant(variables[0].numpy())

    if kind == "nan_loss":

        def loss_fn():
            return ce_fn() + tf.constant(float("nan"), tf.float64)

    else:

        def loss_fn():  # finite value, NaN gradient: d sqrt(u)/du at u = 0 times 0
            return ce_fn() + tf.sqrt(tf.reduce_sum(tf.square(variables[0] - anchor)))

    before = _raw(variables)
    opt = natgrad.NaturalGradient(adaptive_damping=True, max_kl=1e-2)

    def step():
        return opt.minimize(
            loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
        )

    stats = tf.function(step)() if compiled else step()
    assert not bool(stats["accepted"])
    assert int(stats["line_search_tries"]) == 0  # never tried a point
    assert float(stats["step_fraction"]) == 0.0
    assert _raw(variables) == before
    if kind == "nan_loss":
        assert np.isnan(float(stats["loss_before"]))
    else:
        assert np.isfinite(float(stats["loss_before"]))
    assert opt.damping == 1e-3  # a non-finite batch says nothing of the model's fit: λ kept


# Adaptive damping -------------------------------------------------------------------------------


def test_adaptive_damping_is_kept_on_a_batch_whose_gradient_is_not_finite():
    """A NaN batch (or a float16 overflow under loss scaling) is rejected; it says nothing of
    how well the quadratic model fits, so λ stays as it was."""
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    opt = natgrad.NaturalGradient(damping=0.05, adaptive_damping=True)
    before = _raw(variables)
    stats = opt.minimize(lambda: loss_fn() * float("nan"), variables, outputs_fn=outputs_fn,
                         output_distribution=D.CATEGORICAL)
    assert not bool(stats["accepted"])
    assert _raw(variables) == before
    assert opt.damping == 0.05


def test_adaptive_damping_follows_lm_rule_and_is_saved():
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    damping = 0.05
    opt = natgrad.NaturalGradient(
        damping=damping, adaptive_damping=True, damping_decay=0.5, **CG_EXACT
    )
    theta0 = _flat(variables)
    grad = _gradient(loss_fn, variables)
    fisher = _dense_fisher(outputs_fn, variables)
    stats = opt.minimize(
        loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
    )
    assert bool(stats["accepted"])
    assert float(stats["damping"]) == damping
    # Reduction ratio from an independent quadratic model q(Δ) = gᵀΔ + ½ΔᵀFΔ.
    delta = _flat(variables) - theta0
    predicted = grad @ delta + 0.5 * delta @ fisher @ delta
    actual = float(stats["loss_after"]) - float(stats["loss_before"])
    np.testing.assert_allclose(float(stats["reduction_ratio"]), actual / predicted, rtol=1e-6)
    expected = levenberg_marquardt_damping(
        tf.constant(damping, tf.float64),
        stats["reduction_ratio"],
        stats["accepted"],
        decay=0.5,
    )
    assert opt.damping == float(expected)
    assert opt.damping != damping
    damping_vars = [v for v in opt.variables if "damping" in v.path]
    assert len(damping_vars) == 1
    assert float(damping_vars[0].numpy()) == opt.damping
    # The next step uses the new value.
    stats2 = opt.minimize(
        loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
    )
    assert float(stats2["damping"]) == float(expected)


def test_fixed_damping_does_not_change():
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    opt = natgrad.NaturalGradient(damping=0.05)
    assert opt.damping == 0.05
    opt.minimize(loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL)
    assert opt.damping == 0.05


# Eager and compiled paths ---------------------------------------------------------------------


def _make_step(opt, loss_fn, variables, outputs_fn):
    def one_step():
        return opt.minimize(
            loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
        )

    return one_step


@pytest.mark.parametrize("max_kl", [None, 1e-2])
def test_eager_and_tf_function_give_same_step(max_kl):
    results = []
    for compiled in (False, True):
        _, _, variables, _, loss_fn, outputs_fn = _problem()
        # CG run to convergence: its last iterations before convergence amplify round-off, and
        # graph and eager kernels round differently.
        opt = natgrad.NaturalGradient(
            max_kl=max_kl, damping=1e-2, adaptive_damping=True, **CG_EXACT
        )

        one_step = _make_step(opt, loss_fn, variables, outputs_fn)
        run = tf.function(one_step) if compiled else one_step
        stats = [run(), run()]
        results.append((_flat(variables), [float(s["loss_after"]) for s in stats], opt.damping))
    (eager_theta, eager_losses, eager_damping), (fn_theta, fn_losses, fn_damping) = results
    np.testing.assert_allclose(fn_theta, eager_theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(fn_losses, eager_losses, rtol=1e-9)
    assert fn_damping == eager_damping


# API --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"curvature": "kfac"},
         "curvature must be one of 'fisher', 'gauss_newton', 'hessian'; got 'kfac'"),
        ({"damping": -1e-3}, "damping must be a finite number >= 0; got -0.001"),
        ({"damping": True}, "damping must be a finite number >= 0; got True"),
        ({"cg_iters": 0}, "cg_iters must be an integer >= 1; got 0"),
        ({"cg_iters": 2.5}, "cg_iters must be an integer >= 1; got 2.5"),
        ({"cg_iters": True}, "cg_iters must be an integer >= 1; got True"),
        ({"max_kl": 0.0}, "max_kl must be a finite number > 0 or None; got 0.0"),
        ({"max_kl": -0.01}, "max_kl must be a finite number > 0 or None"),
        ({"max_kl": float("inf")}, "max_kl must be a finite number > 0 or None; got inf"),
        ({"line_search_shrink": 0.0}, r"line_search_shrink must be a number in \(0, 1\)"),
        ({"line_search_shrink": 1.0}, r"line_search_shrink must be a number in \(0, 1\)"),
        ({"line_search_shrink": 1.5}, r"line_search_shrink must be a number in \(0, 1\)"),
        ({"line_search_max_tries": -1}, "line_search_max_tries must be an integer >= 0"),
        ({"learning_rate": 0.0}, "learning_rate must be a finite number > 0; got 0.0"),
        ({"damping_decay": 1.0}, r"damping_decay must be a number in \(0, 1\); got 1.0"),
        ({"damping_decay": float("nan")}, r"damping_decay must be a number in \(0, 1\); got nan"),
        ({"min_damping": 1.0, "max_damping": 0.1}, "max_damping must be a number >= 1; got 0.1"),
        ({"curvature_batch_fraction": 0.0}, r"curvature_batch_fraction .* in \(0, 1\]; got 0.0"),
        ({"curvature_batch_fraction": 1.5}, r"curvature_batch_fraction .* in \(0, 1\]; got 1.5"),
        ({"hvp_method": "finite_differences"}, "hvp_method must be one of 'forward_over_reverse'"),
        ({"clipnorm": 1.0}, "does not support clipnorm=1.0"),
        ({"clipvalue": 0.5}, "does not support clipvalue"),
        ({"global_clipnorm": 1.0}, "does not support global_clipnorm"),
        ({"weight_decay": 1e-4}, "does not support weight_decay.*L2 term"),
        ({"use_ema": True}, "does not support use_ema"),
        ({"gradient_accumulation_steps": 2}, "does not support gradient_accumulation_steps"),
    ],
)
def test_bad_constructor_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        natgrad.NaturalGradient(**kwargs)


def test_apply_gradients_raises_and_changes_nothing():
    _, _, variables, _, loss_fn, _ = _problem()
    before = _raw(variables)
    opt = natgrad.NaturalGradient()
    with tf.GradientTape() as tape:
        loss = loss_fn()
    grads = tape.gradient(loss, variables)
    with pytest.raises(RuntimeError, match=r"optimizer\.minimize.*enable_natural_gradient"):
        opt.apply_gradients(zip(grads, variables, strict=True))
    assert _raw(variables) == before


def test_minimize_needs_a_curvature_source():
    _, _, variables, _, loss_fn, _ = _problem()
    with pytest.raises(ValueError, match="needs outputs_fn and output_distribution"):
        natgrad.NaturalGradient().minimize(loss_fn, variables)
    with pytest.raises(ValueError, match="max_kl is set"):
        natgrad.NaturalGradient(max_kl=0.01).minimize(
            loss_fn, variables, curvature_vector_product=lambda v: v
        )


@pytest.mark.parametrize("curvature", ["fisher", "gauss_newton", "hessian"])
def test_curvature_operator_is_the_setting_s_matrix(curvature):
    _, _, variables, _, loss_fn, outputs_fn = _problem()
    opt = natgrad.NaturalGradient(curvature=curvature)
    matvec = opt.curvature_operator(
        loss_fn, variables, outputs_fn=outputs_fn, output_distribution=D.CATEGORICAL
    )
    if curvature == "hessian":
        dense = natgrad.hessian(loss_fn, variables).numpy()
    else:
        dense = _dense_fisher(outputs_fn, variables)
    vector = [tf.ones_like(v) for v in variables]
    product = numpy_flat(matvec(vector))
    np.testing.assert_allclose(product, dense @ numpy_flat(vector), rtol=1e-8, atol=1e-12)


def test_explicit_curvature_vector_product():
    # C = I: the step is g / (1 + λ).
    _, _, variables, _, loss_fn, _ = _problem()
    theta0 = _flat(variables)
    grad = _gradient(loss_fn, variables)
    opt = natgrad.NaturalGradient(damping=0.25, line_search_max_tries=0, **CG_EXACT)
    opt.minimize(loss_fn, variables, curvature_vector_product=lambda v: list(v))
    np.testing.assert_allclose(theta0 - _flat(variables), grad / 1.25, rtol=1e-10)


def test_get_config_from_config_round_trip():
    opt = natgrad.NaturalGradient(
        learning_rate=0.5,
        curvature="gauss_newton",
        damping=0.02,
        adaptive_damping=True,
        damping_decay=0.5,
        min_damping=1e-6,
        max_damping=10.0,
        cg_iters=17,
        cg_tol=1e-8,
        max_kl=0.03,
        line_search_shrink=0.6,
        line_search_max_tries=4,
        curvature_batch_fraction=0.5,
        hvp_method="reverse_over_reverse",
        name="ng",
    )
    config = opt.get_config()
    for key in ("clipnorm", "weight_decay", "use_ema"):
        assert key not in config
    clone = natgrad.NaturalGradient.from_config(config)
    assert clone.get_config() == config
    assert clone.max_kl == 0.03 and clone.cg_iters == 17 and clone.curvature == "gauss_newton"
    assert clone.damping == 0.02
    # Through Keras' own (de)serialization, by registered name.
    again = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(again, natgrad.NaturalGradient)
    assert again.get_config() == config
