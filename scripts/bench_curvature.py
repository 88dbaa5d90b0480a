"""Benchmark natgrad's curvature-vector products against a gradient, and CG against a dense solve.

Part 1 (TRPO Fisher setting): for a Keras tanh MLP policy with categorical outputs, the loss is
the batch-mean KL ``KL(π_old ‖ π_θ)`` between fixed old logits and the model's logits. It times,
inside ``tf.function`` (and again with ``jit_compile=True`` when XLA works on this machine),

* ``gradient``: one gradient of that KL (the unit every other row is divided by);
* ``hvp_reverse_over_reverse`` / ``hvp_forward_over_reverse``: ``hessian_vector_product`` of
  the KL (at ``θ = θ_old`` its Hessian is the Fisher, so both are Fisher-vector products);
* ``fvp_gauss_newton``: ``gauss_newton_vector_product`` with the analytic categorical Fisher,
  the exact Fisher-vector product;
* ``fvp_linearized_per_cg_step``: ``gauss_newton_operator`` (the model run once, then each
  product reuses its activations) applied ``CG_ITERS`` times in a chain, as inside one CG
  solve; the time is divided by ``CG_ITERS``, so it is the cost of one Fisher-vector product
  as CG (and so ``NaturalGradient`` and TRPO) pays it, forward pass included.

Each call is forced with ``.numpy()`` on a reduced scalar. The methods are measured round-robin
within each repeat (with a rotating start) so that drift hits them alike; a row's ``ms`` is the
median over repeats and its ratio the median of the same-repeat ratios to the gradient. The
target check (the fastest Fisher-vector product <= 1.4x a gradient) uses, per policy, the best
of the four products in either mode, each against the gradient of its own mode.

Part 2: conjugate gradient (10 iterations, HVP matvec, in ``tf.function``) against the dense
Hessian (``natgrad.hessian``) plus ``tf.linalg.solve``, for MLPs of about 100, 1,000 and 5,000
float64 parameters, with CG's error relative to the dense solution.

Usage::

    python scripts/bench_curvature.py                  # full run
    python scripts/bench_curvature.py --quick          # smoke run: small policy, fewer repeats
    python scripts/bench_curvature.py --out results.json --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import natgrad  # noqa: E402
from natgrad import distributions  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_common, also under -m
import bench_common  # noqa: E402
from round_robin import paired_ratio, time_round_robin  # noqa: E402

TARGET_RATIO = 1.4
PRODUCTS = ("hvp_reverse_over_reverse", "hvp_forward_over_reverse", "fvp_gauss_newton",
            "fvp_linearized_per_cg_step")
CG_ITERS = 10
CG_DAMPING = 0.1

# (name, input dim, hidden widths, outputs, batch) for part 1.
POLICIES = (
    ("trpo_64x64", 17, (64, 64), 6, 2048),
    ("large_256x256", 17, (256, 256), 6, 8192),
)
# (approximate parameter count, input dim, hidden widths, outputs, batch) for part 2.
CG_PROBLEMS = (
    (100, 4, (12,), 3, 64),
    (1000, 10, (60,), 6, 64),
    (5000, 20, (200,), 4, 64),
)


# Part 1: curvature products vs a gradient -------------------------------------------------------


def _sum_all(tensors) -> tf.Tensor:
    return tf.add_n([tf.reduce_sum(t) for t in tensors])


def make_policy_fns(model: keras.Model, x: tf.Tensor, old_logits: tf.Tensor, vector: list,
                    jit_compile: bool) -> dict:
    """The four timed computations for one policy, each returning a reduced scalar."""
    variables = model.trainable_variables

    def kl():
        return distributions.categorical_kl(old_logits, model(x))

    def gradient():
        with tf.GradientTape() as tape:
            loss = kl()
        return _sum_all(tape.gradient(loss, variables))

    def hvp(method):
        def product():
            return _sum_all(natgrad.hessian_vector_product(kl, variables, vector, method=method))
        return product

    def fvp_gauss_newton():
        return _sum_all(natgrad.gauss_newton_vector_product(
            lambda: model(x), variables, vector,
            distributions.categorical_fisher_vector_product))

    def fvp_linearized_chain():
        matvec = natgrad.gauss_newton_operator(
            lambda: model(x), variables, distributions.categorical_fisher_vector_product)

        def step(i, v):
            fv = matvec(v)
            scale = tf.math.rsqrt(_sum_all([tf.square(t) for t in fv]) + 1e-30)
            return i + 1, [t * scale for t in fv]

        _, v = tf.while_loop(lambda i, v: i < CG_ITERS, step, (tf.constant(0), vector))
        return _sum_all(v)

    raw = {
        "gradient": gradient,
        "hvp_reverse_over_reverse": hvp("reverse_over_reverse"),
        "hvp_forward_over_reverse": hvp("forward_over_reverse"),
        "fvp_gauss_newton": fvp_gauss_newton,
        "fvp_linearized_per_cg_step": fvp_linearized_chain,
    }
    return {name: tf.function(fn, jit_compile=jit_compile) for name, fn in raw.items()}


PER_CALL_PRODUCTS = {"fvp_linearized_per_cg_step": CG_ITERS}


def check_products_agree(model, x, old_logits, vector) -> float:
    """Largest relative difference between the four products (they are all the Fisher)."""
    variables = model.trainable_variables

    def kl():
        return distributions.categorical_kl(old_logits, model(x))

    @tf.function
    def all_products():
        return [
            natgrad.flatten(natgrad.hessian_vector_product(kl, variables, vector,
                                                           method="reverse_over_reverse")),
            natgrad.flatten(natgrad.hessian_vector_product(kl, variables, vector,
                                                           method="forward_over_reverse")),
            natgrad.flatten(natgrad.gauss_newton_vector_product(
                lambda: model(x), variables, vector,
                distributions.categorical_fisher_vector_product)),
            natgrad.flatten(natgrad.gauss_newton_operator(
                lambda: model(x), variables,
                distributions.categorical_fisher_vector_product)(vector)),
        ]

    ror, for_, gn, lin = (p.numpy().astype(np.float64) for p in all_products())
    scale = max(np.linalg.norm(gn), 1e-30)
    return float(max(np.linalg.norm(d - gn) for d in (ror, for_, lin)) / scale)


def xla_available() -> tuple[bool, str]:
    try:
        probe = tf.function(lambda a: tf.reduce_sum(tf.tanh(a @ a)), jit_compile=True)
        probe(tf.ones((4, 4))).numpy()
    except Exception as e:  # noqa: BLE001 - any failure means "no XLA here"
        return False, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    return True, ""


def bench_policies(repeats: int, min_seconds: float, quick: bool, use_xla: bool) -> list[dict]:
    rows = []
    policies = POLICIES[:1] if quick else POLICIES
    for name, in_dim, hidden, out_dim, batch in policies:
        model = bench_common.tanh_mlp(in_dim, hidden, out_dim, seed=0)
        rng = np.random.default_rng(0)
        x = tf.constant(rng.standard_normal((batch, in_dim)), tf.float32)
        old_logits = tf.constant(model(x))  # TRPO: the Fisher is taken at θ = θ_old
        vector = [tf.constant(rng.standard_normal(v.shape), tf.float32)
                  for v in model.trainable_variables]
        n_params = int(sum(np.prod(v.shape) for v in model.trainable_variables))
        agreement = check_products_agree(model, x, old_logits, vector)
        modes = [("graph", False)] + ([("xla", True)] if use_xla else [])
        for mode, jit in modes:
            fns = make_policy_fns(model, x, old_logits, vector, jit_compile=jit)
            try:
                times = time_round_robin(fns, repeats, min_seconds)
                times = {m: [t / PER_CALL_PRODUCTS.get(m, 1) for t in ts]
                         for m, ts in times.items()}
            except Exception as e:  # noqa: BLE001 - an XLA failure on this model
                if not jit:
                    raise
                rows.append({"policy": name, "mode": mode, "error": f"{type(e).__name__}: "
                             f"{str(e).splitlines()[0][:200]}"})
                continue
            for method, seconds in times.items():
                rows.append({
                    "policy": name,
                    "layers": f"{in_dim}-{'-'.join(map(str, hidden))}-{out_dim}",
                    "batch": batch,
                    "params": n_params,
                    "mode": mode,
                    "method": method,
                    "ms": statistics.median(seconds) * 1e3,
                    "ms_samples": [t * 1e3 for t in seconds],
                    "ratio_to_gradient": paired_ratio(seconds, times["gradient"]),
                    "max_rel_diff_between_products": agreement,
                })
    return rows


# Part 2: CG vs dense Hessian + solve -----------------------------------------------------------


def make_cg_fns(model: keras.Model, x: tf.Tensor, old_logits: tf.Tensor, b: list):
    """``(cg, dense)`` tf.functions that solve ``(H + λI) s = b`` for the Hessian of the KL."""
    variables = model.trainable_variables
    b_flat = natgrad.flatten(b)
    n = int(b_flat.shape[0])

    def kl():
        return distributions.categorical_kl(old_logits, model(x))

    def matvec(v):
        return natgrad.hessian_vector_product(kl, variables, v)

    @tf.function
    def cg():
        result = natgrad.conjugate_gradient(matvec, b, max_iters=CG_ITERS, tol=0.0,
                                            damping=CG_DAMPING)
        return natgrad.flatten(result.x)

    @tf.function
    def dense():
        h = natgrad.hessian(kl, variables)
        a = h + CG_DAMPING * tf.eye(n, dtype=h.dtype)
        return tf.linalg.solve(a, b_flat[:, None])[:, 0]

    return cg, dense


def bench_cg(repeats: int, min_seconds: float, quick: bool) -> list[dict]:
    rows = []
    problems = CG_PROBLEMS[:2] if quick else CG_PROBLEMS
    for approx, in_dim, hidden, out_dim, batch in problems:
        model = bench_common.tanh_mlp(in_dim, hidden, out_dim, seed=1, dtype="float64")
        variables = model.trainable_variables
        n = int(sum(np.prod(v.shape) for v in variables))
        rng = np.random.default_rng(1)
        x = tf.constant(rng.standard_normal((batch, in_dim)), tf.float64)
        old_logits = tf.constant(model(x))
        b_flat = tf.constant(rng.standard_normal(n), tf.float64)
        b = natgrad.unflatten(b_flat, variables)

        cg, dense = make_cg_fns(model, x, old_logits, b)
        x_cg, x_dense = cg().numpy(), dense().numpy()
        rel_err = float(np.linalg.norm(x_cg - x_dense) / np.linalg.norm(x_dense))
        times = time_round_robin(
            {"cg": lambda cg=cg: tf.reduce_sum(cg()),
             "dense": lambda dense=dense: tf.reduce_sum(dense())},
            repeats, min_seconds)
        rows.append({
            "target_params": approx,
            "params": n,
            "layers": f"{in_dim}-{'-'.join(map(str, hidden))}-{out_dim}",
            "batch": batch,
            "cg_iters": CG_ITERS,
            "damping": CG_DAMPING,
            "cg_ms": statistics.median(times["cg"]) * 1e3,
            "dense_ms": statistics.median(times["dense"]) * 1e3,
            "dense_over_cg": paired_ratio(times["dense"], times["cg"]),
            "repeats": len(times["cg"]),
            "cg_rel_error": rel_err,
        })
    return rows


# Report ----------------------------------------------------------------------------------------


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench_results/curvature.json",
                        help="path of the JSON results (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per method (default 9, or 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke mode: small policy only, fewer repeats, CG up to ~1,000 "
                             "parameters")
    parser.add_argument("--no-xla", action="store_true", help="skip the jit_compile=True rows")
    args = parser.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 9)
    if repeats < 1:
        parser.error("--repeats must be >= 1")
    min_seconds = 0.02 if args.quick else 0.1

    wall_start = time.perf_counter()
    load_before = _load_average()
    tf.random.set_seed(0)
    if args.no_xla:
        use_xla, xla_error = False, "disabled by --no-xla"
    else:
        use_xla, xla_error = xla_available()

    section_start = time.perf_counter()
    policy_rows = bench_policies(repeats, min_seconds, args.quick, use_xla)
    part1_seconds = time.perf_counter() - section_start
    section_start = time.perf_counter()
    cg_rows = bench_cg(repeats, min_seconds, args.quick)
    part2_seconds = time.perf_counter() - section_start

    timed = [r for r in policy_rows if "error" not in r]
    fvp_rows = [r for r in timed if r["method"] in PRODUCTS]
    best = {}
    for r in fvp_rows:
        current = best.get(r["policy"])
        if current is None or r["ratio_to_gradient"] < current["ratio_to_gradient"]:
            best[r["policy"]] = r
    target_met = all(r["ratio_to_gradient"] <= TARGET_RATIO for r in best.values())

    load_after = _load_average()
    print(f"natgrad curvature benchmark: TF {tf.__version__}, Keras {keras.__version__}, "
          f"{os.cpu_count()} CPUs, repeats={repeats}{' (quick)' if args.quick else ''}")
    if load_before is not None and load_before > 0.5:
        print(f"  warning: the 1-minute load average was {load_before:.2f} when this run started "
              "(an idle machine is near 0): other processes competed for the CPUs, so the times "
              "and ratios are noisier than usual")
    print("\nPart 1: products of the batch-mean categorical KL, ratio to one gradient in the "
          "same mode")
    print(bench_common.format_table(
        ["policy", "mode", "method", "params", "batch", "ms", "x gradient"],
        [[r["policy"], r["mode"], r["method"], str(r["params"]), str(r["batch"]),
          f"{r['ms']:.3f}", f"{r['ratio_to_gradient']:.2f}"] for r in timed]))
    for r in policy_rows:
        if "error" in r:
            print(f"  XLA failed for {r['policy']}: {r['error']}")
    if not use_xla:
        print(f"  XLA rows skipped: {xla_error}")
    agreement = {r["policy"]: r["max_rel_diff_between_products"] for r in timed}
    for policy, diff in agreement.items():
        print(f"  {policy}: the four products agree to a relative {diff:.1e}")

    print(f"\nPart 2: CG ({CG_ITERS} iterations, HVP matvec) vs dense Hessian + solve, "
          f"float64, damping {CG_DAMPING}")
    print(bench_common.format_table(
        ["params", "layers", "batch", "cg ms", "dense ms", "dense / cg", "cg rel err"],
        [[str(r["params"]), r["layers"], str(r["batch"]), f"{r['cg_ms']:.2f}",
          f"{r['dense_ms']:.2f}", f"{r['dense_over_cg']:.1f}", f"{r['cg_rel_error']:.2e}"]
         for r in cg_rows]))

    print(f"\nTarget: the fastest Fisher-vector product costs <= {TARGET_RATIO}x a gradient")
    for policy, r in best.items():
        verdict = "PASS" if r["ratio_to_gradient"] <= TARGET_RATIO else "FAIL"
        rows = [t for t in timed if t["policy"] == policy]
        fastest_grad = min((t for t in rows if t["method"] == "gradient"), key=lambda t: t["ms"])
        fastest_fvp = min((t for t in rows if t["method"] in PRODUCTS), key=lambda t: t["ms"])
        r["fastest_fvp_over_fastest_gradient"] = fastest_fvp["ms"] / fastest_grad["ms"]
        print(f"  {policy}: best {r['method']} ({r['mode']}) = {r['ratio_to_gradient']:.3f}x "
              f"-> {verdict}\n      (across modes: fastest product {fastest_fvp['ms']:.3f} ms "
              f"({fastest_fvp['method']}, {fastest_fvp['mode']}) / fastest gradient "
              f"{fastest_grad['ms']:.3f} ms ({fastest_grad['mode']}) = "
              f"{r['fastest_fvp_over_fastest_gradient']:.2f}x)")
    print(f"  overall: {'PASS' if target_met else 'FAIL'}")

    wall = time.perf_counter() - wall_start
    results = {
        "machine": {
            **bench_common.machine(libraries=("tensorflow", "keras", "natgrad"),
                                   cpus_key="cpu_count"),
            "xla": use_xla,
            "xla_error": xla_error or None,
            "load_average_1min_before": load_before,
            "load_average_1min_after": load_after,
        },
        "settings": {"repeats": repeats, "quick": args.quick, "min_seconds_per_sample":
                     min_seconds, "cg_iters": CG_ITERS, "cg_damping": CG_DAMPING},
        "products": policy_rows,
        "cg_vs_dense": cg_rows,
        "target": {
            "max_fvp_over_gradient": TARGET_RATIO,
            "best": {p: {"method": r["method"], "mode": r["mode"],
                         "ratio_to_gradient": r["ratio_to_gradient"],
                         "fastest_fvp_over_fastest_gradient":
                             r["fastest_fvp_over_fastest_gradient"]}
                     for p, r in best.items()},
            "met": target_met,
        },
        "wall_seconds": wall,
        "part_seconds": {"products": part1_seconds, "cg_vs_dense": part2_seconds},
    }
    bench_common.write_json(args.out, results)
    print(f"\nwrote {args.out}; {wall:.1f} s after imports (part 1 {part1_seconds:.1f} s, "
          f"part 2 {part2_seconds:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
