"""``TRPOConfig``: every TRPO hyperparameter in one dataclass, and the per-env presets.

A run's configuration is resolved as ``TRPOConfig defaults <- preset(env id) <- overrides``
(:func:`resolve_config`), then checked by :meth:`TRPOConfig.validate` before any environment
is stepped. Presets live in ``agents/presets.toml`` (one table per Gymnasium env id, after the
RL Baselines3 Zoo TRPO hyperparameters).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ACTIVATIONS = ("tanh", "relu", "elu")
VECTORIZATIONS = ("sync", "async")
ON_NON_FINITE = ("stop", "skip")
MIN_FISHER_SAMPLES = 32  # fewer states than this make a trust region no batch can pass

# Size bounds checked before anything is allocated: a typo such as n_steps=1000000000000 is
# refused in one line instead of failing deep in NumPy ("Unable to allocate 29.1 TiB").
MAX_N_ENVS = 4096
MAX_BATCH_SIZE = 1 << 26  # n_envs * n_steps samples per update
MAX_HIDDEN_WIDTH = 1 << 16
MAX_PARAMETER_BYTES = 1 << 31  # hidden-to-hidden weights of both networks, float64
MAX_EVAL_EPISODES = 100_000  # one return each, kept in memory and in eval.json (~3 MB)
MAX_EVAL_EPISODE_STEPS = 100_000_000  # the step cap of one evaluation episode
FLOAT_BYTES = 8
ROLLOUT_FLOATS = 6  # per sample besides observations and actions: rewards, values, GAE, ...


def physical_memory_bytes() -> int | None:
    """This machine's physical memory, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def rollout_bytes(n_envs: int, n_steps: int, obs_size: int = 1, action_size: int = 1) -> int:
    """Estimated bytes of one update's rollout buffers: ``n_envs * n_steps`` samples, each with
    an observation and its bootstrap observation, an action and :data:`ROLLOUT_FLOATS` floats,
    at :data:`FLOAT_BYTES` each."""
    return n_envs * n_steps * (2 * obs_size + action_size + ROLLOUT_FLOATS) * FLOAT_BYTES


def _gib(n: int) -> str:
    return f"{n / (1 << 30):,.1f} GiB"


def check_memory(config: TRPOConfig, obs_size: int, action_size: int) -> None:
    """Raises ``ValueError`` (one line: the fields, the estimate and the limit) when the
    rollout buffers of ``config`` for observations of ``obs_size`` and actions of
    ``action_size`` numbers would not fit in this machine's physical memory."""
    need = rollout_bytes(config.n_envs, config.n_steps, obs_size, action_size)
    have = physical_memory_bytes()
    if have is not None and need > have:
        raise ValueError(
            f"invalid TRPO configuration: n_envs={config.n_envs}, n_steps={config.n_steps} "
            f"need about {_gib(need)} of rollout buffers for observations of {obs_size} and "
            f"actions of {action_size} numbers (limit: this machine's {_gib(have)} of memory)")


