"""The side-by-side benchmark's bookkeeping: per-budget statistics and process times."""

from __future__ import annotations

import statistics
import sys

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def report(bench):
    import bench_trpo_report  # on sys.path once bench_trpo.py is loaded

    return bench_trpo_report


@pytest.fixture(scope="module")
def processes(bench):
    import bench_processes  # on sys.path once bench_trpo.py is loaded

    return bench_processes


@pytest.fixture(scope="module")
def bench():
    return load_script("bench_trpo")


def _report(side, seed, returns_at, learn_at, process, eval_seconds):
    results = [{"budget": b, "steps": b + 352, "eval_returns": r, "learn_seconds_so_far": t}
               for b, r, t in zip((100_000, 300_000), returns_at, learn_at, strict=True)]
    return {"side": side, "env_id": "Hopper-v5", "seed": seed, "results": results,
            "learn_seconds": learn_at[-1], "eval_seconds": eval_seconds,
            "process_seconds": process}


def test_summary_per_budget_and_side(report):
    reports = [
        _report("natgrad", 0, ([10.0, 20.0], [30.0]), (40.0, 120.0), 130.0, 2.0),
        _report("natgrad", 1, ([50.0], [70.0]), (50.0, 150.0), 160.0, 3.0),
        _report("sb3", 0, ([1.0], [2.0]), (100.0, 300.0), 310.0, 1.0),
    ]
    summary = report.summarize(reports, ["Hopper-v5"])["Hopper-v5"]
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
    assert second["published"] is None and first["target"] is None


def test_the_target_is_checked_at_the_final_budget_only(report):
    reports = [{**_report("natgrad", 0, ([100.0], [480.0]), (5.0, 15.0), 20.0, 1.0),
                "env_id": "CartPole-v1"}]
    first, last = report.summarize(reports, ["CartPole-v1"])["CartPole-v1"]
    assert first["target"] is None and last["target"] == 475.0


def test_a_peer_that_cannot_import_sb3_is_skipped_with_the_reason(processes):
    peer, version, why = processes.find_peer(
        sys.executable if "sb3_contrib" not in sys.modules else None)
    if peer is None:
        assert "cannot import sb3_contrib" in why and version == ""
    assert processes.find_peer("none") == (None, "", "--peer-python none")
    assert processes.find_peer("/no/such/python")[0] is None


def test_train_to_budgets_continues_a_stopped_run_without_training_finished_budgets(processes):
    import bench_common

    trained, saved = [], []
    steps = {"n": 0}

    def learn(budget):
        trained.append(budget)
        steps["n"] = budget

    previous = {"results": [{"budget": 100, "steps": 100, "eval_returns": [1.0],
                             "learn_seconds_so_far": 5.0}],
                "learn_seconds": 5.0, "eval_seconds": 1.0}
    document = bench_common.train_to_budgets([100, 300], learn, lambda: [2.0],
                                             lambda: steps["n"], previous=previous,
                                             after_each=saved.append)
    assert trained == [300]  # the finished budget is not trained again
    assert [r["budget"] for r in document["results"]] == [100, 300]
    assert document["results"][1]["learn_seconds_so_far"] >= 5.0  # its seconds count on
    assert document["eval_seconds"] >= 1.0
    assert len(saved) == 1 and saved[0]["results"][-1]["budget"] == 300


def test_a_finished_run_is_reused_only_with_the_same_settings(processes, tmp_path):
    import bench_common

    settings = processes.wanted_settings("CartPole-v1", 3, {})
    report = {"env_id": "CartPole-v1", "seed": 3, "settings": settings,
              "results": [{"budget": 100_000, "steps": 100_352, "eval_returns": [500.0],
                           "learn_seconds_so_far": 9.0}]}
    bench_common.write_json(tmp_path / processes.RESULT_FILE, report)
    assert processes.finished_natgrad(tmp_path, [100_000], settings)["seed"] == 3
    assert processes.finished_natgrad(tmp_path, [100_000, 300_000], settings) is None
    changed = processes.wanted_settings("CartPole-v1", 3, {"max_kl": 0.02})
    with pytest.raises(processes.SettingsMismatch, match="max_kl.*--fresh"):
        processes.finished_natgrad(tmp_path, [100_000], changed)


