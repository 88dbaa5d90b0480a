"""Which Gymnasium spaces a TRPO agent takes, and how their values reach the networks and the env.

Observations (:class:`ObservationEncoder`) become one of two structures, per batch of ``N``:

* **vector only**: a float32 array ``[N, D]``: a 1-D ``Box`` as it is; any other ``Box`` (an
  image smaller than ``MIN_IMAGE_SIZE``, a grid) flattened; ``Discrete(n)`` one-hot ``[n]``;
  ``MultiDiscrete`` one-hot per component, concatenated; ``MultiBinary`` as 0/1; a ``Dict`` of
  these concatenated in key order. Such an agent keeps the MLP policies with NumPy rollouts.
* **with images**: a dict ``{"vector": [N, D] float32 (if any), "image_<key>": [N, H, W, C]
  uint8}``. An image is a ``uint8`` ``Box`` of shape ``(H, W)``, ``(H, W, C)`` or ``(C, H, W)``
  (``C ≤ 4``, as frame stacking gives) with ``H, W ≥ MIN_IMAGE_SIZE``; it reaches the network
  as raw ``uint8`` HWC (the model scales it by 1/255). The top-level image key is ``"pixels"``.

Observation normalization (``normalize_obs``) standardizes the vector part only.

Actions (:func:`action_layout`, :func:`env_actions`): ``Discrete`` (an index ``[]``), a 1-D
``Box`` (``[D]`` float32, clipped to the bounds for the env), a 1-D ``MultiDiscrete`` (``[M]``
int32, shifted by ``start``) and a 1-D ``MultiBinary`` (``[D]`` 0/1).

Anything else (``Tuple``, ``Graph``, ``Sequence``, ``Text``, ``OneOf``, nested ``Dict``, an
action ``Box`` of rank ≠ 1, ...) is refused by :func:`check_spaces` with its name.
This module imports no TensorFlow: the command line checks spaces before loading it.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np

MIN_IMAGE_SIZE = 36  # the smallest side the Nature-DQN trunk (8/4, 4/2, 3/1 convolutions) takes
VECTOR_KEY = "vector"
TOP_IMAGE_KEY = "pixels"
SUPPORTED_SPACES = (
    "observations: Box (1-D vectors, uint8 images (H, W[, C]) or (C, H, W), other shapes "
    "flattened), Discrete, MultiDiscrete, MultiBinary, or a Dict of these; "
    "actions: Discrete, a 1-D Box, a 1-D MultiDiscrete or a 1-D MultiBinary"
)


def map_obs(fn, *obs):
    """``fn`` applied leaf by leaf to observations that are arrays or dicts of arrays."""
    if isinstance(obs[0], dict):
        return {k: fn(*(o[k] for o in obs)) for k in obs[0]}
    return fn(*obs)


def flatten_time(x):
    """``[T, E, ...] -> [T·E, ...]`` (time-major order), leaf by leaf."""
    return map_obs(lambda a: a.reshape(a.shape[0] * a.shape[1], *a.shape[2:]), x)


def obs_leaves(obs) -> list:
    """``[(name, array)]`` of an array (name ``""``) or a dict of arrays (sorted by key)."""
    return sorted(obs.items()) if isinstance(obs, dict) else [("", obs)]


def _image_layout(space) -> str | None:
    """``"hw"``, ``"hwc"`` or ``"chw"`` for an image ``Box``, else None."""
    if not (isinstance(space, gym.spaces.Box) and space.dtype == np.uint8):
        return None
    shape = space.shape
    if len(shape) == 2:
        layout, (h, w) = "hw", shape
    elif len(shape) == 3 and shape[-1] <= 4:
        layout, (h, w) = "hwc", shape[:2]
    elif len(shape) == 3 and shape[0] <= 4:
        layout, (h, w) = "chw", shape[1:]
    else:
        return None
    return layout if min(h, w) >= MIN_IMAGE_SIZE else None


def _vector_size(space) -> int | None:
    """Width of ``space`` as a vector feature, None if it cannot be one."""
    if isinstance(space, gym.spaces.Box):
        return int(np.prod(space.shape))
    if isinstance(space, gym.spaces.Discrete):
        return int(space.n)
    if isinstance(space, gym.spaces.MultiDiscrete):
        return int(np.sum(space.nvec))
    if isinstance(space, gym.spaces.MultiBinary):
        return int(np.prod(space.shape))
    return None


def _unsupported(kind: str, space, detail: str = "") -> ValueError:
    shown = " ".join(str(space).split())
    return ValueError(f"unsupported {kind} space {type(space).__name__}: {shown}{detail}; "
                      f"supported: {SUPPORTED_SPACES}")


class ObservationEncoder:
    """Maps raw (vector-env) observations of ``space`` to the networks' inputs; see the module
    docstring. ``vector_dim`` is ``D`` (0 if none), ``image_shapes`` maps each image key of the
    encoded dict to ``(H, W, C)``.

    Raises:
      ValueError: ``space`` (or one of its ``Dict`` entries, named) is not supported.
    """

    def __init__(self, space: gym.Space):
        self.space = space
        if isinstance(space, gym.spaces.Dict):
            parts = list(space.spaces.items())
        else:
            parts = [(None, space)]
        self._vector_parts: list[tuple] = []   # (key, space)
        self._image_parts: list[tuple] = []    # (key, encoded key, layout)
        self.image_shapes: dict[str, tuple] = {}
        for key, sub in parts:
            where = "" if key is None else f" (the Dict entry {key!r})"
            layout = _image_layout(sub)
            if layout is not None:
                name = TOP_IMAGE_KEY if key is None else f"image_{key}"
                self._image_parts.append((key, name, layout))
                shape = sub.shape
                self.image_shapes[name] = {"hw": (*shape, 1), "hwc": tuple(shape),
                                           "chw": (*shape[1:], shape[0])}[layout]
            elif _vector_size(sub) is not None and not (
                    isinstance(sub, gym.spaces.MultiDiscrete) and len(sub.shape) != 1):
                self._vector_parts.append((key, sub))
            else:
                raise _unsupported("observation", sub, where)
        self.vector_dim = sum(_vector_size(s) for _, s in self._vector_parts)
        self.has_images = bool(self._image_parts)
        # A 1-D Box (the common case) skips the general path: rollouts call this every step.
        self._plain = isinstance(space, gym.spaces.Box) and len(space.shape) == 1

    # Structure -----------------------------------------------------------------------------

    def leaf_specs(self):
        """``(shape, dtype)`` of one encoded sample, or a dict of them (with images)."""
        if not self.has_images:
            return (self.vector_dim,), np.float32
        specs = {name: (shape, np.uint8) for name, shape in self.image_shapes.items()}
        if self.vector_dim:
            specs[VECTOR_KEY] = ((self.vector_dim,), np.float32)
        return specs

    def zeros(self, leading: tuple):
        """An encoded buffer of zeros, ``[*leading, ...]`` per leaf."""
        specs = self.leaf_specs()
        if isinstance(specs, dict):
            return {k: np.zeros((*leading, *s), d) for k, (s, d) in specs.items()}
        return np.zeros((*leading, *specs[0]), specs[1])

    # Raw observations --------------------------------------------------------------------------

    def _get(self, raw, key):
        return raw if key is None else raw[key]

    def vector_part(self, raw) -> np.ndarray | None:
        """The vector features of a raw batch, float64 ``[N, D]`` (before normalization)."""
        if self._plain:
            return np.asarray(raw, np.float64)
        if not self._vector_parts:
            return None
        features = []
        for key, space in self._vector_parts:
            x = np.asarray(self._get(raw, key))
            n = x.shape[0]
            if isinstance(space, gym.spaces.Discrete):
                x = np.eye(int(space.n))[x.astype(np.int64) - int(space.start)]
            elif isinstance(space, gym.spaces.MultiDiscrete):
                x = x.astype(np.int64) - space.start
                x = np.concatenate([np.eye(int(k))[x[:, m]] for m, k in enumerate(space.nvec)],
                                   axis=1)
            features.append(np.asarray(x, np.float64).reshape(n, -1))
        return features[0] if len(features) == 1 else np.concatenate(features, axis=1)

    def encode(self, raw, obs_rms=None):
        """The networks' input for a raw batch (vector part standardized by ``obs_rms``)."""
        if self._plain:
            return np.asarray(raw, np.float32) if obs_rms is None else obs_rms.normalize(raw)
        vector = self.vector_part(raw)
        if vector is not None:
            vector = (vector.astype(np.float32) if obs_rms is None
                      else obs_rms.normalize(vector))
        if not self.has_images:
            return vector
        encoded = {} if vector is None else {VECTOR_KEY: vector}
        for key, name, layout in self._image_parts:
            x = np.asarray(self._get(raw, key), np.uint8)
            encoded[name] = (x[..., None] if layout == "hw" else
                             np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "chw"
                             else x)
        return encoded

    def as_batch(self, obs) -> tuple:
        """``(raw batch, single)`` for one raw observation or a batch of them.

        Raises:
          ValueError: an observation of another shape, naming the expected one.
        """
        space = self.space
        if isinstance(space, gym.spaces.Dict):
            if not isinstance(obs, dict) or set(obs) != set(space.spaces):
                raise ValueError(f"predict expects a dict with keys {sorted(space.spaces)}; "
                                 f"got {type(obs).__name__}")
            arrays = {k: np.asarray(obs[k]) for k in space.spaces}
            single = all(a.shape == space[k].shape for k, a in arrays.items())
            if not single and not all(a.shape[1:] == space[k].shape
                                      for k, a in arrays.items()):
                raise ValueError("predict expects observations shaped "
                                 f"{ {k: s.shape for k, s in space.spaces.items()} } or batches "
                                 f"of them; got { {k: a.shape for k, a in arrays.items()} }")
            return ({k: a[None] for k, a in arrays.items()} if single else arrays), single
        x = np.asarray(obs)
        shape = space.shape
        if x.shape != shape and x.shape[1:] != shape:
            raise ValueError(f"predict expects an observation of shape {shape} or a batch "
                             f"(B, {', '.join(map(str, shape))}); got shape {x.shape}")
        single = x.shape == shape
        return (x[None] if single else x), single

    @staticmethod
    def single(raw_batch, i: int):
        """Observation ``i`` of a raw batch, as a batch of one."""
        return map_obs(lambda x: np.asarray(x)[i:i + 1], raw_batch)

    @staticmethod
    def stack(observations: list):
        """A raw batch from a list of single raw observations (arrays or dicts)."""
        if isinstance(observations[0], dict):
            return {k: np.stack([o[k] for o in observations]) for k in observations[0]}
        return np.stack(observations)


