"""Checks that two versions of this repository behave the same, bit for bit.

    python scripts/compare_behaviour.py --base REV [--head REV|DIR] [--out JSON] [--debug]

Each side's ``agents`` and ``natgrad`` are copied to a temporary folder: from a git revision
(``git archive``) or a directory (by default the working tree; files git ignores are copied too,
and named in the report). Every check runs in child processes whose ``cwd`` and ``PYTHONPATH``
are that copy, so they import that version (verified), in the same environment on both sides
(one OpenMP/BLAS thread, ``PYTHONHASHSEED=0``, no GPU). Only interfaces that a refactor of the
package layout keeps are used; checkpoints are decoded here, from the on-disk format:

* ``python -m agents train ENV --out DIR --steps N --seed 0 --set ...``, each preset shrunk to 3
  small updates, on CartPole-v1, Pendulum-v1, Hopper-v5 (normalized observations and rewards;
  then ``--resume``d), MiniGrid-Empty-5x5-v0 (``Dict`` observations) and
  natgrad/PixelCartPole-v1 (CNN): ``progress.csv`` cell by cell, every checkpoint's arrays
  (names, dtype, shape, bytes) and metadata, ``config.json``, ``eval.json``; run ids and wall
  times left out.
* ``NaturalGradient.minimize`` as in README's custom loop under several options, and an epoch of
  ``model.fit`` after ``enable_natural_gradient``, on a digits MLP: weights, optimizer variables,
  per-step statistics.

Prints a row per check, "identical", "DIFFERS" or "FAILED" with the first difference, and exits
1 unless all are identical. ``--base HEAD --head HEAD`` shows that the runs are deterministic.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("agents", "natgrad")  # all that the children import from a tree
VOLATILE_KEYS = {"run_id", "wall_time", "steps_per_second"}  # per-run ids and timings
HEADER_BYTES = 16 + 32  # checkpoint magic, then the SHA-256 of the .npz payload
SMALL = ("--seed", "0", "--set", "checkpoint_every=2", "--set", "eval_episodes=2")
# env id, steps of 3 updates, the preset's n_steps shrunk, steps to --resume to (or 0)
TRAIN_RUNS = (("CartPole-v1", 1536, 256, 0), ("Pendulum-v1", 1536, 256, 0),
              ("Hopper-v5", 1536, 256, 2560), ("MiniGrid-Empty-5x5-v0", 1536, 64, 0),
              ("natgrad/PixelCartPole-v1", 384, 32, 0))
MINIMIZE_VARIANTS = {  # NaturalGradient options; "readme" is README's usage
    "readme": dict(max_kl=0.01), "gauss_newton": dict(max_kl=0.02, curvature="gauss_newton"),
    "hessian": dict(curvature="hessian", damping=0.1, learning_rate=0.5),
    "no_trust_region": dict(learning_rate=0.2, cg_iters=5),
    "adaptive_damping": dict(max_kl=0.01, adaptive_damping=True),
    "kl_fn": dict(max_kl=0.01, hvp_method="reverse_over_reverse")}
Result = tuple[bool | None, str]  # (differs, or None when a side failed; detail)


def optimizer_child(out: Path) -> None:
    """In the child: ``minimize`` and ``fit`` on a digits MLP; writes the arrays and imports."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras
    from sklearn.datasets import load_digits

    import agents
    import natgrad

    x, y = load_digits(return_X_y=True)
    x, y = (x[:500] / 16.0).astype("float32"), y[:500].astype("int32")  # last fit batch: 20
    arrays: dict[str, np.ndarray] = {}

    def mlp() -> keras.Model:
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, activation="tanh"),
                                 keras.layers.Dense(10)])

    def keep(name: str, model: keras.Model, opt: keras.optimizers.Optimizer) -> None:
        for kind, variables in (("weight", model.weights), ("optimizer", opt.variables)):
            arrays.update({f"{name}/{kind}{i}": v.numpy() for i, v in enumerate(variables)})

    def minimize_four_times(name: str, options: dict) -> None:
        model, opt = mlp(), natgrad.NaturalGradient(**options)
        old = tf.Variable(tf.zeros((len(x), 10)))  # log-probabilities before the step

        def loss_fn() -> tf.Tensor:
            return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                y, model(x), from_logits=True))

        def kl_fn() -> tf.Tensor:
            new = tf.nn.log_softmax(model(x))
            return tf.reduce_mean(tf.reduce_sum(tf.exp(old) * (old - new), axis=-1))

        curvature = dict(kl_fn=kl_fn) if name == "kl_fn" else dict(
            outputs_fn=lambda: model(x), output_distribution=natgrad.distributions.CATEGORICAL)

        @tf.function
        def step() -> dict[str, tf.Tensor]:
            old.assign(tf.nn.log_softmax(model(x)))
            return opt.minimize(loss_fn, model.trainable_variables, **curvature)

        stats = [step() for _ in range(4)]
        arrays.update({f"{name}/stats/{k}": np.array([s[k] for s in stats]) for k in stats[0]})
        keep(name, model, opt)

    for name, options in MINIMIZE_VARIANTS.items():
        minimize_four_times(name, options)
    model = mlp()
    model.compile(optimizer=natgrad.NaturalGradient(max_kl=0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    natgrad.enable_natural_gradient(model)
    history = model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0).history
    arrays.update({f"fit/history/{k}": np.array(v) for k, v in history.items()})
    keep("fit", model, model.optimizer)
    np.savez(out / "optimizer.npz", **arrays)
    (out / "imports.json").write_text(json.dumps({m.__name__: m.__file__
                                                  for m in (agents, natgrad)}))


def export_tree(spec: str, dest: Path) -> str:
    """Puts the tree ``spec`` (a directory, or a git revision) at ``dest``; returns a label.

    Of a directory, the packages are copied whole: what Python imports there, including files
    that git ignores (the label names those: a commit would leave them out)."""
    if Path(spec).is_dir():
        source = Path(spec).resolve()
        for package in PACKAGES:
            shutil.copytree(source / package, dest / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        listed = subprocess.run(["git", "-C", source, "ls-files", "-oi", "--exclude-standard",
                                 *PACKAGES], capture_output=True, text=True)
        ignored = [n for n in listed.stdout.split("\n") if n and "__pycache__" not in n]
        notes = ["the working tree"] if source == REPO else []
        if ignored and not listed.returncode:
            notes.append(f"git ignores {', '.join(ignored)}: a commit would leave them out")
        return f"directory {source}" + (f" ({'; '.join(notes)})" if notes else "")
    found = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", f"{spec}^{{commit}}"],
                           capture_output=True, text=True)
    if found.returncode:
        raise SystemExit(f"{spec!r} is neither a directory nor a git revision")
    archive = subprocess.run(["git", "-C", REPO, "archive", found.stdout.strip(), *PACKAGES],
                             capture_output=True, check=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", dest], input=archive, check=True)
    return f"{spec} ({found.stdout.strip()})"


def run_child(argv: list[str], tree: Path, label: str) -> str | None:
    """``python ARGV`` in ``tree``; returns None, or its exit status and last stderr line."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTHON", "TF_", "OMP_", "MKL_", "OPENBLAS_", "CUDA_"))}
    env.update(PYTHONPATH=str(tree), PYTHONHASHSEED="0", TF_CPP_MIN_LOG_LEVEL="2",
               CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", MPLBACKEND="Agg")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *argv], cwd=tree, env=env, capture_output=True,
                          text=True)
    print(f"  {label}: exit {done.returncode}, {time.perf_counter() - started:.1f} s",
          file=sys.stderr, flush=True)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    return f"exit {done.returncode}: {last}" if done.returncode else None


def run_side(tree: Path, out: Path, debug: bool) -> dict[str, str | None]:
    """Runs every check's children on one tree; returns ``{check: None or its failure}``."""
    failures: dict[str, str | None] = {}
    out.mkdir(parents=True)
    for env_id, steps, n_steps, resume_steps in TRAIN_RUNS:
        run_dir = str(out / env_id.replace("/", "_"))
        failures[env_id] = run_child(["-m", "agents", "train", env_id, "--out", run_dir, "--steps",
                                      str(steps), "--set", f"n_steps={n_steps}", *SMALL],
                                     tree, f"train {env_id}")
        if resume_steps and not failures[env_id]:
            failures[env_id] = run_child(["-m", "agents", "train", "--resume", run_dir,
                                          "--steps", str(resume_steps)], tree, "  --resume")
    failures["optimizer"] = run_child([__file__, "--child", str(out)], tree, "optimizer")
    for name, path in ({} if failures["optimizer"] else
                       json.loads((out / "imports.json").read_text())).items():
        if debug:
            print(f"  {name} imported from {path}", file=sys.stderr)
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            failures["optimizer"] = f"{name} imported from {path}, not from {tree}"
    return failures


def scrub(value):
    """``value`` (parsed JSON) without the keys that differ from run to run."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    return [scrub(v) for v in value] if isinstance(value, list) else value


def json_diff(a, b, where: str = "") -> str | None:
    """The path and values of the first difference between two JSON values, or None."""
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return f"{where or '/'} keys differ: {sorted(a.keys() ^ b.keys())[:4]}"
        return next((d for k in a if (d := json_diff(a[k], b[k], f"{where}/{k}"))), None)
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b, strict=True))
                     if (d := json_diff(x, y, f"{where}[{i}]"))), None)
    same = json.dumps(a) == json.dumps(b)  # NaN == NaN, 1 != 1.0: as they were written
    return None if same else f"{where}: {json.dumps(a)[:40]} vs {json.dumps(b)[:40]}"


def array_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> str | None:
    """The first array that differs in name, dtype, shape or bytes (with its max |diff|)."""
    if a.keys() != b.keys():
        return (f"names differ: base only {sorted(a.keys() - b.keys())[:3]}, "
                f"head only {sorted(b.keys() - a.keys())[:3]}")
    for name in sorted(a):
        x, y = a[name], b[name]
        if (x.dtype, x.shape) != (y.dtype, y.shape):
            return f"{name}: {x.dtype}{x.shape} vs {y.dtype}{y.shape}"
        if x.tobytes() != y.tobytes():
            numeric = x.dtype.kind in "biuf"
            return name + (f": max |diff| {np.nanmax(np.abs(x - y.astype(float))):.3g}"
                           if numeric else "")
    return None


def read_checkpoint(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """``(meta, arrays)`` of a checkpoint file; its magic is kept as the array ``<magic>``."""
    data = path.read_bytes()
    if hashlib.sha256(data[HEADER_BYTES:]).digest() != data[16:HEADER_BYTES]:
        raise ValueError(f"{path}: checksum mismatch")
    with np.load(io.BytesIO(data[HEADER_BYTES:]), allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    return meta, {**arrays, "<magic>": np.frombuffer(data[:16], np.uint8)}


def progress_diff(a: Path, b: Path) -> Result:
    """The first differing cell of two ``progress.csv`` files, timing columns left out."""
    tables = []
    for path in (a, b):
        rows = list(csv.reader(io.StringIO(path.read_text(), newline="")))
        tables.append([[v for i, v in enumerate(row) if i >= len(rows[0])
                        or rows[0][i] not in VOLATILE_KEYS] for row in rows])
    (ta, tb), header = tables, tables[0][0]
    r = next((r for r, (ra, rb) in enumerate(zip(ta, tb, strict=False)) if ra != rb), None)
    if r is None and len(ta) != len(tb):
        return True, f"{len(ta) - 1} vs {len(tb) - 1} rows"
    if r is None:
        return False, f"{len(ta) - 1} rows x {len(header)} columns"
    c = next((c for c, (x, y) in enumerate(zip(ta[r], tb[r], strict=False)) if x != y), None)
    if c is None:
        return True, f"row {r}: {len(ta[r])} vs {len(tb[r])} cells"
    return True, f"row {r} {header[c] if c < len(header) else c}: {ta[r][c]} vs {tb[r][c]}"


def compare(check: str, a: Path, b: Path) -> dict[str, Result]:
    """The rows of one check (a training run's directory, or the optimizer's arrays)."""
    if check == "optimizer":
        loaded = [dict(np.load(d / "optimizer.npz", allow_pickle=False)) for d in (a, b)]
        groups = sorted({name.split("/")[0] for x in loaded for name in x})
        parts = [[{k: v for k, v in x.items() if k.split("/")[0] == g} for x in loaded]
                 for g in groups]
        return {g: (bool(d := array_diff(*p)), d or f"{len(p[0])} arrays")
                for g, p in zip(groups, parts, strict=True)}
    a, b = (d / check.replace("/", "_") for d in (a, b))
    results = {"progress.csv": progress_diff(a / "progress.csv", b / "progress.csv")}
    names = [sorted(p.name for p in (d / "checkpoints").glob("*.ckpt")) for d in (a, b)]
    if names[0] != names[1] or not names[0]:
        return {**results, "checkpoints": (True, f"files {names[0]} vs {names[1]}")}
    arrays_diff = meta_diff = None
    for name in names[0]:
        (ma, xa), (mb, xb) = (read_checkpoint(d / "checkpoints" / name) for d in (a, b))
        arrays_diff = arrays_diff or ((diff := array_diff(xa, xb)) and f"{name} {diff}")
        meta_diff = meta_diff or ((diff := json_diff(scrub(ma), scrub(mb))) and f"{name} {diff}")
    files = f"{len(names[0])} files"
    results["checkpoint arrays"] = (bool(arrays_diff), arrays_diff or f"{files}, {len(xa)} arrays")
    results["checkpoint meta"] = (bool(meta_diff), meta_diff or f"{files}, {len(ma)} keys")
    for name in ("config.json", "eval.json"):
        sa, sb = (scrub(json.loads((d / name).read_text())) for d in (a, b))
        results[name] = (bool(diff := json_diff(sa, sb)), diff or f"{len(json.dumps(sa))} "
                                                                  "bytes of JSON")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", help="git revision or directory (required)")
    parser.add_argument("--head", default=str(REPO),
                        help="git revision or directory (default: the working tree)")
    parser.add_argument("--out", type=Path, help="also write the report here as JSON")
    parser.add_argument("--debug", action="store_true",
                        help="print the imported module files; keep the temporary folder")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        optimizer_child(args.child)
        return 0
    if not args.base:
        parser.error("--base is required")
    started, work = time.perf_counter(), Path(tempfile.mkdtemp(prefix="compare_behaviour_"))
    labels, failures, report = {}, {}, []
    try:
        for side, spec in (("base", args.base), ("head", args.head)):
            labels[side] = export_tree(spec, work / side / "tree")
            print(f"{side}: {labels[side]}", file=sys.stderr, flush=True)
            failures[side] = run_side(work / side / "tree", work / side / "out", args.debug)
        for check in failures["base"]:
            failed = "; ".join(f"{side} {f[check]}" for side, f in failures.items() if f[check])
            try:
                results = {"": (None, failed)} if failed else compare(
                    check, work / "base" / "out", work / "head" / "out")
            except (OSError, ValueError, IndexError, KeyError) as exc:  # missing/broken file
                results = {"": (None, f"{type(exc).__name__}: {exc}")}
            report += [{"check": f"{check} {name}".strip(), "detail": detail,
                        "status": "FAILED" if differs is None else
                        "DIFFERS" if differs else "identical"}
                       for name, (differs, detail) in results.items()]
    finally:
        if args.debug:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    seconds, same = time.perf_counter() - started, all(r["status"] == "identical" for r in report)
    width = max(len(row["check"]) for row in report)
    print(f"base: {labels['base']}\nhead: {labels['head']}\n")
    for row in report:
        print(f"{row['check']:<{width}}  {row['status']:<9}  {row['detail']}".rstrip())
    print(f"\n{'all identical' if same else 'DIFFERENT'} ({seconds:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps({**labels, "identical": same, "seconds": round(seconds),
                                        "rows": report}, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
