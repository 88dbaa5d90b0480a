"""The settings of :class:`natgrad.NaturalGradient`: their checks, and what Keras may not get.

:func:`checked_settings` turns the constructor's keyword arguments into the optimizer's
attributes (each checked with :mod:`natgrad.checks`, so a bad value raises one ``ValueError``
naming it), and :func:`settings_config` turns them back into ``get_config`` entries.
:func:`base_kwargs` refuses the base optimizer's gradient-reshaping arguments.
"""

from __future__ import annotations

import numbers

from natgrad.checks import check_choice, check_int, check_number
from natgrad.curvature import HVP_METHODS
from natgrad.step_closures import CURVATURES

PRECONDITIONERS = ("diagonal", "kfac")
CG_ITERS, KFAC_CG_ITERS = 10, 3  # cg_iters=None (scripts/bench_keras.py chose them)
UNSUPPORTED_BASE_KWARGS = (
    "weight_decay",
    "clipnorm",
    "clipvalue",
    "global_clipnorm",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)
# The settings in get_config, in its order; each is the attribute of the same name, except
# ``damping``, whose attribute is ``initial_damping`` (adaptive damping changes the optimizer's
# variable, not the setting).
SETTINGS = ("curvature", "damping", "adaptive_damping", "damping_decay", "min_damping",
            "max_damping", "cg_iters", "cg_tol", "cg_preconditioner", "preconditioner_decay",
            "kfac_inverse_period", "max_kl", "line_search_shrink", "line_search_max_tries",
            "curvature_batch_fraction", "hvp_method")


def attribute_name(setting: str) -> str:
    """The optimizer attribute that holds ``setting``."""
    return "initial_damping" if setting == "damping" else setting


def base_kwargs(kwargs: dict) -> dict:
    """``kwargs`` for ``keras.optimizers.Optimizer`` without the gradient-reshaping ones,
    which must be unset (``None`` or ``False``); a set one raises ``ValueError``."""
    for key in UNSUPPORTED_BASE_KWARGS:
        if kwargs.get(key) not in (None, False):
            raise ValueError(
                f"NaturalGradient does not support {key}={kwargs[key]!r}: it reshapes "
                "gradients, which a curvature-preconditioned step does not use. Add an L2 "
                "term to the loss instead of weight_decay; use max_kl to bound steps."
            )
    return {key: value for key, value in kwargs.items() if key not in UNSUPPORTED_BASE_KWARGS}


def checked_settings(
    *, learning_rate, curvature, damping, adaptive_damping, damping_decay, min_damping,
    max_damping, cg_iters, cg_tol, cg_preconditioner, preconditioner_decay,
    kfac_inverse_period, max_kl, line_search_shrink, line_search_max_tries,
    curvature_batch_fraction, hvp_method,
) -> dict:
    """The optimizer's attributes (:func:`attribute_name` of each of ``SETTINGS``) from its
    arguments, checked in the constructor's argument order; a schedule for ``learning_rate``
    is Keras' to check."""
    checked = {"curvature": check_choice("curvature", curvature, CURVATURES)}
    if isinstance(learning_rate, numbers.Real):
        check_number("learning_rate", learning_rate, greater_than=0)
    checked["initial_damping"] = check_number("damping", damping, at_least=0)
    checked["adaptive_damping"] = bool(adaptive_damping)
    checked["damping_decay"] = check_number("damping_decay", damping_decay, greater_than=0,
                                            less_than=1)
    checked["min_damping"] = check_number("min_damping", min_damping, at_least=0)
    checked["max_damping"] = check_number("max_damping", max_damping,
                                          at_least=checked["min_damping"], finite=False)
    checked["cg_iters"] = (None if cg_iters is None
                           else check_int("cg_iters", cg_iters, at_least=1))
    checked["cg_tol"] = check_number("cg_tol", cg_tol, at_least=0)
    checked["cg_preconditioner"] = (None if cg_preconditioner is None else check_choice(
        "cg_preconditioner", cg_preconditioner, PRECONDITIONERS))
    checked["preconditioner_decay"] = check_number(
        "preconditioner_decay", preconditioner_decay, greater_than=0, less_than=1)
    checked["kfac_inverse_period"] = check_int("kfac_inverse_period", kfac_inverse_period,
                                               at_least=1)
    checked["max_kl"] = check_number("max_kl", max_kl, greater_than=0, allow_none=True)
    checked["line_search_shrink"] = check_number("line_search_shrink", line_search_shrink,
                                                 greater_than=0, less_than=1)
    checked["line_search_max_tries"] = check_int("line_search_max_tries",
                                                 line_search_max_tries, at_least=0)
    checked["curvature_batch_fraction"] = check_number(
        "curvature_batch_fraction", curvature_batch_fraction, greater_than=0, at_most=1)
    checked["hvp_method"] = check_choice("hvp_method", hvp_method, HVP_METHODS)
    return checked


def settings_config(optimizer) -> dict:
    """``get_config`` entries for the settings of ``optimizer`` (a ``NaturalGradient``)."""
    return {key: getattr(optimizer, attribute_name(key)) for key in SETTINGS}
