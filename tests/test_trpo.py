"""The TRPO agent: configuration checks, spaces, the update, learning and determinism."""

from __future__ import annotations

import csv
import json

import gymnasium as gym
import numpy as np
import pytest

import agents
from agents import TRPO, TRPOConfig, load_preset
from agents.config import resolve_config

SMALL = {"n_envs": 2, "n_steps": 64, "critic_epochs": 2, "policy_hidden": (16,),
         "value_hidden": (16,)}


# Configuration -----------------------------------------------------------------------------


def test_every_preset_resolves_to_a_valid_config():
    assert set(agents.PRESET_NAMES) >= {"CartPole-v1", "Acrobot-v1", "Pendulum-v1",
                                        "MountainCarContinuous-v0", "Hopper-v5",
                                        "HalfCheetah-v5", "Walker2d-v5"}
    for name in agents.PRESET_NAMES:
        assert "total_steps" in load_preset(name)
        resolve_config(name)
    cartpole = resolve_config("CartPole-v1")
    assert (cartpole.n_envs, cartpole.n_steps, cartpole.gae_lambda, cartpole.cg_damping,
            cartpole.critic_epochs, cartpole.total_steps) == (2, 512, 0.98, 1e-3, 20, 100_000)
    hopper = resolve_config("Hopper-v5")
    assert hopper.normalize_obs and hopper.cg_iters == 25 and hopper.total_steps == 1_000_000


def test_overrides_win_over_presets_and_config_fields_have_help():
    assert resolve_config("CartPole-v1", n_steps=256).n_steps == 256
    assert resolve_config("Walker2d-v5", preset="Hopper-v5").normalize_obs
    import dataclasses

    assert all(f.metadata.get("help") for f in dataclasses.fields(TRPOConfig))


@pytest.mark.parametrize("bad", [
    {"max_kl": -0.01}, {"n_steps": 0}, {"total_steps": 0}, {"gamma": 1.5}, {"gae_lambda": -0.1},
    {"activation": "swish"}, {"vectorization": "threads"}, {"cg_iters": 0},
    {"line_search_shrink": 1.0}, {"policy_hidden": (64, 0)}, {"n_envs": 1.5},
])
def test_bad_config_values_raise_before_training(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        TRPO("CartPole-v1", **bad)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="known presets: .*CartPole-v1"):
        load_preset("NoSuchPreset")
    with pytest.raises(ValueError, match="learning_rate"):
        TRPO("CartPole-v1", learning_rate=0.1)
    with pytest.raises(ValueError, match="NoSuchEnv-v0"):
        TRPO("NoSuchEnv-v0")


class _SpaceEnv(gym.Env):
    def __init__(self, observation_space, action_space):
        self.observation_space, self.action_space = observation_space, action_space

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        return self.observation_space.sample(), 0.0, False, False, {}


_BOX = gym.spaces.Box(-1, 1, (3,))


@pytest.mark.parametrize("obs_space, act_space, which, name", [
    (gym.spaces.Tuple((_BOX, _BOX)), gym.spaces.Discrete(2), "observation", "Tuple"),
    (gym.spaces.Graph(_BOX, None), gym.spaces.Discrete(2), "observation", "Graph"),
    (gym.spaces.Sequence(_BOX), gym.spaces.Discrete(2), "observation", "Sequence"),
    (gym.spaces.Dict({"x": _BOX, "t": gym.spaces.Text(5)}), gym.spaces.Discrete(2),
     "observation", "Text.*'t'"),
    (gym.spaces.Dict({"d": gym.spaces.Dict({"x": _BOX})}), gym.spaces.Discrete(2),
     "observation", "Dict.*'d'"),
    (_BOX, gym.spaces.Box(-1, 1, (2, 2)), "action", "Box"),
    (_BOX, gym.spaces.Tuple((gym.spaces.Discrete(2),)), "action", "Tuple"),
    (_BOX, gym.spaces.MultiDiscrete([[2, 3], [2, 2]]), "action", "MultiDiscrete"),
])
def test_unsupported_spaces_raise(obs_space, act_space, which, name):
    with pytest.raises(ValueError, match=f"unsupported {which} space {name}.*supported"):
        TRPO(lambda: _SpaceEnv(obs_space, act_space), env_id="custom")


