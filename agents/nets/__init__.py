"""The networks of an agent: a :class:`Policy` (trunk + head) and a :class:`ValueFunction`
(trunk), for every observation and action space.

| observations (:mod:`agents.envs.spaces`) | trunk | rollout forward pass |
|---|---|---|
| vector only | ``mlp.MLP`` | NumPy, from the same weights |
| with images (Atari, pixels, ``Dict`` with images) | ``cnn.KerasTrunk`` | ``tf.function`` |

| action space | head (:mod:`agents.nets.heads`) |
|---|---|
| ``Discrete`` | ``CategoricalHead`` |
| ``Box`` | ``GaussianHead`` (state-independent ``log_std``) |
| ``MultiDiscrete`` | ``MultiCategoricalHead`` |
| ``MultiBinary`` | ``BernoulliHead`` |

The policy's trunk is built first, then the value's, both from the agent's NumPy
``Generator``; heads draw no random numbers.
"""

from __future__ import annotations

import numpy as np

from agents.envs.spaces import ObservationEncoder
from agents.nets.heads import make_head
from agents.nets.mlp import MLP
from agents.nets.policy import Policy, ValueFunction

__all__ = ["Policy", "ValueFunction", "build_networks", "make_trunk"]

POLICY_OUTPUT_GAIN = 0.01  # a near-uniform initial policy (SB3, CleanRL)
VALUE_OUTPUT_GAIN = 1.0


def make_trunk(encoder: ObservationEncoder, out_dim: int, *, hidden: tuple, activation: str,
               output_gain: float, rng: np.random.Generator, name: str):
    """An MLP for vector observations, a :class:`agents.nets.cnn.KerasTrunk` with images."""
    if encoder.has_images:
        from agents.nets.cnn import KerasTrunk

        return KerasTrunk(encoder, out_dim, hidden=tuple(hidden), activation=activation,
                          output_gain=output_gain, rng=rng, name=name)
    return MLP(encoder.vector_dim, tuple(hidden), out_dim, activation=activation, rng=rng,
               output_gain=output_gain)


def build_networks(encoder: ObservationEncoder, action_space, cfg,
                   rng: np.random.Generator) -> tuple[Policy, ValueFunction]:
    """``(policy, value)`` for the spaces, sized by ``cfg`` (``policy_hidden``,
    ``value_hidden``, ``activation``, ``log_std_init``)."""
    head = make_head(action_space, log_std_init=cfg.log_std_init)
    policy = Policy(make_trunk(encoder, head.out_dim, hidden=cfg.policy_hidden,
                               activation=cfg.activation, output_gain=POLICY_OUTPUT_GAIN,
                               rng=rng, name="policy"), head)
    value = ValueFunction(make_trunk(encoder, 1, hidden=cfg.value_hidden,
                                     activation=cfg.activation, output_gain=VALUE_OUTPUT_GAIN,
                                     rng=rng, name="value"))
    return policy, value
