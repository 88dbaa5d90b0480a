"""agents.envs.spaces: which spaces are taken, how observations are encoded, how actions reach envs.

Expected encodings are written out by hand (one-hot vectors, transposed frames)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from agents.envs.normalization import RunningMeanStd
from agents.envs.spaces import ObservationEncoder, action_layout, check_spaces, env_actions

S = gym.spaces


def test_a_dict_of_vector_parts_is_one_hot_and_flat_in_key_order():
    space = S.Dict({"d": S.Discrete(3, start=1), "g": S.Box(0, 10, (2, 2), np.uint8),
                    "m": S.MultiDiscrete([2, 3], start=[0, 5]), "b": S.MultiBinary(2)})
    encoder = ObservationEncoder(space)
    assert not encoder.has_images and encoder.vector_dim == 3 + 4 + 5 + 2
    raw = {"d": np.array([3]), "g": np.array([[[1, 2], [3, 4]]], np.uint8),
           "m": np.array([[1, 6]]), "b": np.array([[1, 0]], np.int8)}
    expected = [0, 0, 1,  1, 2, 3, 4,  0, 1, 0, 1, 0,  1, 0]
    order = list(space.spaces)  # the encoder follows the space's own key order
    blocks = {"d": expected[:3], "g": expected[3:7], "m": expected[7:12], "b": expected[12:]}
    want = np.concatenate([blocks[k] for k in order])
    got = encoder.encode(raw)
    assert got.dtype == np.float32 and got.shape == (1, 14)
    np.testing.assert_array_equal(got[0], want)


@pytest.mark.parametrize("shape, layout", [((4, 40, 50), "chw"), ((40, 50, 3), "hwc"),
                                           ((40, 50), "hw")])
def test_images_become_uint8_hwc(shape, layout):
    encoder = ObservationEncoder(S.Box(0, 255, shape, np.uint8))
    assert encoder.has_images and encoder.vector_dim == 0
    raw = np.random.default_rng(0).integers(0, 256, (2, *shape)).astype(np.uint8)
    got = encoder.encode(raw)["pixels"]
    assert got.dtype == np.uint8 and got.shape == (2, 40, 50, {"chw": 4, "hwc": 3, "hw": 1}[
        layout])
    want = (raw.transpose(0, 2, 3, 1) if layout == "chw" else raw if layout == "hwc"
            else raw[..., None])
    np.testing.assert_array_equal(got, want)


def test_small_or_float_grids_are_vectors_not_images():
    assert not ObservationEncoder(S.Box(0, 255, (7, 7, 3), np.uint8)).has_images  # MiniGrid
    assert not ObservationEncoder(S.Box(0.0, 1.0, (84, 84), np.float32)).has_images
    assert ObservationEncoder(S.Box(0, 255, (7, 7, 3), np.uint8)).vector_dim == 147


def test_normalization_touches_the_vector_part_only():
    space = S.Dict({"cam": S.Box(0, 255, (36, 36, 1), np.uint8), "v": S.Box(-5, 5, (2,))})
    encoder = ObservationEncoder(space)
    rng = np.random.default_rng(1)
    raw = {"cam": rng.integers(0, 256, (8, 36, 36, 1)).astype(np.uint8),
           "v": rng.normal(3.0, 2.0, (8, 2)).astype(np.float32)}
    rms = RunningMeanStd((2,))
    rms.update(encoder.vector_part(raw))
    got = encoder.encode(raw, rms)
    np.testing.assert_array_equal(got["image_cam"], raw["cam"])
    np.testing.assert_allclose(got["vector"], (raw["v"] - raw["v"].mean(0)) / raw["v"].std(0),
                               rtol=1e-3, atol=1e-3)


def test_as_batch_checks_shapes_and_names_the_expected_ones():
    encoder = ObservationEncoder(S.Dict({"a": S.Box(-1, 1, (2,)), "b": S.Discrete(3)}))
    batch, single = encoder.as_batch({"a": np.zeros(2), "b": 1})
    assert single and batch["a"].shape == (1, 2) and batch["b"].shape == (1,)
    with pytest.raises(ValueError, match=r"keys \['a', 'b'\]"):
        encoder.as_batch(np.zeros(2))
    with pytest.raises(ValueError, match="'a': \\(2,\\)"):
        encoder.as_batch({"a": np.zeros(3), "b": 1})


def test_actions_reach_the_env_in_its_own_terms():
    md = S.MultiDiscrete([3, 4], start=[1, -2])
    out = env_actions(md, np.array([[0, 0], [2, 3]]))
    np.testing.assert_array_equal(out, [[1, -2], [3, 1]])
    assert out.dtype == md.dtype and all(md.contains(a) for a in out)
    mb = S.MultiBinary(3)
    out = env_actions(mb, np.array([[1, 0, 1]]))
    assert out.dtype == mb.dtype and mb.contains(out[0])
    assert action_layout(md) == ((2,), np.int32) and action_layout(mb) == ((3,), np.int32)
    assert action_layout(S.Discrete(4)) == ((), np.int32)


@pytest.mark.parametrize("obs, act, fragment", [
    (S.Tuple((S.Discrete(2),)), S.Discrete(2), "observation space Tuple"),
    (S.Graph(S.Box(-1, 1, (2,)), None), S.Discrete(2), "observation space Graph"),
    (S.Sequence(S.Discrete(2)), S.Discrete(2), "observation space Sequence"),
    (S.Text(4), S.Discrete(2), "observation space Text"),
    (S.Dict({"m": S.Text(4)}), S.Discrete(2), "(the Dict entry 'm')"),
    (S.Box(-1, 1, (2,)), S.MultiBinary([2, 2]), "action space MultiBinary"),
    (S.Box(-1, 1, (2,)), S.Dict({"a": S.Discrete(2)}), "action space Dict"),
])
def test_unsupported_spaces_are_named(obs, act, fragment):
    with pytest.raises(ValueError, match="supported: observations") as info:
        check_spaces(obs, act)
    assert fragment in str(info.value)