# The update --------------------------------------------------------------------------------


def _recording(agent):
    calls = []
    inner = agent._update_fns.both

    def wrapped(obs, actions, advantages, *value_args):
        calls.append(advantages)
        return inner(obs, actions, advantages, *value_args)

    agent._update_fns = agent._update_fns._replace(both=wrapped)
    return calls


def test_advantages_are_normalized_and_used():
    agent = TRPO("CartPole-v1", **SMALL)
    calls = _recording(agent)
    before = [v.numpy() for v in agent.policy.trainable_variables]
    agent.learn(128)
    (advantages,) = calls
    assert abs(advantages.mean()) < 1e-5 and abs(advantages.std() - 1.0) < 1e-3
    row = agent.history[0]
    assert row["accepted"] == 1 and row["surrogate_improvement"] > 0 and 0 < row["kl"] <= 0.01
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, agent.policy.trainable_variables, strict=True))
    raw = TRPO("CartPole-v1", normalize_advantages=False, **SMALL)
    raw_calls = _recording(raw)
    raw.learn(128)
    assert raw_calls[0].mean() > 1.0  # CartPole's raw advantages are mostly positive


def test_gaussian_log_std_changes_after_an_update():
    agent = TRPO("Pendulum-v1", **SMALL)
    assert agent.policy.distribution.name == "diagonal_gaussian"
    log_std = agent.policy.log_std.numpy().copy()
    agent.learn(256)
    assert any(row["accepted"] for row in agent.history)
    assert not np.array_equal(log_std, agent.policy.log_std.numpy())
    action = agent.predict(np.zeros(3, np.float32))
    assert action.shape == (1,) and -2.0 <= action[0] <= 2.0


@pytest.mark.parametrize("epsilon", [None, 0.05], ids=["default_epsilon", "epsilon_0.05"])
def test_compiled_value_fit_is_a_plain_keras_adam_loop_over_the_minibatches(epsilon):
    import keras
    import tensorflow as tf

    overrides = {} if epsilon is None else {"critic_epsilon": epsilon}
    agent = TRPO("Pendulum-v1", **{**SMALL, "critic_epochs": 3, "critic_batch_size": 48,
                                   **overrides})
    cfg, value = agent.config, agent.value
    assert cfg.critic_epsilon == (1e-5 if epsilon is None else epsilon)  # SB3's by default
    rng = np.random.default_rng(0)
    n = cfg.batch_size  # 128: two minibatches of 48 and a ragged one of 32 per epoch
    obs = rng.standard_normal((n, 3)).astype(np.float32)
    returns = (3.0 * obs[:, 0] + rng.standard_normal(n)).astype(np.float32)
    order = np.stack([rng.permutation(n) for _ in range(cfg.critic_epochs)]).astype(np.int32)
    start = [v.numpy() for v in value.trainable_variables]
    stats = agent._update_fns.value(obs, returns, order)
    compiled = [v.numpy() for v in value.trainable_variables]

    for v, x in zip(value.trainable_variables, start, strict=True):
        v.assign(x)
    adam = keras.optimizers.Adam(learning_rate=cfg.critic_lr, epsilon=cfg.critic_epsilon)
    steps = 0
    for epoch in range(cfg.critic_epochs):
        for first in range(0, n, cfg.critic_batch_size):
            idx = order[epoch, first:first + cfg.critic_batch_size]
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.square(value(obs[idx]) - returns[idx]))
            grads = tape.gradient(loss, value.trainable_variables)
            adam.apply_gradients(zip(grads, value.trainable_variables, strict=True))
            steps += 1
    assert steps == 9 and int(agent.value_optimizer.iterations.numpy()) == steps
    for a, b in zip(compiled, value.trainable_variables, strict=True):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6, atol=1e-7)
    final = float(np.mean((value.numpy_values(value.numpy_params(), obs) - returns) ** 2))
    assert float(stats["value_loss"]) == pytest.approx(final, rel=1e-5)
    assert final < float(np.mean(returns ** 2))  # the fit did reduce the loss


