"""K-FAC (``natgrad.kfac``, ``natgrad.keras_kfac``): the factors against per-example
quantities computed by hand in NumPy, the Kronecker solve against a dense solve, the sampled
output cotangents against the output Fisher, and ``fit`` with ``cg_preconditioner="kfac"``."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import natgrad
from natgrad import distributions as D
from natgrad.keras_kfac import LayerRecording, kfac_layers, sampled_output_cotangents
from natgrad.kfac import (
    KroneckerBlock,
    KroneckerFactors,
    damped_inverses,
    input_factor,
    kronecker_solve,
    output_factor,
)


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data / 16.0).astype("float32"), data.target.astype("int32")


def _mlp(seed=0, dtype="float64"):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,), dtype=dtype),
                             keras.layers.Dense(5, "tanh", dtype=dtype),
                             keras.layers.Dense(3, "linear", use_bias=False, dtype=dtype)])


def test_factors_match_numpy_formulas():
    rng = np.random.default_rng(0)
    a, g = rng.normal(size=(6, 3)), rng.normal(size=(6, 2, 2, 4))
    a1 = np.concatenate([a, np.ones((6, 1))], axis=1)
    np.testing.assert_allclose(input_factor(tf.constant(a), True).numpy(), a1.T @ a1 / 6,
                               rtol=1e-12)
    np.testing.assert_allclose(input_factor(tf.constant(a), False).numpy(), a.T @ a / 6,
                               rtol=1e-12)
    flat = g.reshape(-1, 4)  # sum over the 2x2 locations, mean over the 6 examples
    np.testing.assert_allclose(output_factor(tf.constant(g)).numpy(), flat.T @ flat / 6,
                               rtol=1e-12)


def test_kronecker_solve_is_the_dense_solve_with_pi_damping():
    rng = np.random.default_rng(1)
    xa, xg = rng.normal(size=(9, 4)), rng.normal(size=(9, 3))
    a, g = xa.T @ xa / 9, 5.0 * xg.T @ xg / 9
    damping = 0.3
    a_inv, g_inv = damped_inverses(tf.constant(a), tf.constant(g), damping)
    pi = np.sqrt((np.trace(a) / 4) / (np.trace(g) / 3))
    m = np.kron(a + pi * np.sqrt(damping) * np.eye(4), g + np.sqrt(damping) / pi * np.eye(3))
    kernel, bias = rng.normal(size=(3, 3)), rng.normal(size=3)
    v = np.concatenate([kernel, bias[None]], axis=0)  # [rows + 1, d_out], row-major vec
    x_kernel, x_bias = kronecker_solve(a_inv, g_inv, tf.constant(kernel), tf.constant(bias))
    expected = np.linalg.solve(m, v.ravel()).reshape(4, 3)
    np.testing.assert_allclose(x_kernel.numpy(), expected[:3], rtol=1e-10)
    np.testing.assert_allclose(x_bias.numpy(), expected[3], rtol=1e-10)


def test_recorded_factors_match_a_backward_pass_by_hand():
    model = _mlp()
    x = np.random.default_rng(2).normal(size=(7, 4))
    u = np.random.default_rng(3).normal(size=(7, 3))
    recording = LayerRecording(model, model.trainable_variables)
    outputs_fn = recording.wrap(lambda: model(x, training=True))
    outputs = outputs_fn()
    outputs_fn()  # a later call is not recorded
    factors = recording.factors(tf.constant(u), tf.float64)
    w1, b1, w2 = (v.numpy() for v in model.trainable_variables)
    h = np.tanh(x @ w1 + b1)
    np.testing.assert_allclose(outputs.numpy(), h @ w2, rtol=1e-12)
    g2 = u                                # pre-activation gradient of the linear layer
    g1 = (u @ w2.T) * (1.0 - h**2)        # through tanh
    x1 = np.concatenate([x, np.ones((7, 1))], axis=1)
    expected = [(x1.T @ x1 / 7, g1.T @ g1 / 7), (h.T @ h / 7, g2.T @ g2 / 7)]
    for (a, g), (ea, eg) in zip(factors, expected, strict=True):
        np.testing.assert_allclose(a.numpy(), ea, rtol=1e-10)
        np.testing.assert_allclose(g.numpy(), eg, rtol=1e-10)
    assert recording.blocks() == [KroneckerBlock(0, 1), KroneckerBlock(2, None)]
    for layer in model.layers:  # the layers are as they were
        assert "call" not in vars(layer)
        assert layer.activation is not None and "activation" not in getattr(
            layer.activation, "__qualname__", "")


@pytest.mark.parametrize("padding,strides", [("valid", 1), ("same", 2)])
def test_conv2d_factors_match_patches_by_hand(padding, strides):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((5, 5, 2), dtype="float64"),
                              keras.layers.Conv2D(3, 3, strides=strides, padding=padding,
                                                  dtype="float64")])
    x = np.random.default_rng(5).normal(size=(2, 5, 5, 2))
    recording = LayerRecording(model, model.trainable_variables)
    outputs = recording.wrap(lambda: model(x))()
    u = np.random.default_rng(6).normal(size=outputs.shape)
    (a, g), = recording.factors(tf.constant(u), tf.float64)
    pad = 1 if padding == "same" else 0
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    rows = []
    for n in range(2):
        for i in range(outputs.shape[1]):
            for j in range(outputs.shape[2]):
                patch = xp[n, i * strides:i * strides + 3, j * strides:j * strides + 3, :]
                rows.append(np.append(patch.ravel(), 1.0))  # kernel row order, then bias
    rows = np.array(rows)
    np.testing.assert_allclose(a.numpy(), rows.T @ rows / len(rows), rtol=1e-10)
    flat = u.reshape(-1, 3)
    np.testing.assert_allclose(g.numpy(), flat.T @ flat / 2, rtol=1e-10)
    kernel = model.layers[0].kernel.numpy()
    np.testing.assert_allclose(outputs.numpy().reshape(-1, 3),
                               rows @ np.concatenate([kernel.reshape(-1, 3),
                                                      model.layers[0].bias.numpy()[None]]),
                               rtol=1e-10)


@pytest.mark.parametrize("loss,activation,distribution", [
    ("sparse_categorical_crossentropy", "softmax", D.CATEGORICAL_PROBS),
    (keras.losses.SparseCategoricalCrossentropy(from_logits=True), "linear", D.CATEGORICAL),
    ("binary_crossentropy", "sigmoid", D.BERNOULLI_PROBS),
    ("mse", "linear", D.SQUARED_ERROR),
])
def test_sampled_cotangents_have_the_output_fisher_as_covariance(loss, activation,
                                                                 distribution):
    """``E[(Jₛᵀu)(Jₛᵀu)ᵀ] = N Jₛᵀ H_out Jₛ`` for ``Jₛ`` the Jacobian of the outputs in the
    last layer's pre-activations (Monte Carlo over seeds)."""
    keras.utils.set_random_seed(7)
    model = keras.Sequential([keras.Input((3,), dtype="float64"),
                              keras.layers.Dense(4, activation, dtype="float64")])
    model.compile(loss=loss)
    x = tf.constant(np.random.default_rng(8).normal(size=(2, 3)))
    layer = model.layers[0]
    pre = tf.matmul(x, layer.kernel) + layer.bias
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(pre)
        out = layer.activation(pre)
    jac = tape.batch_jacobian(out, pre).numpy()  # [N, out, pre]
    fisher = np.stack([distribution.fisher_vector_product(out, tf.one_hot(
        tf.fill([2], k), 4, dtype=tf.float64)).numpy() for k in range(4)], axis=-1)
    expected = 2 * np.einsum("nop,noq,nqr->npr", jac, fisher, jac)
    total = np.zeros((2, 4, 4))
    draws = 3000
    for step in range(draws):
        u = sampled_output_cotangents(model, out, distribution, step).numpy()
        g = np.einsum("no,nop->np", u, jac)
        total += np.einsum("np,nq->npq", g, g)
    np.testing.assert_allclose(total / draws, expected, atol=0.08 * np.abs(expected).max())


