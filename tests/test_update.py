"""``agents.update``: the compiled TRPO update of an agent, its policy step and its value fit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from agents import TRPO


def _recording(agent):
    """Records the advantages every update passes to the compiled ``both``."""
    calls = []
    inner = agent.update_fns.both

    def wrapped(obs, actions, advantages, *value_args):
        calls.append(advantages)
        return inner(obs, actions, advantages, *value_args)

    agent.update_fns = agent.update_fns._replace(both=wrapped)
    return calls


def test_advantages_are_normalized_and_used(tiny_config):
    agent = TRPO("CartPole-v1", **tiny_config)
    calls = _recording(agent)
    before = [v.numpy() for v in agent.policy.trainable_variables]
    agent.learn(128)
    (advantages,) = calls
    assert abs(advantages.mean()) < 1e-5 and abs(advantages.std() - 1.0) < 1e-3
    row = agent.history[0]
    assert row["accepted"] == 1 and row["surrogate_improvement"] > 0 and 0 < row["kl"] <= 0.01
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, agent.policy.trainable_variables, strict=True))
    raw = TRPO("CartPole-v1", normalize_advantages=False, **tiny_config)
    raw_calls = _recording(raw)
    raw.learn(128)
    assert raw_calls[0].mean() > 1.0  # CartPole's raw advantages are mostly positive


def test_gaussian_log_std_changes_after_an_update(tiny_config):
    agent = TRPO("Pendulum-v1", **tiny_config)
    assert agent.policy.distribution.name == "diagonal_gaussian"
    log_std = agent.policy.head.log_std.numpy().copy()
    agent.learn(256)
    assert any(row["accepted"] for row in agent.history)
    assert not np.array_equal(log_std, agent.policy.head.log_std.numpy())
    action = agent.predict(np.zeros(3, np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Hopper-v5"])  # D = 1 and D = 3
def test_entropy_bonus_alone_widens_sigma_by_the_hand_computed_trust_region_step(env_id,
                                                                               tiny_config):
    # Zero advantages: the loss is -c * mean entropy, whose gradient is -c on each log sigma and
    # 0 on the mean's weights. The Gaussian's Fisher is block diagonal (mean | log sigma) and
    # 2 I on a shared log sigma, so (F + lam I) s = g gives s = -c / (2 + lam) on log sigma
    # only, and the step beta s with 1/2 (beta s)^T (F + lam I) (beta s) = delta widens every
    # log sigma by sqrt(2 delta / (D (2 + lam))); its KL, D (d - (1 - e^(-2d)) / 2), is below
    # delta, so the first try is taken.
    agent = TRPO(env_id, **{**tiny_config, "entropy_coef": 0.01})
    cfg, policy = agent.config, agent.policy
    d = policy.head.log_std.shape[0]
    rng = np.random.default_rng(0)
    n = cfg.batch_size
    obs = rng.standard_normal((n, agent.encoder.vector_dim)).astype(np.float32)
    actions = policy.numpy_act(policy.numpy_params(), obs, rng).astype(np.float32)
    trunk = [v.numpy() for v in policy.trunk.trainable_variables]
    log_std = policy.head.log_std.numpy().copy()
    stats = agent.update_fns.policy(obs, actions, np.zeros(n, np.float32))
    widened = np.sqrt(2 * cfg.max_kl / (d * (2 + cfg.cg_damping)))
    np.testing.assert_allclose(policy.head.log_std.numpy() - log_std, widened, rtol=1e-4)
    for before, v in zip(trunk, policy.trunk.trainable_variables, strict=True):
        np.testing.assert_allclose(v.numpy(), before, atol=1e-7)
    kl = d * (widened - (1 - np.exp(-2 * widened)) / 2)
    assert int(stats["line_search_tries"]) == 1
    np.testing.assert_allclose(float(stats["kl"]), kl, rtol=1e-3)
    plain = TRPO(env_id, **tiny_config)  # without the bonus the same batch gives no step
    log_std = plain.policy.head.log_std.numpy().copy()
    plain.update_fns.policy(obs, actions, np.zeros(n, np.float32))
    np.testing.assert_array_equal(plain.policy.head.log_std.numpy(), log_std)


@pytest.mark.parametrize("epsilon", [None, 0.05], ids=["default_epsilon", "epsilon_0.05"])
def test_compiled_value_fit_is_a_plain_keras_adam_loop_over_the_minibatches(epsilon,
                                                                            tiny_config):
    overrides = {} if epsilon is None else {"critic_epsilon": epsilon}
    agent = TRPO("Pendulum-v1", **{**tiny_config, "critic_epochs": 3, "critic_batch_size": 48,
                                   **overrides})
    cfg, value = agent.config, agent.value
    assert cfg.critic_epsilon == (1e-5 if epsilon is None else epsilon)  # SB3's by default
    rng = np.random.default_rng(0)
    n = cfg.batch_size  # 128: two minibatches of 48 and a ragged one of 32 per epoch
    obs = rng.standard_normal((n, 3)).astype(np.float32)
    returns = (3.0 * obs[:, 0] + rng.standard_normal(n)).astype(np.float32)
    order = np.stack([rng.permutation(n) for _ in range(cfg.critic_epochs)]).astype(np.int32)
    start = [v.numpy() for v in value.trainable_variables]
    stats = agent.update_fns.value(obs, returns, order)
    compiled = [v.numpy() for v in value.trainable_variables]

    for v, x in zip(value.trainable_variables, start, strict=True):
        v.assign(x)
    adam = keras.optimizers.Adam(learning_rate=cfg.critic_lr, epsilon=cfg.critic_epsilon)
    steps = 0
    for epoch in range(cfg.critic_epochs):
        for first in range(0, n, cfg.critic_batch_size):
            idx = order[epoch, first:first + cfg.critic_batch_size]
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(value(obs[idx]) - returns[idx]))
            grads = tape.gradient(loss, value.trainable_variables)
            adam.apply_gradients(zip(grads, value.trainable_variables, strict=True))
            steps += 1
    assert steps == 9 and int(agent.value_optimizer.iterations.numpy()) == steps
    for a, b in zip(compiled, value.trainable_variables, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-7)
    final = float(np.mean((value.numpy_values(value.numpy_params(), obs) - returns) ** 2))
    assert float(stats["value_loss"]) == pytest.approx(final, rel=1e-5)
    assert final < float(np.mean(returns ** 2))  # the fit did reduce the loss


def test_trpo_spells_out_every_natural_gradient_setting(tiny_config):
    """TRPO's policy step names every NaturalGradient argument that shapes a step, so a
    default changed for Keras users cannot change TRPO's update unnoticed. (Arguments that
    only refine another one, e.g. adaptive damping's bounds, follow it.)"""
    import inspect

    import natgrad
    from agents.config import TRPOConfig
    from agents.update import natural_gradient_settings

    refinements = {"damping_decay", "min_damping", "max_damping", "preconditioner_decay",
                   "kfac_inverse_period"}
    arguments = set(inspect.signature(natgrad.NaturalGradient.__init__).parameters)
    arguments -= {"self", "name", "kwargs"} | refinements
    settings = natural_gradient_settings(TRPOConfig(env_id="CartPole-v1", **tiny_config))
    assert arguments == set(settings)
    assert settings["cg_preconditioner"] is None and settings["adaptive_damping"] is False
    natgrad.NaturalGradient(**settings)  # all accepted
