"""TRPO on Gymnasium, with its policy step taken by :class:`natgrad.NaturalGradient`.

``agents.TRPO("CartPole-v1").learn()``; hyperparameters in :class:`TRPOConfig`, per-env
presets in ``presets.toml`` (:func:`load_preset`, :data:`PRESET_NAMES`).

``TRPO`` is imported on first use (PEP 562), so ``import agents.cli`` and ``natgrad-trpo
--help`` do not pay TensorFlow's import.
"""

from agents.config import PRESET_NAMES, TRPOConfig, load_preset

__all__ = ["TRPO", "TRPOConfig", "load_preset", "PRESET_NAMES"]


def __getattr__(name: str):
    if name == "TRPO":
        from agents.trpo import TRPO

        return TRPO
    raise AttributeError(f"module 'agents' has no attribute {name!r}")
