"""Tune a domain's hyperparameters, or evaluate one configuration over many seeds, on an Optuna study.

    reparam-tune --domain sac --n-trials 30 -- --env Pendulum-v1 --total-steps 20000
    reparam-tune --domain sac --space space.yaml -- --env Pendulum-v1          # your search space (docs/scale.md)
    reparam-tune --domain sac --storage postgresql://user:pw@host/tune -- ...  # the same command on each machine
    reparam-tune --domain sac --seeds 10 --best -- --env Pendulum-v1           # the best trial over 10 seeds
    reparam-tune --domain vae --print-space                                    # the default search space

Everything after -- is the domain's own flags (reparam-sac, reparam-vae, reparam-bnn), fixed for every trial.
Each trial is a normal run folder of the domain under the study folder (default runs/tune/<study name>):
trials/trial_NNNN (search) or seeds/seed_SSS_tNNNN (--seeds), each with a trial.json saying how it ended. The
study lives in --storage (default: study.db in the study folder); any number of processes or machines running
the same command join it. The study folder gets summary.csv/.md and the standard Optuna plots (search), or
seeds.csv/.md with the mean, standard error and interquartile mean (--seeds). Ctrl-C saves the running trial
and exits 130; the same command continues it (the trial is retried from its checkpoint).
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import re
import shlex
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from reparam_apps.experiment import EXIT_INTERRUPTED, UserError, run_cli
from reparam_apps.experiment.config import build_config, parse_cli
from reparam_apps.experiment.report import run_trial, write_search_tables, write_seed_tables, write_study_plots
from reparam_apps.experiment.tune import (
    DOMAINS,
    Domain,
    Param,
    check_space,
    load_space,
    params_flags,
    parse_base,
    parse_space,
    require_optuna,
    space_text,
)

__all__ = ["main", "entry", "build_parser", "Tuner", "open_storage"]

MAX_RETRIES = 3  # a trial whose worker died is retried (from its checkpoint) at most this often
ATTR = "reparam_tune"  # the study's user attribute holding the command that made it


def _mask(url: str) -> str:
    """The URL without its password (for messages and tables)."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def _retry_stale(study: Any, trial: Any) -> None:
    """Heartbeat: the trial of a worker that went silent (killed, machine lost) is failed; queue it again, to
    be continued from its checkpoint by the next worker on the same machine (or started afresh elsewhere)."""
    retries = int(trial.user_attrs.get("retries", 0))
    if retries < MAX_RETRIES:
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number, "retries": retries + 1})


def open_storage(url: str, heartbeat: int = 0) -> Any:
    """An Optuna RDB storage for ``url`` (any SQLAlchemy URL), with a heartbeat every ``heartbeat`` s (0: none).

    Raises:
        UserError: the URL cannot be parsed or opened (bad syntax, missing driver, unreachable server).
    """
    optuna = require_optuna()
    kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):  # several local workers wait for sqlite's lock instead of failing after 5 s
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if heartbeat:
        names = inspect.signature(optuna.storages.RDBStorage).parameters  # the callback was renamed in optuna 4.9
        key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
        kwargs.update(heartbeat_interval=heartbeat, **{key: _retry_stale})
    for attempt in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # the heartbeat's
                return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as err:  # noqa: BLE001  (sqlalchemy, driver and optuna errors alike)
            text = " ".join(str(err).split("\n")[0].split())[:200]
            # several workers creating one fresh database at once: one makes the tables, the others retry
            if attempt < 4 and any(w in text for w in ("locked", "already exists", "UNIQUE")):
                time.sleep(0.5 + attempt)
                continue
            raise UserError(f"cannot open the study storage {_mask(url)} ({type(err).__name__}: {text}): pass an "
                            "SQLAlchemy URL that opens, e.g. sqlite:///study.db or postgresql://USER:PASSWORD@HOST/DB "
                            "(with its driver installed)") from None
    raise AssertionError("unreachable")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, exit 2 through run_cli
        raise UserError(f"{message} (see reparam-tune --help)")


