"""The frame shared by the checks that put one input into natgrad and into sb3-contrib.

Each check script (``check_sb3_step.py``, ``check_sb3_rollout.py``) prepares its input on the
natgrad side, runs itself again under ``--peer-python`` with ``--peer-side`` (sb3-contrib, CPU
torch, nothing from natgrad imported), and compares. This module holds the command line, the
peer call, the report file and the map between the two sides' weights; it imports nothing
from either side at import time (torch and sb3-contrib only inside the functions the peer side
calls).
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


def peer_model(env_id: str, data, prefixes: dict[str, str], log_std_key: str = "log_std",
               **settings):
    """sb3-contrib's ``TRPO`` for ``env_id`` (``sb3_peer.make_model(env_id, **settings)``, the
    peer side: one torch thread, no log output) with ``data``'s weights loaded: ``prefixes``
    maps each of ``"policy"``, ``"value"`` to load to its keys' prefix in ``data``, and
    ``data[log_std_key]`` is the policy's log σ."""
    import sb3_peer
    import torch as th
    from stable_baselines3.common.logger import configure

    th.set_num_threads(1)
    model = sb3_peer.make_model(env_id, **settings)
    model.set_logger(configure(None, [""]))
    for net, prefix in prefixes.items():
        load_sb3_weights(model.policy, net, data, prefix)
    with th.no_grad():
        model.policy.log_std.copy_(th.as_tensor(data[log_std_key]))
    return model


def sb3_weights(policy, net: str) -> dict:
    """The arrays :func:`load_sb3_weights` takes, read back from sb3-contrib's ``net`` (the
    peer side): copies, not views, since sb3-contrib's Adam updates its parameters in place."""
    layers = sb3_layers(policy, net)
    out = {f"kernel_{i}": layer.weight.detach().numpy().T.copy() for i, layer in enumerate(layers)}
    out.update({f"bias_{i}": layer.bias.detach().numpy().copy() for i, layer in enumerate(layers)})
    return out


def force_sb3_permutations(orders) -> None:
    """Makes sb3-contrib's ``RolloutBuffer.get`` take ``orders`` in turn instead of drawing
    ``np.random.permutation`` (one draw per pass over the buffer; indices into its env-major
    flattening). ``TRPO.train`` draws one for the policy step (the whole batch, order unused),
    then one per critic epoch."""
    import stable_baselines3.common.buffers as buffers

    draws = iter(orders)
    buffers.np.random.permutation = lambda size: next(draws)


def train_on_batch(model, data) -> None:
    """sb3-contrib's ``train()`` on one flat batch ``data`` (``obs``, ``actions``,
    ``advantages``, and ``returns`` if given) in a one-env buffer of ``len(obs)`` steps, with
    the log-probabilities of the model's current policy (the peer side)."""
    import torch as th

    n = len(data["obs"])
    with th.no_grad():
        _, log_prob, _ = model.policy.evaluate_actions(th.as_tensor(data["obs"]),
                                                       th.as_tensor(data["actions"]))
    buffer = model.rollout_buffer
    buffer.reset()
    for key in ("observations", "actions", "advantages", "returns"):
        source = "obs" if key == "observations" else key
        if source in data:
            getattr(buffer, key)[:, 0] = data[source]
    buffer.log_probs[:, 0] = log_prob.numpy()
    buffer.pos, buffer.full = n, True
    # sb3-contrib has no public call that trains on a given batch; train() does, and reads the
    # learning-rate schedule's progress, which learn() would have set.
    model._current_progress_remaining = 1.0  # noqa: SLF001
    model.train()


def sb3_trust_region(env_id: str, action_dim: int) -> dict:
    """sb3-contrib's ``target_kl`` and damping for ``env_id`` as natgrad's settings: its KL and
    Fisher are averaged over the ``action_dim`` dimensions, natgrad's are joint, so
    ``max_kl = target_kl·D`` and ``cg_damping = damping·D`` (see ``agents/presets.toml``)."""
    import sb3_peer

    settings = sb3_peer.settings(env_id)[0]
    return {"max_kl": settings.get("target_kl", 0.01) * action_dim,
            "cg_damping": settings["cg_damping"] * action_dim}


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


def check_main(argv, *, doc: str, envs: list[str], out: str | Callable[..., str],
               peer_metavar: tuple, peer_side: Callable[..., int],
               check: Callable[..., dict], describe: Callable[[dict], list[str]],
               options: dict[str, dict] | None = None) -> int:
    """Parses the command line; either runs the peer side, or ``check(env_id, peer_python,
    work_dir, **option_values)`` per env, prints ``describe(report)`` and writes the reports
    to ``--out``.

    ``options`` maps a script's own flags to their ``add_argument`` keywords; their parsed
    values go to ``check`` by name. ``out`` may be a function of those values (the default
    report file then depends on them)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--envs", nargs="+", default=envs)
    add_peer_python(parser)
    parser.add_argument("--out")
    for flag, keywords in (options or {}).items():
        parser.add_argument(flag, **keywords)
    parser.add_argument("--peer-side", nargs=len(peer_metavar), metavar=peer_metavar,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_side:
        return peer_side(*args.peer_side)
    require_peer_python(parser, args.peer_python)
    names = [flag.lstrip("-").replace("-", "_") for flag in options or {}]
    values = {name: getattr(args, name) for name in names}
    out_file = args.out or (out(**values) if callable(out) else out)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    reports = []
    with tempfile.TemporaryDirectory() as work:
        for env_id in args.envs:
            report = check(env_id, args.peer_python, Path(work), **values)
            reports.append(report)
            print("\n".join(describe(report)))
    bench_common.write_json(out_file, reports)
    print(f"wrote {out_file}")
    return 0
