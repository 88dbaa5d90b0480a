"""natgrad against sb3-contrib on one task and budget, seeds pooled over several bench runs.

Reads ``summary.json`` files written by ``scripts/bench_trpo.py`` (each with both sides, or
one), takes from each the per-seed final returns of ``--env`` at ``--budget`` for natgrad and
for sb3-contrib, pools them by seed (a seed given twice must have the same return), and
prints both sides' seeds, mean ± std (population), how many seeds reach ``--threshold``, the
difference of the means with its bootstrap 95% interval, and the two-sided permutation test
of that difference (:mod:`rl_stats`). Each file's ``overrides`` are printed: pool only runs
of the same settings. ``--out`` writes the same as JSON.

Usage::

    python scripts/compare_sides.py --env Swimmer-v5 --budget 300000 --threshold 250 \\
        bench_results/trpo_1m_seeds0-2_swimmer_sb3/summary.json \\
        bench_results/trpo_1m_seeds3-5_swimmer_sb3/summary.json \\
        bench_results/trpo_300k_swimmer_seeds8-17_sb3/summary.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common  # noqa: E402
import rl_stats  # noqa: E402

SIDES = ("natgrad", "sb3")


def side_scores(summaries: list[tuple[str, dict]], env_id: str, budget: int) -> dict:
    """``{side: {seed: return}}`` pooled over ``summaries`` (``(path, summary)`` pairs).

    Raises:
      ValueError: a seed with two different returns, or no file with ``env_id`` at ``budget``.
    """
    pooled = {side: {} for side in SIDES}
    found = False
    for path, summary in summaries:
        for row in summary.get("envs", {}).get(env_id, []):
            if row["budget"] != budget:
                continue
            found = True
            for side in SIDES:
                scores = row.get(side) or {}
                for seed, value in zip(scores.get("seeds", []), scores.get("per_seed", []),
                                       strict=True):
                    known = pooled[side].get(seed)
                    if known is not None and known != value:
                        raise ValueError(f"{path}: {side} seed {seed} returns {value}, another "
                                         f"file {known}")
                    pooled[side][seed] = value
    if not found:
        raise ValueError(f"no {env_id} results at budget {budget:,} in the files given")
    return pooled


def compare(pooled: dict, threshold: float | None) -> dict:
    """Both sides' statistics and the difference natgrad − sb3-contrib."""
    result = {}
    for side in SIDES:
        seeds = sorted(pooled[side])
        values = [pooled[side][s] for s in seeds]
        result[side] = {"seeds": seeds, "per_seed": values,
                        "mean": float(np.mean(values)) if values else float("nan"),
                        "std": float(np.std(values)) if values else float("nan"),
                        "at_threshold": (None if threshold is None
                                         else int(sum(v >= threshold for v in values)))}
    a, b = result["natgrad"]["per_seed"], result["sb3"]["per_seed"]
    difference, low, high = rl_stats.bootstrap_difference_ci(a, b)
    result["difference"] = {"natgrad_minus_sb3": difference, "ci95": [low, high],
                            "permutation_p": rl_stats.permutation_test(a, b)}
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("summaries", nargs="+", type=Path, help="bench_trpo summary.json files")
    parser.add_argument("--env", required=True)
    parser.add_argument("--budget", type=int, required=True, help="env steps, as in the bench")
    parser.add_argument("--threshold", type=float, help="count the seeds at or above this")
    parser.add_argument("--out", type=Path, help="also write the result as JSON")
    args = parser.parse_args(argv)
    summaries = []
    for path in args.summaries:
        try:
            summaries.append((str(path), json.loads(path.read_text())))
        except (OSError, ValueError) as exc:
            parser.error(f"{path}: {exc}")
    try:
        pooled = side_scores(summaries, args.env, args.budget)
    except ValueError as exc:
        parser.error(str(exc))
    result = compare(pooled, args.threshold)
    for path, summary in summaries:
        print(f"{path}: overrides {summary.get('overrides') or 'none'}")
    rows = []
    for side in SIDES:
        r = result[side]
        per_seed = " / ".join(f"{s}: {v:.0f}" for s, v in zip(r["seeds"], r["per_seed"],
                                                              strict=True))
        reached = "" if r["at_threshold"] is None else f"{r['at_threshold']} of {len(r['seeds'])}"
        rows.append([side, str(len(r["seeds"])), f"{r['mean']:.0f} ± {r['std']:.0f}", reached,
                     per_seed])
    print(bench_common.format_table(
        ["side", "seeds", "mean ± std", f">= {args.threshold:g}" if args.threshold else "",
         "per seed"], rows, align="lrrrl"))
    d = result["difference"]
    print(f"natgrad − sb3-contrib: {d['natgrad_minus_sb3']:+.1f}, bootstrap 95% interval "
          f"[{d['ci95'][0]:+.1f}, {d['ci95'][1]:+.1f}], permutation test p = "
          f"{d['permutation_p']:.3f}")
    if args.out:
        bench_common.write_json(args.out, {"env": args.env, "budget": args.budget,
                                           "threshold": args.threshold,
                                           "files": [p for p, _ in summaries], **result})
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