def is_int(x) -> bool:
    """An ``int`` that is not a ``bool`` (a JSON or TOML integer)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_num(x) -> bool:
    """A finite ``int`` or ``float`` that is not a ``bool``.

    (``natgrad.checks`` holds natgrad's argument checks; the CLI validates a configuration
    before TensorFlow is imported, and importing natgrad imports TensorFlow, so these two
    predicates stay here.)"""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass
class TRPOConfig:
    """Hyperparameters of one TRPO run (Schulman et al., 2015), with the peers' defaults."""

    env_id: str = _help("Gymnasium environment id, e.g. 'CartPole-v1'.", "")
    seed: int = _help("Seed of every random number: initial weights, actions, envs.", 0)
    n_envs: int = _help("Number of environments stepped in parallel.", 2)
    vectorization: str = _help("'sync' (one process) or 'async' (one process per env).", "sync")
    n_steps: int = _help("Steps per environment per update; a batch holds n_envs*n_steps.", 1024)
    total_steps: int = _help("Environment steps (summed over envs) of a whole run.", 100_000)
    gamma: float = _help("Discount factor γ in [0, 1].", 0.99)
    gae_lambda: float = _help("GAE λ in [0, 1]: bias/variance of the advantage estimate.", 0.95)
    max_kl: float = _help("Trust-region radius δ: largest mean KL(π_old‖π_new) of a step.", 0.01)
    cg_iters: int = _help("Conjugate-gradient iterations for the natural-gradient direction.", 10)
    cg_damping: float = _help("Damping λ added to the Fisher's diagonal in CG: (F + λI)s = g.", 0.1)
    entropy_coef: float = _help(
        "Entropy bonus c >= 0: the policy step maximizes the surrogate plus c times the batch's "
        "mean policy entropy (OpenAI baselines' entcoeff); 0 is plain TRPO. No preset sets it: "
        "0.01 did not keep InvertedPendulum's sigma from shrinking (README, Benchmarks).", 0.0)
    line_search_shrink: float = _help("Backtracking factor of the line search, in (0, 1).", 0.8)
    line_search_max_tries: int = _help("Line-search points tried before the step is rejected.",
                                       10)
    fisher_subsample: int = _help("Use every k-th sample of the batch for Fisher products.", 1)
    policy_hidden: tuple = _help("Hidden layer widths of the policy network.", (64, 64))
    value_hidden: tuple = _help("Hidden layer widths of the value network.", (64, 64))
    activation: str = _help("Hidden activation of both networks: tanh, relu or elu.", "tanh")
    critic_lr: float = _help("Adam learning rate of the value network.", 1e-3)
    critic_epsilon: float = _help(
        "Adam's ε in the value fit: SB3's and CleanRL's 1e-5 (Keras' own default is 1e-7).", 1e-5)
    critic_epochs: int = _help("Passes of the value fit over each batch.", 10)
    critic_batch_size: int = _help("Minibatch size of the value fit.", 128)
    normalize_obs: bool = _help("Standardize observations with running statistics (clip 10).",
                                False)
    normalize_reward: bool = _help(
        "Divide rewards by the running std of the discounted return (clip 10), as SB3's "
        "VecNormalize; reported episode returns stay unscaled.", False)
    normalize_advantages: bool = _help("Standardize advantages to mean 0, std 1 per batch.", True)
    log_std_init: float = _help("Initial log standard deviation of a Gaussian policy.", 0.0)
    overlap_value_fit: bool = _help(
        "Run each value fit on a second thread while the next batch is collected (the same "
        "run, bit for bit). Pays off only with a spare core: Hopper-v5 1M on 2 idle cores "
        "197 s instead of 250 s, beside other runs no faster. On in the MuJoCo presets.",
        False)
    tf_threads: int = _help(
        "TensorFlow's intra- and inter-op threads (0: TensorFlow's default, one per core), "
        "and NumPy's BLAS threads while learn() runs (0: left as they are). Small MLP updates "
        "run faster on 1: idle pool threads spin on the cores the envs step on. TensorFlow's "
        "pools take it only before its first op in the process.", 0)
    checkpoint_every: int = _help("Write a checkpoint every this many updates (and at the end).",
                                  10)
    eval_episodes: int = _help("Episodes of a deterministic evaluation.", 10)
    eval_max_episode_steps: int = _help(
        "Evaluation cuts an episode after this many steps (for envs that never end).", 100_000)
    on_non_finite: str = _help(
        "A NaN/inf observation, reward, return or value loss: 'stop' (checkpoint, then raise) "
        "or 'skip' (drop the batch, count it in progress.csv).", "stop")
    save_env_state: bool = _help(
        "Also pickle the sync envs whose state is not saved as arrays (agents/envs/env_state.py) "
        "into checkpoints, for a bit-exact resume of those too. Loading them runs code from "
        "the file: only done when the loader passes trust_env_state.", False)

    def validate(self) -> TRPOConfig:
        """Raises ``ValueError`` naming the field, the bad value and what is accepted."""
        problems = []

        def need(ok: bool, name: str, accepted: str):
            if not ok:
                problems.append(f"{name}={getattr(self, name)!r} (accepted: {accepted})")

        need(isinstance(self.env_id, str) and bool(self.env_id), "env_id", "a non-empty env id")
        need(is_int(self.seed) and self.seed >= 0, "seed", "an integer >= 0")
        for name in ("n_envs", "n_steps", "total_steps", "cg_iters", "fisher_subsample",
                     "critic_epochs", "critic_batch_size", "checkpoint_every", "eval_episodes",
                     "eval_max_episode_steps"):
            need(is_int(getattr(self, name)) and getattr(self, name) >= 1, name, "an integer >= 1")
        need(is_int(self.line_search_max_tries) and self.line_search_max_tries >= 0,
             "line_search_max_tries", "an integer >= 0")
        need(is_int(self.tf_threads) and self.tf_threads >= 0, "tf_threads", "an integer >= 0")
        need(self.vectorization in VECTORIZATIONS, "vectorization", " or ".join(VECTORIZATIONS))
        need(self.activation in ACTIVATIONS, "activation", ", ".join(ACTIVATIONS))
        need(self.on_non_finite in ON_NON_FINITE, "on_non_finite", " or ".join(ON_NON_FINITE))
        for name in ("gamma", "gae_lambda"):
            value = getattr(self, name)
            need(is_num(value) and 0.0 <= value <= 1.0, name, "a number in [0, 1]")
        for name in ("max_kl", "critic_lr", "critic_epsilon"):
            need(is_num(getattr(self, name)) and getattr(self, name) > 0, name, "a number > 0")
        for name in ("cg_damping", "entropy_coef"):
            need(is_num(getattr(self, name)) and getattr(self, name) >= 0, name, "a number >= 0")
        need(is_num(self.line_search_shrink) and 0.0 < self.line_search_shrink < 1.0,
             "line_search_shrink", "a number in (0, 1)")
        need(is_num(self.log_std_init), "log_std_init", "a finite number")
        for name in ("policy_hidden", "value_hidden"):
            value = getattr(self, name)
            need(isinstance(value, tuple) and all(is_int(w) and w >= 1 for w in value), name,
                 "a tuple of integers >= 1, e.g. (64, 64)")
        if not problems:
            problems.extend(self._size_problems())
        if not problems and math.ceil(self.batch_size / self.fisher_subsample) < min(
                MIN_FISHER_SAMPLES, self.batch_size):
            problems.append(
                f"fisher_subsample={self.fisher_subsample!r} leaves "
                f"{math.ceil(self.batch_size / self.fisher_subsample)} of the batch's "
                f"{self.batch_size} states for the Fisher: the trust region would rest on too "
                f"few states and every step would be rejected (accepted: at most "
                f"{max(1, self.batch_size // MIN_FISHER_SAMPLES)} with this batch)")
        for name in ("normalize_obs", "normalize_reward", "normalize_advantages", "save_env_state",
                     "overlap_value_fit"):
            need(isinstance(getattr(self, name), bool), name, "true or false")
        if problems:
            raise ValueError("invalid TRPO configuration: " + "; ".join(problems))
        return self

    def _size_problems(self) -> list[str]:
        """Sizes no machine this runs on can hold (each with its estimate and limit)."""
        problems = []
        if self.n_envs > MAX_N_ENVS:
            problems.append(f"n_envs={self.n_envs} (limit: {MAX_N_ENVS:,} environments)")
        need = rollout_bytes(self.n_envs, self.n_steps)
        have = physical_memory_bytes()
        if self.batch_size > MAX_BATCH_SIZE or (have is not None and need > have):
            memory = "" if have is None else f" and this machine's {_gib(have)} of memory"
            problems.append(
                f"n_steps={self.n_steps} with n_envs={self.n_envs} makes a batch of "
                f"{self.batch_size:,} samples, at least {_gib(need)} of rollout buffers "
                f"(limit: {MAX_BATCH_SIZE:,} samples{memory})")
        for name in ("policy_hidden", "value_hidden"):
            widths = getattr(self, name)
            if any(w > MAX_HIDDEN_WIDTH for w in widths):
                problems.append(f"{name}={widths!r} (limit: {MAX_HIDDEN_WIDTH:,} units a "
                                "layer)")
        if self.eval_episodes > MAX_EVAL_EPISODES:
            problems.append(f"eval_episodes={self.eval_episodes} (limit: "
                            f"{MAX_EVAL_EPISODES:,} episodes)")
        if self.eval_max_episode_steps > MAX_EVAL_EPISODE_STEPS:
            problems.append(f"eval_max_episode_steps={self.eval_max_episode_steps} (limit: "
                            f"{MAX_EVAL_EPISODE_STEPS:,} steps)")
        weights = sum(a * b for widths in (self.policy_hidden, self.value_hidden)
                      for a, b in zip(widths, widths[1:], strict=False))
        if not problems and weights * FLOAT_BYTES > MAX_PARAMETER_BYTES:
            problems.append(
                f"policy_hidden={self.policy_hidden!r}, value_hidden={self.value_hidden!r} "
                f"make {weights:,} hidden weights, about {_gib(weights * FLOAT_BYTES)} "
                f"(limit: {_gib(MAX_PARAMETER_BYTES)})")
        return problems

    @property
    def batch_size(self) -> int:
        """Samples per update: ``n_envs * n_steps``."""
        return self.n_envs * self.n_steps

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


