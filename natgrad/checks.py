"""Argument checks: one ``ValueError`` message style for every constructor and function.

Each check returns the value it accepted (normalized: ``int``, ``float``) and otherwise raises
``ValueError`` with one message naming the argument, what is accepted and the value given::

    check_int("cg_iters", 0, at_least=1)
    # ValueError: cg_iters must be an integer >= 1; got 0
    check_number("damping_decay", 1.0, greater_than=0, less_than=1)
    # ValueError: damping_decay must be a number in (0, 1); got 1.0
    check_choice("curvature", "kfac", ("fisher", "gauss_newton", "hessian"))
    # ValueError: curvature must be one of 'fisher', 'gauss_newton', 'hessian'; got 'kfac'

``bool`` is never an integer or a number here (``True`` is an ``int`` in Python, but
``cg_iters=True`` is a mistake), NumPy scalars are accepted, and NaN is never a number.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence


def _is_integer(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _bound_text(bound) -> str:
    """``0`` and ``1`` for whole numbers (``0.0`` too), ``repr`` otherwise (``1e-08``)."""
    if _is_integer(bound) or (math.isfinite(bound) and float(bound).is_integer()):
        return str(int(bound))
    return repr(float(bound))


def _range_text(lower, upper, lower_open: bool = False, upper_open: bool = False) -> str:
    """``" >= 0"``, ``" < 1"``, ``" in (0, 1]"``, or ``""`` without bounds."""
    if lower is not None and upper is not None:
        left, right = "(" if lower_open else "[", ")" if upper_open else "]"
        return f" in {left}{_bound_text(lower)}, {_bound_text(upper)}{right}"
    if lower is not None:
        return f" {'>' if lower_open else '>='} {_bound_text(lower)}"
    if upper is not None:
        return f" {'<' if upper_open else '<='} {_bound_text(upper)}"
    return ""


def _one_bound(name: str, closed, open_) -> tuple:
    if closed is not None and open_ is not None:
        raise TypeError(f"give at most one {name} bound")
    return (open_, True) if open_ is not None else (closed, False)


def check_int(name: str, value, *, at_least: int | None = None, at_most: int | None = None) -> int:
    """``value`` as an ``int`` if it is an integer in ``[at_least, at_most]`` (``None``: no bound).

    Accepts Python and NumPy integers, not ``bool`` and not floats (``3.0`` included).

    Raises:
      ValueError: ``"{name} must be an integer >= 1; got 0"`` (the range as given).
    """
    ok = _is_integer(value)
    ok = ok and (at_least is None or value >= at_least) and (at_most is None or value <= at_most)
    if not ok:
        raise ValueError(f"{name} must be an integer{_range_text(at_least, at_most)}; "
                         f"got {value!r}")
    return int(value)


def check_number(
    name: str,
    value,
    *,
    at_least: float | None = None,
    greater_than: float | None = None,
    at_most: float | None = None,
    less_than: float | None = None,
    allow_none: bool = False,
    finite: bool = True,
) -> float | None:
    """``value`` as a ``float`` if it is a real number within the given bounds.

    ``at_least`` / ``at_most`` are closed bounds, ``greater_than`` / ``less_than`` open ones
    (at most one lower and one upper; ``None``: unbounded on that side). NaN is always
    rejected; ``±inf`` too unless ``finite=False`` (then it passes where the bounds allow it).
    ``allow_none=True`` accepts ``None`` and returns it. Accepts Python and NumPy integers and
    floats, not ``bool``.

    Raises:
      ValueError: ``"{name} must be a number in (0, 1); got 1.0"``, ``"... a finite number >= 0;
        got inf"``, ``"... a finite number > 0 or None; got -0.01"`` (the range as given).
      TypeError: both bounds of one side given (a mistake in the calling code).
    """
    lower, lower_open = _one_bound("lower", at_least, greater_than)
    upper, upper_open = _one_bound("upper", at_most, less_than)
    if value is None and allow_none:
        return None
    ok = _is_real(value) and not math.isnan(value) and (not finite or math.isfinite(value))
    if ok and lower is not None:
        ok = value > lower if lower_open else value >= lower
    if ok and upper is not None:
        ok = value < upper if upper_open else value <= upper
    if not ok:
        kind = "a finite number" if finite and (lower is None or upper is None) else "a number"
        accepted = kind + _range_text(lower, upper, lower_open, upper_open)
        raise ValueError(
            f"{name} must be {accepted}{' or None' if allow_none else ''}; got {value!r}"
        )
    return float(value)


def check_choice(name: str, value, choices: Sequence):
    """``value`` itself if it is one of ``choices`` (compared with ``==``).

    Raises:
      ValueError: ``"{name} must be one of 'a', 'b'; got 'c'"``.
    """
    try:
        ok = value in choices
    except (TypeError, ValueError):  # e.g. an array, whose == is elementwise
        ok = False
    if not ok:
        raise ValueError(
            f"{name} must be one of {', '.join(repr(c) for c in choices)}; got {value!r}"
        )
    return value


__all__ = ["check_choice", "check_int", "check_number"]
