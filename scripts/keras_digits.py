r"""NaturalGradient against Adam with ``model.fit`` on scikit-learn's bundled digits.

The data is scikit-learn's ``load_digits`` (1,797 8x8 images shipped with the package, nothing
is downloaded), scaled by ``X / 16`` and split 75/25, stratified, with a fixed seed. Both runs
train the same MLP, ``64 -> Dense(64, tanh) -> Dense(10)`` (logits, sparse categorical
cross-entropy from logits), from the same initial weights (``keras.utils.set_random_seed`` before
building each model), with the same batch size and the same shuffling seed:

* ``NaturalGradient``: ``natgrad.NaturalGradient`` plus ``natgrad.enable_natural_gradient``;
  Fisher curvature (the Gauss-Newton form), CG, a KL trust region (``max_kl``) with a
  backtracking line search, 10 CG iterations, fixed damping. ``fit`` tops batches smaller than
  ``reference_batch_size`` (128) up with recent inputs for the curvature and shrinks their KL
  bound by ``n / 128``. The defaults, ``max_kl=0.01`` and ``damping=3e-2``, are the best for
  batch sizes 32 and 128 of a sweep on this split (seed 0), recorded in
  ``bench_results/keras_digits_sweep.md``. Adam is not tuned beyond its default; ``--adam-lr``
  lets one try.
* ``Adam``: ``keras.optimizers.Adam`` at its default learning rate ``1e-3`` (``--adam-lr``).

A callback records, after every epoch, the training loss, the validation loss and accuracy,
and the wall time since ``fit`` started (everything counted: tracing of the train function,
the line search's extra forward passes, validation and callbacks). A run stops
``--extra-epochs`` epochs after it first reaches ``--target`` validation accuracy (97% by
default), or after ``--max-epochs``; ``--full`` runs every epoch.

Target (printed as PASS / FAIL): NaturalGradient reaches the target in fewer epochs than Adam,
and in no more wall time. If Adam never reaches it, its epochs count as infinite and its wall
time to the target as more than its whole run, so NaturalGradient must reach it within the
time Adam ran.

Usage::

    python scripts/keras_digits.py
    python scripts/keras_digits.py --batch-size 32 \
        --out-json bench_results/keras_digits_batch32.json \
        --out-png bench_results/keras_digits_batch32.png
    python scripts/keras_digits.py --full --max-epochs 150
    python scripts/keras_digits.py --adam-lr 3e-3 \
        --out-json bench_results/keras_digits_adam.json \
        --out-png bench_results/keras_digits_adam.png
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import matplotlib  # noqa: E402

import natgrad  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402


class EpochRecorder(keras.callbacks.Callback):
    """Per-epoch training loss, validation loss / accuracy and wall time since ``fit`` began.

    Stops training ``extra_epochs`` epochs after validation accuracy first reaches ``target``
    (unless ``full``).
    """

    def __init__(self, target: float, extra_epochs: int, full: bool):
        super().__init__()
        self.target = target
        self.extra_epochs = extra_epochs
        self.full = full
        self.records: list[dict] = []
        self.reached_epoch: int | None = None
        self._start = 0.0

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        self.records.append(
            {
                "epoch": epoch + 1,
                "wall_time_s": time.perf_counter() - self._start,
                "loss": float(logs["loss"]),
                "val_loss": float(logs["val_loss"]),
                "val_accuracy": float(logs["val_accuracy"]),
            }
        )
        if self.reached_epoch is None and logs["val_accuracy"] >= self.target:
            self.reached_epoch = epoch + 1
        if (
            not self.full
            and self.reached_epoch is not None
            and epoch + 1 >= self.reached_epoch + self.extra_epochs
        ):
            self.model.stop_training = True


def train(name: str, optimizer, data, args) -> dict:
    x_train, x_val, y_train, y_val = data
    model = bench_common.tanh_mlp(64, (64,), 10, seed=args.seed)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    if isinstance(optimizer, natgrad.NaturalGradient):
        natgrad.enable_natural_gradient(model, reference_batch_size=args.reference_batch_size)
    recorder = EpochRecorder(args.target, args.extra_epochs, args.full)
    keras.utils.set_random_seed(args.seed)  # same shuffling for both runs
    model.fit(
        x_train,
        y_train,
        batch_size=args.batch_size,
        epochs=args.max_epochs,
        validation_data=(x_val, y_val),
        callbacks=[recorder],
        verbose=0,
    )
    records = recorder.records
    reached = recorder.reached_epoch
    return {
        "optimizer": name,
        "config": optimizer.get_config(),
        "epochs_run": len(records),
        "epochs_to_target": reached,
        "wall_time_to_target_s": records[reached - 1]["wall_time_s"] if reached else None,
        "total_wall_time_s": records[-1]["wall_time_s"],
        "final_val_accuracy": records[-1]["val_accuracy"],
        "best_val_accuracy": max(r["val_accuracy"] for r in records),
        "history": records,
    }


def check_target(ng: dict, adam: dict) -> tuple[bool, str]:
    if ng["epochs_to_target"] is None:
        return False, "NaturalGradient did not reach the target"
    if adam["epochs_to_target"] is None:
        fewer = True
        faster = ng["wall_time_to_target_s"] <= adam["total_wall_time_s"]
        why = (
            f"Adam did not reach the target in {adam['epochs_run']} epochs "
            f"({adam['total_wall_time_s']:.2f} s)"
        )
    else:
        fewer = ng["epochs_to_target"] < adam["epochs_to_target"]
        faster = ng["wall_time_to_target_s"] <= adam["wall_time_to_target_s"]
        why = (
            f"epochs {ng['epochs_to_target']} vs {adam['epochs_to_target']}, wall time "
            f"{ng['wall_time_to_target_s']:.2f} s vs {adam['wall_time_to_target_s']:.2f} s"
        )
    return fewer and faster, why


def print_table(results: list[dict], target: float) -> None:
    pct = f"{100 * target:g}%"
    rows = [[r["optimizer"],
             str(r["epochs_to_target"]) if r["epochs_to_target"] else "not reached",
             f"{r['wall_time_to_target_s']:.2f} s" if r["wall_time_to_target_s"]
             else "not reached",
             f"{r['final_val_accuracy']:.4f}", str(r["epochs_run"]),
             f"{r['total_wall_time_s']:.2f} s"] for r in results]
    print(bench_common.format_table(
        ["optimizer", f"epochs to {pct}", f"wall time to {pct}", "final val acc", "epochs run",
         "total time"], rows, align="lrrrrr"))


def plot(results: list[dict], target: float, path: Path) -> None:
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharey="row")
    for r in results:
        h = r["history"]
        epochs = [e["epoch"] for e in h]
        times = [e["wall_time_s"] for e in h]
        for col, xs in enumerate((epochs, times)):
            axes[0, col].plot(xs, [e["loss"] for e in h], marker=".", label=r["optimizer"])
            axes[1, col].plot(xs, [e["val_accuracy"] for e in h], marker=".", label=r["optimizer"])
    for col, xlabel in enumerate(("epoch", "wall time since fit start (s)")):
        axes[0, col].set_yscale("log")
        axes[0, col].set_ylabel("training loss")
        axes[1, col].axhline(target, color="gray", linestyle="--", linewidth=1)
        axes[1, col].set_ylabel("validation accuracy")
        axes[1, col].set_ylim(0.8, 1.0)
        for row in range(2):
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].grid(alpha=0.3)
            axes[row, col].legend()
    fig.suptitle("Digits MLP 64-64-10: NaturalGradient vs Adam (model.fit)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--max-epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=128, help="for both optimizers")
    p.add_argument("--target", type=float, default=0.97, help="validation accuracy target")
    p.add_argument("--extra-epochs", type=int, default=3, help="epochs run past the target")
    p.add_argument("--full", action="store_true", help="run all --max-epochs epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--max-kl", type=float, default=0.01)
    p.add_argument("--damping", type=float, default=3e-2)
    p.add_argument("--adaptive-damping", action="store_true")
    p.add_argument("--cg-iters", type=int, default=10)
    p.add_argument("--reference-batch-size", type=int, default=128,
                   help="enable_natural_gradient's reference_batch_size")
    p.add_argument("--out-json", type=Path, default=Path("bench_results/keras_digits.json"))
    p.add_argument("--out-png", type=Path, default=Path("bench_results/keras_digits.png"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    data = bench_common.digits_split(args.seed)
    print(
        f"digits: {len(data[0])} train / {len(data[1])} validation, batch {args.batch_size}, "
        f"up to {args.max_epochs} epochs, target {args.target:.0%} validation accuracy"
    )
    ng = natgrad.NaturalGradient(
        max_kl=args.max_kl,
        damping=args.damping,
        adaptive_damping=args.adaptive_damping,
        cg_iters=args.cg_iters,
    )
    results = [
        train("NaturalGradient", ng, data, args),
        train("Adam", keras.optimizers.Adam(learning_rate=args.adam_lr), data, args),
    ]
    print_table(results, args.target)
    passed, why = check_target(results[0], results[1])
    total = time.perf_counter() - start
    print(
        f"target (NaturalGradient: fewer epochs and no more wall time to {args.target:.0%}): "
        f"{'PASS' if passed else 'FAIL'} ({why})"
    )
    print(f"total wall time {total:.1f} s")

    payload = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": bench_common.machine(libraries=("tensorflow", "keras", "numpy"),
                                            cpus_key="cpu_count"),
        "results": results,
        "target_passed": passed,
        "target_detail": why,
        "total_wall_time_s": total,
    }
    bench_common.write_json(args.out_json, payload)
    plot(results, args.target, args.out_png)
    print(f"wrote {args.out_json} and {args.out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
