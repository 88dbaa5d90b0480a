"""natgrad.distributions: log-probs, entropies and KLs against NumPy formulas written here, and
every ``*_fisher_vector_product`` against the dense Hessian of its KL (nested GradientTapes)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tensorflow as tf
from conftest import numpy_flat
from hypothesis import given, settings
from hypothesis import strategies as st

from natgrad import distributions as D

N, K = 4, 3  # batch size, classes / units


def _rng(seed=0):
    return np.random.default_rng(seed)


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def np_gaussian_log_prob(mean, log_std, x):
    std = np.exp(log_std)
    per_dim = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2.0 * np.pi)
    return np.broadcast_to(per_dim, mean.shape).sum(axis=-1)


def np_gaussian_entropy(mean, log_std):
    per_dim = np.broadcast_to(0.5 * np.log(2.0 * np.pi * np.e * np.exp(2.0 * log_std)), mean.shape)
    return per_dim.sum(axis=-1)


def np_gaussian_kl(mu1, ls1, mu2, ls2):
    var1, var2 = np.exp(2.0 * ls1), np.exp(2.0 * ls2)
    per_dim = 0.5 * np.log(var2 / var1) + (var1 + (mu1 - mu2) ** 2) / (2.0 * var2) - 0.5
    return np.broadcast_to(per_dim, mu1.shape).sum(axis=-1).mean()


# Categorical --------------------------------------------------------------------------------


def test_categorical_log_prob_entropy_kl_by_hand():
    """Uniform logits over 4 classes: log p = −log 4, entropy log 4, KL to itself 0."""
    logits = tf.zeros((2, 4), tf.float64)
    np.testing.assert_allclose(
        D.categorical_log_prob(logits, tf.constant([0, 3])).numpy(), [-math.log(4.0)] * 2
    )
    np.testing.assert_allclose(D.categorical_entropy(logits).numpy(), [math.log(4.0)] * 2)
    assert D.categorical_kl(logits, logits).numpy() == pytest.approx(0.0, abs=1e-15)
    # KL(uniform over 2 ‖ (0.2, 0.8)) = ½ log(0.5/0.2) + ½ log(0.5/0.8)
    new = tf.constant([[0.0, math.log(4.0)]], tf.float64)
    expected = 0.5 * math.log(0.5 / 0.2) + 0.5 * math.log(0.5 / 0.8)
    assert D.categorical_kl(tf.zeros((1, 2), tf.float64), new).numpy() == pytest.approx(expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 5.0))
def test_categorical_against_numpy(seed, scale):
    rng = _rng(seed)
    old, new = scale * rng.normal(size=(N, K)), scale * rng.normal(size=(N, K))
    actions = rng.integers(0, K, size=N)
    lp_old, lp_new = np_log_softmax(old), np_log_softmax(new)

    np.testing.assert_allclose(
        D.categorical_log_prob(tf.constant(old), tf.constant(actions)).numpy(),
        lp_old[np.arange(N), actions],
        rtol=1e-12,
    )
    np.testing.assert_allclose(
        D.categorical_entropy(tf.constant(old)).numpy(),
        -(np.exp(lp_old) * lp_old).sum(-1),
        rtol=1e-10,
        atol=1e-14,
    )
    kl = (np.exp(lp_old) * (lp_old - lp_new)).sum(-1).mean()
    got = D.categorical_kl(tf.constant(old), tf.constant(new)).numpy()
    assert got == pytest.approx(kl, rel=1e-10, abs=1e-14)
    assert got >= 0.0
    probs_kl = D.categorical_probs_kl(tf.constant(np.exp(lp_old)), tf.constant(np.exp(lp_new)))
    if np.exp(np.minimum(lp_old, lp_new)).min() > 1e-6:  # clipping at 1e-7 is not in play
        assert probs_kl.numpy() == pytest.approx(kl, rel=1e-6, abs=1e-12)


def test_categorical_kl_is_expected_log_ratio_under_old():
    """``KL = Σ_a p_old(a) (log p_old(a) − log p_new(a))`` through categorical_log_prob."""
    rng = _rng(3)
    old, new = tf.constant(rng.normal(size=(N, K))), tf.constant(rng.normal(size=(N, K)))
    total = np.zeros(N)
    for a in range(K):
        actions = tf.fill([N], a)
        lp_old = D.categorical_log_prob(old, actions).numpy()
        total += np.exp(lp_old) * (lp_old - D.categorical_log_prob(new, actions).numpy())
    assert D.categorical_kl(old, new).numpy() == pytest.approx(total.mean(), rel=1e-12)


def test_categorical_log_prob_accepts_int64_and_float32():
    logits = tf.constant([[1.0, 2.0, 3.0]], tf.float32)
    out = D.categorical_log_prob(logits, tf.constant([2], tf.int64))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), np_log_softmax(np.array([[1.0, 2.0, 3.0]]))[:, 2],
                               rtol=1e-6)


# Bernoulli and squared error ---------------------------------------------------------------


def test_bernoulli_kl_against_numpy():
    rng = _rng(4)
    old, new = rng.normal(size=(N, K)), 2.0 * rng.normal(size=(N, K))
    p, q = np_sigmoid(old), np_sigmoid(new)
    expected = (p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))).mean()
    assert D.bernoulli_kl(tf.constant(old), tf.constant(new)).numpy() == pytest.approx(
        expected, rel=1e-10
    )
    assert D.bernoulli_probs_kl(tf.constant(p), tf.constant(q)).numpy() == pytest.approx(
        expected, rel=1e-8
    )
    assert D.bernoulli_kl(tf.constant(old), tf.constant(old)).numpy() == pytest.approx(
        0.0, abs=1e-15
    )


def test_bernoulli_kl_by_hand():
    # p = ½ vs q = sigmoid(log 3) = ¾: ½ log(⅔) + ½ log(2)
    got = D.bernoulli_kl(tf.zeros((1, 1), tf.float64), tf.constant([[math.log(3.0)]], tf.float64))
    assert got.numpy() == pytest.approx(0.5 * math.log(2.0 / 3.0) + 0.5 * math.log(2.0))


def test_bernoulli_kl_from_extreme_logits_is_finite():
    old = tf.constant([[-40.0, 40.0]], tf.float64)
    new = tf.constant([[40.0, -40.0]], tf.float64)
    # p_old ≈ 0 vs p_new ≈ 1 (and vice versa): KL ≈ 40 per unit (the mean over units is 40),
    # computed in log space; with probabilities clipped at 1e-7 it would be ≈ 16.
    assert D.bernoulli_kl(old, new).numpy() == pytest.approx(40.0, rel=1e-6)


def test_squared_error_kl_against_numpy():
    rng = _rng(5)
    old, new = rng.normal(size=(N, K)), rng.normal(size=(N, K))
    assert D.squared_error_kl(tf.constant(old), tf.constant(new)).numpy() == pytest.approx(
        ((new - old) ** 2).mean(), rel=1e-12
    )


# Heads over action vectors: independent Bernoullis (MultiBinary), categoricals (MultiDiscrete) --

NVEC = (2, 3, 4)


def np_bernoulli_per_unit(z):
    """``(log p, log(1 − p))`` per unit, ``p = sigmoid(z)``."""
    return np.log(np_sigmoid(z)), np.log(np_sigmoid(-z))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 5.0))
def test_independent_bernoulli_against_numpy(seed, scale):
    rng = _rng(seed)
    old, new = scale * rng.normal(size=(N, K)), scale * rng.normal(size=(N, K))
    actions = rng.integers(0, 2, size=(N, K))
    lp1, lq1 = np_bernoulli_per_unit(old)
    lp2, lq2 = np_bernoulli_per_unit(new)
    p = np.exp(lp1)
    t = tf.constant
    np.testing.assert_allclose(D.independent_bernoulli_log_prob(t(old), t(actions)).numpy(),
                               np.where(actions == 1, lp1, lq1).sum(-1), rtol=1e-10)
    np.testing.assert_allclose(D.independent_bernoulli_entropy(t(old)).numpy(),
                               -(p * lp1 + (1 - p) * lq1).sum(-1), rtol=1e-9, atol=1e-14)
    joint = (p * (lp1 - lp2) + (1 - p) * (lq1 - lq2)).sum(-1).mean()
    got = D.independent_bernoulli_kl(t(old), t(new)).numpy()
    assert got == pytest.approx(joint, rel=1e-9, abs=1e-14)
    # The joint KL sums over units; BERNOULLI (binary cross-entropy's) averages over them.
    assert got == pytest.approx(K * D.bernoulli_kl(t(old), t(new)).numpy(), rel=1e-9, abs=1e-14)


def test_independent_bernoulli_by_hand():
    """Two units at p = ½ and p = ¾: log P(a = (1, 0)) = log ½ + log ¼; entropy 2 of them."""
    logits = tf.constant([[0.0, math.log(3.0)]], tf.float64)
    lp = D.independent_bernoulli_log_prob(logits, tf.constant([[1, 0]]))
    assert lp.numpy()[0] == pytest.approx(math.log(0.5) + math.log(0.25))
    ent = D.independent_bernoulli_entropy(logits).numpy()[0]
    assert ent == pytest.approx(math.log(2.0) - 0.75 * math.log(0.75) - 0.25 * math.log(0.25))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.1, 5.0))
def test_multi_categorical_against_numpy(seed, scale):
    """Log-prob, entropy and KL are sums over components of the categorical NumPy formulas."""
    rng = _rng(seed)
    old = scale * rng.normal(size=(N, sum(NVEC)))
    new = scale * rng.normal(size=(N, sum(NVEC)))
    actions = np.stack([rng.integers(0, k, size=N) for k in NVEC], axis=1)
    edges = np.cumsum(NVEC)[:-1]
    lp_old = [np_log_softmax(z) for z in np.split(old, edges, axis=1)]
    lp_new = [np_log_softmax(z) for z in np.split(new, edges, axis=1)]
    t = tf.constant
    np.testing.assert_allclose(
        D.multi_categorical_log_prob(t(old), t(actions), NVEC).numpy(),
        sum(lp[np.arange(N), actions[:, m]] for m, lp in enumerate(lp_old)), rtol=1e-12)
    np.testing.assert_allclose(
        D.multi_categorical_entropy(t(old), NVEC).numpy(),
        sum(-(np.exp(lp) * lp).sum(-1) for lp in lp_old), rtol=1e-10, atol=1e-14)
    kl = sum((np.exp(a) * (a - b)).sum(-1).mean() for a, b in zip(lp_old, lp_new, strict=True))
    assert D.multi_categorical(NVEC).kl(t(old), t(new)).numpy() == pytest.approx(
        kl, rel=1e-10, abs=1e-14)


def test_multi_categorical_kl_is_expected_log_ratio_over_every_joint_action():
    """``KL = Σ_a P_old(a) (log P_old(a) − log P_new(a))`` over all 2·3·4 joint actions."""
    rng = _rng(11)
    old, new = (tf.constant(rng.normal(size=(N, sum(NVEC)))) for _ in range(2))
    total = np.zeros(N)
    for joint in np.ndindex(*NVEC):
        a = tf.constant(np.tile(joint, (N, 1)))
        lp_old = D.multi_categorical_log_prob(old, a, NVEC).numpy()
        total += np.exp(lp_old) * (lp_old - D.multi_categorical_log_prob(new, a, NVEC).numpy())
    assert D.multi_categorical_kl(old, new, NVEC).numpy() == pytest.approx(total.mean(),
                                                                          rel=1e-10)


def test_multi_categorical_refuses_empty_nvec():
    with pytest.raises(ValueError, match="class counts"):
        D.multi_categorical(())


# Diagonal Gaussian -------------------------------------------------------------------------


@pytest.mark.parametrize("shared", [False, True], ids=["per-sample-log-std", "shared-log-std"])
def test_diagonal_gaussian_against_numpy(shared):
    rng = _rng(6)
    shape = (K,) if shared else (N, K)
    mu1, mu2, x = (rng.normal(size=(N, K)) for _ in range(3))
    ls1, ls2 = rng.uniform(-1, 1, size=shape), rng.uniform(-1, 1, size=shape)
    t = tf.constant

    np.testing.assert_allclose(
        D.diagonal_gaussian_log_prob(t(mu1), t(ls1), t(x)).numpy(),
        np_gaussian_log_prob(mu1, ls1, x),
        rtol=1e-12,
    )
    ent = D.diagonal_gaussian_entropy(t(mu1), t(ls1)).numpy()
    assert ent.shape == (N,)
    np.testing.assert_allclose(ent, np_gaussian_entropy(mu1, ls1), rtol=1e-12)
    kl = D.diagonal_gaussian_kl((t(mu1), t(ls1)), (t(mu2), t(ls2))).numpy()
    assert kl == pytest.approx(np_gaussian_kl(mu1, ls1, mu2, ls2), rel=1e-12)
    assert kl > 0.0
    assert D.diagonal_gaussian_kl((t(mu1), t(ls1)), (t(mu1), t(ls1))).numpy() == pytest.approx(
        0.0, abs=1e-14
    )


def test_diagonal_gaussian_by_hand():
    """Standard normal: log N(0; 0, 1) = −½ log 2π; KL(N(0,1) ‖ N(1, e²)) = 1 + (1+1)/(2e²) − ½."""
    zero = tf.zeros((1, 1), tf.float64)
    assert D.diagonal_gaussian_log_prob(zero, zero, zero).numpy()[0] == pytest.approx(
        -0.5 * math.log(2 * math.pi)
    )
    assert D.diagonal_gaussian_entropy(zero, zero).numpy()[0] == pytest.approx(
        0.5 * math.log(2 * math.pi * math.e)
    )
    one = tf.ones((1, 1), tf.float64)
    kl = D.diagonal_gaussian_kl((zero, zero), (one, one)).numpy()
    assert kl == pytest.approx(1.0 + 2.0 / (2.0 * math.e**2) - 0.5)


def test_diagonal_gaussian_entropy_is_minus_expected_log_prob():
    """A Monte Carlo check tying the log-prob and the entropy together."""
    rng = _rng(7)
    mean, log_std = rng.normal(size=(1, K)), rng.uniform(-1, 1, size=(K,))
    samples = mean + np.exp(log_std) * rng.normal(size=(200_000, K))
    lp = D.diagonal_gaussian_log_prob(tf.constant(mean), tf.constant(log_std), tf.constant(samples))
    entropy = D.diagonal_gaussian_entropy(tf.constant(mean), tf.constant(log_std)).numpy()[0]
    assert -lp.numpy().mean() == pytest.approx(entropy, abs=0.02)


# Fisher-vector products = dense Hessian of the KL in the new outputs at new == old -----------


def kl_hessian(kl, old) -> np.ndarray:
    """``∇²_new KL(old ‖ new)`` at ``new = old``, by ``tape.jacobian`` of ``tape.gradient``."""
    leaves = tf.nest.flatten(old)
    new = [tf.Variable(t) for t in leaves]
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = kl(old, tf.nest.pack_sequence_as(old, [v + 0.0 for v in new]))
        grads = inner.gradient(value, new)
    rows = []
    for g in grads:
        blocks = outer.jacobian(g, new, experimental_use_pfor=False)
        rows.append(np.concatenate(
            [np.reshape(b.numpy(), (int(np.size(g)), int(np.size(v)))) for b, v in
             zip(blocks, new, strict=True)], axis=1))
    del outer
    return np.concatenate(rows, axis=0)


def fvp_matrix(fvp, z) -> np.ndarray:
    """The matrix of ``u -> fvp(z, u)``, one basis vector ``u`` at a time."""
    leaves = tf.nest.flatten(z)
    sizes = [int(np.size(t)) for t in leaves]
    m = sum(sizes)
    cols = []
    for i in range(m):
        e = np.zeros(m)
        e[i] = 1.0
        parts = np.split(e, np.cumsum(sizes)[:-1])
        u = tf.nest.pack_sequence_as(
            z, [tf.constant(p.reshape(t.shape), t.dtype) for p, t in zip(parts, leaves,
                                                                          strict=True)]
        )
        out = fvp(z, u)
        assert [o.shape for o in tf.nest.flatten(out)] == [t.shape for t in leaves]
        cols.append(numpy_flat(tf.nest.flatten(out)))
    return np.stack(cols, axis=1)


def _outputs(case, rng, dtype):
    def t(a):
        return tf.constant(a, dtype)

    logits = rng.normal(size=(N, K))
    if case == "categorical":
        return D.CATEGORICAL, t(logits)
    if case == "categorical_probs":
        return D.CATEGORICAL_PROBS, t(np.exp(np_log_softmax(logits)))
    if case == "bernoulli":
        return D.BERNOULLI, t(logits)
    if case == "bernoulli_probs":
        return D.BERNOULLI_PROBS, t(np_sigmoid(logits))
    if case == "squared_error":
        return D.SQUARED_ERROR, t(logits)
    if case == "gaussian_per_sample":
        return D.DIAGONAL_GAUSSIAN, (t(logits), t(rng.uniform(-1, 1, size=(N, K))))
    if case == "gaussian_shared":
        return D.DIAGONAL_GAUSSIAN, (t(logits), t(rng.uniform(-1, 1, size=(K,))))
    if case == "independent_bernoulli":
        return D.INDEPENDENT_BERNOULLI, t(logits)
    if case == "multi_categorical":
        return D.multi_categorical(NVEC), t(rng.normal(size=(N, sum(NVEC))))
    raise AssertionError(case)


FVP_CASES = [
    "categorical",
    "categorical_probs",
    "bernoulli",
    "bernoulli_probs",
    "squared_error",
    "gaussian_per_sample",
    "gaussian_shared",
    "independent_bernoulli",
    "multi_categorical",
]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("case", FVP_CASES)
def test_fisher_vector_product_is_hessian_of_kl(case, seed):
    dist, z = _outputs(case, _rng(seed), tf.float64)
    hess = kl_hessian(dist.kl, z)
    np.testing.assert_allclose(hess, hess.T, atol=1e-12)
    np.testing.assert_allclose(fvp_matrix(dist.fisher_vector_product, z), hess,
                               rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("case", FVP_CASES)
def test_fisher_vector_product_float32(case):
    dist, z = _outputs(case, _rng(2), tf.float32)
    u = tf.nest.map_structure(lambda t: tf.ones_like(t), z)
    out = dist.fisher_vector_product(z, u)
    assert [o.dtype for o in tf.nest.flatten(out)] == [tf.float32] * len(tf.nest.flatten(z))
    z64 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float64), z)
    u64 = tf.nest.map_structure(lambda t: tf.cast(t, tf.float64), u)
    np.testing.assert_allclose(
        numpy_flat(tf.nest.flatten(out)),
        numpy_flat(tf.nest.flatten(dist.fisher_vector_product(z64, u64))),
        rtol=1e-5,
        atol=1e-7,  # u = 1 lies in a softmax Fisher's null space: its entries round to ~1e-9
    )


def test_registry_names():
    names = {d.name for d in (D.CATEGORICAL, D.CATEGORICAL_PROBS, D.BERNOULLI,
                              D.BERNOULLI_PROBS, D.SQUARED_ERROR, D.DIAGONAL_GAUSSIAN)}
    assert names == {"categorical", "categorical_probs", "bernoulli", "bernoulli_probs",
                     "squared_error", "diagonal_gaussian"}


def test_categorical_fisher_by_hand():
    """Two classes, p = (¼, ¾), N = 1: diag(p) − ppᵀ = [[3/16, −3/16], [−3/16, 3/16]]."""
    logits = tf.constant([[0.0, math.log(3.0)]], tf.float64)
    out = D.categorical_fisher_vector_product(logits, tf.constant([[1.0, 0.0]], tf.float64))
    np.testing.assert_allclose(out.numpy(), [[3 / 16, -3 / 16]])


def test_diagonal_gaussian_fisher_by_hand():
    """N = 2, σ = e: the mean block is 1/(σ² N); a per-sample log σ 2/N, a shared one 2."""
    mean = tf.zeros((2, 1), tf.float64)
    ones = tf.ones((2, 1), tf.float64)
    fm, fs = D.diagonal_gaussian_fisher_vector_product((mean, ones), (ones, ones))
    np.testing.assert_allclose(fm.numpy(), np.full((2, 1), math.exp(-2.0) / 2))
    np.testing.assert_allclose(fs.numpy(), np.full((2, 1), 1.0))
    shared = tf.ones((1,), tf.float64)
    fm, fs = D.diagonal_gaussian_fisher_vector_product((mean, shared), (ones, shared))
    np.testing.assert_allclose(fm.numpy(), np.full((2, 1), math.exp(-2.0) / 2))
    np.testing.assert_allclose(fs.numpy(), [2.0])


def _loss_hessian(loss, z) -> np.ndarray:
    var = tf.Variable(z)
    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = loss(var + 0.0)
        grad = inner.gradient(value, var)
    m = int(np.size(z))
    return np.reshape(outer.jacobian(grad, var, experimental_use_pfor=False).numpy(), (m, m))


def test_fisher_products_are_hessians_of_matching_losses():
    """Categorical, Bernoulli and squared-error products are also the Hessians (in the
    outputs) of mean softmax cross-entropy, mean sigmoid cross-entropy and MSE, for any
    targets."""
    rng = _rng(8)
    z = tf.constant(rng.normal(size=(N, K)))
    labels = tf.constant(rng.integers(0, K, size=N), tf.int32)
    targets01 = tf.constant(rng.uniform(size=(N, K)))
    targets = tf.constant(rng.normal(size=(N, K)))
    cases = [
        (lambda o: tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, o)),
         D.categorical_fisher_vector_product),
        (lambda o: tf.reduce_mean(
            tf.nn.sigmoid_cross_entropy_with_logits(targets01, o)),
         D.bernoulli_fisher_vector_product),
        (lambda o: tf.reduce_mean(tf.square(o - targets)), D.squared_error_fisher_vector_product),
    ]
    for loss, fvp in cases:
        np.testing.assert_allclose(fvp_matrix(fvp, z), _loss_hessian(loss, z),
                                   rtol=1e-9, atol=1e-12)