# Actions -------------------------------------------------------------------------------------


def action_layout(action_space) -> tuple[tuple, type]:
    """``(shape, dtype)`` of one policy action (before :func:`env_actions`).

    Raises:
      ValueError: an action space this agent does not support, by name.
    """
    spaces = gym.spaces
    if isinstance(action_space, spaces.Discrete):
        return (), np.int32
    if isinstance(action_space, spaces.Box) and len(action_space.shape) == 1:
        return tuple(action_space.shape), np.float32
    if isinstance(action_space, (spaces.MultiDiscrete, spaces.MultiBinary)) and len(
            action_space.shape) == 1:
        return tuple(action_space.shape), np.int32
    raise _unsupported("action", action_space)


def check_spaces(observation_space, action_space) -> None:
    """Raises ``ValueError`` naming the space unless this agent supports both."""
    ObservationEncoder(observation_space)
    action_layout(action_space)


def probe_spaces(env_factory) -> tuple[gym.Space, gym.Space]:
    """``(observation_space, action_space)`` of one env made by ``env_factory`` (then closed),
    checked by :func:`check_spaces`."""
    probe = env_factory()
    try:
        check_spaces(probe.observation_space, probe.action_space)
        return probe.observation_space, probe.action_space
    finally:
        probe.close()


def env_actions(action_space, actions: np.ndarray) -> np.ndarray:
    """Policy actions as the env takes them: ``Discrete`` / ``MultiDiscrete`` indices shifted by
    the space's ``start``; ``Box`` actions clipped to its bounds (float32); ``MultiBinary`` in
    the space's dtype."""
    spaces = gym.spaces
    if isinstance(action_space, spaces.Discrete):
        return actions + int(action_space.start) if action_space.start else actions
    if isinstance(action_space, spaces.MultiDiscrete):
        return (actions + action_space.start).astype(action_space.dtype)
    if isinstance(action_space, spaces.MultiBinary):
        return np.asarray(actions).astype(action_space.dtype)
    # np.clip's values; min/max skip its per-call overhead (this runs every env step).
    return np.minimum(np.maximum(actions, action_space.low),
                      action_space.high).astype(np.float32)
