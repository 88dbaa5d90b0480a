"""Rollout forward pass of the CNN policy: compiled TensorFlow against a NumPy twin.

During rollouts the policy runs once per env step on ``n_envs`` observations. For MLPs the
agent uses NumPy (no TensorFlow call per step); this script measures whether that would also
win for the Nature-DQN CNN, by timing, on the same weights and observations:

* ``tf``: the agent's compiled forward pass (``compiled`` of the policy's
  :class:`agents.nets.cnn.KerasTrunk`);
* ``numpy``: the same network in NumPy (convolutions as ``sliding_window_view`` + ``tensordot``),
  checked to agree with ``tf`` to 1e-4.

Median of 7 repeats of ``--calls`` calls each, for Atari frames ``(84, 84, 4)`` and the pixel
CartPole ``(40, 60, 2)``, batches of 1 and 8. Writes ``bench_results/spaces/cnn_rollout.json``.

Usage::

    python scripts/bench_pixels.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402

REPEATS = 7

SHAPES = {"atari": (84, 84, 4), "pixel_cartpole": (40, 60, 2)}


def numpy_forward(model, image: np.ndarray) -> np.ndarray:
    """The trunk of :func:`agents.nets.cnn.build_trunk` for one image input, in NumPy."""
    x = image.astype(np.float32) / 255.0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            w, b = (v.numpy() for v in layer.weights)
            k, s = w.shape[0], layer.strides[0]
            windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
            windows = windows[:, ::s, ::s]  # [N, H', W', C, k, k]
            x = np.maximum(np.tensordot(windows, w.transpose(2, 0, 1, 3), axes=3) + b, 0.0)
        elif kind == "Flatten":
            x = x.reshape(len(x), -1)
        elif kind == "Dense":
            w, b = (v.numpy() for v in layer.weights)
            x = x @ w + b
            if layer.activation.__name__ == "relu":
                x = np.maximum(x, 0.0)
    return x


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--out", default="bench_results/spaces/cnn_rollout.json")
    args = parser.parse_args(argv)

    from agents.envs.spaces import ObservationEncoder
    from agents.nets import POLICY_OUTPUT_GAIN, make_trunk

    rows = []
    for name, (h, w, c) in SHAPES.items():
        encoder = ObservationEncoder(gym.spaces.Box(0, 255, (h, w, c), np.uint8))
        trunk = make_trunk(encoder, 6, hidden=(64, 64), activation="tanh",  # 6 actions
                           output_gain=POLICY_OUTPUT_GAIN, rng=np.random.default_rng(0),
                           name="policy")
        for batch in (1, 8):
            obs = np.random.default_rng(1).integers(0, 256, (batch, h, w, c)).astype(np.uint8)
            feed = {"pixels": obs}
            tf_out = trunk.compiled(feed).numpy()
            np_out = numpy_forward(trunk.model, obs)
            np.testing.assert_allclose(np_out, tf_out, rtol=1e-4, atol=1e-4)
            tf_s = bench_common.median_seconds(lambda feed=feed, t=trunk: t.compiled(feed).numpy(),
                                               repeats=REPEATS, calls=args.calls)
            np_s = bench_common.median_seconds(lambda obs=obs, t=trunk: numpy_forward(t.model, obs),
                                               repeats=REPEATS, calls=args.calls)
            rows.append({"input": name, "shape": [h, w, c], "batch": batch,
                         "tf_ms": 1e3 * tf_s, "numpy_ms": 1e3 * np_s,
                         "numpy_over_tf": np_s / tf_s})
            print(f"{name:<15} batch {batch}: tf {1e3 * tf_s:7.2f} ms   numpy "
                  f"{1e3 * np_s:7.2f} ms   numpy/tf {np_s / tf_s:5.2f}x")
    bench_common.write_json(args.out, {"calls": args.calls, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
