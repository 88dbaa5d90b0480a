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
its own batch), the update equals the update on all ``W`` workers' batches together:

* the policy step runs under ``strategy.run``: the advantages are standardized with
  cross-worker statistics, and the step averages its loss, gradient, Fisher products and line
  search over the workers (:mod:`natgrad.distribute`): ``cg_iters + line_search_max_tries + 4``
  all-reduces, unrolled, since collectives may not sit inside graph loops on CPU;
* the value fit's data, every worker's observations, returns and minibatch order, are
  all-gathered once (:func:`gather_value_batch`; TensorFlow gathers each tensor's shape, then
  its data: 2 collectives a tensor); then each worker runs the same fit as one process, a
  graph loop without any collective, on the ``W × N`` samples, minibatch ``b`` of an epoch
  being every worker's minibatch ``b`` (``W × critic_batch_size`` samples). Adam steps on
  identical data from identical weights leave identical weights on every worker. The fit runs
  outside ``strategy.run``, where a mirrored variable is this worker's own copy and Keras'
  optimizer reduces nothing (so each worker must have one device:
  :func:`check_one_device_per_worker`).

The value fit thus costs 6 collectives an update instead of one all-reduce per Adam step, and
traces as one loop instead of ``critic_epochs × minibatches`` unrolled steps
(``scripts/bench_distributed.py --update ENV`` counts and times them). The price: every
worker repeats the whole fit, so its compute does not shrink with more workers (it is one
process's fit on the global batch; small next to collecting that batch for TRPO's value
networks, and free of the per-step latency of a collective).

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

# dtypes TensorFlow's collectives carry; others (uint8 frames, bool) travel as int32, exactly
COLLECTIVE_DTYPES = (tf.float16, tf.float32, tf.float64, tf.int32, tf.int64)


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
    workers = 1
    if strategy is not None:
        check_one_device_per_worker(strategy)
        workers = strategy.num_replicas_in_sync
    policy_step = _policy_step(cfg, policy, policy_optimizer)
    fit_value = _value_fit(cfg, value, value_optimizer, workers)

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

    def replica_value_batch(obs, returns, critic_order):
        return gather_value_batch(replica_context(), obs, returns, critic_order,
                                  cfg.critic_batch_size)

    def value_fit(obs, returns, critic_order):  # with a strategy: on every worker's batch
        loss = fit_value(obs, returns, critic_order)
        return {"value_loss": loss, "value_finite": all_finite(value_vars)}

    @tf.function(autograph=False, input_signature=[
        obs_signature, tf.TensorSpec([n], tf.float32),
        tf.TensorSpec([cfg.critic_epochs, n], tf.int32)])
    def update_value(obs, returns, critic_order):
        if strategy is None:
            return value_fit(obs, returns, critic_order)
        return value_fit(*on_replicas(replica_value_batch, obs, returns, critic_order))

    @tf.function(autograph=False, input_signature=[
        obs_signature, action_signature, tf.TensorSpec([n], tf.float32),
        tf.TensorSpec([n], tf.float32), tf.TensorSpec([cfg.critic_epochs, n], tf.int32)])
    def update_both(obs, actions, advantages, returns, critic_order):
        if strategy is None:
            stats = replica_policy_step(obs, actions, advantages)
            return {**stats, **value_fit(obs, returns, critic_order)}

        def replica_both(obs, actions, advantages, returns, critic_order):
            return (replica_policy_step(obs, actions, advantages),
                    replica_value_batch(obs, returns, critic_order))

        stats, value_batch = on_replicas(replica_both, obs, actions, advantages, returns,
                                         critic_order)
        return {**stats, **value_fit(*value_batch)}

    return UpdateFunctions(update_policy, update_value, update_both)


def _policy_step(cfg, policy, policy_optimizer) -> Callable:
    """``(obs, actions, advantages) -> statistics``: the natural-gradient step on the
    surrogate (plus ``entropy_coef`` times the mean entropy, when that is not 0), in the trust
    region ``KL(π_old‖π_θ) ≤ max_kl``, plus the batch's entropy."""
    entropy_coef = float(cfg.entropy_coef)

    def policy_step(obs, actions, advantages):
        old_outputs = tf.nest.map_structure(tf.stop_gradient, policy.outputs(obs))
        log_prob_old = policy.log_prob(old_outputs, actions)

        def surrogate_loss():
            outputs = policy.outputs(obs)
            ratio = tf.exp(policy.log_prob(outputs, actions) - log_prob_old)
            loss = -tf.reduce_mean(ratio * advantages)
            if entropy_coef:  # 0: the plain surrogate's graph, so its runs are unchanged
                loss -= entropy_coef * tf.reduce_mean(policy.entropy(outputs))
            return loss

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