def test_preconditioner_state_averages_and_refreshes_every_period():
    state = KroneckerFactors(decay=0.5, inverse_period=2)
    block = KroneckerBlock(0, None)
    eye2 = np.eye(2)
    dtypes = [tf.float64, tf.float64]
    r = [tf.constant(np.ones((2, 2))), tf.constant(np.array([3.0, 6.0]))]
    outs = []
    for scale in (1.0, 3.0, 5.0):
        apply = state.preconditioner([block], [(tf.constant(scale * eye2),
                                                tf.constant(eye2))], 0.0, dtypes)
        outs.append([t.numpy() for t in apply(r)])
    # Step 1: A = 1·I (first taken as is); step 2: A = 2·I, inverse not refreshed; step 3:
    # A = 3.5·I, refreshed. With λ = 0, π = sqrt(mean diag A) and M = A ⊗ I.
    np.testing.assert_allclose(outs[0][0], np.ones((2, 2)) / 1.0)
    np.testing.assert_allclose(outs[1][0], np.ones((2, 2)) / 1.0)
    np.testing.assert_allclose(outs[2][0], np.ones((2, 2)) / 3.5)
    # A variable in no block: divided by the mean diagonal of A ⊗ G (+ λ).
    np.testing.assert_allclose(outs[2][1], np.array([3.0, 6.0]) / 3.5)
    nan = tf.constant(np.full((2, 2), np.nan))
    apply = state.preconditioner([block], [(nan, tf.constant(eye2))], 0.0, dtypes)
    np.testing.assert_allclose(apply(r)[0].numpy(), np.ones((2, 2)) / 3.5)  # skipped


