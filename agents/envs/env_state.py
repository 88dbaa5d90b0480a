"""One sub-environment's state as JSON and arrays, so a resume continues bit for bit, no pickle.

:func:`capture_env_state` reads an env into an :class:`EnvState` (JSON ``meta``, named
``arrays``); :func:`restore_env_state` checks every field against a live env made the same way
(type, shape, dtype, range) before it writes any, so a malformed state changes nothing. Nothing
is unpickled or evaluated. Captured: each wrapper of :data:`WRAPPERS` (another wrapper or base
env raises :class:`UnsupportedEnvState`: the caller re-seeds instead), the base env's
``np_random`` (its bit generator's state) and, by family: classic control
(:data:`CLASSIC_FIELDS`); MuJoCo's ``mj_getState(mjSTATE_INTEGRATION)`` (time, qpos, qvel, act,
warm start, controls, applied forces: all a later ``mj_step`` reads) plus
:data:`MUJOCO_READ_FIELDS`, what the envs read from the last step before the next (without
them Ant's and Humanoid's first reward after a restore differs); ALE's own bytes,
``cloneState(include_rng=True).serialize()`` (sticky actions draw from that RNG); MiniGrid's
grid (``Grid.encode``), agent cell, direction, step count and carried object, for the
:data:`MINIGRID_ENVS`, whose ``step`` reads nothing else.

The underscored names (``_elapsed_steps``, ``_has_reset``, ``_max_episode_steps``,
``_np_random``, ``_np_random_seed``) are Gymnasium internals with no public accessor; this
module alone touches them. Checked with Gymnasium 1.4, MuJoCo 4.0, ale-py 0.12 and MiniGrid
3.0: ``tests/test_env_state.py`` fails when a release changes them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import NamedTuple

import gymnasium as gym
import gymnasium.wrappers as gw
import numpy as np

from agents.envs.factories import PixelObservation

FORMAT = 1
CLASSIC_FIELDS = {"CartPoleEnv": ("state", "steps_beyond_terminated"),
                  "PendulumEnv": ("state", "last_u"), "AcrobotEnv": ("state",),
                  "MountainCarEnv": ("state",), "Continuous_MountainCarEnv": ("state",)}
#: mjData fields Gymnasium's MuJoCo envs read between steps (``get_body_com`` is ``xpos``,
#: Humanoid's centre of mass ``xipos``, ``cinert``, ``cvel``, ``cfrc_ext``, ...).
MUJOCO_READ_FIELDS = ("xpos", "xquat", "xmat", "xipos", "ximat", "subtree_com", "cinert",
                      "cvel", "cfrc_ext", "cfrc_int", "site_xpos", "site_xmat", "geom_xpos",
                      "geom_xmat", "qfrc_actuator", "qfrc_constraint", "qfrc_bias",
                      "qfrc_passive", "qacc", "actuator_force", "ten_length", "ten_velocity",
                      "sensordata")
MINIGRID_ENVS = ("EmptyEnv", "DoorKeyEnv")
MAX_ALE_STATE_BYTES = 1 << 20
BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


class EnvState(NamedTuple):
    """One env's state: ``meta`` (JSON-able) and ``arrays`` (name -> NumPy array)."""

    meta: dict
    arrays: dict


class UnsupportedEnvState(Exception):
    """An env (a wrapper or base env) whose state this module does not know."""


class EnvStateError(ValueError):
    """A malformed saved state: a missing field, or one of the wrong type, shape or range."""


class EnvStateMismatch(EnvStateError):
    """A well-formed state of another env (or another version of it) than the live one."""


def _layers(env: gym.Env) -> list:
    layers = [env]
    while isinstance(layers[-1], gym.Wrapper):
        layers.append(layers[-1].env)
    return layers


def _family(base: gym.Env) -> str:
    cls, module = type(base).__name__, type(base).__module__
    if module.startswith("gymnasium.envs.classic_control.") and cls in CLASSIC_FIELDS:
        return "classic"
    if module.startswith("gymnasium.envs.mujoco.") and hasattr(base, "data"):
        return "mujoco"
    if module == "ale_py.env" and cls == "AtariEnv":
        return "ale"
    if module.startswith("minigrid.envs.") and cls in MINIGRID_ENVS:
        return "minigrid"
    raise UnsupportedEnvState(f"{cls} ({module}) is not an env whose state is known here")


# Checks: each returns the checked value or raises EnvStateError naming the field -----------

def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _get(meta, key: str, check: Callable[[object], bool], what: str):
    if not isinstance(meta, dict) or key not in meta:
        raise EnvStateError(f"missing field {key!r}")
    if not check(meta[key]):
        raise EnvStateError(f"field {key!r} is {meta[key]!r}, expected {what}")
    return meta[key]