class Tuner:
    """One study of one domain: its storage, the fixed flags, the trials' run folders and tables."""

    def __init__(self, domain: Domain, domain_name: str, base: Sequence[str], *, name: str, folder: Path,
                 storage: str | None = None, heartbeat: int = 60):
        self.optuna = require_optuna()
        self.domain, self.domain_name, self.base = domain, domain_name, list(base)
        self.cls = domain.load_config()
        self.cli = parse_base(self.cls, self.base)
        self.objective = domain.objective(build_config(self.cls, self.cli.given))
        self.name, self.folder, self.heartbeat = name, Path(folder), heartbeat
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"cannot create the study folder {self.folder} ({err.strerror}): pass a writable --out") \
                from None
        self.storage_url = storage or f"sqlite:///{(self.folder / 'study.db').resolve()}"
        self.storage = open_storage(self.storage_url, heartbeat)
        self.main = domain.load_main()
        self.stopped = False

    # -- the study and its trials -------------------------------------------------------------------
    def _study(self, name: str, sampler: Any, pruner: Any, attrs: dict[str, Any]) -> Any:
        """Create the study, or join it when it exists and was made by the same command."""
        direction = self.objective.direction
        study = self.optuna.create_study(storage=self.storage, study_name=name, direction=direction,
                                         sampler=sampler, pruner=pruner, load_if_exists=True)
        attrs = json.loads(json.dumps({"direction": direction, **attrs}, default=str))
        saved = study.user_attrs.get(ATTR)
        if saved is None:
            study.set_user_attr(ATTR, attrs)
        elif saved != attrs:
            key = next(k for k in sorted(set(saved) | set(attrs)) if saved.get(k) != attrs.get(k))
            raise UserError(f"study {name!r} in {_mask(self.storage_url)} was made by another command ({key}: "
                            f"{saved.get(key)!r}, now {attrs.get(key)!r}): run that command to join it, or pass "
                            "another --study-name")
        return study

    def _attrs(self) -> dict[str, Any]:
        return {"domain": self.domain_name, "fixed": self.cli.given, "log_every": self.cli.options.log_every}

    def _previous_folder(self, study: Any, trial: Any) -> Path | None:
        """A retried trial continues its predecessor's run folder, when that one is on this machine."""
        number = trial.user_attrs.get("retry_of")
        for t in study.get_trials(deepcopy=False) if number is not None else ():
            folder = t.user_attrs.get("run_folder")
            if t.number == number and folder and t.user_attrs.get("host") == socket.gethostname() \
                    and (Path(folder) / "config.json").is_file():
                return Path(folder)
        return None

    def _run(self, study: Any, trial: Any, flags: list[str], folder: Path) -> float:
        """The objective: run the domain with the fixed flags and ``flags`` in ``folder``; nan marks a failed
        trial (Optuna logs it in one line and goes on)."""
        argv = [*self.base, *flags]
        try:
            config = build_config(self.cls, parse_cli(self.cls, argv).given)
        except (UserError, ValueError) as err:  # a combination the config refuses, e.g. batch above buffer
            trial.set_user_attr("outcome", "invalid")
            trial.set_user_attr("message", str(err)[:500])
            print(f"trial {trial.number}: the config refuses these values ({err})", file=sys.stderr)
            return math.nan
        previous = self._previous_folder(study, trial)
        folder = previous or folder
        trial.set_user_attr("run_folder", str(folder))
        trial.set_user_attr("host", socket.gethostname())
        outcome = run_trial(trial, self.main, argv, folder, self.domain.objective(config), resume=previous is not None,
                            command=self.domain.command)
        trial.set_user_attr("outcome", outcome.state)
        if outcome.message:
            trial.set_user_attr("message", outcome.message[:500])
        if outcome.state in ("diverged", "failed"):  # the study goes on; the table keeps the reason
            print(f"trial {trial.number} {outcome.state}: {outcome.message}", file=sys.stderr)
        if outcome.state == "complete":
            return outcome.value
        if outcome.state == "pruned":
            raise self.optuna.TrialPruned(outcome.message)
        if outcome.state == "interrupted":  # queued again: the same command continues it from its checkpoint
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number,
                                                          "retries": trial.user_attrs.get("retries", 0)})
            self.stopped = True
        return math.nan

    def _loop(self, study: Any, objective: Callable[[Any], float], n: int, after: Callable[[], Any],
              remaining: Callable[[Any], bool] | None = None) -> int:
        try:
            for _ in range(n):
                if remaining is not None:
                    if self.heartbeat:  # a dead worker's trial is failed and queued again before counting
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)
                            self.optuna.storages.fail_stale_trials(study)
                    if not remaining(study):
                        break
                study.optimize(objective, n_trials=1, callbacks=[lambda s, t: after()])
                if self.stopped:
                    break
        except KeyboardInterrupt:
            self.stopped = True
        if self.stopped:
            after()
            print(f"interrupted: the study {study.study_name!r} is in {_mask(self.storage_url)}; the same command "
                  "continues it (an interrupted trial resumes from its checkpoint)", file=sys.stderr)
            return EXIT_INTERRUPTED
        return 0

    def _command(self, params: dict[str, Any]) -> str:
        return " ".join([self.domain.command, shlex.join([*self.base, *params_flags(self.cls, params)])]).strip()

    # -- search -------------------------------------------------------------------------------------
    def search(self, params: Sequence[Param], n_trials: int, *, sampler: str = "tpe", sampler_seed: int | None = None,
               pruner: str = "median", startup: int = 5, warmup: int = 0, plots: bool = True) -> int:
        """Run ``n_trials`` trials of the search (joining the study if it exists); returns the exit code."""
        samplers = self.optuna.samplers
        chosen = samplers.TPESampler(seed=sampler_seed) if sampler == "tpe" else samplers.RandomSampler(sampler_seed)
        pruners = self.optuna.pruners
        prune = pruners.MedianPruner(startup, warmup) if pruner == "median" else pruners.NopPruner()
        study = self._study(self.name, chosen, prune, {**self._attrs(), "mode": "search",
                                                        "space": {p.name: p.as_dict() for p in params}})

        def objective(trial: Any) -> float:
            values = {p.name: p.suggest(trial) for p in params}
            return self._run(study, trial, params_flags(self.cls, values), self.folder / "trials"
                             / f"trial_{trial.number:04d}")

        def tables() -> None:
            write_search_tables(study, self.folder, [p.name for p in params], self.objective, self._intro(),
                                self._command)

        code = self._loop(study, objective, n_trials, after=tables)
        tables()
        if plots:
            write_study_plots(study, self.folder)
        print(f"study {study.study_name}: {len(study.trials)} trials; summary.md in {self.folder}")
        return code

    # -- many seeds ---------------------------------------------------------------------------------
    def seeds(self, k: int, first_seed: int = 0, *, best: bool = False) -> int:
        """Run the configuration over seeds first_seed .. first_seed + k - 1 (a study of its own, which several
        workers share) and write the statistics table; returns the exit code."""
        fixed: dict[str, Any] = {}
        if best:
            try:
                search = self.optuna.load_study(study_name=self.name, storage=self.storage)
                fixed = dict(search.best_trial.params)
            except KeyError:
                raise UserError(f"--best: no study {self.name!r} in {_mask(self.storage_url)}: run the search "
                                "first, or pass its --study-name and --storage") from None
            except ValueError:
                raise UserError(f"--best: study {self.name!r} has no complete trial yet") from None
            fixed = {name: v for name, v in fixed.items() if name not in self.cli.given and name != "seed"}
        seeds = list(range(first_seed, first_seed + k))
        grid = self.optuna.samplers.GridSampler({"seed": seeds})
        study = self._study(f"{self.name}-seeds", grid, self.optuna.pruners.NopPruner(),
                            {**self._attrs(), "mode": "seeds", "seeds": seeds, "params": fixed})
        flags = params_flags(self.cls, fixed)

        def objective(trial: Any) -> float:
            seed = trial.suggest_categorical("seed", seeds)
            return self._run(study, trial, [*flags, "--seed", str(seed)], self.folder / "seeds"
                             / f"seed_{seed:03d}_t{trial.number:04d}")

        intro = f"{self._intro()}; the configuration: `{self._command(fixed)}` with each seed"

        def tables() -> dict[str, Any]:
            return write_seed_tables(study, self.folder, seeds, self.objective, intro)

        code = self._loop(study, objective, k * (MAX_RETRIES + 2), after=tables,
                          remaining=lambda s: bool(self._seeds_left(s, seeds)))
        stats = tables()
        print(f"{self.objective.summary_key} over {stats['n']} of {k} seeds: mean {stats['mean']:.6g} +- "
              f"{stats['se']:.3g} (SE), IQM {stats['iqm']:.6g}; table in {self.folder / 'seeds.md'}")
        return code

    @staticmethod
    def _seeds_left(study: Any, seeds: list[int]) -> list[int]:
        """Seeds with no trial finished, running or queued (a failed trial counts unless it was queued again)."""
        trials = study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        taken = {t.params.get("seed", t.system_attrs.get("fixed_params", {}).get("seed")) for t in trials
                 if t.state.name != "FAIL" or t.number not in retried}
        return [s for s in seeds if s not in taken]

    def _intro(self) -> str:
        obj = self.objective
        return (f"Domain {self.domain_name}: {obj.direction} {obj.summary_key} (the pruner sees {obj.report_key}); "
                f"storage {_mask(self.storage_url)}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="reparam-tune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                usage=f"reparam-tune --domain {{{','.join(DOMAINS)}}} [options] -- [the domain's flags]")
    p.add_argument("--domain", required=True, choices=sorted(DOMAINS), help="what to tune (its entry point runs "
                   "in this process, once per trial)")
    p.add_argument("--space", metavar="FILE", help="search space, YAML or JSON (default: the domain's; see "
                   "--print-space and docs/scale.md)")
    p.add_argument("--print-space", action="store_true", help="print the domain's default search space and exit")
    p.add_argument("--n-trials", type=int, default=20, metavar="N", help="trials this process runs (each process "
                   "or machine joining the study runs its own N; default: 20)")
    p.add_argument("--study-name", metavar="NAME", help="default: <domain>-<env or task>, e.g. sac-Pendulum-v1")
    p.add_argument("--storage", metavar="URL", help="SQLAlchemy URL of the study, e.g. postgresql://user:pw@host/db "
                   "(default: sqlite in the study folder)")
    p.add_argument("--out", metavar="DIR", help="the study folder (default: runs/tune/<study name>)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="default: tpe")
    p.add_argument("--sampler-seed", type=int, metavar="S", help="seed of the sampler (default: none; give "
                   "several workers none or different seeds, or they sample the same first points)")
    p.add_argument("--pruner", choices=("median", "none"), default="median", help="stop a trial whose intermediate "
                   "value is worse than the median of earlier trials at the same step (default: median)")
    p.add_argument("--pruner-startup-trials", type=int, default=5, metavar="N",
                   help="trials finished before any pruning (default: 5)")
    p.add_argument("--pruner-warmup-steps", type=int, default=0, metavar="STEPS",
                   help="no pruning before this step of a run, in the domain's unit (default: 0)")
    p.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS", help="a trial whose worker is silent "
                   "for 2x this long is failed and retried from its checkpoint (0: off; default: 60)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNGs (e.g. on all workers but one); the "
                   "tables are written either way")
    p.add_argument("--seeds", type=int, metavar="K", help="evaluate one configuration (the flags after --, with "
                   "--best the study's best trial) over K seeds instead of searching")
    p.add_argument("--first-seed", type=int, default=0, metavar="S", help="--seeds runs seeds S .. S+K-1 "
                   "(default: 0; pick unseen seeds to evaluate a tuned configuration without selection bias)")
    p.add_argument("--best", action="store_true", help="with --seeds: the best trial's values of --study-name")
    return p


