"""Rollout forward pass of the CNN policy: compiled TensorFlow against a NumPy twin.

During rollouts the policy runs once per env step on ``n_envs`` observations. For MLPs the
agent uses NumPy (no TensorFlow call per step); this script measures whether that would also
win for the Nature-DQN CNN, by timing, on the same weights and observations:

* ``tf``: the agent's compiled forward (:class:`agents.extractors.ExtractorPolicy`);
* ``numpy``: the same network in NumPy (convolutions as ``sliding_window_view`` + ``tensordot``),
  checked to agree with ``tf`` to 1e-4.

Median of 7 repeats of ``--calls`` calls each, for Atari frames ``(84, 84, 4)`` and the pixel
CartPole ``(40, 60, 2)``, batches of 1 and 8. Writes ``bench_results/spaces/cnn_rollout.json``.

Usage::

    python scripts/bench_pixels.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

SHAPES = {"atari": (84, 84, 4), "pixel_cartpole": (40, 60, 2)}


def numpy_forward(model, image: np.ndarray) -> np.ndarray:
    """The trunk of :func:`agents.extractors.build_trunk` for one image input, in NumPy."""
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


def median_seconds(fn, calls: int) -> float:
    times = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--out", default="bench_results/spaces/cnn_rollout.json")
    args = parser.parse_args(argv)

    from agents.extractors import ExtractorPolicy
    from agents.heads import CategoricalHead
    from agents.spaces import ObservationEncoder

    rows = []
    for name, (h, w, c) in SHAPES.items():
        encoder = ObservationEncoder(gym.spaces.Box(0, 255, (h, w, c), np.uint8))
        policy = ExtractorPolicy(encoder, CategoricalHead(6), rng=np.random.default_rng(0))
        for batch in (1, 8):
            obs = np.random.default_rng(1).integers(0, 256, (batch, h, w, c)).astype(np.uint8)
            feed = {"pixels": obs}
            tf_out = policy._forward(feed).numpy()
            np_out = numpy_forward(policy.trunk, obs)
            np.testing.assert_allclose(np_out, tf_out, rtol=1e-4, atol=1e-4)
            tf_s = median_seconds(lambda feed=feed, p=policy: p._forward(feed).numpy(), args.calls)
            np_s = median_seconds(lambda obs=obs, p=policy: numpy_forward(p.trunk, obs), args.calls)
            rows.append({"input": name, "shape": [h, w, c], "batch": batch,
                         "tf_ms": 1e3 * tf_s, "numpy_ms": 1e3 * np_s,
                         "numpy_over_tf": np_s / tf_s})
            print(f"{name:<15} batch {batch}: tf {1e3 * tf_s:7.2f} ms   numpy "
                  f"{1e3 * np_s:7.2f} ms   numpy/tf {np_s / tf_s:5.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"calls": args.calls, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