def _same(meta, key: str, live) -> None:
    """A field naming what the state belongs to (a class, a size): another value is an
    :class:`EnvStateMismatch`."""
    if _get(meta, key, lambda v: True, "") != live:
        raise EnvStateMismatch(f"{key} is {meta[key]!r} in the saved state, {live!r} here")


def _array(arrays: dict, name: str, like: np.ndarray | None = None, *, kinds: str = "f",
           shape: tuple | None = None) -> np.ndarray:
    """A copy of ``arrays[name]`` with ``like``'s dtype and shape (or of a dtype kind in
    ``kinds`` and ``shape``), finite when floating."""
    value = arrays.get(name)
    if not isinstance(value, np.ndarray):
        raise EnvStateError(f"missing array {name!r}")
    shape = like.shape if like is not None else shape
    if (value.dtype != like.dtype if like is not None else value.dtype.kind not in kinds) or (
            shape is not None and value.shape != tuple(shape)):
        expected = like.dtype if like is not None else f"kind {kinds!r}"
        raise EnvStateError(f"array {name!r} is {value.dtype}{list(value.shape)}, expected "
                            f"{expected}{'' if shape is None else list(shape)}")
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        raise EnvStateError(f"array {name!r} holds NaN or infinite values")
    return value.copy()


def _setter(obj, name: str, value) -> Callable[[], None]:
    return lambda: setattr(obj, name, value)


# Wrappers ----------------------------------------------------------------------------------

SAME, FRAMES = "same", "frames"  # equal to the live value; a sequence of arrays
BOOL = (lambda v: isinstance(v, bool), "a boolean")
COUNT = (lambda v: _is_int(v) and v >= 0, "an integer >= 0")
WRAPPERS = {  # each wrapper known here: its attributes, and how each is checked
    gw.TimeLimit: {"_max_episode_steps": SAME,
                   "_elapsed_steps": (lambda v: v is None or COUNT[0](v), "null or an integer")},
    gw.OrderEnforcing: {"_has_reset": BOOL},
    gw.PassiveEnvChecker: {"checked_reset": BOOL, "checked_step": BOOL,
                           "checked_data_reuse": BOOL},
    gw.FrameStackObservation: {"stack_size": SAME, "obs_queue": FRAMES},
    gw.AtariPreprocessing: {"obs_buffer": FRAMES, "lives": COUNT, "game_over": BOOL},
    gw.FilterObservation: {}, PixelObservation: {},
}


def _capture_wrapper(layer, arrays: dict, prefix: str) -> dict:
    meta = {"type": type(layer).__name__}
    for name, rule in WRAPPERS[type(layer)].items():
        value = getattr(layer, name)
        if rule == FRAMES:
            arrays[prefix + name] = np.stack([np.asarray(x) for x in value])
            if arrays[prefix + name].dtype.hasobject:
                raise UnsupportedEnvState(f"{meta['type']} of observations that are not arrays")
        else:
            meta[name] = value.item() if isinstance(value, np.generic) else value
    return meta


def _write_frames(layer, name: str, frames: np.ndarray) -> None:
    live = getattr(layer, name)
    if isinstance(live, deque):  # FrameStackObservation's queue
        setattr(layer, name, deque([f.copy() for f in frames], maxlen=live.maxlen))
    else:  # AtariPreprocessing's buffers, which ALE writes into: in place
        for target, frame in zip(live, frames, strict=True):
            target[...] = frame


def _plan_wrapper(layer, meta: dict, arrays: dict, prefix: str) -> list:
    steps = []
    for name, rule in WRAPPERS[type(layer)].items():
        if rule == SAME:
            _same(meta, name, getattr(layer, name))
        elif rule == FRAMES:
            frames = _array(arrays, prefix + name, np.stack(list(getattr(layer, name))))
            steps.append(lambda layer=layer, name=name, f=frames: _write_frames(layer, name, f))
        else:
            steps.append(_setter(layer, name, _get(meta, name, *rule)))
    return steps


# Base envs, by family: capture(base, arrays) -> meta; plan(base, meta, arrays) -> steps -----

def _classic(base, arrays: dict) -> dict:
    meta = {}
    for name in CLASSIC_FIELDS[type(base).__name__]:
        value = getattr(base, name)
        if value is None or _is_int(value):
            meta[name] = {"kind": "int", "value": None if value is None else int(value)}
            continue
        arrays[name] = np.array(value)
        if arrays[name].dtype.kind != "f" or arrays[name].ndim > 1:
            raise UnsupportedEnvState(f"{type(base).__name__}.{name} is {value!r}")
        meta[name] = {"kind": "tuple" if isinstance(value, tuple) else
                      "array" if arrays[name].ndim else "scalar"}
    return meta


