"""How an env id becomes an env: Gymnasium's standard wrappers for the env families that need
them, and a small pixel task for showing learning from images on a CPU.

* ``ALE/<Game>-v5`` (Atari, ``pip install -e ".[atari]"``): ``gym.make(id, frameskip=1)`` then
  ``AtariPreprocessing`` (30 no-op starts, frame skip 4 with max-pooling, 84×84 grayscale, no
  end on life loss) and ``FrameStackObservation(4)``: observations ``(4, 84, 84)`` uint8, as in
  the DQN and TRPO papers and RL Zoo's ``AtariWrapper``.
* ``MiniGrid-*`` (``pip install -e ".[minigrid]"``): the ``Dict`` observation without its
  ``mission`` text (constant per env id, and a ``Text`` space no network here takes):
  ``{"direction": Discrete(4), "image": Box(0, 255, (7, 7, 3), uint8)}``.
* ``natgrad/PixelCartPole-v1``: CartPole-v1 seen only through ``render()``: the scene drawn at
  160×240 (CartPole's own renderer, at 2/5 of its 400×600 size), its green channel averaged
  over 4×4 blocks to ``(40, 60)`` uint8, the last 2 frames stacked: ``(2, 40, 60)``. Rewards
  and episode ends are CartPole-v1's.

Every other id is ``gymnasium.make(id)`` unchanged. Nothing here imports TensorFlow.

:func:`resolve_env` turns what a user passes (an id, an env, a factory) into an id and a
factory; :func:`make_vector_env` makes the vector env an agent's rollouts step.
"""

from __future__ import annotations

import copy
import functools
import importlib

import gymnasium as gym
import numpy as np

from agents.envs.vector_env import RolloutAsyncVectorEnv, RolloutVectorEnv

PIXEL_CARTPOLE_ID = "natgrad/PixelCartPole-v1"
EXTRAS = {"ALE/": ("ale_py", "atari"), "MiniGrid-": ("minigrid", "minigrid")}


def _family(env_id: str) -> str | None:
    name = env_id.rpartition(":")[2]
    return next((prefix for prefix in EXTRAS if name.startswith(prefix)), None)


def register_env_family(env_id: str) -> None:
    """Imports the package that registers ``env_id``'s family (``ale_py``, ``minigrid``).

    Raises:
      ValueError: the package is not installed, naming the extra that installs it.
    """
    family = _family(env_id)
    if family is None:
        return
    module, extra = EXTRAS[family]
    try:
        package = importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"env id {env_id!r} needs the {module!r} package: "
                         f"pip install -e \".[{extra}]\" ({exc})") from None
    if module == "ale_py":
        gym.register_envs(package)


def make_env(env_id: str, **kwargs) -> gym.Env:
    """``gymnasium.make(env_id, **kwargs)`` with the standard wrappers of its family."""
    register_env_family(env_id)
    family = _family(env_id)
    if family == "ALE/":
        from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

        env = gym.make(env_id, frameskip=1, **kwargs)
        env = AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84,
                                 terminal_on_life_loss=False, grayscale_obs=True)
        return FrameStackObservation(env, 4)
    if family == "MiniGrid-":
        from gymnasium.wrappers import FilterObservation

        return FilterObservation(gym.make(env_id, **kwargs), ["direction", "image"])
    return gym.make(env_id, **kwargs)


class PixelObservation(gym.ObservationWrapper):
    """Replaces the observation by ``render()``: one color channel, ``block × block`` means."""

    def __init__(self, env: gym.Env, *, channel: int = 1, block: int = 10):
        super().__init__(env)
        frame = np.asarray(self.env.render()) if env.render_mode == "rgb_array" else None
        if frame is None:
            raise ValueError("PixelObservation needs an env made with render_mode='rgb_array'")
        self.channel, self.block = channel, block
        h, w = frame.shape[0] // block, frame.shape[1] // block
        self.observation_space = gym.spaces.Box(0, 255, (h, w), np.uint8)

    def observation(self, observation):
        frame = np.asarray(self.env.render())[..., self.channel]
        h, w = self.observation_space.shape
        blocks = frame[:h * self.block, :w * self.block].reshape(h, self.block, w, self.block)
        return blocks.mean(axis=(1, 3)).astype(np.uint8)


def make_pixel_cartpole(render_mode=None, **kwargs) -> gym.Env:
    """``natgrad/PixelCartPole-v1``; see the module docstring (``render_mode`` is ignored: the
    env always renders, and ``render()`` gives the full frame)."""
    from gymnasium.wrappers import FrameStackObservation

    env = gym.make("CartPole-v1", render_mode="rgb_array", **kwargs)
    env.unwrapped.screen_width, env.unwrapped.screen_height = 240, 160  # drawn at 2/5 size
    env.reset(seed=0)  # the first render needs a state
    return FrameStackObservation(PixelObservation(env, block=4), 2)


if PIXEL_CARTPOLE_ID not in gym.registry:
    gym.register(PIXEL_CARTPOLE_ID, entry_point=make_pixel_cartpole)


def resolve_env(env) -> tuple[str, callable]:
    """``(env_id, factory)`` for an env id string, a ``gymnasium.Env`` or a factory callable.

    An id may name the module that registers it, as ``gymnasium.make`` allows:
    ``"my_package.envs:MyEnv-v0"`` imports ``my_package.envs`` first. Ids are made by
    :func:`agents.envs.factories.make_env` (Atari and MiniGrid get their standard wrappers).
    """
    if isinstance(env, str):
        module, sep, name = env.rpartition(":")
        if sep:
            try:
                importlib.import_module(module)
            except ImportError as e:
                raise ValueError(f"env id {env!r}: cannot import module {module!r} ({e})") from e
        register_env_family(name)
        try:
            gym.spec(name)
        except gym.error.Error as e:
            raise ValueError(f"unknown Gymnasium env id {name!r}: {e}") from e
        return env, functools.partial(make_env, env)
    if isinstance(env, gym.Env):
        if env.spec is not None:
            return env.spec.id, functools.partial(gym.make, env.spec)
        return type(env).__name__, functools.partial(copy.deepcopy, env)
    if callable(env):
        return getattr(env, "__name__", type(env).__name__), env
    raise ValueError(f"env must be an env id, a gymnasium.Env or a factory; got {type(env)}")


def resolve_agent_env(env, overrides: dict) -> tuple[str, callable]:
    """:func:`resolve_env` for an agent, whose ``overrides`` may name the env of a factory
    (``env_id``, popped from ``overrides``); with an env id string the two must agree."""
    env_id, factory = resolve_env(env)
    if "env_id" in overrides:
        if isinstance(env, str) and overrides["env_id"] != env:
            raise ValueError(f"env_id={overrides['env_id']!r} contradicts env={env!r}")
        env_id = overrides.pop("env_id")
    return env_id, factory


def make_vector_env(factory, n_envs: int, vectorization: str) -> gym.vector.VectorEnv:
    """``n_envs`` copies, auto-reset in the same step (final obs in ``infos["final_obs"]``):
    :class:`agents.envs.vector_env.RolloutVectorEnv` (a ``SyncVectorEnv``) or
    :class:`agents.envs.vector_env.RolloutAsyncVectorEnv` (an ``AsyncVectorEnv``); both
    raise :class:`agents.envs.vector_env.ObservationShapeError` for a wrong-shape
    observation."""
    if vectorization == "sync":
        return RolloutVectorEnv([factory] * n_envs)
    return RolloutAsyncVectorEnv([factory] * n_envs)
