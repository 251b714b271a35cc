"""Inside one tuning trial: the domain's own entry point runs in this process on a run folder of its own, and
each evaluation it hands to ``Run.report`` reaches the study's pruner.

``reporting(fn)`` installs ``fn`` as ``Run.reporter`` for the duration of a trial; a domain calls
``run.report(step, row)`` at each evaluation (SAC: each deterministic evaluation; VAE: each logged test ELBO;
BNN: each logged epoch or uci split) and the call is a no-op when no tuner runs. ``run_trial`` runs the
domain's ``main(argv + ["--out", folder])``, reports the objective column of each row to the Optuna trial, stops
the run by ``optuna.TrialPruned`` when the pruner says so (the run folder and its last checkpoint stay, marked
pruned in ``trial.json``), and returns the final value from the run's ``summary.json``.

The study reports too: ``write_search_tables`` (summary.csv/.md), ``write_seed_tables`` (seeds.csv/.md and
seed_stats.csv: mean, standard error, interquartile mean) and ``write_study_plots`` (Optuna's standard plots).
"""

from __future__ import annotations

import contextlib
import json
import math
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_text
from .cli import EXIT_INTERRUPTED
from .errors import DivergenceError
from .run import Run

__all__ = ["Objective", "TrialOutcome", "reporting", "run_trial", "mark_trial", "TRIAL_FILE", "csv_text",
           "markdown_table", "write_tables", "write_study_plots", "write_search_tables", "seed_statistics",
           "write_seed_tables"]

TRIAL_FILE = "trial.json"  # in each trial's run folder: the study, the trial, its state and value


@dataclass(frozen=True)
class Objective:
    """What a study optimises: a column of the rows a domain reports, and the key of its summary.json."""

    report_key: str
    """The column of the reported evaluation rows passed to the pruner (e.g. ``eval_mean``)."""
    summary_key: str
    """The run's final value: this key of its summary.json (e.g. ``eval_mean``, ``test_elbo``)."""
    direction: str
    """``maximize`` or ``minimize``."""
    final_step: int | None = None
    """The step of the run's last evaluation (never pruned there: the run is done); None: unknown."""


@dataclass
class TrialOutcome:
    """How a trial's run ended: ``complete`` (value set), ``pruned``, ``diverged``, ``interrupted`` (Ctrl-C:
    saved, to be resumed) or ``failed``; ``last_step``: its last reported step."""

    state: str
    value: float | None = None
    last_step: int | None = None
    message: str = ""


@contextlib.contextmanager
def reporting(fn: Callable[[Run, int, Mapping[str, Any]], None]) -> Iterator[None]:
    """Install ``fn`` as the reporter every ``Run.report`` calls, for the duration of the block."""
    previous = Run.reporter
    Run.reporter = fn
    try:
        yield
    finally:
        Run.reporter = previous


def mark_trial(folder: Path, **fields: Any) -> None:
    """Update ``trial.json`` in a trial's run folder (what the tuner knows about the run in it)."""
    path = folder / TRIAL_FILE
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        record = {}
    record.update(fields, time=time.strftime("%Y-%m-%d %H:%M:%S"), host=socket.gethostname())
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")


def _final_value(folder: Path, objective: Objective, reported: float | None) -> float | None:
    """The summary's value, else the last reported one (a domain whose summary lacks the key)."""
    try:
        value = json.loads((folder / "summary.json").read_text()).get(objective.summary_key)
    except (OSError, ValueError, AttributeError):
        value = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return reported


