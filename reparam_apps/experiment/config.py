"""Typed config dataclasses turned into command lines: one mechanism for every entry point.

A domain writes its hyperparameters once, as a dataclass with a docstring under every field (as CleanRL
writes ``Args``); ``parse_cli`` builds the flags, their help and their shown defaults from it, and keeps
track of which flags the user actually typed (``ParsedCLI.given``), which is what ``start_or_resume``
needs to refuse a changed flag on ``--resume`` by name while letting untouched flags take the saved
values. We do not use tyro for this: it reports parsed values, not which ones were typed, and the spine
needs the latter; everything else here is argparse from the standard library.

Conventions a config class may use:
- ``__post_init__`` validates values and raises ``ValueError`` naming the field (one place, the config);
- ``contextual_defaults(given) -> dict`` (classmethod): defaults that depend on other typed values
  (SAC's per-env table, BNN's per-task table); applied under the typed values;
- ``MAY_CHANGE_ON_RESUME``: field names a resumed run may change (more steps or epochs, device, threads);
- field ``metadata``: ``parse`` (str -> value), ``metavar``, ``choices``, ``positional``, ``shown_default``
  (how help shows the default), ``flag`` (a flag name other than ``--field-name``) and ``cli=False``
  (not a flag).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import math
import textwrap
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from .errors import UserError

__all__ = ["TrainConfig", "RunOptions", "ParsedCLI", "parse_cli", "build_parser", "field_docs", "config_from_dict",
           "config_to_dict", "build_config", "flag_name"]


@dataclass
class TrainConfig:
    """Fields every training entry point shares. Domain configs inherit it."""

    seed: int = 0
    """Seed of python, numpy and torch: same seed, same machine, same metrics."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda[:N]'."""
    threads: int = 0
    """torch intra-op CPU threads (0: torch's default)."""

    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"device", "threads"})

    def __post_init__(self) -> None:
        if not _is_int(self.seed) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not _is_int(self.threads) or self.threads < 0:
            raise ValueError(f"threads must be a non-negative integer, got {self.threads!r}")
        if not isinstance(self.device, str) or not (self.device in ("auto", "cpu")
                                                    or self.device.startswith("cuda")):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {self.device!r}")


@dataclass
class RunOptions:
    """How a run is kept and shown (not hyperparameters: they may change on ``--resume``)."""

    out: str | None = None
    """Run folder. Default: a fresh runs/<domain>/<name>_<time> below the current directory."""
    resume: bool = False
    """Continue the run in --out (default: the newest run of the same name) from its checkpoint."""
    log_every: int = 1000
    """Steps (or epochs) between metrics rows, status lines and checkpoints."""
    no_progress: bool = False
    """Hide the progress bar (status lines still go to the log file)."""
    tensorboard: bool = False
    """Also write TensorBoard event files to <out>/tb (needs the tensorboard package)."""

    def __post_init__(self) -> None:
        if not _is_int(self.log_every) or self.log_every <= 0:
            raise ValueError(f"log_every must be a positive integer, got {self.log_every!r}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """{field: the docstring written under it}, read from the source of ``cls`` and its bases."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, nxt in zip(body[:-1], body[1:], strict=True):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                    and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)):
                docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


# -- types ---------------------------------------------------------------------------------------
def _strip_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else tp), True
    return tp, False


def _scalar_parser(tp: Any, name: str) -> Any:
    def parse(text: str) -> Any:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise argparse.ArgumentTypeError(f"{text!r} is not a boolean")
        try:
            value = tp(text)
        except ValueError:
            kind = {int: "an integer", float: "a number"}.get(tp, tp.__name__)
            raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
        return value
    parse.__name__ = getattr(tp, "__name__", name)
    return parse


def _coerce(tp: Any, value: Any) -> Any:
    """A JSON value (lists for tuples) back into the field's type."""
    base, optional = _strip_optional(tp)
    if value is None:
        return None
    if typing.get_origin(base) is tuple:
        inner = typing.get_args(base)[0]
        return tuple(inner(v) for v in value)
    if base is float and isinstance(value, int):
        return float(value)
    return value


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_from_dict(cls: type, values: Mapping[str, Any]) -> Any:
    """Rebuild (and so validate) a config from its JSON form; unknown keys are an error."""
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field {unknown[0]!r}")
    return cls(**{k: _coerce(hints[k], v) for k, v in values.items()})


def build_config(cls: type, given: Mapping[str, Any]) -> Any:
    """``cls`` defaults, then its ``contextual_defaults(given)``, then the typed values ``given``."""
    values = dict(given)
    contextual = getattr(cls, "contextual_defaults", None)
    if contextual is not None:
        values = {**contextual(values), **values}
    return config_from_dict(cls, values)


