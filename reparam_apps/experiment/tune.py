"""What a hyperparameter study is made of: the domains (entry point, config, default search space, objective),
search-space files, the flags a sampled value becomes, and the statistics of a many-seed evaluation.

Nothing here imports a domain or Optuna at import time: a domain is named by ``"module:attribute"`` strings and
loaded when a study runs (``Domain.load_main``), so the core never depends on ``agents``, ``vae`` or ``bnn``.

A search-space file (YAML, or JSON by its ``.json`` suffix) maps config field names to one entry each::

    learning_rate: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}   # log-uniform
    gamma:         {type: float, low: 0.9, high: 0.9999}
    train_freq:    {type: int, low: 1, high: 16, log: true}              # also: step: 2
    batch_size:    {type: categorical, choices: [64, 128, 256]}
    hidden_sizes:  {type: categorical, choices: [[64, 64], [256, 256]]}  # a tuple field: lists

A name is a field of the domain's config (``--help`` shows them as flags; ``learning-rate`` works too); ``low``
must be below ``high``, and ``log`` needs ``low > 0``.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import json
import math
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import build_config, flag_name, parse_cli
from .errors import UserError
from .report import Objective, seed_statistics

__all__ = ["Domain", "DOMAINS", "Param", "parse_space", "load_space", "check_space", "value_flags", "params_flags",
           "seed_statistics", "require_optuna", "parse_base", "space_text"]

TYPES = ("float", "int", "categorical")
_KEYS = {"float": {"type", "low", "high", "log", "step"}, "int": {"type", "low", "high", "log", "step"},
         "categorical": {"type", "choices"}}


def require_optuna() -> Any:
    """The optuna module, or a one-line UserError saying how to install it."""
    try:
        import optuna
    except ImportError:
        raise UserError("reparam-tune needs the optional optuna package: pip install -e '.[tune]' (or pip install "
                        "'optuna>=3.4')") from None
    return optuna


def _resolve(ref: Any) -> Any:
    if not isinstance(ref, str):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class Domain:
    """A domain a study can tune: its entry point, its config class, its default search space and objective."""

    main: str | Callable[[list[str]], int | None]
    """``"module:function"`` (imported when a study runs) or the function: ``main(argv) -> exit code``."""
    config: str | type
    """``"module:Class"`` or the class: the config dataclass its flags build (a ``TrainConfig``)."""
    space: Mapping[str, Mapping[str, Any]]
    """The default search space, in the file format."""
    objective: Callable[[Any], Objective]
    """config -> what to optimise (the reported column, the summary key, the direction, the last step)."""
    label: Callable[[Any], str]
    """config -> the default study name."""
    command: str
    """The domain's console command (for the reproduce line of the summary)."""
    requires: tuple[str, ...] = ()
    """Config fields that must be given after ``--`` (e.g. BNN's task)."""

    def load_main(self) -> Callable[[list[str]], int | None]:
        return _resolve(self.main)

    def load_config(self) -> type:
        return _resolve(self.config)


def _sac_objective(cfg: Any) -> Objective:
    return Objective("eval_mean", "eval_mean", "maximize", cfg.total_steps)


def _vae_objective(cfg: Any) -> Objective:
    return Objective("test_elbo", "test_elbo", "maximize", cfg.epochs)


def _bnn_objective(cfg: Any) -> Objective:
    if cfg.task == "uci":  # reported once per split; the value is the mean test log-likelihood over splits
        return Objective("test_ll", "test_ll", "maximize", None)
    if cfg.task == "classify":
        return Objective("test_nll", "nll", "minimize", cfg.epochs)
    return Objective("loss", "final_loss", "minimize", cfg.epochs)  # toy: the training negative ELBO


DOMAINS: dict[str, Domain] = {
    "sac": Domain(
        "agents.cli:main", "agents.cli:SACTrainConfig",
        {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
         "batch_size": {"type": "categorical", "choices": [64, 128, 256, 512]},
         "gamma": {"type": "categorical", "choices": [0.95, 0.98, 0.99, 0.995, 0.999]},
         "tau": {"type": "categorical", "choices": [0.001, 0.005, 0.01, 0.02, 0.05]},
         "hidden_sizes": {"type": "categorical", "choices": [[64, 64], [256, 256], [400, 300]]}},
        _sac_objective, lambda c: f"sac-{c.env_id}", "reparam-sac"),
    "vae": Domain(
        "vae.cli:main", "vae.config:VAEConfig",
        {"lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
         "batch_size": {"type": "categorical", "choices": [32, 64, 128, 256]},
         "latent_dim": {"type": "int", "low": 2, "high": 64, "log": True},
         "hidden": {"type": "categorical", "choices": [[200], [400], [400, 200]]}},
        _vae_objective, lambda c: f"vae-{c.model}-{c.dataset}", "reparam-vae"),
    "bnn": Domain(
        "bnn.cli:main", "bnn.config:BNNConfig",
        {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "init_rho": {"type": "float", "low": -8.0, "high": -3.0},
         "prior_sigma": {"type": "float", "low": 0.05, "high": 1.0, "log": True},
         "batch_size": {"type": "categorical", "choices": [32, 64, 128]}},
        _bnn_objective, lambda c: f"bnn-{c.task}" + (f"-{c.dataset}" if c.dataset else ""), "reparam-bnn",
        requires=("task",)),
}


