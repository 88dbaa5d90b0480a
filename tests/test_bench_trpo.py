"""The side-by-side benchmark's bookkeeping: per-budget statistics and process times."""

from __future__ import annotations

import importlib.util
import statistics
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench_trpo.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_trpo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(side, seed, returns_at, learn_at, process, eval_seconds):
    results = [{"budget": b, "steps": b + 352, "eval_returns": r, "learn_seconds_so_far": t}
               for b, r, t in zip((100_000, 300_000), returns_at, learn_at, strict=True)]
    return {"side": side, "env_id": "Hopper-v5", "seed": seed, "results": results,
            "learn_seconds": learn_at[-1], "eval_seconds": eval_seconds,
            "process_seconds": process}


def test_summary_per_budget_and_side(bench):
    reports = [
        _report("natgrad", 0, ([10.0, 20.0], [30.0]), (40.0, 120.0), 130.0, 2.0),
        _report("natgrad", 1, ([50.0], [70.0]), (50.0, 150.0), 160.0, 3.0),
        _report("sb3", 0, ([1.0], [2.0]), (100.0, 300.0), 310.0, 1.0),
    ]
    summary = bench.summarize(reports, ["Hopper-v5"])["Hopper-v5"]
    first, second = summary
    assert [row["budget"] for row in summary] == [100_000, 300_000]
    # Mean of each seed's evaluation mean; population std over seeds.
    assert first["natgrad"]["per_seed"] == [15.0, 50.0]
    assert first["natgrad"]["mean"] == 32.5
    assert first["natgrad"]["std"] == pytest.approx(statistics.pstdev([15.0, 50.0]))
    assert second["sb3"]["per_seed"] == [2.0] and second["sb3"]["std"] == 0.0
    # Process seconds to a budget: start-up (process - eval - learn) + learning so far.
    # natgrad seed 0: start-up 130 - 2 - 120 = 8, so 48 s at 100k and 128 s at 300k.
    assert first["natgrad"]["process_seconds"] == [48.0, 57.0]
    assert second["natgrad"]["process_seconds"] == [128.0, 157.0]
    assert second["zoo_1m"] is None and first["target"] is None


def test_the_target_is_checked_at_the_final_budget_only(bench):
    reports = [{**_report("natgrad", 0, ([100.0], [480.0]), (5.0, 15.0), 20.0, 1.0),
                "env_id": "CartPole-v1"}]
    first, last = bench.summarize(reports, ["CartPole-v1"])["CartPole-v1"]
    assert first["target"] is None and last["target"] == 475.0


def test_a_peer_that_cannot_import_sb3_is_skipped_with_the_reason(bench):
    peer, why = bench.find_peer(sys.executable if "sb3_contrib" not in sys.modules else None)
    if peer is None:
        assert "cannot import sb3_contrib" in why
    assert bench.find_peer("none") == (None, "--peer-python none")
    assert bench.find_peer("/no/such/python")[0] is None