def test_short_cartpole_run_learns_and_writes_its_run_dir(tmp_path):
    agent = TRPO("CartPole-v1", run_dir=tmp_path, total_steps=20_480)
    agent.learn()
    returns = [row["mean_return"] for row in agent.history]
    assert agent.num_timesteps == 20_480
    assert np.mean(returns[-3:]) > np.mean(returns[:3]) + 50, returns
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(agent.history) == 20
    assert set(rows[0]) == set(agent.history[0])
    assert json.loads((tmp_path / "config.json").read_text())["config"]["n_steps"] == 512
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert (tmp_path / "checkpoints" / "update_000020.ckpt").exists()
    result = agent.evaluate(episodes=2)
    assert set(result) == {"mean_return", "std_return", "episodes", "returns", "cut_episodes"}
    assert result["episodes"] == 2 and len(result["returns"]) == 2
    batch = agent.predict(np.zeros((5, 4), np.float32))
    assert batch.shape == (5,) and np.asarray(agent.predict(np.zeros(4))).shape == ()


def _without_timing(history):
    return [{k: v for k, v in row.items() if k not in ("wall_time", "steps_per_second")}
            for row in history]


def test_same_seed_gives_an_identical_run():
    runs = [TRPO("CartPole-v1", seed=3, normalize_obs=True, **SMALL).learn(384)
            for _ in range(2)]
    assert _without_timing(runs[0].history) == _without_timing(runs[1].history)
    for a, b in zip(runs[0].policy.trainable_variables, runs[1].policy.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    other = TRPO("CartPole-v1", seed=4, normalize_obs=True, **SMALL).learn(384)
    assert _without_timing(other.history) != _without_timing(runs[0].history)


# Environments and settings that used to fail silently -----------------------------------------


class ScriptedEnv(gym.Env):
    """3-D observations, two actions (``Discrete(2, start=action_start)``), reward 1 for the
    higher action. ``fault`` makes env step ``fault_at`` (counted per env instance) emit a NaN
    observation (``"nan_obs"``), an infinite reward (``"inf_reward"``), or rewards of 1e30
    from then on (``"huge_reward"``). Episodes last ``episode_length`` steps (``None``: never
    end). Any action outside the space raises."""

    def __init__(self, fault=None, fault_at=10**9, action_start=0, episode_length=20):
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (3,), np.float32)
        self.action_space = gym.spaces.Discrete(2, start=action_start)
        self.fault, self.fault_at, self.episode_length = fault, fault_at, episode_length
        self.steps = self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.normal(size=3).astype(np.float32), {}

    def step(self, action):
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r} for {self.action_space}")
        self.t += 1
        self.steps += 1
        obs = self.np_random.normal(size=3).astype(np.float32)
        reward = float(action == self.action_space.start + 1)
        if self.steps >= self.fault_at:
            if self.fault == "nan_obs" and self.steps == self.fault_at:
                obs[1] = np.nan
            elif self.fault == "inf_reward" and self.steps == self.fault_at:
                reward = np.inf
            elif self.fault == "huge_reward":
                reward = 1e30
        ended = self.episode_length is not None and self.t >= self.episode_length
        return obs, reward, ended, False, {}


def scripted(**kwargs):
    def make_scripted_env():
        return ScriptedEnv(**kwargs)

    return make_scripted_env


@pytest.mark.parametrize("fault, quantity", [("nan_obs", "the observation"),
                                             ("inf_reward", "the reward"),
                                             ("huge_reward", "value loss")])
