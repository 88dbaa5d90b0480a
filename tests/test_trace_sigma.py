"""``scripts/trace_sigma.py``'s natgrad side: σ after every update, from the logged entropy."""

from __future__ import annotations

import math

import numpy as np
from conftest import load_script

from agents import TRPO


def test_natgrad_side_records_the_sigma_each_update_leaves(tiny_config):
    trace = load_script("trace_sigma")
    batch = tiny_config["n_envs"] * tiny_config["n_steps"]
    overrides = {**tiny_config, "log_std_init": -0.3}
    rows = trace.natgrad_side("Reacher-v5", 0, 3 * batch, overrides)  # D = 2
    assert [r["env_steps"] for r in rows] == [batch, 2 * batch, 3 * batch]
    # The same run again, one update at a time: row k holds σ after update k.
    agent = TRPO("Reacher-v5", seed=0, **overrides)
    for k, row in enumerate(rows, start=1):
        agent.learn(k * batch)
        log_std = agent.policy.head.log_std.numpy()
        np.testing.assert_allclose(row["sigma"], math.exp(log_std.mean()), rtol=1e-5)
        assert row["mean_return"] == agent.history[-1]["mean_return"]
    assert len(set(round(r["sigma"], 6) for r in rows)) == 3  # σ moved every update


def test_rows_are_read_at_the_last_update_before_each_mark():
    trace = load_script("trace_sigma")
    rows = [{"env_steps": s} for s in (2048, 4096, 6144)]
    assert trace.at(rows, 1000) is None
    assert trace.at(rows, 4096)["env_steps"] == 4096
    assert trace.at(rows, 6000)["env_steps"] == 4096