def _value_fit(cfg, value, value_optimizer, workers: int) -> Callable:
    """``(obs, returns, critic_order) -> final loss``: ``critic_epochs`` passes of Adam over
    minibatches of ``mean (V(s) − R̂)²`` in the order given, one graph loop. For ``workers``
    workers' batches gathered (:func:`gather_value_batch`): ``workers × batch_size`` samples in
    minibatches of ``workers × critic_batch_size``."""
    minibatch = cfg.critic_batch_size * workers
    batches_per_epoch = math.ceil(cfg.batch_size / cfg.critic_batch_size)
    value_vars = list(value.trainable_variables)

    def value_loss(obs, returns):
        return tf.reduce_mean(tf.square(value(obs) - returns))

    def fit_value(obs, returns, critic_order):
        def minibatch_step(epoch, b):
            idx = critic_order[epoch, b * minibatch:(b + 1) * minibatch]
            with tf.GradientTape() as tape:
                loss = value_loss(_rows(obs, idx), tf.gather(returns, idx))
            grads = tape.gradient(loss, value_vars)
            value_optimizer.apply_gradients(zip(grads, value_vars, strict=True))

        def body(i):  # one graph loop over every minibatch of every epoch
            minibatch_step(i // batches_per_epoch, i % batches_per_epoch)
            return (i + 1,)

        tf.while_loop(lambda i: i < cfg.critic_epochs * batches_per_epoch, body,
                      (tf.constant(0),))
        return value_loss(obs, returns)

    return fit_value


def gather_value_batch(context, obs, returns, critic_order, critic_batch_size: int) -> tuple:
    """``(obs, returns, order)`` of every worker's batch, for the value fit on all of them.

    ``obs`` ``[N, ...]`` (or a dict of such), ``returns`` ``[N]`` and ``critic_order``
    ``[E, N]`` (a permutation of this worker's ``N`` samples per epoch) are all-gathered in one
    call: ``obs`` and ``returns`` become ``[W N, ...]``, worker ``w``'s sample ``i`` at
    ``w N + i``; the order becomes ``[E, W N]``, in which minibatch ``b`` (``W ×
    critic_batch_size`` entries) holds every worker's minibatch ``b`` in worker order. Without a
    replica ``context`` (one replica), they are returned unchanged.
    """
    if context is None:
        return obs, returns, critic_order
    workers = context.num_replicas_in_sync
    epochs, n = critic_order.shape
    obs, returns, orders = _all_gather(context, (obs, returns, critic_order))
    orders = (tf.reshape(orders, [workers, epochs, n])
              + tf.reshape(tf.range(workers) * n, [workers, 1, 1]))
    pieces = [tf.reshape(tf.transpose(orders[:, :, first:first + critic_batch_size], [1, 0, 2]),
                         [epochs, -1]) for first in range(0, n, critic_batch_size)]
    return obs, returns, tf.concat(pieces, axis=1)


def _all_gather(context, structure):
    """Every replica's tensors of ``structure`` concatenated along axis 0, in replica order."""
    def send(x):
        # (a new op on the replica's device: a collective on a function argument has none)
        return tf.identity(x) if x.dtype in COLLECTIVE_DTYPES else tf.cast(x, tf.int32)

    sent = tf.nest.map_structure(send, structure)
    gathered = context.all_gather(sent, axis=0)
    return tf.nest.map_structure(lambda g, x: tf.cast(g, x.dtype), gathered, structure)


def check_one_device_per_worker(strategy) -> None:
    """Raises ``ValueError`` unless ``strategy`` has one device on this worker: the agent's
    rollouts, its value fit and its view of the weights are one per worker process."""
    devices = len(strategy.extended.worker_devices)
    if devices != 1:
        raise ValueError(f"TRPO's workers train on one device each; this worker's strategy "
                         f"has {devices} ({', '.join(strategy.extended.worker_devices)}): "
                         "run one worker process per device (CUDA_VISIBLE_DEVICES)")


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