def test_one_cg_iteration_steps_along_the_preconditioned_gradient_to_the_kl_boundary():
    """With ``cg_iters=1`` the step is ``−β M⁻¹g`` with ``½ β² (M⁻¹g)ᵀ(F + λI)(M⁻¹g) =
    max_kl``: compared with a dense ``M`` and a dense Fisher."""
    model = _mlp(seed=9)
    x = tf.constant(np.random.default_rng(10).normal(size=(8, 4)))
    y = tf.constant(np.random.default_rng(11).normal(size=(8, 3)))
    variables = model.trainable_variables
    flat0 = natgrad.flatten([v.value for v in variables]).numpy()
    rng = np.random.default_rng(12)
    q = rng.normal(size=(flat0.size, flat0.size))
    m = q @ q.T / flat0.size + np.eye(flat0.size)

    def preconditioner(damping):
        def apply(r):
            return natgrad.unflatten(tf.constant(np.linalg.solve(m, natgrad.flatten(r))),
                                     variables)
        return apply

    def loss_fn():
        return tf.reduce_mean(tf.square(model(x) - y))

    def outputs_fn():
        return model(x)

    with tf.GradientTape() as tape:
        loss = loss_fn()
    g = natgrad.flatten(tape.gradient(loss, variables)).numpy()
    jac = None
    with tf.GradientTape() as tape:
        out = tf.reshape(outputs_fn(), [-1])
    jac = tf.concat([tf.reshape(j, [out.shape[0], -1]) for j in
                     tape.jacobian(out, variables)], axis=1).numpy()
    fisher = 2 * jac.T @ jac / out.shape[0]  # squared-error output Fisher: 2I / (N·D)
    damping, max_kl = 1e-3, 1e-4
    optimizer = natgrad.NaturalGradient(max_kl=max_kl, cg_iters=1, damping=damping,
                                        line_search_max_tries=0)
    stats = optimizer.minimize(loss_fn, variables, outputs_fn=outputs_fn,
                               output_distribution=D.SQUARED_ERROR,
                               preconditioner=preconditioner)
    assert bool(stats["accepted"])
    z = np.linalg.solve(m, g)
    beta = np.sqrt(2 * max_kl / (z @ (fisher + damping * np.eye(z.size)) @ z))
    step = natgrad.flatten([v.value for v in variables]).numpy() - flat0
    np.testing.assert_allclose(step, -beta * z, rtol=1e-8, atol=1e-14)


def _fit_model(dtype_policy=None):
    keras.utils.set_random_seed(13)
    return keras.Sequential([
        keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.BatchNormalization(), keras.layers.Conv2D(4, 3, padding="same"),
        keras.layers.Flatten(), keras.layers.Dropout(0.1), keras.layers.Dense(16, "relu"),
        keras.layers.Dense(10, "softmax", dtype="float32")])


@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_with_kfac_trains_with_ragged_batches_dropout_and_batchnorm(digits, jit_compile):
    x, y = digits
    x = x.reshape(-1, 8, 8, 1)[:300]
    y = y[:300]
    model = _fit_model()
    assert [type(layer).__name__ for layer in kfac_layers(model)] == ["Conv2D", "Conv2D",
                                                                        "Dense", "Dense"]
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, cg_preconditioner="kfac",
                                                    cg_iters=2),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=jit_compile)
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, y, batch_size=64, epochs=3, verbose=0)  # 300 = 4·64 + 44
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.7 * losses[0]
    assert np.mean(history.history["accepted"]) > 0.9
    for layer in model.layers:
        assert "call" not in vars(layer)


