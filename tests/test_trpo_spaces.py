"""TRPO beyond flat vectors: MultiDiscrete and MultiBinary actions, Dict and image observations,
Atari and MiniGrid; learning where the optimal policy is known, and checkpoints, resume,
predict, evaluate and the command line for each space.

The bandits (``tests/space_envs.py``) state their optimal action per context, so "learned"
means: the deterministic policy takes exactly that action in every context."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import space_envs
from conftest import TINY_CONFIG
from test_cli import run_main

from agents import TRPO
from agents.runs.checkpoint import read_checkpoint


def _weights(agent):
    return [np.asarray(v.numpy()) for v in agent.policy.trainable_variables]


@pytest.mark.slow
def test_multi_discrete_actions_learn_the_known_optimum(tiny_config):
    agent = TRPO("space_envs:MultiDiscreteBandit-v0", seed=0, **tiny_config).learn(128 * 15)
    assert agent.policy.distribution.name == "multi_categorical"
    for c in range(3):
        action = agent.predict(np.eye(3, dtype=np.float32)[c])
        np.testing.assert_array_equal(action, space_envs.multi_discrete_optimum(c))
    assert agent.evaluate(10)["mean_return"] == 2.0


@pytest.mark.slow
def test_multi_binary_actions_from_dict_observations_learn_the_known_optimum(tiny_config):
    agent = TRPO("space_envs:MultiBinaryDictBandit-v0", seed=0, normalize_obs=True,
                 **tiny_config).learn(128 * 15)
    assert agent.policy.distribution.name == "independent_bernoulli"
    assert agent.obs_rms.mean.shape == (4 + 2,)  # one-hot context and the noise vector
    batch = {"context": np.arange(4), "noise": np.zeros((4, 2), np.float32)}
    np.testing.assert_array_equal(agent.predict(batch),
                                  [space_envs.multi_binary_optimum(c) for c in range(4)])
    assert agent.evaluate(10)["mean_return"] == 2.0


@pytest.fixture(scope="module")
def image_dict_agent(tmp_path_factory):
    """The CNN + MLP policy on a Dict of a channels-first image and a vector, trained into a
    run directory until it is optimal."""
    run_dir = tmp_path_factory.mktemp("spaces") / "image-dict"
    agent = TRPO("space_envs:ImageDictBandit-v0", seed=1, run_dir=run_dir, normalize_obs=True,
                 checkpoint_every=1, **TINY_CONFIG)
    return agent.learn(128 * 12), run_dir


@pytest.mark.slow
def test_image_and_vector_dict_learns_the_known_optimum(image_dict_agent):
    agent, _ = image_dict_agent
    assert set(agent.encoder.image_shapes) == {"image_camera"}
    assert agent.obs_rms.mean.shape == (1,)  # normalization sees the vector part only
    for c in range(4):
        np.testing.assert_array_equal(
            agent.predict(space_envs.image_dict_observation(c)), [c & 1, c >> 1])
    assert agent.evaluate(8)["mean_return"] == 2.0


@pytest.mark.slow
def test_image_dict_checkpoint_is_arrays_and_round_trips(image_dict_agent, tmp_path):
    agent, run_dir = image_dict_agent
    path = tmp_path / "agent.ckpt"
    agent.save(path)
    checkpoint = read_checkpoint(path)  # allow_pickle=False: arrays and JSON only
    assert all(a.dtype != object for a in checkpoint.arrays.values())
    assert {"worker/last_obs/camera", "worker/last_obs/speed"} <= set(checkpoint.arrays)
    loaded = TRPO.load(path)
    for a, b in zip(_weights(agent), _weights(loaded), strict=True):
        np.testing.assert_array_equal(a, b)
    obs = {"camera": np.stack([space_envs.image_dict_observation(c)["camera"] for c in range(4)]),
           "speed": np.array([[-1.0], [-1.0], [1.0], [1.0]], np.float32)}
    np.testing.assert_array_equal(loaded.predict(obs), agent.predict(obs))
    resumed = TRPO.resume(run_dir)
    assert resumed.num_timesteps == agent.num_timesteps and resumed.updates == agent.updates
    for a, b in zip(_weights(agent), _weights(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_same_seed_gives_the_same_cnn_run(image_dict_agent, tiny_config):
    """A second agent with the fixture's seed repeats its first update bit for bit."""
    agent, _ = image_dict_agent
    twin = TRPO("space_envs:ImageDictBandit-v0", seed=1, normalize_obs=True,
                **tiny_config).learn(128)
    first = {k: v for k, v in agent.history[0].items() if k not in ("wall_time",
                                                                      "steps_per_second")}
    assert {k: twin.history[0][k] for k in first} == first


needs_video = pytest.mark.skipif(importlib.util.find_spec("moviepy") is None,
                                 reason="needs the video extra: pip install -e '.[video]'")


@needs_video
def test_cli_train_and_eval_video_of_a_pixel_env(tmp_path):
    run_dir = tmp_path / "pixels"
    status, _, err = run_main(["train", "natgrad/PixelCartPole-v1", "--steps", 128, "--out",
                               run_dir, "--n-envs", 2, "--set", "n_steps=64", "--set",
                               "critic_epochs=1"])
    assert status == 0, err
    status, out, err = run_main(["eval", run_dir, "--episodes", 1, "--video"])
    assert status == 0, err
    videos = sorted((run_dir / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].read_bytes()[4:8] == b"ftyp"


@pytest.mark.skipif(importlib.util.find_spec("ale_py") is None,
                    reason="needs the atari extra: pip install -e '.[atari]'")
def test_one_update_on_real_atari_frames():
    agent = TRPO("ALE/Pong-v5", n_envs=1, n_steps=64, critic_epochs=1, critic_batch_size=64)
    assert agent.encoder.image_shapes == {"pixels": (84, 84, 4)}  # 4 stacked 84x84 frames
    agent.learn(64)
    row = agent.history[0]
    assert row["accepted"] == 1 and 0 < row["kl"] <= agent.config.max_kl
    obs, _ = agent.env_factory().reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8 and obs.max() > 0
    assert 0 <= int(agent.predict(obs)) < 6


@pytest.mark.skipif(importlib.util.find_spec("minigrid") is None,
                    reason="needs the minigrid extra: pip install -e '.[minigrid]'")
def test_cli_trains_evaluates_and_resumes_minigrid_dict_observations(tmp_path):
    run_dir = tmp_path / "minigrid"
    status, _, err = run_main(["train", "MiniGrid-Empty-5x5-v0", "--steps", 128, "--n-envs", 2,
                               "--out", run_dir, "--set", "n_steps=64", "--set",
                               "critic_epochs=1"])
    assert status == 0, err
    agent = TRPO.load(sorted((run_dir / "checkpoints").glob("*.ckpt"))[-1])
    assert agent.encoder.vector_dim == 4 + 7 * 7 * 3 and not agent.encoder.has_images
    assert "mission" not in agent.observation_space.spaces  # the Text entry is dropped
    status, _, err = run_main(["eval", run_dir, "--episodes", 1])
    assert status == 0 and (run_dir / "eval.json").exists(), err
    status, _, err = run_main(["train", "--resume", run_dir, "--steps", 256])
    assert status == 0, err
    assert TRPO.resume(run_dir).num_timesteps == 256
