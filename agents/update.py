"""The compiled TRPO update: the natural-gradient policy step and the value fit.

:func:`make_update_fns` returns ``tf.function``s with fixed input signatures (each traced on
its first call) that, on one batch of ``N = n_envs × n_steps`` samples,

1. ``policy``: take the policy step with :meth:`natgrad.NaturalGradient.minimize` on the
   surrogate ``L(θ) = −mean_n[π_θ(a_n|s_n) / π_old(a_n|s_n) · Â_n]``, its curvature the Fisher
   in Gauss-Newton form on every ``fisher_subsample``-th state, its line search bounded by
   ``KL(π_old‖π_θ) ≤ max_kl``; return the step's statistics and ``policy_finite``;
2. ``value``: fit the value function, ``critic_epochs`` passes of Adam over minibatches of
   ``mean (V(s) − R̂)²`` in the given order; return the final value loss and
   ``value_finite``.

and ``both``, the two in one graph (the default path). The two touch disjoint variables, so
with ``overlap_value_fit`` the agent runs the value fit on a second thread while it collects
the next batch with the new policy (:mod:`agents.overlap`).

With a ``strategy`` (``MultiWorkerMirroredStrategy``: one replica per worker process, each on
its own batch), the same update runs under ``strategy.run`` and equals the update on all
workers' batches together: the advantages are standardized with cross-worker statistics, the
policy step averages its loss, gradient, Fisher products and line search over the workers
(:mod:`natgrad.distribute`), the value fit's gradients are summed by Keras' optimizer from
losses scaled by ``1 / workers``, and every worker applies the same change. Collectives may
not sit inside graph loops on CPU, so there the value-fit loop is unrolled.

Both are traced without AutoGraph (``autograph=False``): every loop and branch in it,
natgrad's included, is an explicit ``tf.while_loop``/``tf.cond`` or plain Python on static
values. AutoGraph's source-to-source conversion of those modules would cost most of the
tracing time per agent, more than all of CartPole's TF updates (``scripts/profile_trpo.py``
measures tracing separately).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import keras
import tensorflow as tf

import natgrad
from natgrad.distribute import ReplicaMean, replica_context
from natgrad.structure import all_finite


def natural_gradient_settings(cfg) -> dict:
    """Every :class:`natgrad.NaturalGradient` argument of TRPO's policy step, spelled out: a
    default that ``NaturalGradient`` changes for Keras users does not change TRPO's update.
    The step is TRPO's (Schulman et al., 2015): CG from zero, unpreconditioned, fixed damping,
    the KL trust region and a backtracking line search."""
    return {
        "learning_rate": 1.0, "curvature": "fisher", "damping": cfg.cg_damping,
        "adaptive_damping": False, "cg_iters": cfg.cg_iters, "cg_tol": 1e-10,
        "cg_preconditioner": None, "max_kl": cfg.max_kl,
        "line_search_shrink": cfg.line_search_shrink,
        "line_search_max_tries": cfg.line_search_max_tries,
        "curvature_batch_fraction": 1.0, "hvp_method": "forward_over_reverse",
    }


def make_optimizers(cfg, policy, value) -> tuple[natgrad.NaturalGradient,
                                                   keras.optimizers.Adam]:
    """The policy's :class:`natgrad.NaturalGradient` (trust region ``max_kl``, damping
    ``cg_damping``) and the value's Adam, built for their variables."""
    policy_optimizer = natgrad.NaturalGradient(**natural_gradient_settings(cfg))
    policy_optimizer.build(policy.trainable_variables)
    value_optimizer = keras.optimizers.Adam(learning_rate=cfg.critic_lr,
                                            epsilon=cfg.critic_epsilon)
    value_optimizer.build(value.trainable_variables)
    return policy_optimizer, value_optimizer


def make_update_fns(cfg, policy, value, policy_optimizer, value_optimizer, obs_spec,
                    action_spec: tuple, strategy=None) -> UpdateFunctions:
    """:class:`UpdateFunctions`: ``policy(obs [N, ...], actions [N, *action_shape],
    advantages [N])``, ``value(obs, returns [N], critic_order [critic_epochs, N])`` and
    ``both(obs, actions, advantages, returns, critic_order)``, each returning a dict of
    scalars.

    ``obs_spec`` is ``(shape, dtype)`` of one observation, or a dict of them
    (:meth:`agents.envs.spaces.ObservationEncoder.leaf_specs`); ``action_spec`` is ``(shape,
    dtype)`` of one action (:func:`agents.envs.spaces.action_layout`; shape ``()`` for a
    ``Discrete`` index). With a ``strategy``, ``advantages`` are raw (they are standardized
    here, across workers) and every worker passes its own batch."""
    n = cfg.batch_size

    def spec(shape_dtype):
        shape, dtype = shape_dtype
        return tf.TensorSpec([n, *shape], tf.as_dtype(dtype))

    obs_signature = ({k: spec(v) for k, v in obs_spec.items()} if isinstance(obs_spec, dict)
                     else spec(obs_spec))
    action_signature = spec(action_spec)
    value_vars = list(value.trainable_variables)
    policy_step = _policy_step(cfg, policy, policy_optimizer)
    fit_value = _value_fit(cfg, value, value_optimizer, strategy)

    def standardize(advantages):
        """``(Â − mean) / (std + 1e-8)`` over every worker's batch (population std)."""
        mean = ReplicaMean(replica_context())
        mu = mean(tf.reduce_mean(advantages))
        std = tf.sqrt(mean(tf.reduce_mean(tf.square(advantages - mu))))
        return (advantages - mu) / (std + 1e-8)

    def on_replicas(fn, *args):
        if strategy is None:
            return fn(*args)
        return strategy.experimental_local_results(strategy.run(fn, args=args))[0]

    @tf.function(autograph=False, input_signature=[
        obs_signature, action_signature, tf.TensorSpec([n], tf.float32)])
    def update_policy(obs, actions, advantages):
        return on_replicas(replica_policy_step, obs, actions, advantages)

    def replica_policy_step(obs, actions, advantages):
        if strategy is not None and cfg.normalize_advantages:
            advantages = standardize(advantages)
        stats = policy_step(obs, actions, advantages)
        stats["entropy"] = ReplicaMean(replica_context())(stats["entropy"])
        stats["policy_finite"] = all_finite(policy.trainable_variables)
        return stats

    @tf.function(autograph=False, input_signature=[
        obs_signature, tf.TensorSpec([n], tf.float32),
        tf.TensorSpec([cfg.critic_epochs, n], tf.int32)])
    def update_value(obs, returns, critic_order):
        return on_replicas(replica_value_fit, obs, returns, critic_order)

    def replica_value_fit(obs, returns, critic_order):
        loss = ReplicaMean(replica_context())(fit_value(obs, returns, critic_order))
        return {"value_loss": loss, "value_finite": all_finite(value_vars)}

    @tf.function(autograph=False, input_signature=[
        obs_signature, action_signature, tf.TensorSpec([n], tf.float32),
        tf.TensorSpec([n], tf.float32), tf.TensorSpec([cfg.critic_epochs, n], tf.int32)])
    def update_both(obs, actions, advantages, returns, critic_order):
        def replica_both(obs, actions, advantages, returns, critic_order):
            stats = replica_policy_step(obs, actions, advantages)
            return {**stats, **replica_value_fit(obs, returns, critic_order)}

        return on_replicas(replica_both, obs, actions, advantages, returns, critic_order)

    return UpdateFunctions(update_policy, update_value, update_both)


