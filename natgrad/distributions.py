"""Output-space math of the distributions a model predicts: KL, Fisher, log-prob, entropy.

All functions are pure and batched: the leading axis of every tensor is the batch ``N``.
The KL divergences average over the batch, and each ``*_fisher_vector_product(z, u)`` is the
Hessian of that batch-mean KL with respect to the new outputs, taken at ``new == old == z``,
applied to a tangent ``u`` shaped like ``z``. Composed with
:func:`natgrad.gauss_newton_vector_product`, it gives the exact Fisher-vector product in
parameter space.

Shapes: ``logits``/``probs`` ``[N, K]``; Bernoulli ``[N, D]``; Gaussian ``mean`` ``[N, D]`` and
``log_std`` ``[N, D]`` or ``[D]`` (state-independent); several independent categoricals
(``multi_categorical``, a MultiDiscrete action) ``[N, K₁ + … + K_M]``, their logits side by side.

Policy heads (joint distributions over an action vector) sum over the action's components:
``DIAGONAL_GAUSSIAN``, ``MULTI_CATEGORICAL`` (per ``nvec``) and ``INDEPENDENT_BERNOULLI``
(a MultiBinary action; ``BERNOULLI`` instead averages over units, as binary cross-entropy does).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import tensorflow as tf

PROBABILITY_EPSILON = 1e-7


def _batch_size(z: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.shape(z)[0], z.dtype)


def _clip_probs(p: tf.Tensor) -> tf.Tensor:
    return tf.clip_by_value(p, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)


# Categorical over K classes, parameterized by logits ------------------------------------------


def categorical_log_prob(logits: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
    """``log softmax(logits)[n, a_n]``: ``[N, K], [N] -> [N]``."""
    log_p = tf.nn.log_softmax(logits)
    return tf.gather(log_p, tf.cast(actions, tf.int32), axis=-1, batch_dims=1)


def categorical_entropy(logits: tf.Tensor) -> tf.Tensor:
    """``-Σ_k p_k log p_k`` per sample: ``[N, K] -> [N]``."""
    log_p = tf.nn.log_softmax(logits)
    return -tf.reduce_sum(tf.exp(log_p) * log_p, axis=-1)


def categorical_kl(old_logits: tf.Tensor, new_logits: tf.Tensor) -> tf.Tensor:
    """``mean_n Σ_k p_old (log p_old − log p_new)``: scalar."""
    log_old = tf.nn.log_softmax(old_logits)
    log_new = tf.nn.log_softmax(new_logits)
    return tf.reduce_mean(tf.reduce_sum(tf.exp(log_old) * (log_old - log_new), axis=-1))


def categorical_fisher_vector_product(logits: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``(diag(p) − p pᵀ) u / N`` per sample, ``p = softmax(logits)``.

    Also the Hessian of the batch-mean softmax cross-entropy in the logits, for any labels.
    """
    p = tf.nn.softmax(logits)
    pu = p * u
    return (pu - p * tf.reduce_sum(pu, axis=-1, keepdims=True)) / _batch_size(logits)


# Categorical parameterized by probabilities (a softmax output layer) --------------------------


def categorical_probs_kl(old_probs: tf.Tensor, new_probs: tf.Tensor) -> tf.Tensor:
    """``mean_n Σ_k p_old (log p_old − log p_new)`` from probabilities: scalar."""
    old, new = _clip_probs(old_probs), _clip_probs(new_probs)
    return tf.reduce_mean(tf.reduce_sum(old * (tf.math.log(old) - tf.math.log(new)), axis=-1))