FIELD_NAMES = tuple(f.name for f in dataclasses.fields(TRPOConfig))

# Fields added after runs and checkpoints began to record their whole configuration, with the
# value every run written before them used. A saved configuration without one gets that value
# (:func:`complete_saved_config`), so older runs resume and load exactly as they trained.
ADDED_FIELDS = {
    "tf_threads": 0,  # TensorFlow's default pools
    "critic_epsilon": 1e-7,  # Keras' Adam default
    "entropy_coef": 0.0,  # plain TRPO
}


def complete_saved_config(config: dict) -> dict:
    """A configuration read from a run's ``config.json`` or a checkpoint, with the
    :data:`ADDED_FIELDS` it predates filled in."""
    return {**{k: v for k, v in ADDED_FIELDS.items() if k not in config}, **config}


def _load_presets() -> dict[str, dict]:
    text = resources.files("agents").joinpath("presets.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


_PRESETS = _load_presets()
PRESET_NAMES = tuple(_PRESETS)


def load_preset(name: str) -> dict:
    """The preset table for ``name`` (an env id) as a dict of TRPOConfig fields + total_steps."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESET_NAMES)}")
    return dict(_PRESETS[name])


def config_from_dict(values: dict) -> TRPOConfig:
    """Builds a TRPOConfig from a dict, rejecting unknown keys and turning lists into tuples."""
    unknown = sorted(set(values) - set(FIELD_NAMES))
    if unknown:
        raise ValueError(
            f"unknown TRPO setting(s) {', '.join(unknown)}; accepted: {', '.join(FIELD_NAMES)}"
        )
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return TRPOConfig(**values)


def resolve_config(env_id: str, preset: str | None = None, **overrides) -> TRPOConfig:
    """``defaults <- preset <- overrides``, validated.

    ``preset=None`` uses the preset named ``env_id`` if there is one; a preset name uses that
    table (for example a MuJoCo preset for another MuJoCo env).
    """
    values: dict = {}
    if preset is not None:
        values.update(load_preset(preset))
    elif env_id in _PRESETS:
        values.update(load_preset(env_id))
    values.update(overrides)
    values["env_id"] = env_id
    return config_from_dict(values).validate()
