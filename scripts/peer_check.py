"""The frame shared by the checks that put one input into natgrad and into sb3-contrib.

Each check script (``check_sb3_step.py``, ``check_sb3_rollout.py``) prepares its input on the
natgrad side, runs itself again under ``--peer-python`` with ``--peer-side`` (sb3-contrib, CPU
torch, nothing from natgrad imported), and compares. This module holds the command line, the
peer call, the report file and the map between the two sides' weights; it imports nothing
from either side at import time (torch only inside :func:`load_sb3_weights`, on the peer side).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import bench_common
import numpy as np


def mlp_weights(net, prefix: str = "") -> dict:
    """A natgrad :class:`agents.nets.mlp.MLP`'s weights (a policy's or value function's
    ``trunk``) as NumPy: ``{prefix}kernel_i`` ``[in, out]`` and ``{prefix}bias_i``."""
    weights = {f"{prefix}kernel_{i}": w.numpy() for i, w in enumerate(net.kernels)}
    weights.update({f"{prefix}bias_{i}": b.numpy() for i, b in enumerate(net.biases)})
    return weights


def flat(weights: dict) -> np.ndarray:
    """Every array of ``weights`` in key order, as one float64 vector (to compare two sides'
    weights, or a step, by norms and angles)."""
    return np.concatenate([np.ravel(weights[k]) for k in sorted(weights)]).astype(np.float64)


def sb3_layers(policy, net: str) -> list:
    """The linear layers of sb3-contrib's ``MlpPolicy`` that mirror natgrad's ``net``
    (``"policy"``: the mean network, ``"value"``), input to output."""
    if net == "policy":
        return [policy.mlp_extractor.policy_net[0], policy.mlp_extractor.policy_net[2],
                policy.action_net]
    return [policy.mlp_extractor.value_net[0], policy.mlp_extractor.value_net[2],
            policy.value_net]


def load_sb3_weights(policy, net: str, weights, prefix: str = "") -> None:
    """Copies :func:`mlp_weights`' arrays (``{prefix}kernel_i``, ``{prefix}bias_i``) into the
    layers :func:`sb3_layers` names (torch, in the peer interpreter; kernels transposed to
    torch's ``[out, in]``)."""
    import torch as th

    with th.no_grad():
        for i, layer in enumerate(sb3_layers(policy, net)):
            layer.weight.copy_(th.as_tensor(weights[f"{prefix}kernel_{i}"].T))
            layer.bias.copy_(th.as_tensor(weights[f"{prefix}bias_{i}"]))


def run_peer(peer_python: str, script: str, *args: str) -> None:
    """Runs ``script --peer-side ARGS`` under ``peer_python``; raises with its output if it
    fails."""
    done = subprocess.run([peer_python, str(Path(script).resolve()), "--peer-side", *args],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"sb3-contrib side failed:\n{done.stdout}{done.stderr}")


def add_peer_python(parser: argparse.ArgumentParser) -> None:
    """``--peer-python`` (default ``NATGRAD_PEER_PYTHON``): the interpreter with sb3-contrib."""
    parser.add_argument("--peer-python", default=os.environ.get("NATGRAD_PEER_PYTHON"))


def require_peer_python(parser: argparse.ArgumentParser, peer_python: str | None) -> str:
    """``peer_python``, or the parser's usage error (exit status 2) naming what is needed."""
    if not peer_python:
        parser.error("needs --peer-python (or NATGRAD_PEER_PYTHON): a Python with sb3-contrib "
                     "and torch; see README")
    return peer_python


def check_main(argv, *, doc: str, envs: list[str], out: str, peer_metavar: tuple,
               peer_side: Callable[..., int], check: Callable[[str, str, Path], dict],
               describe: Callable[[dict], list[str]]) -> int:
    """Parses the command line; either runs the peer side, or ``check(env_id, peer_python,
    work_dir)`` per env, prints ``describe(report)`` and writes the reports to ``--out``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=envs)
    add_peer_python(parser)
    parser.add_argument("--out", default=out)
    parser.add_argument("--peer-side", nargs=len(peer_metavar), metavar=peer_metavar,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_side:
        return peer_side(*args.peer_side)
    require_peer_python(parser, args.peer_python)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for env_id in args.envs:
            report = check(env_id, args.peer_python, Path(work))
            reports.append(report)
            print("\n".join(describe(report)))
    bench_common.write_json(args.out, reports)
    print(f"wrote {args.out}")
    return 0
