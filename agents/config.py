"""SAC's hyperparameters: one typed config (each field documented where it is declared), the per-env
defaults of the RL zoo, and the validation of every value.

``SACConfig`` is also the command line: ``reparam_apps.experiment.parse_cli`` turns each field into a flag
whose help is the field's docstring (``--env`` for ``env_id``), and ``contextual_defaults`` puts the
per-env table under the flags the user typed.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from reparam_apps import experiment as ex
from reparam_apps.flows import FLOW_KINDS

__all__ = ["SACConfig", "ENV_DEFAULTS", "POLICIES", "config_for", "env_table"]

DEFAULT_ENV = "Pendulum-v1"
POLICIES = ("tanh-normal", "flow")  # --policy
VECTOR_ENVS = ("sync", "async")  # --vector-env

# Per-env defaults (RL zoo hyperparameters, github.com/DLR-RM/rl-baselines3-zoo hyperparams/sac.yml).
# Anything not listed keeps the SACConfig default; flags / keyword arguments override both.
ENV_DEFAULTS: dict[str, dict[str, Any]] = {
    "Pendulum-v1":                   dict(total_steps=20_000, learning_rate=1e-3),
    "MountainCarContinuous-v0":      dict(total_steps=50_000, learning_rate=3e-4, buffer_size=50_000,
                                          batch_size=512, gamma=0.9999, tau=0.01, train_freq=32,
                                          gradient_steps=32, learning_starts=0),
    "LunarLanderContinuous-v3":      dict(total_steps=500_000, learning_rate=7.3e-4, buffer_size=1_000_000,
                                          batch_size=256, gamma=0.99, tau=0.01, learning_starts=10_000,
                                          hidden_sizes=(400, 300)),
    "BipedalWalker-v3":              dict(total_steps=500_000, learning_rate=7.3e-4, buffer_size=300_000,
                                          batch_size=256, gamma=0.98, tau=0.02, learning_starts=10_000,
                                          hidden_sizes=(400, 300)),
    "HalfCheetah-v5":                dict(total_steps=1_000_000, learning_starts=10_000),
    "Hopper-v5":                     dict(total_steps=1_000_000, learning_starts=10_000),
    "Walker2d-v5":                   dict(total_steps=1_000_000, learning_starts=10_000),
    "Ant-v5":                        dict(total_steps=1_000_000, learning_starts=10_000),
    "Humanoid-v5":                   dict(total_steps=2_000_000, learning_starts=10_000),
}


def _text(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) \
        else str(value)


def _shown(name: str, default: Any, text: str | None = None) -> dict[str, str]:
    """Field metadata for --help: the class default, then the envs whose table entry differs (at most 3)."""
    env_vals = [f"{env} {_text(vals[name])}" for env, vals in ENV_DEFAULTS.items() if name in vals]
    shown = text if text is not None else _text(default)
    if env_vals:
        shown += "; " + ", ".join(env_vals[:3]) + (", ..." if len(env_vals) > 3 else "")
    return {"shown_default": shown}


def env_table() -> str:
    """The per-env table as text (the epilog of --help)."""
    return "\n".join(f"  {env}: " + ", ".join(f"{k}={_text(v)}" for k, v in vals.items())
                     for env, vals in ENV_DEFAULTS.items())


def _parse_alpha(text: str) -> float | None:
    if text.lower() in ("auto", "none"):
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a number nor 'auto'") from None


def _choices(choices: tuple[str, ...]) -> dict[str, Any]:
    """Field metadata for a string flag with these choices (shown as {a,b} in --help)."""
    return {"choices": choices, "metavar": "{" + ",".join(choices) + "}"}


def _check_names(cls: type, names: Any) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(names) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        raise ValueError(f"unknown SAC option {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    """None means 'the default' for every option except alpha, where it means 'learn the temperature'."""
    return {k: v for k, v in values.items() if v is not None or k == "alpha"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class SACConfig(ex.TrainConfig):
    """Every SAC hyperparameter. Defaults are SB3's; ``ENV_DEFAULTS`` overrides them per env, and values
    given explicitly (keywords, flags) override both. Invalid values raise ValueError naming the field."""

    env_id: str = field(default=DEFAULT_ENV, metadata={"flag": "--env", "metavar": "ID"})
    """Gymnasium environment id (needs a continuous, bounded Box action space)."""
    total_steps: int = field(default=1_000_000, metadata=_shown("total_steps", 1_000_000))
    """Environment steps to train for (summed over the vector envs)."""
    learning_rate: float = field(default=3e-4, metadata=_shown("learning_rate", 3e-4))
    """Adam learning rate of actor, critics and temperature unless set separately below."""
    actor_lr: float | None = field(default=None, metadata={"shown_default": "learning_rate"})
    """Actor learning rate (None: ``learning_rate``)."""
    critic_lr: float | None = field(default=None, metadata={"shown_default": "learning_rate"})
    """Critic learning rate (None: ``learning_rate``)."""
    alpha_lr: float | None = field(default=None, metadata={"shown_default": "learning_rate"})
    """Temperature learning rate (None: ``learning_rate``)."""
    batch_size: int = field(default=256, metadata=_shown("batch_size", 256))
    """Transitions per gradient step."""
    buffer_size: int = field(default=1_000_000, metadata=_shown("buffer_size", 1_000_000))
    """Replay buffer capacity in transitions (preallocated, capped at ``total_steps``)."""
    learning_starts: int = field(default=100, metadata=_shown("learning_starts", 100))
    """Steps of uniformly random actions before the first gradient step."""
    train_freq: int = field(default=1, metadata=_shown("train_freq", 1))
    """Vector-env steps between training phases."""
    gradient_steps: int = field(default=1, metadata=_shown("gradient_steps", 1))
    """Gradient steps per training phase (update-to-data ratio = gradient_steps / (train_freq * num_envs))."""
    tau: float = field(default=0.005, metadata=_shown("tau", 0.005))
    """Polyak coefficient of the target critics: theta' <- tau theta + (1 - tau) theta'."""
    gamma: float = field(default=0.99, metadata=_shown("gamma", 0.99))
    """Discount factor."""
    hidden_sizes: tuple[int, ...] = field(default=(256, 256), metadata={**_shown("hidden_sizes", (256, 256)),
                                                                         "metavar": "WIDTH"})
    """Hidden layer widths of the actor and of every critic (ReLU MLPs)."""
    n_critics: int = 2
    """Critics in the ensemble; targets and the actor use the minimum over them (clipped double Q)."""
    alpha: float | None = field(default=None, metadata={"parse": _parse_alpha, "metavar": "FLOAT|auto",
                                                        "shown_default": "auto"})
    """Fixed entropy temperature; auto (None) learns it towards ``target_entropy``."""
    init_alpha: float = 1.0
    """Initial temperature when it is learned."""
    target_entropy: float | None = field(default=None, metadata={"shown_default": "-|A|"})
    """Target policy entropy in the tanh (unit-box) action space; None: -|A|."""
    num_envs: int = 1
    """Parallel environments, stepped as --vector-env says."""
    vector_env: str = field(default="sync", metadata=_choices(VECTOR_ENVS))
    """How the num_envs environments step: sync (one after another in this process, gymnasium SyncVectorEnv) or
    async (one subprocess each, stepped in parallel: AsyncVectorEnv, for environments whose step is costly)."""
    bf16: bool = False
    """Run the network matmuls of the update under bfloat16 autocast (CPU with avx512_bf16 / CUDA)."""
    compile: bool = True
    """Run each gradient step (losses, backward, Adam, Polyak) as one torch.compile'd graph where it pays: runs of
    at least 10000 gradient steps with the tanh Gaussian policy in float32 (compiling takes 10 to 60 s, a few s
    from inductor's cache; a 2x256 update then takes about half the time). Off: always the eager update."""
    policy: str = field(default="tanh-normal", metadata=_choices(POLICIES))
    """The actor's distribution: tanh-normal (the Gaussian squashed by tanh), or flow (the same Gaussian pushed
    through a normalizing flow conditioned on the state's trunk features, then squashed)."""
    policy_flow: str = field(default="iaf", metadata=_choices(FLOW_KINDS))
    """The flow of ``--policy flow``: iaf (any action dim; exact, differentiable inverse), planar (any dim),
    affine or spline (couplings: action dim >= 2)."""
    policy_flow_steps: int = 2
    """Flow steps K of ``--policy flow`` (alternating orders / halves between steps)."""

    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"total_steps", "device", "threads", "compile",
                                                                   "vector_env"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.env_id, str) or not self.env_id:
            raise ValueError(f"env_id must be a gymnasium id such as {DEFAULT_ENV!r}, got {self.env_id!r}")
        for name in ("total_steps", "batch_size", "buffer_size", "train_freq", "gradient_steps", "n_critics",
                     "num_envs", "learning_starts"):
            value = getattr(self, name)
            if not _is_int(value):
                raise ValueError(f"{name} must be an integer, got {value!r}")
            if value <= 0 and name != "learning_starts":
                raise ValueError(f"{name} must be positive, got {value!r}")
        if self.learning_starts < 0:
            raise ValueError(f"learning_starts must be >= 0, got {self.learning_starts}")
        positive = {"learning_rate": self.learning_rate, "tau": self.tau, "init_alpha": self.init_alpha}
        positive.update({name: getattr(self, name) for name in ("actor_lr", "critic_lr", "alpha_lr", "alpha")
                         if getattr(self, name) is not None})
        for name, value in positive.items():
            if not (_is_number(value) and value > 0):
                raise ValueError(f"{name} must be positive and finite, got {value!r}")
        if self.tau > 1:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not (_is_number(self.gamma) and 0 <= self.gamma <= 1):
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma!r}")
        if self.target_entropy is not None and not _is_number(self.target_entropy):
            raise ValueError(f"target_entropy must be a finite number (or None for -|A|), got {self.target_entropy!r}")
        if not isinstance(self.bf16, bool):
            raise ValueError(f"bf16 must be True or False, got {self.bf16!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be True or False, got {self.compile!r}")
        if self.vector_env not in VECTOR_ENVS:
            raise ValueError(f"vector_env must be one of {', '.join(VECTOR_ENVS)}, got {self.vector_env!r}")
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        if self.policy_flow not in FLOW_KINDS:
            raise ValueError(f"policy_flow must be one of {', '.join(FLOW_KINDS)}, got {self.policy_flow!r}")
        if not (_is_int(self.policy_flow_steps) and self.policy_flow_steps > 0):
            raise ValueError(f"policy_flow_steps must be a positive integer, got {self.policy_flow_steps!r}")
        sizes = tuple(self.hidden_sizes) if isinstance(self.hidden_sizes, (tuple, list)) else ()
        if not sizes or not all(_is_int(h) and h > 0 for h in sizes):
            raise ValueError(f"hidden_sizes must be positive integer widths, got {self.hidden_sizes!r}")
        self.hidden_sizes = sizes
        if self.batch_size > self.buffer_size:
            raise ValueError(f"batch_size ({self.batch_size}) is larger than buffer_size ({self.buffer_size})")
        if self.learning_starts >= self.total_steps:
            raise ValueError(f"learning_starts ({self.learning_starts}) >= total_steps ({self.total_steps}): "
                             "training would never take a gradient step")
        if self.num_envs > self.total_steps:
            raise ValueError(f"num_envs ({self.num_envs}) exceeds total_steps ({self.total_steps})")

    @classmethod
    def contextual_defaults(cls, given: dict[str, Any]) -> dict[str, Any]:
        """The ``ENV_DEFAULTS`` row of the env being configured (applied under the given values)."""
        return dict(ENV_DEFAULTS.get(given.get("env_id", DEFAULT_ENV), {}))

    @classmethod
    def for_env(cls, env_id: str = DEFAULT_ENV, **overrides: Any) -> SACConfig:
        """Class defaults, then ``ENV_DEFAULTS[env_id]``, then ``overrides`` (None values are ignored, except
        ``alpha=None``, which means: learn the temperature). Unknown names raise ValueError with a suggestion."""
        _check_names(cls, overrides)
        return ex.build_config(cls, {"env_id": env_id, **_drop_none(overrides)})

    def replace(self, **changes: Any) -> SACConfig:
        """A validated copy with ``changes`` (None values ignored, as in ``for_env``)."""
        _check_names(type(self), changes)
        changes = _drop_none(changes)
        return dataclasses.replace(self, **changes) if changes else self


def config_for(env_id: str, **overrides: Any) -> SACConfig:
    """``SACConfig.for_env``: SACConfig defaults, then ``ENV_DEFAULTS[env_id]``, then ``overrides``."""
    return SACConfig.for_env(env_id, **overrides)
