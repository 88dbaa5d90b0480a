"""``agents.runs.evaluation.evaluate_policy``: any policy (a callable on one raw observation)
on fresh, seeded episodes; an episode that never ends is cut and counted."""

from __future__ import annotations

import numpy as np
from space_envs import ScriptedEnv, scripted

from agents.runs.evaluation import evaluate_policy


def test_evaluate_policy_runs_the_callable_on_episodes_seeded_one_apart():
    seen = []

    def act(obs):
        seen.append(obs)
        return 2  # the rewarded action of Discrete(2, start=1)

    result = evaluate_policy(scripted(action_start=1), act, episodes=3, seed=5,
                             max_episode_steps=100)
    assert result == {"mean_return": 20.0, "std_return": 0.0, "episodes": 3,
                      "returns": [20.0, 20.0, 20.0], "cut_episodes": 0}
    assert len(seen) == 3 * 20
    for episode in range(3):  # each episode starts from reset(seed=seed + episode)
        first, _ = ScriptedEnv(action_start=1).reset(seed=5 + episode)
        np.testing.assert_array_equal(seen[20 * episode], first)


def test_episodes_that_never_end_are_cut_and_counted():
    result = evaluate_policy(scripted(episode_length=None), lambda obs: 1, episodes=2, seed=0,
                             max_episode_steps=7)
    assert result["returns"] == [7.0, 7.0] and result["cut_episodes"] == 2


def test_an_older_evaluation_never_overwrites_a_newer_eval_json(tmp_path, caplog):
    import json

    from agents.runs.evaluation import write_evaluation

    assert write_evaluation(tmp_path, {"steps": 2048, "mean_return": 1.0}) == tmp_path / "eval.json"
    with caplog.at_level("WARNING", logger="agents"):
        assert write_evaluation(tmp_path, {"steps": 1024, "mean_return": 9.0}) is None
    assert json.loads((tmp_path / "eval.json").read_text())["steps"] == 2048
    assert "newer than this one at 1,024 steps" in caplog.text and "2,048" in caplog.text
    write_evaluation(tmp_path, {"steps": 4096, "mean_return": 3.0})
    assert json.loads((tmp_path / "eval.json").read_text())["mean_return"] == 3.0
    assert [p.name for p in tmp_path.iterdir()] == ["eval.json"]
