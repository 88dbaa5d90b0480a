"""One policy and one value function for every space: a trunk, and for the policy a head.

A **trunk** maps the networks' input (:meth:`agents.envs.spaces.ObservationEncoder.encode`) to
``z [N, out_dim]``: :class:`agents.nets.mlp.MLP` for vector observations,
:class:`agents.nets.cnn.KerasTrunk` (Nature CNN, and an MLP for a ``Dict``'s vector part) for
observations with images. Each has ``__call__`` (TensorFlow), ``trainable_variables``,
``numpy_params()`` and ``numpy_forward(params, obs)``, the rollout's forward pass (NumPy for an
MLP, a compiled ``tf.function`` for a CNN).

A **head** (:mod:`agents.nets.heads`) maps ``z`` to the outputs of a
:mod:`natgrad.distributions` distribution over actions, and samples actions in NumPy.

* :class:`Policy`: in the update ``outputs(obs)``, ``log_prob``, ``entropy``,
  ``distribution``; in rollouts ``numpy_act(numpy_params(), obs, rng)``.
* :class:`ValueFunction`: in the update ``value(obs) [N]``; in rollouts
  ``numpy_values(numpy_params(), obs)``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class Policy(tf.Module):
    """``π(a|s)``: a ``trunk`` ``obs -> z [N, head.out_dim]`` and an action ``head`` on it."""

    def __init__(self, trunk, head: tf.Module, name: str = "policy"):
        super().__init__(name=name)
        self.trunk = trunk
        self.head = head
        self.distribution = head.distribution

    @property
    def trainable_variables(self) -> tuple:
        """The head's and the trunk's variables, in the order checkpoints store them."""
        head, trunk = tuple(self.head.trainable_variables), tuple(self.trunk.trainable_variables)
        return (*head, *trunk) if self.trunk.head_variables_first else (*trunk, *head)

    def outputs(self, obs):
        """The distribution's outputs (see the head): what ``kl`` and the Fisher take."""
        return self.head.outputs(self.trunk(obs))

    def log_prob(self, outputs, actions: tf.Tensor) -> tf.Tensor:
        """``log π(a_n|s_n)``: ``[N]``."""
        return self.head.log_prob(outputs, actions)

    def entropy(self, outputs) -> tf.Tensor:
        """``H[π(·|s_n)]``: ``[N]``."""
        return self.head.entropy(outputs)

    def numpy_params(self) -> dict:
        """What :meth:`numpy_act` reads: the trunk's weights (``None`` for a compiled trunk,
        which reads its variables itself) and the head's."""
        return {"trunk": self.trunk.numpy_params(), **self.head.numpy_params()}

    def numpy_act(self, params: dict, obs, rng: np.random.Generator | None,
                  deterministic: bool = False) -> np.ndarray:
        """Actions ``[N, ...]`` for a batch of network inputs: the head's deterministic action
        (argmax, mean) or a draw from ``rng``. Unclipped, as the policy's own."""
        z = self.trunk.numpy_forward(params["trunk"], obs)
        return self.head.numpy_act(z, params, rng, deterministic)


class ValueFunction(tf.Module):
    """``V(s)``: a trunk with one output, ``-> [N]``."""

    def __init__(self, trunk, name: str = "value_function"):
        super().__init__(name=name)
        self.trunk = trunk

    @property
    def trainable_variables(self) -> tuple:
        return tuple(self.trunk.trainable_variables)

    def __call__(self, obs) -> tf.Tensor:
        return self.trunk(obs)[:, 0]

    def numpy_params(self):
        return self.trunk.numpy_params()

    def numpy_values(self, params, obs) -> np.ndarray:
        """``V(s)`` for a batch of network inputs, without TensorFlow's gradient machinery:
        ``-> [N]``."""
        return self.trunk.numpy_forward(params, obs)[:, 0]
