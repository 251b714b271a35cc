"""One run-folder lifecycle for every domain: ``start_or_resume`` and the ``Run`` it returns.

Layout: ``runs/<domain>/<name>_<YYYYmmdd-HHMMSS>`` below the current directory unless ``--out``, holding
``config.json``, ``metrics.csv`` (and other CSVs), ``latest.pt`` (+ ``latest.previous.pt``), ``log.txt``,
``summary.json`` and PNG plots. The rules:
- a folder that holds a run is never overwritten: an occupied ``--out`` without ``--resume`` is refused;
- ``--resume`` takes the saved config; a typed flag that would alter the run is refused by name, the
  flags that may change (``MAY_CHANGE_ON_RESUME``, logging, progress) are recorded in ``config.json``;
- ``--resume`` without ``--out`` continues the newest run of the same name (task and seed);
- a folder with a config but no checkpoint (a failed start) can be resumed (from step 0) or restarted;
- checkpoints are atomic and checksummed, the previous good one is kept, and the parameters are checked
  for NaN/inf before one is written;
- on resume the CSVs lose the rows logged after the checkpoint (no duplicates) and any torn last row.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text, load_checkpoint, previous_path, save_checkpoint
from .cli import EXIT_INTERRUPTED
from .config import ParsedCLI, RunOptions, build_config, config_from_dict, config_to_dict, flag_name
from .distributed import DistInfo, broadcast_object, single_process
from .errors import UserError
from .guard import check_finite_parameters, check_finite_values
from .metrics import MetricsCSV
from .progress import Progress

__all__ = ["Run", "start_or_resume", "command_line", "CHECKPOINT"]

CHECKPOINT = "latest.pt"
_RESTARTABLE = ("log.txt", "summary.json")  # what a failed start may have left besides CSVs and config


def command_line() -> str:
    """How this process was started, as a user would type it again (``python scripts/x.py`` or ``reparam-x``)."""
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "reparam"
    if argv0.endswith(".py"):
        try:
            argv0 = os.path.relpath(argv0)
        except ValueError:
            pass
        return f"python {shlex.quote(argv0)}"
    return Path(argv0).name


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _read_config_json(path: Path) -> dict[str, Any]:
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path} is not a readable run config ({err}): restore it, or start a new run with "
                        "another --out") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("config"), dict):
        raise UserError(f"{path} is not a reparam-apps run config: restore it, or start a new run with another --out")
    return saved


def _newest_run(folder: Path, name: str) -> Path | None:
    if not folder.is_dir():
        return None
    found = [p for p in folder.iterdir() if p.is_dir() and p.name.startswith(name + "_")
             and (p / "config.json").is_file()]
    return max(found, key=lambda p: (p.name[len(name) + 1:], p.stat().st_mtime), default=None)


def _check_folder(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder: pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the run folder {path} ({err.strerror}): pass a writable --out") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"the run folder {path} is not writable: pass a writable --out")


def _has_checkpoint(path: Path) -> bool:
    return (path / CHECKPOINT).is_file() or previous_path(path / CHECKPOINT).is_file()


def _require_tensorboard() -> type:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the optional tensorboard package: pip install tensorboard (or drop "
                        "--tensorboard; metrics.csv has the same numbers)") from None
    return SummaryWriter


def start_or_resume(domain: str, cli: ParsedCLI, name: str | Callable[[Any], str], *, root: str | os.PathLike = "runs",
                    quiet: bool = False, dist_info: DistInfo | None = None) -> Run:
    """Open the run folder for this command: a fresh one, or the one ``--resume`` continues.

    Args:
        domain: ``"sac"``, ``"bnn"``, ``"vae"``, ``"compare"``: the folder under ``root``.
        cli: the parsed command line (``parse_cli``).
        name: the run's name without the time stamp (task and seed), or a function of the config giving it.
        root: where default folders go (relative to the current directory).
        quiet: do not print the folder (tests).
        dist_info: under torchrun, only the main rank opens (and writes) the folder; the others get a
            read-only ``Run`` of the same folder, or the main rank's error.
    Raises:
        UserError: an occupied or unusable folder, a broken config.json, a changed flag on resume.
        ValueError: an invalid config value (named by the config's validation).
    """
    info = dist_info or single_process()
    if info.distributed:
        return _start_or_resume_distributed(domain, cli, name, root, quiet, info)
    opts = cli.options
    typed = build_config(cli.config_cls, cli.given)  # validates before anything is written
    run_name = name(typed) if callable(name) else name
    if opts.tensorboard:  # before the folder exists, so a missing package leaves no dead end behind
        _require_tensorboard()
    base = Path(root) / domain
    if opts.out is not None:
        path = Path(opts.out)
    elif opts.resume:
        found = _newest_run(base, run_name)
        if found is None:
            raise UserError(f"no run named {run_name}_* under {base} to resume: pass --out FOLDER, or start one "
                            "without --resume")
        path = found
    else:
        path = base / f"{run_name}_{_timestamp()}"
        for i in range(2, 1000):
            if not path.exists():
                break
            path = base / f"{run_name}_{_timestamp()}-{i}"
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} is a file, not a folder: pass a folder path")
    config_file = path / "config.json"
    saved = _read_config_json(config_file) if config_file.is_file() else None
    if saved is not None and saved.get("domain", domain) != domain:
        raise UserError(f"{path} holds a {saved.get('domain')!r} run, not a {domain!r} one: pass another --out")

    restarted = False
    if not opts.resume:
        if saved is not None and _has_checkpoint(path):
            raise UserError(f"{path} already holds a run: continue it with --resume, or start a fresh one by "
                            "leaving out --out (or passing another --out)")
        if saved is None and path.is_dir() and any(path.iterdir()):
            raise UserError(f"--out {path} holds files that are not a run: pass an empty or new folder")
        restarted = saved is not None  # a failed start: config but no checkpoint; nothing to lose
        _check_folder(path)
        if restarted:
            for f in list(path.glob("*.csv")) + [path / n for n in _RESTARTABLE]:
                f.unlink(missing_ok=True)
        config, changes = typed, {}
        options = dataclasses.replace(opts, out=str(path), resume=False)
        saved = {"domain": domain, "name": run_name, "config": config_to_dict(config),
                 "run": _options_dict(options), "resumes": []}
    else:
        if saved is None:
            raise UserError(f"cannot resume: {path} holds no run (no config.json); start one without --resume")
        _check_folder(path)
        try:
            stored = config_from_dict(cli.config_cls, saved["config"])
        except (TypeError, ValueError) as err:
            raise UserError(f"{config_file} does not fit this version's {cli.config_cls.__name__} ({err}): "
                            "resume with the version that wrote it, or start a new run") from None
        config, changes = _apply_resume_changes(cli, stored, path)
        typed_opts = {k: getattr(opts, k) for k in cli.given_options if k not in ("out", "resume")}
        options = RunOptions(**{**saved.get("run", {}), **typed_opts, "out": str(path), "resume": True})
        saved["config"] = config_to_dict(config)
        saved["run"] = _options_dict(options)
        saved.setdefault("resumes", []).append(
            {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "changed": changes,
             "options": {k: v for k, v in typed_opts.items()}})
    atomic_write_text(config_file, json.dumps(saved, indent=2, sort_keys=True, default=str) + "\n")
    run = Run(path, config, options, domain=domain, resumed=opts.resume, prog=command_line())
    if not quiet:
        verb = "resuming" if opts.resume else ("restarting (no checkpoint was saved)" if restarted else "run folder")
        print(f"{verb}: {path}", file=sys.stderr, flush=True)
    return run


def _start_or_resume_distributed(domain: str, cli: ParsedCLI, name: Any, root: Any, quiet: bool,
                                 info: DistInfo) -> Run:
    """The main rank opens the folder and sends its path (or its error) to the others, which read it."""
    if info.is_main:
        try:
            run = start_or_resume(domain, cli, name, root=root, quiet=quiet)
        except (UserError, ValueError) as err:
            broadcast_object(("error", str(err)), info)
            raise
        broadcast_object(("ok", str(run.path)), info)
        return run
    status, text = broadcast_object(None, info)  # type: ignore[misc]
    if status == "error":
        raise UserError(text)
    path = Path(text)
    saved = _read_config_json(path / "config.json")
    config = config_from_dict(cli.config_cls, saved["config"])
    options = RunOptions(**{**saved.get("run", {}), "out": str(path), "resume": cli.options.resume})
    return Run(path, config, options, domain=domain, resumed=cli.options.resume, prog=command_line(),
               writable=False)


def _options_dict(options: RunOptions) -> dict[str, Any]:
    return {k: v for k, v in dataclasses.asdict(options).items() if k not in ("out", "resume")}


def _apply_resume_changes(cli: ParsedCLI, stored: Any, path: Path) -> tuple[Any, dict[str, list[Any]]]:
    may_change = getattr(cli.config_cls, "MAY_CHANGE_ON_RESUME", frozenset())
    # Compare typed values in the config's own types (a typed 0.001 equals a saved 1e-3).
    typed = config_to_dict(config_from_dict(cli.config_cls, {**config_to_dict(stored), **cli.given}))
    old = config_to_dict(stored)
    changed = {k: [old[k], typed[k]] for k in cli.given if typed[k] != old[k]}
    refused = sorted(set(changed) - set(may_change))
    if refused:
        k = refused[0]
        flag = _flag_of(cli.config_cls, k)
        allowed = ", ".join(flag_name(n) for n in sorted(may_change)) or "none"
        raise UserError(f"--resume continues the saved run in {path}, so {flag} cannot change (saved {old[k]!r}, "
                        f"given {typed[k]!r}): drop {flag}, or start a new run (flags that may change: {allowed})")
    config = config_from_dict(cli.config_cls, {**old, **{k: typed[k] for k in changed}})
    return config, changed


def _flag_of(cls: type, name: str) -> str:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.metadata.get("flag", flag_name(name))
    return flag_name(name)


def _crash_hook(run: Run, name: str, rows: int) -> None:
    """Fault injection for the crash tests: ``REPARAM_TEST_KILL_AT_ROW=N`` makes this process write half a row
    into ``name`` after its N-th logged row, then kill itself with SIGKILL (as ``kill -9`` would)."""
    at = os.environ.get("REPARAM_TEST_KILL_AT_ROW")
    if at is None or rows != int(at):
        return
    with open(run.path / name, "a") as fh:
        fh.write("99999,0.")  # a torn row
        fh.flush()
        os.fsync(fh.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


class Run:
    """An open run folder. Made by ``start_or_resume``; domains log, checkpoint and report through it."""

    def __init__(self, path: Path, config: Any, options: RunOptions, domain: str, resumed: bool, prog: str,
                 writable: bool = True):
        self.path, self.config, self.options = Path(path), config, options
        self.writable = writable  # False on torchrun's non-main ranks: they read, the main rank writes
        self.domain, self.resumed, self.prog = domain, resumed, prog
        self._csvs: dict[str, MetricsCSV] = {}
        self._writer: Any = None
        self.stop_requested = False
        self._rows_logged = 0

    # -- files -----------------------------------------------------------------------------------
    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT

    def write_json(self, name: str, obj: Any) -> None:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            obj = dataclasses.asdict(obj)
        if self.writable:
            atomic_write_text(self.path / name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def metrics(self, name: str = "metrics.csv") -> MetricsCSV:
        if name not in self._csvs:
            self._csvs[name] = MetricsCSV(self.path / name)
        return self._csvs[name]

    def log(self, row: Mapping[str, Any], name: str = "metrics.csv", step_key: str = "step") -> None:
        """Append ``row`` to ``name`` (and to TensorBoard under ``<csv stem>/<column>`` with --tensorboard)."""
        if not self.writable:
            return
        self.metrics(name).append(row)
        self._rows_logged += 1
        _crash_hook(self, name, self._rows_logged)
        if self.options.tensorboard:
            if self._writer is None:
                self._writer = _require_tensorboard()(str(self.path / "tb"))
            step = row.get(step_key)
            for k, v in row.items():
                if k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
                    self._writer.add_scalar(f"{Path(name).stem}/{k}", v, step)

    def rewind(self, step: float, key: str = "step") -> None:
        """On resume: drop the CSV rows logged after the checkpoint at ``step`` (and any torn last row)."""
        if not self.writable:
            return
        for csv_path in sorted(self.path.glob("*.csv")):
            table = self.metrics(csv_path.name)
            if key in table.columns:
                table.truncate_after(key, step)

    # -- checkpoints -----------------------------------------------------------------------------
    def load_checkpoint(self, kind: str, map_location: Any = "cpu") -> dict[str, Any] | None:
        """The state to resume from: ``latest.pt``, else the kept previous one; None for a fresh run or a
        failed start (no checkpoint yet). A damaged ``latest.pt`` is refused by name (CheckpointError)."""
        if not self.resumed:
            return None
        latest = self.checkpoint_path
        if latest.is_file():
            return load_checkpoint(latest, kind, map_location)
        if previous_path(latest).is_file():
            print(f"note: resuming from {previous_path(latest)} ({latest} is missing)", file=sys.stderr)
            return load_checkpoint(previous_path(latest), kind, map_location)
        for csv_path in self.path.glob("*.csv") if self.writable else ():  # a failed start: begin again
            csv_path.unlink()
        self._csvs.clear()
        print(f"note: {self.path} holds no checkpoint yet: starting it from the beginning", file=sys.stderr)
        return None

    def save_checkpoint(self, state: Mapping[str, Any], kind: str, step: int, check: Iterable[Any] = (),
                        unit: str = "step") -> None:
        """Atomically write ``latest.pt`` (the previous good one kept), after checking that ``check``
        (modules or tensors) holds no NaN/inf: a diverged state never replaces a good checkpoint."""
        check_finite_parameters(check, step, unit, checkpoint=self._kept_checkpoint())
        if not self.writable:
            return
        save_checkpoint({**state, "step": step}, self.checkpoint_path, kind, keep_previous=True)

    def _kept_checkpoint(self) -> Path | None:
        latest = self.checkpoint_path
        return latest if latest.is_file() else (previous_path(latest) if previous_path(latest).is_file() else None)

    def check_finite(self, values: Mapping[str, Any], step: int, unit: str = "step") -> None:
        """Stop with a ``DivergenceError`` if a logged loss or return is NaN or inf."""
        check_finite_values(values, step, unit, checkpoint=self._kept_checkpoint())

    # -- progress, interruption, the end ----------------------------------------------------------
    def progress(self, total: int, desc: str, unit: str = "step", initial: int = 0) -> Progress:
        return Progress(total, desc, unit=unit, initial=initial, disable=self.options.no_progress or not self.writable,
                        log_file=self.path / "log.txt" if self.writable else None, quiet=not self.writable)

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[Run]:
        """The first Ctrl-C sets ``stop_requested`` (the loop saves at its next step boundary); a second one
        raises KeyboardInterrupt at once. Outside the main thread, signals are left alone."""
        def on_sigint(signum: int, frame: Any) -> None:
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True

        try:
            previous = signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # not the main thread
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)

    def resume_command(self) -> str:
        return f"{self.prog} --out {shlex.quote(str(self.path))} --resume"

    def interrupted(self, where: str) -> int:
        """Print the one line for a Ctrl-C that was saved, and return the exit code 130."""
        if self.writable:
            print(f"interrupted at {where}: saved {self.checkpoint_path}; continue with: {self.resume_command()}",
                  file=sys.stderr, flush=True)
        self.close()
        return EXIT_INTERRUPTED

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self.write_json("summary.json", dict(summary))

    # -- hyperparameter search --------------------------------------------------------------------
    reporter: Callable[[Run, int, Mapping[str, Any]], None] | None = None
    """Installed by a tuner (``reparam_apps.experiment.report.reporting``) for the run it starts; None: no-op."""

    def report(self, step: int, values: Mapping[str, Any]) -> None:
        """Hand an evaluation's metrics (e.g. the row just logged) to the tuner running this run, if any; its
        pruner may end the run here by raising ``optuna.TrialPruned`` (the last checkpoint stays)."""
        if Run.reporter is not None and self.writable:
            Run.reporter(self, step, values)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

