r"""NaturalGradient against Adam in wall-clock time with ``model.fit`` on scikit-learn's digits.

Tasks on ``load_digits`` (1,797 8x8 images scaled to [0, 1]; nothing is downloaded):

* ``autoencoder``: Dense 64-200-100-50-10-50-100-200-64, tanh hidden layers, sigmoid output,
  binary cross-entropy, batch 128, trained on all 1,797 images. Metric: the full-data MSE
  (and BCE) in inference mode after every epoch. Adam runs for ``--ae-budget`` seconds and
  its best MSE is the seed's target; each NaturalGradient variant runs until it reaches that
  target or the same budget. Adam's time is its time to its own best.
* ``cnn``: Conv2D(8, 3, relu)-Conv2D(16, 3, relu)-MaxPool(2)-Flatten-Dense(32, relu)-
  Dense(10, softmax), batch 64. ``mlp``: Dense 64-400-400-10, relu, softmax output, batch
  128. Both: sparse categorical cross-entropy, one stratified 80/20 train/validation split
  (the same for every seed), metric validation accuracy after every epoch, target 97%, at
  most ``--max-epochs`` epochs and ``--wall-cap`` seconds.

For each task and seed: ``keras.utils.set_random_seed(seed)``, build the model once and keep
its initial weights. Then, in turn (Adam, then each variant, so drift of the machine's load
spreads over all), clone it, load those weights, ``compile`` with the optimizer (all with
``jit_compile=--jit-compile``) and call ``fit`` once on a fresh ``tf.data`` dataset reshuffled
every epoch in an order fixed by the seed: every optimizer sees the same batches. A run stops
at its target (``--full``: at its cap).

Timed (``time.perf_counter()``): from just before ``fit`` to the end of each epoch, all of
``fit`` included (the data iterator, tracing the train step in the first epoch, every step,
Keras' callbacks), less the per-epoch measurement of the metric, which pauses the clock
(``keras_curves.epoch_clock``). Time to target is the clock at the end of the first epoch
whose metric reached it. The ratio is per seed: a variant's time to target over Adam's;
``>`` marks a lower bound (the variant missed the target: its whole time), ``<`` an upper
bound (Adam missed 97%). Means ± sample std are over the seeds that reached the target.
A run that raises (NaturalGradient under ``--jit-compile true``) is recorded as failed.

``--profile`` (`keras_profile.py`): on the first batch of each task, for each variant, the
median of ``--profile-repeats`` calls (each from the same weights, restored untimed; the first
call, tracing included, is kept apart) of: the loss gradient; the curvature operator's
linearization and one curvature-vector product (from chains of 1 and 11 products); one
``minimize`` call (each in a ``tf.function`` with the runs' ``jit_compile``, closures built as
``fit`` builds them, K-FAC's included); one forward pass (the cost of a line-search trial);
with ``cg_preconditioner="kfac"``, K-FAC's statistics (the recorded forward pass, the sampled
backward pass, the factors) and its damped inverses (made every ``kfac_inverse_period`` steps);
and the train step ``fit`` compiles, for the variant and for Adam.

Usage (``--help`` lists every option)::

    python scripts/bench_keras.py                            # 3 tasks, 5 seeds: ~15 min here
    python scripts/bench_keras.py --tasks cnn mlp --seeds 3 --variant default='{"max_kl": 0.01}' \
        --variant cg5='{"max_kl": 0.01, "cg_iters": 5}'     # Adam and 2 NaturalGradients
    python scripts/bench_keras.py --seeds 0 --profile        # the profile only

``--quick`` (a smoke test) defaults to 1 seed, 5 s budget and cap, 2 epochs and 3 profile
calls; explicit options win. Writes ``OUT_DIR/bench_keras.json`` (machine, command line,
settings, a digest of natgrad's code, every run's per-epoch curve, summaries, profile),
``bench_keras.md`` (the tables) and ``bench_keras_TASK.png`` (metric against wall time and
epochs: mean over seeds, min-max band).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import natgrad  # noqa: E402
from natgrad.keras_fit import STEP_METRICS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402
import keras_curves  # noqa: E402
import keras_profile  # noqa: E402

TASKS = ("autoencoder", "cnn", "mlp")
ADAM = "Adam"
TARGET_ACCURACY = 0.97
DEFAULTS = {"seeds": 5, "ae_budget": 60.0, "max_epochs": 30, "wall_cap": 120.0,
            "profile_repeats": 20}
QUICK = {"seeds": 1, "ae_budget": 5.0, "max_epochs": 2, "wall_cap": 5.0, "profile_repeats": 3}
# Hidden widths (--ae-hidden, --mlp-hidden, --cnn-hidden: two Conv2D filter counts, then the
# Dense width).
SHAPES = {"autoencoder": (200, 100, 50, 10, 50, 100, 200), "mlp": (400, 400),
          "cnn": (8, 16, 32)}


@dataclasses.dataclass
class Task:
    name: str
    build: Callable[[], keras.Model]  # a fresh model (weights from the global seed)
    loss: str
    x: np.ndarray  # training inputs
    y: np.ndarray  # training targets
    batch_size: int
    evaluate: Callable[[keras.Model], dict]  # the per-epoch measurement, outside the clock
    metric: str
    higher_is_better: bool
    description: str


def make_task(name: str) -> Task:
    """The task ``name`` (output layers in float32, as Keras advises for mixed precision)."""
    from sklearn.model_selection import train_test_split

    x, y = bench_common.digits()
    widths = SHAPES[name] if name in SHAPES else ()
    if name == "autoencoder":
        def build():
            return keras.Sequential([keras.Input((64,)), *(
                keras.layers.Dense(h, "tanh") for h in widths),
                keras.layers.Dense(64, "sigmoid", dtype="float32")])

        def evaluate(model) -> dict:
            p = np.clip(np.asarray(model(x, training=False), np.float64), 1e-7, 1 - 1e-7)
            return {"mse": float(np.mean((p - x) ** 2)),
                    "bce": float(-np.mean(x * np.log(p) + (1 - x) * np.log(1 - p)))}

        return Task(name, build, "binary_crossentropy", x, x, 128, evaluate, "mse", False,
                    f"Dense 64-{'-'.join(map(str, widths))}-64 tanh/sigmoid, BCE, batch 128, "
                    "1797 images; full-data MSE")
    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=0.2, stratify=y,
                                                      random_state=0)
    if name == "cnn":
        x_train, x_val = x_train.reshape(-1, 8, 8, 1), x_val.reshape(-1, 8, 8, 1)
        c1, c2, dense = widths
        batch, text = 64, f"Conv{c1}-Conv{c2}-Pool-Dense{dense}-10 relu/softmax, batch 64"

        def hidden():
            return [keras.layers.Conv2D(c1, 3, activation="relu"),
                    keras.layers.Conv2D(c2, 3, activation="relu"), keras.layers.MaxPooling2D(2),
                    keras.layers.Flatten(), keras.layers.Dense(dense, "relu")]
    elif name == "mlp":
        batch, text = 128, f"Dense 64-{'-'.join(map(str, widths))}-10 relu/softmax, batch 128"

        def hidden():
            return [keras.layers.Dense(h, "relu") for h in widths]
    else:
        raise ValueError(f"unknown task {name!r}")

    def build():
        return keras.Sequential([keras.Input(x_train.shape[1:]), *hidden(),
                                 keras.layers.Dense(10, "softmax", dtype="float32")])

    def evaluate(model) -> dict:
        predicted = np.argmax(np.asarray(model(x_val, training=False)), axis=-1)
        return {"val_accuracy": float(np.mean(predicted == y_val))}

    return Task(name, build, "sparse_categorical_crossentropy", x_train, y_train, batch,
                evaluate, "val_accuracy", True,
                f"{text}, {len(x_train)} train / {len(x_val)} validation; validation accuracy")


def compiled_model(task: Task, base: keras.Model, weights: list, kwargs: dict | None, args):
    """``(model, optimizer)``: a clone of ``base`` with ``weights``, compiled with Adam
    (``kwargs`` ``None``) or ``NaturalGradient(**kwargs)`` and then hooked into ``fit``."""
    model = keras.models.clone_model(base)
    model.set_weights(weights)
    optimizer = (keras.optimizers.Adam(args.adam_lr) if kwargs is None
                 else natgrad.NaturalGradient(**kwargs))
    model.compile(optimizer=optimizer, loss=task.loss, jit_compile=args.jit_compile)
    if kwargs is not None:
        natgrad.enable_natural_gradient(model)
    return model, optimizer


def train(task: Task, base, weights, name: str, kwargs: dict | None, seed: int, args, *,
          target: float | None, cap_seconds: float, max_epochs: int) -> dict:
    """One ``fit`` to ``target`` (``None``: none), ``cap_seconds`` or ``max_epochs``."""
    model, optimizer = compiled_model(task, base, weights, kwargs, args)

    def stop(row: dict) -> str | None:
        value = row[task.metric]
        if not math.isfinite(value):
            return "not finite"
        if target is not None and keras_curves.first_reaching(
                [value], target, higher_is_better=task.higher_is_better) is not None:
            return "target"
        return "time cap" if row["seconds"] >= cap_seconds else None

    clock = keras_curves.epoch_clock(task.evaluate, stop=stop, log_keys=("loss", *STEP_METRICS))
    record = {"optimizer": name, "seed": seed, "config": optimizer.get_config(),
              "jit_compile": model.jit_compile, "error": None}
    data = keras_curves.seeded_batches(task.x, task.y, task.batch_size, seed)
    try:
        clock.start()
        model.fit(data, epochs=max_epochs, shuffle=False, verbose=0, callbacks=[clock])
    except Exception as exc:  # noqa: BLE001 - a failed run is a result; the others go on
        record["error"] = bench_common.error_line(exc, prefer=keras_profile.XLA_ERRORS)
    record["stop_reason"] = clock.stop_reason or ("error" if record["error"] else "max epochs")
    record["curve"] = clock.curve
    return record


def benchmark(task: Task, variants: dict, args) -> list[dict]:
    """Every seed's runs, Adam first; each record has its curve and ``summary``
    (:func:`keras_curves.curve_summary` with ``ratio`` and ``ratio_bound`` against Adam)."""
    records, autoencoder = [], task.name == "autoencoder"
    for seed in range(args.seeds):
        keras.backend.clear_session()
        keras.utils.set_random_seed(seed)
        base = task.build()
        weights = base.get_weights()
        target = None if autoencoder else TARGET_ACCURACY
        for name, kwargs in [(ADAM, None), *variants.items()]:
            adam_sets_target = autoencoder and kwargs is None
            record = train(task, base, weights, name, kwargs, seed, args,
                           target=None if args.full or adam_sets_target else target,
                           cap_seconds=args.ae_budget if autoencoder else args.wall_cap,
                           max_epochs=10**6 if autoencoder else args.max_epochs)
            values = record["curve"].get(task.metric)
            if adam_sets_target and values:
                target = min(values)  # Adam's best: the variants' target
            s = record["summary"] = keras_curves.curve_summary(
                record["curve"]["seconds"], values or [], target,
                higher_is_better=task.higher_is_better)
            if kwargs is None:
                adam = s
            s["ratio"], s["ratio_bound"] = (
                (1.0, "=") if kwargs is None else keras_curves.time_ratio(s, adam))
            records.append(record)
            print(f"  {task.name} seed {seed} {name}: {s['epochs']} epochs, "
                  f"{s['seconds'] or 0:.1f} s, final {task.metric} {s['final'] or math.nan:.4g}"
                  f", stopped: {record['stop_reason']}"
                  + (f" [{record['error']}]" if record["error"] else ""), flush=True)
    return records


def profile(task: Task, variants: dict, args) -> dict:
    """Per-step costs on the task's first batch (see the module docstring)."""
    keras.utils.set_random_seed(0)
    base = task.build()
    weights = base.get_weights()
    x, y = tf.constant(task.x[:task.batch_size]), tf.constant(task.y[:task.batch_size])
    adam_model, _ = compiled_model(task, base, weights, None, args)
    result = {"batch_size": task.batch_size, "parameters": base.count_params(),
              "adam_fit_step": keras_profile.fit_step(adam_model, adam_model.optimizer, x, y,
                                        args.profile_repeats), "variants": {}}
    for name, kwargs in variants.items():
        model, optimizer = compiled_model(task, base, weights, kwargs, args)
        pieces = keras_profile.profile_variant(task.loss, model, optimizer, x, y,
                                               args.profile_repeats)
        result["variants"][name] = pieces
        print(f"  {task.name} {name} per step: "
              f"{keras_profile.profile_line(pieces, result['adam_fit_step'])}")
    return result


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 (default 5; 0: --profile only)")
    p.add_argument("--ae-budget", type=float, help="autoencoder seconds per run (default 60)")
    p.add_argument("--max-epochs", type=int, help="cnn/mlp epoch cap (default 30)")
    p.add_argument("--wall-cap", type=float, help="cnn/mlp seconds cap (default 120)")
    p.add_argument("--variant", type=bench_common.name_and_json, action="append",
                   metavar="NAME=JSON",
                   help='NaturalGradient kwargs (default: default=\'{"max_kl": 0.01}\')')
    for task, widths in SHAPES.items():
        p.add_argument(f"--{task[:3]}-hidden" if task != "autoencoder" else "--ae-hidden",
                       type=int, nargs="+", default=list(widths), metavar="WIDTH",
                       help=f"{task} hidden widths (default {' '.join(map(str, widths))})")
    p.add_argument("--adam-lr", type=float, default=1e-3)
    p.add_argument("--full", action="store_true", help="run to the caps, not to the target")
    p.add_argument("--jit-compile", choices=("false", "true", "auto"), default="auto")
    p.add_argument("--mixed-precision", action="store_true", help='"mixed_float16" policy')
    p.add_argument("--profile", action="store_true", help="per-step profile (see docstring)")
    p.add_argument("--profile-repeats", type=int, help="calls per median (default 20)")
    p.add_argument("--quick", action="store_true", help=f"smoke test: {QUICK}")
    p.add_argument("--out-dir", type=Path, default=Path("bench_results/keras"))
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    SHAPES.update(autoencoder=tuple(args.ae_hidden), mlp=tuple(args.mlp_hidden),
                  cnn=tuple(args.cnn_hidden))
    if len(SHAPES["cnn"]) != 3:
        p.error("--cnn-hidden takes 3 widths: two Conv2D filter counts and the Dense width")
    args.jit_compile = {"false": False, "true": True}.get(args.jit_compile, "auto")
    args.variants = dict(args.variant or [("default", {"max_kl": 0.01})])
    if ADAM in args.variants or len(args.variants) < len(args.variant or [0]):
        p.error(f"--variant names must be unique and not {ADAM!r}")
    for name, kwargs in args.variants.items():  # bad kwargs fail here, before any training
        try:
            natgrad.NaturalGradient(**kwargs)
        except (TypeError, ValueError) as exc:
            p.error(f"--variant {name}: {exc}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                if k != "variant"}
    document = {"command": shlex.join(["python", *(sys.argv if argv is None else argv)]),
                "machine": bench_common.machine(
                    libraries=("tensorflow", "keras", "numpy", "natgrad")),
                "natgrad_source": bench_common.source_digest(Path(natgrad.__file__).parent),
                "settings": {**settings, "dtype_policy": keras.config.dtype_policy().name,
                             "target_accuracy": TARGET_ACCURACY}, "tasks": {}}
    markdown = []
    for task_name in args.tasks:
        task = make_task(task_name)
        print(f"{task.name}: {task.description}", flush=True)
        result = document["tasks"][task.name] = {"description": task.description}
        if args.profile:
            result["profile"] = profile(task, args.variants, args)
        records = result["runs"] = benchmark(task, args.variants, args)
        if records:
            summaries = {name: [r["summary"] for r in records if r["optimizer"] == name]
                         for name in [ADAM, *args.variants]}
            headers, rows = keras_curves.time_to_target_table(summaries, task.metric, ADAM)
            print(bench_common.format_table(headers, rows, align="llllllrrrr"))
            print("".join(f"  failed: {r['optimizer']} seed {r['seed']}: {r['error']}\n"
                          for r in records if r["error"]), end="")
            markdown += [f"### {task.name}: {task.description}", "",
                         bench_common.markdown_table(headers, rows), ""]
            targets = [s["target"] for ss in summaries.values() for s in ss if s["target"]]
            keras_curves.plot_curves(
                args.out_dir / f"bench_keras_{task.name}.png",
                {name: [r["curve"] for r in records if r["optimizer"] == name]
                 for name in summaries}, task.metric,
                target=float(np.mean(targets)) if targets else None,
                log=not task.higher_is_better,
                ylim=(0.85, 1.0) if task.higher_is_better else None,
                title=f"{task.name}: {task.description}")
        document["seconds"] = time.perf_counter() - started
        print(f"{task.name} done, {document['seconds']:.0f} s since the start\n", flush=True)
        bench_common.write_json(args.out_dir / "bench_keras.json", document)
    if markdown:
        (args.out_dir / "bench_keras.md").write_text("\n".join(markdown))
    print(f"wrote {args.out_dir}/bench_keras.json, .md, .png ({document['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
