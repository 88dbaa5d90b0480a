"""natgrad.checks: argument checks, each with one message naming argument, range and value."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from natgrad.checks import check_choice, check_int, check_number

# check_int --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 1, 7, np.int64(3), np.int32(1)])
def test_int_accepts_integers_and_returns_a_python_int(value):
    result = check_int("n", value, at_least=0)
    assert result == value and type(result) is int


@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "3", None, np.float64(2.0), [1]])
def test_int_rejects_non_integers_and_bools(value):
    with pytest.raises(ValueError, match=f"^n must be an integer; got {re.escape(repr(value))}$"):
        check_int("n", value)


@pytest.mark.parametrize(
    ("kwargs", "value", "message"),
    [
        ({"at_least": 1}, 0, "cg_iters must be an integer >= 1; got 0"),
        ({"at_least": 0}, -1, "cg_iters must be an integer >= 0; got -1"),
        ({"at_most": 3}, 4, "cg_iters must be an integer <= 3; got 4"),
        ({"at_least": 1, "at_most": 3}, 4, "cg_iters must be an integer in [1, 3]; got 4"),
        ({"at_least": 1, "at_most": 3}, 0, "cg_iters must be an integer in [1, 3]; got 0"),
    ],
)
def test_int_bounds_are_closed_and_named(kwargs, value, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_int("cg_iters", value, **kwargs)


def test_int_bounds_include_their_ends():
    assert check_int("n", 1, at_least=1, at_most=3) == 1
    assert check_int("n", 3, at_least=1, at_most=3) == 3


# check_number -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.5, 1, np.float32(0.25), np.float64(0.75), np.int64(1)])
def test_number_accepts_ints_floats_and_numpy_scalars_as_float(value):
    result = check_number("x", value, at_least=0, at_most=1)
    assert result == float(value) and type(result) is float


@pytest.mark.parametrize("value", [True, False, "0.5", None, [0.5], np.array([0.5]), 1j])
def test_number_rejects_bools_and_non_numbers(value):
    with pytest.raises(ValueError, match="^x must be a finite number; got "):
        check_number("x", value)


@pytest.mark.parametrize("finite", [True, False])
def test_number_rejects_nan_always(finite):
    with pytest.raises(ValueError, match="got nan$"):
        check_number("x", float("nan"), finite=finite)
    with pytest.raises(ValueError, match=r"got np\.float32\(nan\)$"):
        check_number("x", np.float32("nan"), at_least=0, finite=finite)


def test_number_rejects_infinity_unless_finite_is_false():
    with pytest.raises(ValueError, match=r"^x must be a finite number >= 0; got inf$"):
        check_number("x", math.inf, at_least=0)
    assert check_number("x", math.inf, at_least=0, finite=False) == math.inf
    # An upper bound rejects +inf in any case, a lower bound -inf.
    with pytest.raises(ValueError, match=r"^x must be a number <= 1; got inf$"):
        check_number("x", math.inf, at_most=1, finite=False)
    with pytest.raises(ValueError, match=r"^x must be a number >= 0; got -inf$"):
        check_number("x", -math.inf, at_least=0, finite=False)


@pytest.mark.parametrize(
    ("kwargs", "inside", "outside", "accepted"),
    [
        ({"at_least": 0}, [0, 1e-300, 5], [-1e-300], ">= 0"),
        ({"greater_than": 0}, [1e-300, 5], [0, -1], "> 0"),
        ({"at_most": 1}, [1, -5], [1.0000001], "<= 1"),
        ({"less_than": 1}, [0.999, -5], [1], "< 1"),
        ({"greater_than": 0, "less_than": 1}, [0.5], [0, 1], "in (0, 1)"),
        ({"greater_than": 0, "at_most": 1}, [1, 0.5], [0, 1.5], "in (0, 1]"),
        ({"at_least": 0, "less_than": 1}, [0, 0.5], [1, -0.5], "in [0, 1)"),
        ({"at_least": 0, "at_most": 1}, [0, 1], [-0.1, 1.1], "in [0, 1]"),
        ({"at_least": 1e-8}, [1e-8], [1e-9], ">= 1e-08"),
        ({"greater_than": 0.5, "less_than": 2.5}, [1], [0.5], "in (0.5, 2.5)"),
    ],
)
def test_number_bounds_open_and_closed(kwargs, inside, outside, accepted):
    for value in inside:
        assert check_number("x", value, **kwargs) == value
    two_sided = len(kwargs) == 2
    kind = "a number" if two_sided else "a finite number"
    for value in outside:
        message = f"x must be {kind} {accepted}; got {value!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            check_number("x", value, **kwargs)


def test_number_none():
    assert check_number("max_kl", None, greater_than=0, allow_none=True) is None
    with pytest.raises(ValueError, match=r"^max_kl must be a finite number > 0; got None$"):
        check_number("max_kl", None, greater_than=0)
    with pytest.raises(ValueError, match=r"^max_kl must be a finite number > 0 or None; got 0$"):
        check_number("max_kl", 0, greater_than=0, allow_none=True)


def test_number_two_bounds_on_one_side_is_a_programming_error():
    with pytest.raises(TypeError, match="lower"):
        check_number("x", 1.0, at_least=0, greater_than=0)
    with pytest.raises(TypeError, match="upper"):
        check_number("x", 1.0, at_most=2, less_than=2)


# check_choice -----------------------------------------------------------------------------------


def test_choice_returns_the_value():
    assert check_choice("curvature", "hessian", ("fisher", "gauss_newton", "hessian")) == "hessian"


@pytest.mark.parametrize("value", ["kfac", "Fisher", None, 3, np.array(["fisher", "hessian"])])
def test_choice_rejects_anything_else_naming_the_choices(value):
    message = f"curvature must be one of 'fisher', 'hessian'; got {value!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_choice("curvature", value, ("fisher", "hessian"))
