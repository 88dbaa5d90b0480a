r"""NaturalGradient in ``model.fit`` on scikit-learn's digits: small batches and dropout.

Two checks, on the MLP of ``scripts/keras_digits.py`` (``64 -> Dense(64, tanh) ->
Dense(10)``, logits, ``NaturalGradient(max_kl=0.01, damping=3e-2)``):

* ``safety``: all 1,797 digits, so the last batch of every epoch has 5 samples, at batch 32
  (``fit``'s default; 3 epochs) and 128 (8 epochs), seeds 0-4. A callback evaluates the loss on
  the whole training set (inference mode) before and after every step; reported is the
  largest increase one step made. Criterion: at most 0.02. ``reference_batch_size=0`` (each
  batch on its own, without the top-up of small batches) is run for comparison.
* ``dropout``: the digits split of ``keras_digits.py`` (75/25, stratified, seed 0), the MLP
  with ``Dropout(rate)`` after the hidden layer, 3 epochs at batch 32, NaturalGradient against
  ``Adam(1e-3)``, seeds 0-4; reported is the validation loss after the last epoch.

Usage::

    python scripts/keras_step_safety.py
    python scripts/keras_step_safety.py --check safety \
        --out-json bench_results/keras_step_safety_only.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import natgrad  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402
from bench_common import FullDataLossChange  # noqa: E402

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def mlp(seed: int, dropout: float = 0.0) -> keras.Model:
    """The digits MLP of ``keras_digits.py``, with ``Dropout(dropout)`` after its hidden
    layer."""
    return bench_common.tanh_mlp(64, (64,), 10, seed=seed, dropout=dropout)


def natural_gradient(args) -> natgrad.NaturalGradient:
    return natgrad.NaturalGradient(max_kl=args.max_kl, damping=args.damping)


def safety(args) -> list[dict]:
    x, y = bench_common.digits()
    rows = []
    for batch_size, epochs in ((32, 3), (128, 8)):
        for reference in (128, 0):
            worst = []
            for seed in range(args.seeds):
                model = mlp(seed)
                model.compile(optimizer=natural_gradient(args), loss=LOSS)
                natgrad.enable_natural_gradient(model, reference_batch_size=reference)
                watch = FullDataLossChange(x, y, LOSS)
                keras.utils.set_random_seed(seed)
                model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0,
                          callbacks=[watch])
                worst.append(max(watch.changes))
            row = {"batch_size": batch_size, "last_batch": len(x) % batch_size,
                   "epochs": epochs, "reference_batch_size": reference,
                   "max_increase_per_seed": worst, "max_increase": max(worst)}
            print(f"batch {batch_size:>3} (last {row['last_batch']}), {epochs} epochs, "
                  f"reference_batch_size={reference:>3}: largest full-data loss increase "
                  f"per step {max(worst):.4f}  (per seed {', '.join(f'{w:.4f}' for w in worst)})",
                  flush=True)
            rows.append(row)
    return rows


def dropout(args) -> list[dict]:
    x_train, x_val, y_train, y_val = bench_common.digits_split(0)
    rows = []
    for rate in (0.1, 0.3):
        losses = {"NaturalGradient": [], "Adam": []}
        for seed in range(args.seeds):
            for name in losses:
                model = mlp(seed, rate)
                optimizer = natural_gradient(args) if name == "NaturalGradient" else (
                    keras.optimizers.Adam())
                model.compile(optimizer=optimizer, loss=LOSS)
                if name == "NaturalGradient":
                    natgrad.enable_natural_gradient(model)
                keras.utils.set_random_seed(seed)
                history = model.fit(x_train, y_train, epochs=3, verbose=0,
                                    validation_data=(x_val, y_val))
                losses[name].append(history.history["val_loss"][-1])
        row = {"rate": rate, "val_loss": losses}
        print(f"Dropout({rate}): val loss after 3 epochs at batch 32, seeds 0-{args.seeds - 1}: "
              + "; ".join(f"{k} mean {np.mean(v):.3f} max {np.max(v):.3f}"
                          for k, v in losses.items()), flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", choices=("safety", "dropout", "both"), default="both")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--max-kl", type=float, default=0.01)
    p.add_argument("--damping", type=float, default=3e-2)
    p.add_argument("--out-json", type=Path, default=Path("bench_results/keras_step_safety.json"))
    args = p.parse_args(argv)
    start = time.perf_counter()
    result = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.check in ("safety", "both"):
        result["safety"] = safety(args)
    if args.check in ("dropout", "both"):
        result["dropout"] = dropout(args)
    result["total_wall_time_s"] = time.perf_counter() - start
    bench_common.write_json(args.out_json, result)
    print(f"total wall time {result['total_wall_time_s']:.1f} s; wrote {args.out_json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