def _plan_classic(base, meta: dict, arrays: dict) -> list:
    steps = []
    for name in CLASSIC_FIELDS[type(base).__name__]:
        field = _get(meta, name, lambda v: isinstance(v, dict), "an object")
        kind = _get(field, "kind", lambda v: v in ("int", "tuple", "array", "scalar"),
                    "int, tuple, array or scalar")
        if kind == "int":
            value = _get(field, "value", lambda v: v is None or _is_int(v), "null or an integer")
        else:
            live = getattr(base, name)
            shape = () if kind == "scalar" else None if live is None else np.shape(live)
            value = _array(arrays, name, shape=shape)
            if value.ndim != (kind != "scalar"):
                raise EnvStateError(f"array {name!r} has {value.ndim} dimensions")
            value = tuple(value) if kind == "tuple" else value[()] if kind == "scalar" else value
        steps.append(_setter(base, name, value))
    return steps


def _mujoco(base, arrays: dict) -> dict:
    import mujoco

    spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
    arrays["integration"] = np.empty(mujoco.mj_stateSize(base.model, spec), np.float64)
    mujoco.mj_getState(base.model, base.data, arrays["integration"], spec)
    for name in MUJOCO_READ_FIELDS:
        arrays[name] = np.array(getattr(base.data, name))
    return {"spec": spec, "nq": base.model.nq, "nv": base.model.nv}


def _plan_mujoco(base, meta: dict, arrays: dict) -> list:
    import mujoco

    spec = int(mujoco.mjtState.mjSTATE_INTEGRATION)
    for key, live in (("spec", spec), ("nq", base.model.nq), ("nv", base.model.nv)):
        _same(meta, key, live)
    state = _array(arrays, "integration", shape=(mujoco.mj_stateSize(base.model, spec),))
    read = {name: _array(arrays, name, np.asarray(getattr(base.data, name)))
            for name in MUJOCO_READ_FIELDS}

    def write():
        mujoco.mj_setState(base.model, base.data, state, spec)
        mujoco.mj_forward(base.model, base.data)
        for name, value in read.items():  # as the last step left them (see MUJOCO_READ_FIELDS)
            getattr(base.data, name)[...] = value
    return [write]


def _ale(base, arrays: dict) -> dict:
    blob = base.ale.cloneState(include_rng=True).serialize()
    arrays["ale_state"] = np.frombuffer(blob, np.uint8).copy()
    return {}


def _plan_ale(base, meta: dict, arrays: dict) -> list:
    import ale_py

    blob = _array(arrays, "ale_state", kinds="u")
    if blob.dtype != np.uint8 or blob.ndim != 1 or not 0 < blob.size <= MAX_ALE_STATE_BYTES:
        raise EnvStateError(f"array 'ale_state' is {blob.dtype}{list(blob.shape)}, expected "
                            f"at most {MAX_ALE_STATE_BYTES} uint8 bytes")
    live = base.ale.cloneState(include_rng=True)
    try:  # ALE checks the bytes only by loading them: a trial load, then the env's own back
        state = ale_py.ALEState(blob.tobytes())
        if state.serialize() != blob.tobytes():
            raise ValueError("they do not read back as written")
        base.ale.restoreState(state)
    except Exception as exc:  # noqa: BLE001 - ALE's reader says what it could not read
        raise EnvStateError(f"ALE cannot load 'ale_state' ({exc})") from None
    finally:
        base.ale.restoreState(live)
    return [lambda: base.ale.restoreState(state)]


def _minigrid(base, arrays: dict) -> dict:
    from minigrid.core.world_object import Box

    if any(isinstance(obj, Box) and obj.contains is not None
           for obj in [*base.grid.grid, base.carrying]):
        raise UnsupportedEnvState("a MiniGrid box with an object inside")
    arrays["grid"] = base.grid.encode()
    carrying = None if base.carrying is None else [int(x) for x in base.carrying.encode()]
    return {"agent_pos": [int(x) for x in base.agent_pos], "agent_dir": int(base.agent_dir),
            "step_count": int(base.step_count), "carrying": carrying}