def categorical_probs_fisher_vector_product(probs: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``diag(1/p) u / N``: the Fisher in probability coordinates.

    For ``u = J v`` with ``J`` the Jacobian of a softmax output, ``Σ_k u_k = 0`` and
    ``uᵀ diag(1/p) u`` equals the logit-space ``uᵀ(diag(p) − ppᵀ)u``, so the parameter-space
    product is the same exact Fisher as from logits.
    """
    return u / _clip_probs(probs) / _batch_size(probs)


# Independent Bernoulli per output, from logits or probabilities --------------------------------


def _bernoulli_kl_from_probs(old: tf.Tensor, new: tf.Tensor) -> tf.Tensor:
    old, new = _clip_probs(old), _clip_probs(new)
    per_unit = old * (tf.math.log(old) - tf.math.log(new)) + (1.0 - old) * (
        tf.math.log1p(-old) - tf.math.log1p(-new)
    )
    return tf.reduce_mean(per_unit)


def bernoulli_kl(old_logits: tf.Tensor, new_logits: tf.Tensor) -> tf.Tensor:
    """Mean over batch and units of the Bernoulli KL, from logits: scalar."""
    p_old = tf.sigmoid(old_logits)
    per_unit = p_old * (tf.math.log_sigmoid(old_logits) - tf.math.log_sigmoid(new_logits)) + (
        1.0 - p_old
    ) * (tf.math.log_sigmoid(-old_logits) - tf.math.log_sigmoid(-new_logits))
    return tf.reduce_mean(per_unit)


def bernoulli_fisher_vector_product(logits: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``p(1 − p) u / (N·D)``; also the Hessian of the mean sigmoid cross-entropy."""
    p = tf.sigmoid(logits)
    return p * (1.0 - p) * u / tf.cast(tf.size(logits), logits.dtype)


def bernoulli_probs_kl(old_probs: tf.Tensor, new_probs: tf.Tensor) -> tf.Tensor:
    """Mean over batch and units of the Bernoulli KL, from probabilities: scalar."""
    return _bernoulli_kl_from_probs(old_probs, new_probs)


def bernoulli_probs_fisher_vector_product(probs: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``u / (p(1 − p)) / (N·D)``: the Bernoulli Fisher in probability coordinates."""
    p = _clip_probs(probs)
    return u / (p * (1.0 - p)) / tf.cast(tf.size(probs), probs.dtype)


# Independent Bernoullis as one joint distribution over D binary units (MultiBinary actions) -----


def independent_bernoulli_log_prob(logits: tf.Tensor, actions: tf.Tensor) -> tf.Tensor:
    """``Σ_d [a_d log σ(z_d) + (1 − a_d) log σ(−z_d)]``: ``[N, D], [N, D] -> [N]``."""
    a = tf.cast(actions, logits.dtype)
    return tf.reduce_sum(a * tf.math.log_sigmoid(logits)
                         + (1.0 - a) * tf.math.log_sigmoid(-logits), axis=-1)


def independent_bernoulli_entropy(logits: tf.Tensor) -> tf.Tensor:
    """``Σ_d −[p_d log p_d + (1 − p_d) log(1 − p_d)]``, ``p = σ(z)``: ``[N, D] -> [N]``."""
    p = tf.sigmoid(logits)
    return -tf.reduce_sum(p * tf.math.log_sigmoid(logits)
                          + (1.0 - p) * tf.math.log_sigmoid(-logits), axis=-1)


def independent_bernoulli_kl(old_logits: tf.Tensor, new_logits: tf.Tensor) -> tf.Tensor:
    """``mean_n Σ_d KL(Bern(p_old) ‖ Bern(p_new))``, from logits in log space: scalar."""
    p_old = tf.sigmoid(old_logits)
    per_unit = p_old * (tf.math.log_sigmoid(old_logits) - tf.math.log_sigmoid(new_logits)) + (
        1.0 - p_old
    ) * (tf.math.log_sigmoid(-old_logits) - tf.math.log_sigmoid(-new_logits))
    return tf.reduce_mean(tf.reduce_sum(per_unit, axis=-1))


def independent_bernoulli_fisher_vector_product(logits: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``p(1 − p) u / N``: the Hessian of :func:`independent_bernoulli_kl` (``D`` times
    :func:`bernoulli_fisher_vector_product`, which averages over units)."""
    p = tf.sigmoid(logits)
    return p * (1.0 - p) * u / _batch_size(logits)


# Several independent categoricals (MultiDiscrete actions), logits side by side ----------------


def _split(logits: tf.Tensor, nvec) -> list[tf.Tensor]:
    return tf.split(logits, [int(k) for k in nvec], axis=-1)


def multi_categorical_log_prob(logits: tf.Tensor, actions: tf.Tensor, nvec) -> tf.Tensor:
    """``Σ_m log softmax(z_m)[a_m]``: ``[N, ΣK_m], [N, M] -> [N]``."""
    actions = tf.cast(actions, tf.int32)
    return tf.add_n([categorical_log_prob(z, actions[:, m])
                     for m, z in enumerate(_split(logits, nvec))])


def multi_categorical_entropy(logits: tf.Tensor, nvec) -> tf.Tensor:
    """``Σ_m H[softmax(z_m)]``: ``[N, ΣK_m] -> [N]``."""
    return tf.add_n([categorical_entropy(z) for z in _split(logits, nvec)])


def multi_categorical_kl(old_logits: tf.Tensor, new_logits: tf.Tensor, nvec) -> tf.Tensor:
    """``mean_n Σ_m KL(softmax(z_old,m) ‖ softmax(z_new,m))``: scalar (the joint KL of
    independent components is the sum of theirs)."""
    return tf.add_n([categorical_kl(o, n) for o, n in
                     zip(_split(old_logits, nvec), _split(new_logits, nvec), strict=True)])


def multi_categorical_fisher_vector_product(logits: tf.Tensor, u: tf.Tensor, nvec) -> tf.Tensor:
    """Block-diagonal: ``(diag(p_m) − p_m p_mᵀ) u_m / N`` for each component ``m``."""
    return tf.concat([categorical_fisher_vector_product(z, v) for z, v in
                      zip(_split(logits, nvec), _split(u, nvec), strict=True)], axis=-1)


# Squared error: a unit-variance Gaussian scaled to match mean squared error ------------------


def squared_error_kl(old_outputs: tf.Tensor, new_outputs: tf.Tensor) -> tf.Tensor:
    """``mean((z_new − z_old)²)`` over batch and units: the divergence whose Hessian is MSE's."""
    return tf.reduce_mean(tf.square(new_outputs - old_outputs))


def squared_error_fisher_vector_product(outputs: tf.Tensor, u: tf.Tensor) -> tf.Tensor:
    """``2 u / (N·D)``: the Hessian of mean squared error in the outputs."""
    return 2.0 * u / tf.cast(tf.size(outputs), outputs.dtype)


# Diagonal Gaussian, outputs (mean, log_std) ----------------------------------------------------


def diagonal_gaussian_log_prob(mean: tf.Tensor, log_std: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """``Σ_d log N(x_d; μ_d, σ_d²)``: ``[N, D] -> [N]``."""
    z = (x - mean) * tf.exp(-log_std)
    per_dim = -0.5 * tf.square(z) - log_std - 0.5 * math.log(2.0 * math.pi)
    return tf.reduce_sum(per_dim + tf.zeros_like(mean), axis=-1)


def diagonal_gaussian_entropy(mean: tf.Tensor, log_std: tf.Tensor) -> tf.Tensor:
    """``Σ_d (log σ_d + ½ log 2πe)`` per sample: ``[N]``."""
    per_dim = log_std + 0.5 * math.log(2.0 * math.pi * math.e) + tf.zeros_like(mean)
    return tf.reduce_sum(per_dim, axis=-1)


def diagonal_gaussian_kl(old: tuple, new: tuple) -> tf.Tensor:
    """``mean_n Σ_d [log σ_new/σ_old + (σ_old² + (μ_old − μ_new)²) / (2σ_new²) − ½]``.

    ``old`` and ``new`` are ``(mean, log_std)`` pairs.
    """
    (mu_old, ls_old), (mu_new, ls_new) = old, new
    var_ratio = tf.exp(2.0 * (ls_old - ls_new))
    mahalanobis = tf.square(mu_old - mu_new) * tf.exp(-2.0 * ls_new)
    per_dim = ls_new - ls_old + 0.5 * (var_ratio + mahalanobis) - 0.5 + tf.zeros_like(mu_old)
    return tf.reduce_mean(tf.reduce_sum(per_dim, axis=-1))


def diagonal_gaussian_fisher_vector_product(outputs: tuple, u: tuple) -> tuple:
    """``(u_μ / σ², 2 u_logσ)`` averaged over the batch.

    A per-sample ``log_std [N, D]`` tangent is divided by ``N`` like the mean's; a shared
    ``log_std [D]`` appears in every sample, so its batch-mean Fisher is ``2 u`` undivided.
    """
    mean, log_std = outputs
    u_mean, u_log_std = u
    n = _batch_size(mean)
    fisher_mean = u_mean * tf.exp(-2.0 * log_std) / n
    if log_std.shape.rank == mean.shape.rank:
        return fisher_mean, 2.0 * u_log_std / n
    return fisher_mean, 2.0 * u_log_std


class OutputDistribution(NamedTuple):
    """The two output-space pieces a trust-region step needs for one kind of model output.

    ``kl(old_outputs, new_outputs) -> scalar`` and ``fisher_vector_product(outputs, u)``, its
    Hessian in the new outputs at ``new == old``.
    """

    name: str
    kl: object
    fisher_vector_product: object


CATEGORICAL = OutputDistribution("categorical", categorical_kl, categorical_fisher_vector_product)
CATEGORICAL_PROBS = OutputDistribution(
    "categorical_probs", categorical_probs_kl, categorical_probs_fisher_vector_product
)
BERNOULLI = OutputDistribution("bernoulli", bernoulli_kl, bernoulli_fisher_vector_product)
BERNOULLI_PROBS = OutputDistribution(
    "bernoulli_probs", bernoulli_probs_kl, bernoulli_probs_fisher_vector_product
)
SQUARED_ERROR = OutputDistribution(
    "squared_error", squared_error_kl, squared_error_fisher_vector_product
)
DIAGONAL_GAUSSIAN = OutputDistribution(
    "diagonal_gaussian", diagonal_gaussian_kl, diagonal_gaussian_fisher_vector_product
)
INDEPENDENT_BERNOULLI = OutputDistribution(
    "independent_bernoulli", independent_bernoulli_kl, independent_bernoulli_fisher_vector_product
)


def multi_categorical(nvec) -> OutputDistribution:
    """The :class:`OutputDistribution` of independent categoricals with ``nvec`` classes each
    (logits ``[N, Σ nvec]``)."""
    nvec = tuple(int(k) for k in nvec)
    if not nvec or min(nvec) < 1:
        raise ValueError(f"multi_categorical needs class counts >= 1, got {nvec}")
    return OutputDistribution(
        "multi_categorical",
        lambda old, new: multi_categorical_kl(old, new, nvec),
        lambda logits, u: multi_categorical_fisher_vector_product(logits, u, nvec),
    )
