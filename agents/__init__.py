"""TRPO on Gymnasium, with its policy step taken by :class:`natgrad.NaturalGradient`.

``agents.TRPO("CartPole-v1").learn()``; hyperparameters in :class:`TRPOConfig`, per-env
presets in ``presets.toml`` (:func:`load_preset`, :data:`PRESET_NAMES`).
"""

from agents.config import PRESET_NAMES, TRPOConfig, load_preset
from agents.trpo import TRPO

__all__ = ["TRPO", "TRPOConfig", "load_preset", "PRESET_NAMES"]