# -- the search space ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One searched config field. Categorical lists (tuple fields) are kept as space-joined strings, the
    values Optuna can store."""

    name: str
    type: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = field(default=())

    def suggest(self, trial: Any) -> Any:
        """The trial's value (sampled, or fixed by an enqueued retry)."""
        if self.type == "float":
            return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log,
                                     step=int(self.step or 1))
        return trial.suggest_categorical(self.name, list(self.choices))

    def as_dict(self) -> dict[str, Any]:
        """The entry in the file format."""
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out


def _number(value: Any, what: str) -> float:
    if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"search space: {what} must be a finite number, got {value!r}")
    return value


def _choice(value: Any, what: str) -> Any:
    if isinstance(value, (list, tuple)):  # a tuple field's value: stored as "64 64"
        if not value or not all(isinstance(v, (int, float, str)) and not isinstance(v, bool) for v in value):
            raise UserError(f"search space: {what} must be a list of numbers, got {value!r}")
        return " ".join(str(v) for v in value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise UserError(f"search space: {what} must be a number, a string, true/false, null or a list, got {value!r}")


def parse_space(raw: Any, source: str = "the search space") -> list[Param]:
    """Check the structure and ranges of a search space (the file format) and return its parameters.

    Raises:
        UserError: not a mapping, an unknown type or key, low >= high, log with low <= 0, no choices.
    """
    if not isinstance(raw, Mapping) or not raw:
        raise UserError(f"{source} must map config field names to {{type: ..., ...}} entries (see docs/scale.md)")
    params = []
    for key, entry in raw.items():
        name = str(key).replace("-", "_").lstrip("_")
        if not isinstance(entry, Mapping) or entry.get("type") not in TYPES:
            raise UserError(f"search space: {key} needs type: float, int or categorical (got {entry!r})")
        kind = entry["type"]
        extra = sorted(set(entry) - _KEYS[kind])
        if extra:
            raise UserError(f"search space: {key} has unknown key {extra[0]!r} (a {kind} takes "
                            f"{', '.join(sorted(_KEYS[kind] - {'type'}))})")
        if kind == "categorical":
            choices = entry.get("choices")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise UserError(f"search space: {key} needs a non-empty list of choices")
            coded = tuple(_choice(c, f"{key} choice {c!r}") for c in choices)
            if len(set(map(repr, coded))) != len(coded):
                raise UserError(f"search space: {key} lists a choice twice")
            params.append(Param(name, kind, choices=coded))
            continue
        if "low" not in entry or "high" not in entry:
            raise UserError(f"search space: {key} needs low and high")
        low, high = _number(entry["low"], f"{key} low"), _number(entry["high"], f"{key} high")
        log, step = entry.get("log", False), entry.get("step")
        if not isinstance(log, bool):
            raise UserError(f"search space: {key} log must be true or false, got {log!r}")
        if not low < high:
            raise UserError(f"search space: {key} needs low < high, got low {low!r} and high {high!r}")
        if log and low <= 0:
            raise UserError(f"search space: {key} is searched on a log scale, so low must be > 0 (got {low!r})")
        if step is not None:
            step = _number(step, f"{key} step")
            if step <= 0 or (log and not (kind == "int" and step == 1)):
                raise UserError(f"search space: {key} step must be > 0 and cannot go with log: true (got {step!r})")
        if kind == "int":
            if low != int(low) or high != int(high) or (step is not None and step != int(step)):
                raise UserError(f"search space: {key} is an int: low, high and step must be integers")
            low, high, step = int(low), int(high), (None if step is None else int(step))
        params.append(Param(name, kind, float(low) if kind == "float" else low,
                            float(high) if kind == "float" else high, log, step))
    return params


def load_space(path: str | Path) -> Any:
    """The raw mapping of a YAML or JSON (``.json``) search-space file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise UserError(f"cannot read the search-space file {path} ({err.strerror}): pass an existing file") from None
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path} is not valid JSON ({err}): fix it (format: docs/scale.md)") from None
    try:
        import yaml
    except ImportError:
        raise UserError(f"{path}: reading YAML needs PyYAML (it comes with optuna): pip install pyyaml, or write "
                        "the space as a .json file") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise UserError(f"{path} is not valid YAML ({' '.join(str(err).split())}): fix it") from None


def space_text(space: Mapping[str, Mapping[str, Any]]) -> str:
    """A space in the file format, one parameter a line (valid YAML)."""
    def text(v: Any) -> str:
        return v if isinstance(v, str) else repr(v) if isinstance(v, float) else json.dumps(v)
    return "".join(f"{name}: {{{', '.join(f'{k}: {text(v)}' for k, v in entry.items())}}}\n"
                   for name, entry in space.items())


# -- values -> flags -------------------------------------------------------------------------------
def _base_type(tp: Any) -> Any:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0] if len(rest) == 1 else tp
    return tp


def value_flags(config_cls: type, name: str, value: Any) -> list[str]:
    """The command-line tokens that set field ``name`` to ``value`` (as sampled: tuples as "64 64")."""
    f = {f.name: f for f in dataclasses.fields(config_cls)}[name]
    flag = f.metadata.get("flag", flag_name(name))
    base = _base_type(typing.get_type_hints(config_cls)[name])
    if base is bool:
        if value:
            return [flag]
        return ["--no-" + flag[2:]] if f.default is True else []
    if value is None:
        return [flag, "none"]
    if typing.get_origin(base) is tuple:
        return [flag, *str(value).split()]
    return [flag, repr(value) if isinstance(value, float) else str(value)]


def params_flags(config_cls: type, params: Mapping[str, Any]) -> list[str]:
    """The tokens for every sampled value, in the order given."""
    return [tok for name, value in params.items() for tok in value_flags(config_cls, name, value)]


def parse_base(config_cls: type, base: Sequence[str]) -> Any:
    """The domain's fixed flags (after ``--``) parsed as its entry point would (``ParsedCLI``)."""
    for tok in base:
        if tok in ("--out", "--resume") or tok.startswith("--out="):
            raise UserError(f"{tok} after -- is chosen by reparam-tune (each trial gets its own run folder in the "
                            "study folder): drop it, or pass --out before -- for the study folder")
    return parse_cli(config_cls, list(base))


def check_space(params: Sequence[Param], config_cls: type, base: Sequence[str], *, from_file: bool,
                note: Callable[[str], None] = print) -> list[Param]:
    """Check each parameter against the domain's config: a field that takes flags, of a type the search
    can produce, not fixed after ``--`` (a file's conflict is an error; the default space drops the field),
    and each bound or choice accepted by the config's validation together with the fixed flags.

    Raises:
        UserError: an unknown field (with the closest name), a field of another type, a refused value.
    """
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    hints = typing.get_type_hints(config_cls)
    given = parse_base(config_cls, base).given
    kept = []
    for p in params:
        if p.name not in fields:
            close = difflib.get_close_matches(p.name, list(fields), n=1)
            raise UserError(f"search space: unknown parameter {p.name!r}: not a field of {config_cls.__name__}"
                            + (f" (did you mean {close[0]!r}?)" if close else "") + "; see the domain's --help")
        f = fields[p.name]
        if f.metadata.get("cli", True) is False or f.metadata.get("positional"):
            raise UserError(f"search space: {p.name} cannot be searched (pass it after --)")
        if p.name in given:
            if from_file:
                raise UserError(f"search space: {p.name} is searched and also fixed after --: drop one of them")
            note(f"note: {p.name} is fixed after --, so the default search space leaves it out")
            continue
        base_type = _base_type(hints[p.name])
        if p.type != "categorical" and base_type not in ((float,) if p.type == "float" else (int, float)):
            raise UserError(f"search space: {p.name} is a {getattr(base_type, '__name__', base_type)} field: "
                            f"search it as {'int or categorical' if base_type is int else 'categorical'}, not "
                            f"{p.type}")
        values = p.choices if p.type == "categorical" else (p.low, p.high)
        for value in values:
            try:
                build_config(config_cls, parse_cli(config_cls, [*base, *value_flags(config_cls, p.name, value)])
                             .given)
            except (UserError, ValueError) as err:
                raise UserError(f"search space: {p.name} = {value!r} is refused: {err}") from None
        kept.append(p)
    return kept
