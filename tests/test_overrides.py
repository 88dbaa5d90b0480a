"""Tests for agents.cli.overrides: --set strings as typed config values."""

import pytest

from agents import TRPOConfig
from agents.cli.overrides import parse_overrides


def test_parse_overrides_converts_to_field_types():
    overrides = parse_overrides(
        ["max_kl=0.02", "cg-iters=15", "total_steps=1e5", "normalize_obs=true",
         "policy_hidden=32,32", "value_hidden=(16,)", "activation=relu"], TRPOConfig)
    assert overrides == {"max_kl": 0.02, "cg_iters": 15, "total_steps": 100_000,
                         "normalize_obs": True, "policy_hidden": (32, 32),
                         "value_hidden": (16,), "activation": "relu"}
    assert type(overrides["cg_iters"]) is int and type(overrides["max_kl"]) is float


@pytest.mark.parametrize("pair, fragment", [
    ("max_kl", "key=value"), ("nope=1", "unknown setting"), ("cg_iters=abc", "expected int"),
    ("cg_iters=1.5", "expected int"), ("normalize_obs=maybe", "expected bool"),
])
def test_parse_overrides_rejects_bad_pairs(pair, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_overrides([pair], TRPOConfig)