def _policy_step(cfg, policy, policy_optimizer) -> Callable:
    """``(obs, actions, advantages) -> statistics``: the natural-gradient step on the
    surrogate, in the trust region ``KL(π_old‖π_θ) ≤ max_kl``, plus the batch's entropy."""

    def policy_step(obs, actions, advantages):
        old_outputs = tf.nest.map_structure(tf.stop_gradient, policy.outputs(obs))
        log_prob_old = policy.log_prob(old_outputs, actions)

        def surrogate_loss():
            ratio = tf.exp(policy.log_prob(policy.outputs(obs), actions) - log_prob_old)
            return -tf.reduce_mean(ratio * advantages)

        def kl():
            return policy.distribution.kl(old_outputs, policy.outputs(obs))

        stats = policy_optimizer.minimize(
            surrogate_loss, policy.trainable_variables, kl_fn=kl,
            outputs_fn=lambda: policy.outputs(
                tf.nest.map_structure(lambda x: x[:: cfg.fisher_subsample], obs)),
            output_distribution=policy.distribution)
        stats["entropy"] = tf.reduce_mean(policy.entropy(old_outputs))
        return stats

    return policy_step


def _value_fit(cfg, value, value_optimizer, strategy) -> Callable:
    """``(obs, returns, critic_order) -> final loss``: ``critic_epochs`` passes of Adam over
    minibatches of ``mean (V(s) − R̂)²`` in the order given (with a strategy, each replica's
    loss scaled by ``1 / replicas``, so Keras' summed gradients are the mean)."""
    replicas = 1 if strategy is None else strategy.num_replicas_in_sync
    batches_per_epoch = math.ceil(cfg.batch_size / cfg.critic_batch_size)
    value_vars = list(value.trainable_variables)

    def value_loss(obs, returns):
        return tf.reduce_mean(tf.square(value(obs) - returns))

    def fit_value(obs, returns, critic_order):
        def minibatch(epoch, b):
            idx = critic_order[epoch, b * cfg.critic_batch_size:
                               (b + 1) * cfg.critic_batch_size]
            with tf.GradientTape() as tape:
                loss = value_loss(_rows(obs, idx), tf.gather(returns, idx)) / replicas
            grads = tape.gradient(loss, value_vars)
            value_optimizer.apply_gradients(zip(grads, value_vars, strict=True))

        if strategy is None:  # one graph loop over every minibatch of every epoch
            def body(i):
                minibatch(i // batches_per_epoch, i % batches_per_epoch)
                return (i + 1,)

            tf.while_loop(lambda i: i < cfg.critic_epochs * batches_per_epoch, body,
                          (tf.constant(0),))
        else:  # collectives may not sit in graph loops on CPU: unrolled
            for epoch in range(cfg.critic_epochs):
                for b in range(batches_per_epoch):
                    minibatch(epoch, b)
        return value_loss(obs, returns)

    return fit_value


class UpdateFunctions(NamedTuple):
    """The compiled update, whole and in its two halves. The halves touch disjoint variables,
    so the value fit may run while the next batch is collected (``overlap_value_fit``). Without
    that, ``both`` is used: one graph, in which TensorFlow runs the policy step's and the value
    fit's independent ops side by side (splitting them is slower; ``scripts/profile_trpo.py``
    with and without ``overlap_value_fit`` shows by how much). Each is traced on its first
    call only."""

    policy: Callable  # (obs, actions, advantages) -> step statistics, "policy_finite"
    value: Callable  # (obs, returns, critic_order) -> {"value_loss", "value_finite"}
    both: Callable  # (obs, actions, advantages, returns, critic_order) -> all of them


def _rows(obs, idx):
    """``obs[idx]`` leaf by leaf (an observation tensor or a dict of them)."""
    return tf.nest.map_structure(lambda x: tf.gather(x, idx), obs)