def test_a_run_from_before_a_setting_existed_or_scheduled_otherwise_is_reused(processes,
                                                                             tmp_path):
    import bench_common

    wanted = processes.wanted_settings("Hopper-v5", 3, {})
    assert wanted["overlap_value_fit"] and wanted["entropy_coef"] == 0.0
    # Written before entropy_coef existed, with the value fit in line: the same run.
    old = {k: v for k, v in wanted.items() if k != "entropy_coef"}
    old["overlap_value_fit"] = False
    report = {"env_id": "Hopper-v5", "seed": 3, "settings": old,
              "results": [{"budget": 100_000, "steps": 100_352, "eval_returns": [900.0],
                           "learn_seconds_so_far": 9.0}]}
    bench_common.write_json(tmp_path / processes.RESULT_FILE, report)
    assert processes.finished_natgrad(tmp_path, [100_000], wanted)["seed"] == 3
    with pytest.raises(processes.SettingsMismatch, match="entropy_coef: the run has 0.0"):
        processes.finished_natgrad(tmp_path, [100_000],
                                   processes.wanted_settings("Hopper-v5", 3,
                                                             {"entropy_coef": 0.01}))


def test_the_peer_cache_key_names_env_seed_budgets_and_version(processes, tmp_path):
    path = processes.peer_cache_path(tmp_path, "Hopper-v5", 2, [300_000, 100_000], "2.7.0")
    assert path.parent == tmp_path
    assert path.name.startswith("Hopper-v5-seed2-steps100000-300000-sb3contrib2.7.0-")
    assert path != processes.peer_cache_path(tmp_path, "Hopper-v5", 2, [100_000], "2.7.0")
    assert path != processes.peer_cache_path(tmp_path, "Hopper-v5", 2, [100_000, 300_000],
                                             "2.8.0")


def test_the_floor_ratio_is_the_whole_process_over_the_bare_simulator(report):
    reports = [_report("natgrad", 0, ([10.0], [30.0]), (40.0, 120.0), 130.0, 2.0),
               {**_report("natgrad", 1, ([50.0], [70.0]), (50.0, 150.0), 160.0, 3.0),
                "segments": 2}]  # resumed: its time does not count
    floors = {"Hopper-v5": {"steps": 300_000, "process_seconds": 64.0, "loop_seconds": 60.0}}
    first, last = report.summarize(reports, ["Hopper-v5"], floors)["Hopper-v5"]
    assert "floor" not in first
    assert last["natgrad"]["process_seconds"] == [128.0]
    assert last["floor"]["ratio"] == 2.0
    assert last["natgrad"]["iqm"] == 50.0 and last["natgrad"]["per_seed"] == [30.0, 70.0]


def test_the_floor_ratio_takes_the_median_run_so_one_slowed_run_moves_it_little(report):
    # startup = process - eval - learn = 8 s each; to 300k: 8 + 120, 8 + 132, 8 + 600
    reports = [_report("natgrad", 0, ([1.0], [1.0]), (40.0, 120.0), 130.0, 2.0),
               _report("natgrad", 1, ([1.0], [1.0]), (40.0, 132.0), 142.0, 2.0),
               _report("natgrad", 2, ([1.0], [1.0]), (99.0, 600.0), 610.0, 2.0)]
    floors = {"Hopper-v5": {"steps": 300_000, "process_seconds": 70.0, "loop_seconds": 69.0}}
    last = report.summarize(reports, ["Hopper-v5"], floors)["Hopper-v5"][-1]
    assert last["natgrad"]["process_seconds"] == [128.0, 140.0, 608.0]
    assert last["floor"]["run_process_seconds"] == 140.0
    assert last["floor"]["ratio"] == 2.0