# -- the parser ----------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> typing.NoReturn:  # one line, exit 2 through run_cli
        raise UserError(f"{message} (see --help)")


@dataclass
class ParsedCLI:
    """What the user typed: ``given`` holds only the typed config fields (name -> value)."""

    config_cls: type
    given: dict[str, Any]
    options: RunOptions
    given_options: set[str] = field(default_factory=set)
    prog: str = "python -m ..."
    """How the user started this command (for the resume hint)."""


def _shown(f: dataclasses.Field, value: Any) -> str:
    if "shown_default" in f.metadata:
        return str(f.metadata["shown_default"])
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    if isinstance(value, float) and math.isfinite(value) and value != 0 and abs(value) < 1e-3:
        return f"{value:g}"
    return str(value)


def _add_field(group: Any, f: dataclasses.Field, tp: Any, doc: str, default: Any) -> None:
    meta = f.metadata
    base, optional = _strip_optional(tp)
    help_text = f"{doc} (default: {_shown(f, default)})".replace("%", "%%")
    kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
    if meta.get("positional"):  # no argparse choices: argparse checks them against a SUPPRESS default
        choices = meta.get("choices")
        if choices:
            help_text = f"{doc} One of: {', '.join(choices)} (default: {_shown(f, default)})".replace("%", "%%")
        group.add_argument(f.name, nargs="?", default=argparse.SUPPRESS, help=help_text)
        return
    if base is bool:
        kwargs["action"] = argparse.BooleanOptionalAction if default else "store_true"
    elif typing.get_origin(base) is tuple:
        inner = typing.get_args(base)[0]
        kwargs.update(type=_scalar_parser(inner, f.name), nargs="+", metavar=meta.get("metavar", "N"))
    elif typing.get_origin(base) is Literal:
        kwargs.update(choices=list(typing.get_args(base)))
    else:
        parse = meta.get("parse")
        if parse is None:
            scalar = _scalar_parser(base, f.name)
            if optional:
                def parse(text: str, _s=scalar) -> Any:
                    return None if text.lower() in ("none", "null") else _s(text)
            else:
                parse = scalar
        kwargs["type"] = parse
        kwargs["metavar"] = meta.get("metavar", getattr(base, "__name__", "VALUE").upper())
    if "choices" in meta:
        kwargs["choices"] = meta["choices"]
    group.add_argument(meta.get("flag", flag_name(f.name)), dest=f.name, **kwargs)


def build_parser(cls: type, *, prog: str | None = None, description: str = "", epilog: str = "",
                 options: RunOptions | None = None) -> argparse.ArgumentParser:
    options = options or RunOptions()
    parser = _Parser(prog=prog, description=description, epilog=epilog,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    docs = field_docs(cls)
    hints = _hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} (the run's settings; --resume refuses a change of those "
                                      "that alter it)")
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True) is False:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        _add_field(group, f, hints[f.name], docs.get(f.name, ""), default)
    run_docs = field_docs(RunOptions)
    run_hints = _hints(RunOptions)
    run_group = parser.add_argument_group("run folder, logging and progress (may change on --resume)")
    for f in dataclasses.fields(RunOptions):
        _add_field(run_group, f, run_hints[f.name], run_docs[f.name], getattr(options, f.name))
    return parser


def parse_cli(cls: type, argv: Sequence[str] | None = None, *, prog: str | None = None, description: str = "",
              epilog: str = "", log_every: int = 1000) -> ParsedCLI:
    """Parse ``argv`` into the typed fields of ``cls`` and the run options.

    Args:
        cls: the domain's config dataclass (a ``TrainConfig`` subclass).
        argv: the arguments (default: ``sys.argv[1:]``).
        prog, description, epilog: shown by ``--help``.
        log_every: this entry point's default for ``--log-every`` (steps or epochs).
    """
    defaults = RunOptions(log_every=log_every)
    parser = build_parser(cls, prog=prog, description=description, epilog=epilog, options=defaults)
    ns = vars(parser.parse_args(argv))
    run_names = {f.name for f in dataclasses.fields(RunOptions)}
    hints = _hints(cls)
    given = {k: _coerce(hints[k], v) for k, v in ns.items() if k not in run_names}
    for f in dataclasses.fields(cls):  # positional choices (argparse cannot check them, see _add_field)
        choices = f.metadata.get("choices")
        if f.metadata.get("positional") and choices and f.name in given and given[f.name] not in choices:
            raise UserError(f"{f.name} must be one of {', '.join(choices)}, got {given[f.name]!r} (see --help)")
    typed_options = {k: v for k, v in ns.items() if k in run_names}
    try:
        options = dataclasses.replace(defaults, **typed_options)
    except ValueError as err:
        raise UserError(str(err).replace("log_every", "--log-every")) from None
    return ParsedCLI(cls, given, options, set(typed_options), parser.prog)
