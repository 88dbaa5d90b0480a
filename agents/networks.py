"""The policy and value networks an agent gets for its observation and action spaces.

| observations (:mod:`agents.spaces`) | actions | policy | value |
|---|---|---|---|
| vector only | ``Discrete`` | ``CategoricalPolicy`` (MLP) | ``ValueFunction`` (MLP) |
| vector only | ``Box`` | ``GaussianPolicy`` (MLP) | ``ValueFunction`` |
| vector only | ``MultiDiscrete`` / ``MultiBinary`` | ``MLPPolicy`` + head | ``ValueFunction`` |
| with images | any | ``ExtractorPolicy`` (CNN + MLP) + head | ``ExtractorValueFunction`` |

MLP networks roll out as NumPy; networks with images as a compiled ``tf.function``. The policy
is built first, then the value, both from the agent's NumPy ``Generator``.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

from agents.heads import make_head
from agents.policies import CategoricalPolicy, GaussianPolicy, MLPPolicy, ValueFunction
from agents.spaces import ObservationEncoder


def build_networks(encoder: ObservationEncoder, action_space, cfg, rng: np.random.Generator):
    """``(policy, value)`` for the spaces, sized by ``cfg`` (``policy_hidden``,
    ``value_hidden``, ``activation``, ``log_std_init``)."""
    if encoder.has_images:
        from agents.extractors import ExtractorPolicy, ExtractorValueFunction

        head = make_head(action_space, log_std_init=cfg.log_std_init)
        policy = ExtractorPolicy(encoder, head, hidden=cfg.policy_hidden,
                                 activation=cfg.activation, rng=rng)
        value = ExtractorValueFunction(encoder, hidden=cfg.value_hidden,
                                       activation=cfg.activation, rng=rng)
        return policy, value
    obs_dim = encoder.vector_dim
    mlp = {"hidden": cfg.policy_hidden, "activation": cfg.activation, "rng": rng}
    if isinstance(action_space, gym.spaces.Discrete):
        policy = CategoricalPolicy(obs_dim, int(action_space.n), **mlp)
    elif isinstance(action_space, gym.spaces.Box):
        policy = GaussianPolicy(obs_dim, action_space.shape[0], log_std_init=cfg.log_std_init,
                                **mlp)
    else:
        policy = MLPPolicy(obs_dim, make_head(action_space), **mlp)
    value = ValueFunction(obs_dim, hidden=cfg.value_hidden, activation=cfg.activation, rng=rng)
    return policy, value