def _split(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the study this command describes; returns the exit code (0, or 130 after Ctrl-C)."""
    own, base = _split(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(own)
    domain = DOMAINS[args.domain]
    if args.print_space:
        print(space_text(domain.space), end="")
        return 0
    for name in ("n_trials", "seeds", "pruner_startup_trials", "heartbeat", "pruner_warmup_steps", "first_seed"):
        value = getattr(args, name)
        low = 1 if name in ("n_trials", "seeds") else 0
        if value is not None and value < low:
            raise UserError(f"--{name.replace('_', '-')} must be >= {low}, got {value}")
    if args.best and args.seeds is None:
        raise UserError("--best goes with --seeds K (it evaluates the best trial over K seeds)")
    if args.seeds is not None and args.space:
        raise UserError("--space is for a search; --seeds evaluates one configuration: drop one of them")
    optuna = require_optuna()  # before anything is written
    config_cls = domain.load_config()
    cli = parse_base(config_cls, base)
    missing = [f for f in domain.requires if f not in cli.given]
    if missing:
        raise UserError(f"--domain {args.domain} needs its {missing[0]} after --, e.g. reparam-tune --domain "
                        f"{args.domain} -- toy")
    name = args.study_name or domain.label(build_config(config_cls, cli.given))
    folder = Path(args.out) if args.out else Path("runs") / "tune" / re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    if args.seeds is None:
        params = parse_space(load_space(args.space), args.space) if args.space else parse_space(domain.space)
        params = check_space(params, config_cls, base, from_file=bool(args.space),
                             note=lambda text: print(text, file=sys.stderr))
        if not params:
            raise UserError("the search space is empty: every parameter is fixed after --; pass --space FILE")
    if args.seeds is not None and "seed" in cli.given:
        raise UserError("--seeds sets each run's --seed: drop --seed after -- (use --first-seed)")
    with warnings.catch_warnings():  # optuna 3 calls its heartbeat and stale-trial checks experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        tuner = Tuner(domain, args.domain, base, name=name, folder=folder, storage=args.storage,
                      heartbeat=args.heartbeat)
        if args.seeds is not None:
            return tuner.seeds(args.seeds, args.first_seed, best=args.best)
        return tuner.search(params, args.n_trials, sampler=args.sampler, sampler_seed=args.sampler_seed,
                            pruner=args.pruner, startup=args.pruner_startup_trials, warmup=args.pruner_warmup_steps,
                            plots=not args.no_plots)


def entry() -> None:
    """The ``reparam-tune`` console command: one-line errors, exit 2 for bad input, 130 after Ctrl-C."""
    import matplotlib

    matplotlib.use("Agg")  # this command only saves figures (optuna's plots draw through pyplot)
    run_cli(main)


if __name__ == "__main__":
    entry()