def _plan_minigrid(base, meta: dict, arrays: dict) -> list:
    from minigrid.core.constants import IDX_TO_COLOR, IDX_TO_OBJECT
    from minigrid.core.grid import Grid
    from minigrid.core.world_object import WorldObj

    def is_object(v) -> bool:  # [type, color, state] as Grid.encode writes them
        return (len(v) == 3 and all(_is_int(x) for x in v) and int(v[0]) in IDX_TO_OBJECT
                and int(v[1]) in IDX_TO_COLOR and int(v[2]) in (0, 1, 2))

    grid = _array(arrays, "grid", base.grid.encode())
    if not all(is_object(v) for v in grid.reshape(-1, 3)):
        raise EnvStateError("array 'grid' holds an unknown object, color or state")
    w, h = base.width, base.height
    pos = _get(meta, "agent_pos", lambda v: isinstance(v, list) and len(v) == 2 and all(
        _is_int(x) for x in v) and 0 <= v[0] < w and 0 <= v[1] < h, f"a cell of the {w}x{h} grid")
    direction = _get(meta, "agent_dir", lambda v: _is_int(v) and 0 <= v < 4, "0, 1, 2 or 3")
    count = _get(meta, "step_count", *COUNT)
    carrying = _get(meta, "carrying", lambda v: v is None or (isinstance(v, list) and is_object(
        v)), "null or [type, color, state]")

    def write():
        base.grid = Grid.decode(grid)[0]
        base.agent_pos, base.agent_dir, base.step_count = tuple(pos), direction, count
        base.carrying = None if carrying is None else WorldObj.decode(*carrying)
    return [write]


FAMILIES = {"classic": (_classic, _plan_classic), "mujoco": (_mujoco, _plan_mujoco),
            "ale": (_ale, _plan_ale), "minigrid": (_minigrid, _plan_minigrid)}


def _plan_rng(base, meta: dict) -> Callable[[], None]:
    state = _get(meta, "np_random", lambda v: v is None or isinstance(v, dict),
                 "null or a bit generator's state")
    seed = _get(meta, "np_random_seed", lambda v: v is None or _is_int(v), "null or an integer")
    generator = None
    if state is not None:
        name = state.get("bit_generator")
        if name not in BIT_GENERATORS:
            raise EnvStateError(f"np_random has the bit generator {name!r}; expected one of "
                                f"{', '.join(BIT_GENERATORS)}")
        generator = np.random.Generator(getattr(np.random, name)())
        try:
            generator.bit_generator.state = state
        except (TypeError, ValueError, KeyError, OverflowError) as exc:
            raise EnvStateError(f"np_random is not a valid {name} state ({exc})") from None

    def write():  # (the env's generator is read where used: none of these envs keep it)
        base._np_random, base._np_random_seed = generator, seed
    return write


# The two entry points ----------------------------------------------------------------------

def capture_env_state(env: gym.Env) -> EnvState:
    """The state of ``env``, its wrappers and base env, as JSON and arrays (read only).

    Raises:
      UnsupportedEnvState: a wrapper or base env whose state this module does not know.
    """
    *wrappers, base = _layers(env)
    arrays: dict = {}
    for layer in wrappers:
        if type(layer) not in WRAPPERS:
            raise UnsupportedEnvState(f"the wrapper {type(layer).__name__} is not known here")
    family = _family(base)
    rng = base._np_random
    meta = {"format": FORMAT, "family": family, "env": type(base).__name__,
            "wrappers": [_capture_wrapper(layer, arrays, f"wrapper{depth}/")
                         for depth, layer in enumerate(wrappers)],
            "np_random": None if rng is None else rng.bit_generator.state,
            "np_random_seed": None if base._np_random_seed is None else int(
                base._np_random_seed),
            "base": FAMILIES[family][0](base, arrays)}
    return EnvState(meta, arrays)


def restore_env_state(env: gym.Env, state: EnvState, *, check_only: bool = False) -> None:
    """Puts ``env`` (made as the saved one was, and reset) into ``state``, or with
    ``check_only`` only checks that it could. Every field is checked before the first write.

    Raises:
      EnvStateMismatch: the state is of another env, wrapper chain or model.
      EnvStateError: a missing field, or one of the wrong type, shape, dtype or range.
    """
    meta, arrays = state
    *wrappers, base = _layers(env)
    _same(meta, "format", FORMAT)
    try:
        family = _family(base)
    except UnsupportedEnvState as exc:
        raise EnvStateMismatch(str(exc)) from None
    _same(meta, "family", family)
    _same(meta, "env", type(base).__name__)
    saved = _get(meta, "wrappers", lambda v: isinstance(v, list) and all(
        isinstance(w, dict) for w in v), "a list of objects")
    _same({"wrappers": [w.get("type") for w in saved]}, "wrappers",
          [type(layer).__name__ for layer in wrappers])
    if not isinstance(arrays, dict):
        raise EnvStateError("its arrays are not a mapping")
    steps = []
    for depth, (layer, layer_meta) in enumerate(zip(wrappers, saved, strict=True)):
        steps += _plan_wrapper(layer, layer_meta, arrays, f"wrapper{depth}/")
    steps.append(_plan_rng(base, meta))
    steps += FAMILIES[family][1](base, _get(meta, "base", lambda v: isinstance(v, dict),
                                            "an object"), arrays)
    if not check_only:
        for step in steps:
            step()