def test_fit_with_kfac_under_mixed_precision(digits, mixed_float16):
    x, y = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, "tanh"),
                              keras.layers.Dense(10, "softmax", dtype="float32")])
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01, cg_preconditioner="kfac",
                                                    cg_iters=1),
                  loss="sparse_categorical_crossentropy")
    natgrad.enable_natural_gradient(model)
    before = model.evaluate(x[:400], y[:400], verbose=0)
    history = model.fit(x[:400], y[:400], batch_size=128, epochs=3, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.evaluate(x[:400], y[:400], verbose=0) < 0.7 * before


def test_kfac_is_saved_in_the_config():
    optimizer = natgrad.NaturalGradient(cg_preconditioner="kfac", kfac_inverse_period=3)
    restored = natgrad.NaturalGradient.from_config(optimizer.get_config())
    assert restored.cg_preconditioner == "kfac" and restored.kfac_inverse_period == 3
    with pytest.raises(ValueError, match="kfac_inverse_period"):
        natgrad.NaturalGradient(kfac_inverse_period=0)


def test_one_example_kronecker_blocks_are_the_dense_fisher_blocks():
    """With one example K-FAC's ``A ⊗ E[G]`` is exact: each layer's block of the dense
    Gauss-Newton matrix ``Jᵀ (2/D) I J`` of the mean squared error (``J`` the Jacobian of the
    ``D`` outputs in all parameters, by ``tf`` autodiff). ``E[G]`` exactly: ``G`` is quadratic
    in the cotangents, so the sum over the basis cotangents ``sqrt(2/D) eₖ`` is its mean."""
    model = _mlp(seed=14)
    x = np.random.default_rng(15).normal(size=(1, 4))
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        out = tf.reshape(model(x), [-1])
    jac = np.concatenate([np.reshape(j, (out.shape[0], -1)) for j in
                          tape.jacobian(out, variables)], axis=1)
    dense = jac.T @ jac * 2.0 / out.shape[0]
    sums = None
    for k in range(out.shape[0]):
        recording = LayerRecording(model, variables)
        recording.wrap(lambda: model(x))()
        u = np.sqrt(2.0 / out.shape[0]) * np.eye(out.shape[0])[k][None]
        factors = [(a.numpy(), g.numpy()) for a, g in recording.factors(tf.constant(u),
                                                                         tf.float64)]
        sums = factors if sums is None else [(a, sg + g) for (a, g), (_, sg) in
                                              zip(factors, sums, strict=True)]
    # Parameter order of natgrad.flatten: W1 [4, 5], b1 [5], W2 [5, 3]; a block's rows are
    # the kernel's rows then the bias, so its vec order is the flattened order.
    (a1, g1), (a2, g2) = sums
    np.testing.assert_allclose(np.kron(a1, g1), dense[:25, :25], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(np.kron(a2, g2), dense[25:, 25:], rtol=1e-10, atol=1e-14)


def test_hashed_uniform_is_uniform_independent_and_the_same_under_xla():
    from natgrad.keras_kfac import hashed_uniform

    like = tf.zeros([2000, 50])
    u = hashed_uniform(like, 7, 0).numpy()
    assert 0.0 < u.min() and u.max() < 1.0
    counts = np.histogram(u, bins=20, range=(0, 1))[0]
    expected = u.size / 20  # chi-squared, 19 degrees of freedom: 99.9% below 43.8
    assert np.sum((counts - expected) ** 2 / expected) < 43.8
    flat = u.ravel()  # neighbours, steps and streams uncorrelated
    for other in (flat[1:], hashed_uniform(like, 8, 0).numpy().ravel(),
                  hashed_uniform(like, 7, 1).numpy().ravel()):
        assert abs(np.corrcoef(flat[:other.size], other)[0, 1]) < 0.01
    # A row's numbers do not depend on the rows after it, in graph mode and under XLA.
    xla = tf.function(lambda: hashed_uniform(tf.zeros([4000, 50]), 7, 0), jit_compile=True)
    np.testing.assert_array_equal(xla().numpy()[:2000], u)


def test_default_is_kfac_with_3_cg_iterations_and_10_without_a_kronecker_preconditioner(
        digits, monkeypatch):
    optimizer = natgrad.NaturalGradient(max_kl=0.01)
    assert optimizer.cg_preconditioner == "kfac" and optimizer.cg_iters is None
    model = _mlp(seed=16)
    x = tf.constant(np.random.default_rng(17).normal(size=(16, 4)))
    y = tf.constant(np.random.default_rng(18).normal(size=(16, 3)))
    arguments = {"outputs_fn": lambda: model(x), "output_distribution": D.SQUARED_ERROR}

    def loss_fn():
        return tf.reduce_mean(tf.square(model(x) - y))

    def identity(damping):
        return lambda r: r

    for given, iterations in ((identity, 3), (lambda damping: None, 10), (None, 10)):
        optimizer = natgrad.NaturalGradient(max_kl=0.01, cg_tol=0.0)
        stats = optimizer.minimize(loss_fn, model.trainable_variables, **arguments,
                                   preconditioner=given)
        assert int(stats["cg_iterations"]) == iterations
    # fit with the default: the step is traced with K-FAC and 3 iterations.
    import natgrad.optimizer as optimizer_module

    traced = []
    solve = optimizer_module.conjugate_gradient
    monkeypatch.setattr(optimizer_module, "conjugate_gradient", lambda *args, **kwargs: (
        traced.append((kwargs["max_iters"], kwargs["preconditioner"])) or solve(*args, **kwargs)))
    x, y = digits
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, "softmax")])
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01),
                  loss="sparse_categorical_crossentropy")
    natgrad.enable_natural_gradient(model)
    model.fit(x[:256], y[:256], batch_size=128, epochs=1, verbose=0)
    assert traced and all(iters == 3 and "KroneckerFactors" in precondition.__qualname__
                          for iters, precondition in traced)