def run_trial(trial: Any, main: Callable[[list[str]], int | None], argv: Sequence[str], folder: Path,
              objective: Objective, *, resume: bool = False, command: str | None = None) -> TrialOutcome:
    """Run one domain run for ``trial`` in ``folder``, with the pruner listening to its reports.

    Args:
        trial: the ``optuna.Trial`` (its ``report`` and ``should_prune`` are used).
        main: the domain's entry point, ``main(argv) -> exit code`` (e.g. ``agents.cli.main``).
        argv: the domain's flags (fixed flags and the trial's sampled values), without ``--out``.
        folder: the trial's run folder (``--out``).
        objective: which reported column feeds the pruner and which summary key is the value.
        resume: continue the run already in ``folder`` (a retried trial) with ``--resume``.
        command: the domain's console command (e.g. ``reparam-sac``), shown as ``sys.argv[0]`` while the run
            goes, so the run's own hints (``continue with: reparam-sac --out ... --resume``) are right.
    Returns:
        the outcome; a ``pruned`` one is returned, not raised: the caller raises ``optuna.TrialPruned``
        after it has recorded the trial.
    Raises:
        whatever the domain raises for bad input (``UserError``, ``ValueError``): the study stops on it.
    """
    import optuna

    target = folder.resolve()
    last: dict[str, Any] = {"step": None, "value": None}

    def reporter(run: Run, step: int, values: Mapping[str, Any]) -> None:
        if run.path.resolve() != target:  # only the run this trial started
            return
        value = values.get(objective.report_key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return
        step = int(step)
        last.update(step=step, value=float(value))
        trial.report(float(value), step)
        if (objective.final_step is None or step < objective.final_step) and trial.should_prune():
            raise optuna.TrialPruned(f"pruned at step {step} ({objective.report_key} {float(value):.6g})")

    full = [*argv, "--out", str(folder)] + (["--resume"] if resume else [])
    mark = {"trial": trial.number, "argv": list(argv), "resumed": resume}  # written when the run ends: a file
    # in the folder before the domain's start_or_resume would make it refuse the folder as "not a run"
    argv0 = sys.argv[:1]
    if command:
        sys.argv[:1] = [command]
    try:
        with reporting(reporter):
            code = main(full)
    except optuna.TrialPruned as err:
        outcome = TrialOutcome("pruned", last_step=last["step"], message=str(err))
    except DivergenceError as err:
        outcome = TrialOutcome("diverged", last_step=last["step"], message=str(err))
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, from the last checkpoint on resume
        outcome = TrialOutcome("interrupted", last_step=last["step"], message="Ctrl-C")
    except Exception as err:  # bad input (the study stops on it): recorded, then raised
        if folder.is_dir():
            mark_trial(folder, **mark, state="failed", message=f"{type(err).__name__}: {err}")
        raise
    else:
        if code == EXIT_INTERRUPTED:
            outcome = TrialOutcome("interrupted", last_step=last["step"], message="Ctrl-C (saved)")
        elif code:
            outcome = TrialOutcome("failed", last_step=last["step"], message=f"exit code {code}")
        else:
            value = _final_value(folder, objective, last["value"])
            if value is None or not math.isfinite(value):
                outcome = TrialOutcome("failed", last_step=last["step"],
                                       message=f"no finite {objective.summary_key} in {folder / 'summary.json'}")
            else:
                outcome = TrialOutcome("complete", value=value, last_step=last["step"])
    finally:
        sys.argv[:1] = argv0
    mark_trial(folder, **mark, state=outcome.state, value=outcome.value, last_step=outcome.last_step,
               message=outcome.message)
    return outcome


# -- the study's tables and plots -------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return list(dict.fromkeys(k for row in rows for k in row))


def csv_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as CSV (every row's keys, in first-seen order; floats in full precision)."""
    import csv
    import io

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=_columns(rows), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return out.getvalue()


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows as a markdown table (floats to 6 significant digits)."""
    if not rows:
        return "(none yet)\n"
    cols = _columns(rows)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row.get(c)).replace("|", "\\|") for c in cols) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_tables(folder: Path, stem: str, rows: Sequence[Mapping[str, Any]], markdown: str) -> None:
    """``<stem>.csv`` (the rows) and ``<stem>.md`` (``markdown``), each written atomically: several workers of
    one study may write them at once."""
    atomic_write_text(folder / f"{stem}.csv", csv_text(rows))
    atomic_write_text(folder / f"{stem}.md", markdown)


def write_study_plots(study: Any, folder: Path) -> list[Path]:
    """Optuna's optimisation history, parameter importances and intermediate values as PNGs (those the study
    has the trials for). Returns the files written."""
    import os
    import warnings

    import matplotlib.pyplot as plt  # optuna.visualization.matplotlib draws with pyplot
    import optuna
    from optuna.visualization import matplotlib as vis

    states = [t.state for t in study.get_trials(deepcopy=False)]
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    intermediate = any(t.intermediate_values for t in study.get_trials(deepcopy=False))
    n_params = len({k for t in study.get_trials(deepcopy=False) for k in t.params})
    plots: list[tuple[str, Callable[[], Any]]] = []
    if complete:
        plots.append(("optimization_history", lambda: vis.plot_optimization_history(study)))
    if complete >= 2 and n_params:
        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
        plots.append(("param_importances", lambda: vis.plot_param_importances(study, evaluator=evaluator)))
    if intermediate:
        plots.append(("intermediate_values", lambda: vis.plot_intermediate_values(study)))
    written = []
    for name, draw in plots:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib plots
            try:
                ax = draw()
            except (RuntimeError, ValueError) as err:  # e.g. importances of parameters that never varied
                print(f"note: no {name}.png ({err})")
                continue
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        tmp = folder / f".{name}.{os.getpid()}.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        plt.close(fig)
        os.replace(tmp, folder / f"{name}.png")
        written.append(folder / f"{name}.png")
    return written


def write_search_tables(study: Any, folder: Path, params: Sequence[str], objective: Objective, intro: str,
                        command: Callable[[dict[str, Any]], str]) -> list[dict[str, Any]]:
    """summary.csv (every trial by number) and summary.md (best first, with the command that repeats the best)."""
    rows = []
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        if t.state.name == "WAITING":
            continue
        rows.append({"trial": t.number, "state": t.state.name.lower(), "value": t.value,
                     **{name: t.params.get(name) for name in params}, "last_step": t.last_step,
                     "outcome": t.user_attrs.get("outcome", "lost" if t.state.name == "FAIL" else ""),
                     "duration_s": t.duration.total_seconds() if t.duration else None,
                     "retry_of": t.user_attrs.get("retry_of"), "host": t.user_attrs.get("host", ""),
                     "run_folder": t.user_attrs.get("run_folder", "")})
    sign = -1.0 if objective.direction == "maximize" else 1.0
    done = sorted((r for r in rows if r["state"] == "complete"), key=lambda r: sign * r["value"])
    counts = ", ".join(f"{sum(r['state'] == s for r in rows)} {s}" for s in ("complete", "pruned", "fail", "running"))
    lines = [f"# Study {study.study_name}", "", f"{intro}; {counts}.", ""]
    if done:
        best = next(t for t in study.get_trials(deepcopy=False) if t.number == done[0]["trial"])
        lines += [f"Best: trial {best.number}, {objective.summary_key} {best.value:.6g}:", "",
                  f"    {command(best.params)}", ""]
    table = done + [r for r in rows if r["state"] != "complete"]
    write_tables(folder, "summary", rows, "\n".join(lines) + "\n" + markdown_table(table))
    return rows


def seed_statistics(values: Sequence[float]) -> dict[str, float]:
    """Summary of one configuration's final values over seeds.

    mean; SE = s / sqrt(n) with the sample standard deviation s (ddof 1; nan for n = 1); IQM, the interquartile
    mean of rliable (Agarwal et al., 2021): the mean of the values left after dropping floor(n / 4) of the lowest
    and floor(n / 4) of the highest (``scipy.stats.trim_mean(x, 0.25)``); median, min, max.
    """
    a = np.sort(np.asarray(values, dtype=np.float64))  # (n,)
    n = a.size
    if n == 0:
        return {"n": 0, **{k: math.nan for k in ("mean", "se", "iqm", "median", "min", "max")}}
    cut = n // 4
    return {"n": n, "mean": float(a.mean()), "se": float(a.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
            "iqm": float(a[cut:n - cut].mean()), "median": float(np.median(a)), "min": float(a[0]),
            "max": float(a[-1])}


def write_seed_tables(study: Any, folder: Path, seeds: Sequence[int], objective: Objective,
                      intro: str) -> dict[str, Any]:
    """seeds.csv (a row per seed: its complete run, else how it ended), seed_stats.csv (the statistics of the
    complete ones, and how many diverged or are pending) and seeds.md (both). Returns the statistics."""
    rank = {"complete": 0, "running": 1, "diverged": 2, "failed": 2, "invalid": 2}  # which trial speaks for a seed
    by_seed: dict[int, dict[str, Any]] = {}
    for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        seed = t.params.get("seed")
        state = t.state.name.lower() if t.state.name != "FAIL" else t.user_attrs.get("outcome", "lost")
        row = {"seed": seed, "state": state, "value": t.value, "trial": t.number,
               "run_folder": t.user_attrs.get("run_folder", "")}
        old = by_seed.get(seed)
        if seed is not None and (old is None or rank.get(state, 3) < rank.get(old["state"], 3)):
            by_seed[seed] = row
    rows = [by_seed.get(s, {"seed": s, "state": "pending"}) for s in seeds]
    stats: dict[str, Any] = seed_statistics([r["value"] for r in rows if r["state"] == "complete"])
    stats["diverged"] = sum(r["state"] == "diverged" for r in rows)
    stats["pending"] = sum(r["state"] in ("pending", "running", "waiting") for r in rows)
    stats["failed"] = len(rows) - stats["n"] - stats["diverged"] - stats["pending"]  # lost, refused, crashed
    head = [f"# {objective.summary_key} over seeds {seeds[0]}..{seeds[-1]}", "", f"{intro}. SE = sample std / "
            "sqrt(n); IQM = the mean of the middle 50% of the seeds (rliable).", ""]
    write_tables(folder, "seeds", rows, "\n".join(head) + "\n" + markdown_table([stats]) + "\n"
                 + markdown_table(rows))
    atomic_write_text(folder / "seed_stats.csv", csv_text([stats]))
    return stats