def test_non_finite_training_stops_at_the_last_good_checkpoint(tmp_path, fault, quantity):
    from agents.checkpoint import latest_checkpoint, read_checkpoint
    from agents.rollout import NonFiniteError

    agent = TRPO(scripted(fault=fault, fault_at=150), run_dir=tmp_path, checkpoint_every=100,
                 **SMALL)  # per env 64 steps an update: the fault comes in update 3
    with pytest.raises(NonFiniteError, match=quantity) as caught:
        agent.learn(10 * 128)
    assert "update 3 (env steps 257-384)" in str(caught.value)
    assert agent.num_timesteps == 256 and agent.updates == 2
    saved = read_checkpoint(latest_checkpoint(tmp_path))
    assert saved.path.name == "update_000002.ckpt"
    for variable in (*agent.policy.trainable_variables, *agent.value.trainable_variables):
        assert np.all(np.isfinite(variable.numpy()))
    assert all(np.all(np.isfinite(a)) for a in saved.arrays.values() if a.dtype.kind == "f")
    with open(tmp_path / "progress.csv") as f:
        assert len(list(csv.DictReader(f))) == 2


def test_non_finite_batches_can_be_skipped_and_counted(tmp_path):
    agent = TRPO(scripted(fault="nan_obs", fault_at=150), run_dir=tmp_path,
                 on_non_finite="skip", **SMALL).learn(5 * 128)
    with open(tmp_path / "progress.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["skipped_batches"]) for r in rows] == [0, 0, 1, 1, 1]
    assert rows[2]["accepted"] == "0" and rows[3]["accepted"] == "1"
    for variable in (*agent.policy.trainable_variables, *agent.value.trainable_variables):
        assert np.all(np.isfinite(variable.numpy()))


def test_discrete_action_space_with_a_start_offset():
    agent = TRPO(scripted(action_start=1), **SMALL).learn(8 * 128)  # the env raises on 0
    actions = agent.predict(np.zeros((16, 3), np.float32), deterministic=False)
    assert set(np.unique(actions)) <= {1, 2}
    assert agent.evaluate(2)["mean_return"] == 20.0  # always the rewarded action 2


def test_evaluate_caps_episodes_that_never_end():
    agent = TRPO(scripted(episode_length=None), eval_max_episode_steps=50, **SMALL)
    result = agent.evaluate(3)
    assert result["cut_episodes"] == 3 and len(result["returns"]) == 3
    assert agent.evaluate(1, max_episode_steps=7)["returns"][0] <= 7


def test_predict_checks_the_observation_shape():
    agent = TRPO("CartPole-v1", **SMALL)
    for bad in (np.zeros(3), np.zeros((2, 5)), np.zeros((2, 2, 4))):
        with pytest.raises(ValueError, match=r"shape \(4,\) or a batch \(B, 4\)"):
            agent.predict(bad)


def test_settings_that_make_every_update_a_no_op_are_refused():
    with pytest.raises(ValueError, match="fisher_subsample=2000 leaves 1 of the batch's 128"):
        TRPO("CartPole-v1", fisher_subsample=2000, **SMALL)
    with pytest.raises(ValueError, match="fisher_subsample"):
        resolve_config("CartPole-v1", n_envs=2, n_steps=64, fisher_subsample=5)
    assert resolve_config("CartPole-v1", n_envs=2, n_steps=64, fisher_subsample=4)


def test_a_custom_env_given_as_module_colon_id(tmp_path, monkeypatch):
    (tmp_path / "my_envs.py").write_text(
        "import gymnasium\n"
        "gymnasium.register('MyCartPole-v0', entry_point="
        "'gymnasium.envs.classic_control:CartPoleEnv', max_episode_steps=50)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    agent = TRPO("my_envs:MyCartPole-v0", **SMALL).learn(128)
    assert agent.config.env_id == "my_envs:MyCartPole-v0"
    assert max(agent.evaluate(2)["returns"]) <= 50
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        TRPO("no_such_module:Env-v0")


# The value fit overlapped with the next rollout ---------------------------------------------


def _sequential(agent):
    """The same agent with the overlap off: every update collects its own batch."""
    agent._may_prefetch = lambda total, stop: False
    return agent


def _collect_calls(agent):
    """Records, per rollout, whether it collected the next update's batch (during this one)."""
    worker = agent._ensure_worker()
    inner, early = worker.collect, []

    def collect(*args, first_step, **kwargs):
        early.append(first_step > agent.num_timesteps)
        return inner(*args, first_step=first_step, **kwargs)

    worker.collect = collect
    return early


@pytest.mark.parametrize("env_id, extra", [("CartPole-v1", {}),
                                           ("Pendulum-v1", {"normalize_obs": True,
                                                            "normalize_reward": True})])
def test_overlapped_value_fit_gives_the_sequential_run_bit_for_bit(tmp_path, env_id, extra):
    settings = {**SMALL, **extra, "checkpoint_every": 3, "overlap_value_fit": True}
    overlapped = TRPO(env_id, run_dir=tmp_path / "overlapped", **settings)
    calls = _collect_calls(overlapped)
    overlapped.learn(7 * 128)
    sequential = TRPO(env_id, run_dir=tmp_path / "sequential",
                      **{**settings, "overlap_value_fit": False})  # the one-graph update
    sequential.learn(7 * 128)
    # 7 batches; updates 3 and 6 are checkpointed and update 7 is the last, so the batches of
    # updates 2, 3, 5 and 6 were collected early, during the value fit of the update before.
    assert len(calls) == 7 and sum(calls) == 4
    for a, b in zip(overlapped.policy.trainable_variables + overlapped.value.trainable_variables,
                    sequential.policy.trainable_variables + sequential.value.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    keep = [k for k in overlapped.history[0] if k not in ("wall_time", "steps_per_second")]
    np.testing.assert_equal([{k: r[k] for k in keep} for r in overlapped.history],
                            [{k: r[k] for k in keep} for r in sequential.history])  # NaN == NaN


def test_a_stop_signal_during_an_early_rollout_finishes_that_update_then_checkpoints(tmp_path):
    import signal

    from agents.stop_signals import TrainingInterrupted

    settings = {**SMALL, "checkpoint_every": 100, "save_env_state": True,
                "overlap_value_fit": True}
    run = tmp_path / "run"
    agent = TRPO("CartPole-v1", run_dir=run, **settings)
    worker = agent._ensure_worker()
    inner, count = worker.collect, [0]

    def collect(*args, **kwargs):
        count[0] += 1
        if count[0] == 3:  # the batch of update 3, collected early during update 2
            signal.raise_signal(signal.SIGINT)
        return inner(*args, **kwargs)

    worker.collect = collect
    with pytest.raises(TrainingInterrupted) as stopped:
        agent.learn(8 * 128)
    # The batch collected when the signal came was used: update 3 ran, then the checkpoint.
    assert stopped.value.num_timesteps == 3 * 128 and count[0] == 3
    assert stopped.value.checkpoint.name == "update_000003.ckpt"
    resumed = TRPO.resume(run, trust_env_state=True).learn(8 * 128)
    straight = TRPO("CartPole-v1", run_dir=tmp_path / "straight", **settings).learn(8 * 128)
    for a, b in zip(resumed.policy.trainable_variables, straight.policy.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_a_failed_value_fit_undoes_the_batch_collected_beside_it(tmp_path):
    import tensorflow as tf

    def run(sequential):
        agent = TRPO("CartPole-v1", **{**SMALL, "on_non_finite": "skip",
                                       "overlap_value_fit": True})
        if sequential:
            _sequential(agent)
        inner, calls = agent._update_fns.value, [0]

        def value(*args):  # the second value fit reports non-finite weights
            calls[0] += 1
            out = inner(*args)
            return {**out, "value_finite": tf.constant(calls[0] != 2)}

        agent._update_fns = agent._update_fns._replace(value=value)
        return agent.learn(5 * 128)

    overlapped, sequential = run(False), run(True)
    assert overlapped.skipped_batches == sequential.skipped_batches == 1
    assert overlapped.rng.bit_generator.state == sequential.rng.bit_generator.state
    assert overlapped._worker.episodes == sequential._worker.episodes
    for a, b in zip(overlapped.policy.trainable_variables, sequential.policy.trainable_variables,
                    strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_equal([r["mean_return"] for r in overlapped.history],
                            [r["mean_return"] for r in sequential.history])
