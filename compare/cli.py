"""The same trick, and its alternative, across domains: gradient-estimator mean, bias, variance,
signal-to-noise ratio and cost for the pathwise (reparameterization) and score-function (REINFORCE)
estimators, with and without baselines, on the real objective of each domain.

    reparam-compare --quick                     # a smoke run: about a minute on 2 CPU cores
    reparam-compare                             # the full run
    reparam-compare --domains toy vae --repeats 200
    reparam-compare --out runs/compare/my-run --resume   # continue after a Ctrl-C or a crash

(``python scripts/compare_domains.py`` is the same command.) Domains: toy objectives under N(mu, sigma^2)
(closed-form variances, Mohamed et al. 2020), a categorical latent (Gumbel-Softmax vs score function), the
VAE encoder, a Bayes-by-Backprop layer (plain weight noise, local reparameterization, Flipout), the SAC
actor at a fixed critic, and normalizing flows (the VAE's IAF posterior and SAC's IAF policy); then learning
curves with each estimator on the same budget (toy and VAE).

Each run gets a fresh folder runs/compare/<domains>_s<seed>_<time> (or --out) holding config.json,
measurements.csv, learning_curves.csv, speed.csv (seconds per domain), table.md, variance_bars.png,
toy_variance_vs_k.png, learning_curves.png, summary.json, log.txt and latest.pt. A checkpoint follows every
domain (so --log-every changes nothing here): Ctrl-C abandons the domain in progress and exits 130, and
--resume keeps the finished domains' rows and continues with the next one (each domain is re-seeded, so
it measures the same numbers as in an uninterrupted run, wall-clock columns aside).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from reparam_apps import experiment as ex
from reparam_apps.utils import seed_everything, set_threads

from .config import CompareConfig
from .curves import CURVE_FUNCTIONS
from .domains import DOMAIN_FUNCTIONS
from .report import plot_learning_curves, plot_toy, plot_variance_bars, write_table
from .stats import Row, StopRequested

__all__ = ["main", "entry", "run_comparison", "units", "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "compare"


def units(cfg: CompareConfig) -> list[tuple[str, Callable[[CompareConfig, Callable[[], bool]], Any]]]:
    """The run's units of work in order: the domains, then the learning curves ("curves:toy", "curves:vae")."""
    out: list[tuple[str, Any]] = [(d, DOMAIN_FUNCTIONS[d]) for d in cfg.domains]
    out += [(f"curves:{d}", CURVE_FUNCTIONS[d]) for d in CURVE_FUNCTIONS if d in cfg.domains]
    return out


def run_comparison(run: ex.Run) -> int:
    """Measure every unit of ``run.config`` not yet done (all of them for a fresh run), then write the table
    and the figures. Returns 0, or 130 after a Ctrl-C (the finished units are saved)."""
    cfg: CompareConfig = run.config.scaled()
    set_threads(cfg.threads)
    todo = units(cfg)
    done: list[str] = []
    rows: list[Row] = []
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    timings: dict[str, float] = {}
    state = run.load_checkpoint(CHECKPOINT_KIND)
    if state is not None:
        done, curves, timings = list(state["done"]), dict(state["curves"]), dict(state["timings"])
        rows = [Row(**r) for r in state["rows"]]
        if done != [name for name, _ in todo[:len(done)]]:
            raise ex.CheckpointError(f"{run.checkpoint_path} holds units {done} that do not fit this run's "
                                     f"{[name for name, _ in todo]}: start a new run")
        run.rewind(len(done), key="part")

    def save() -> None:
        run.save_checkpoint({"done": done, "rows": [dataclasses.asdict(r) for r in rows], "curves": curves,
                             "timings": timings}, CHECKPOINT_KIND, len(done), unit="domain")

    bar = run.progress(len(todo), "compare", unit="domain", initial=len(done))
    with run.interruptible():
        for part, (name, measure_unit) in enumerate(todo, start=1):
            if part <= len(done):
                continue
            seed_everything(cfg.seed)
            start = time.perf_counter()
            try:
                result = measure_unit(cfg, lambda: run.stop_requested)
            except StopRequested:
                break
            seconds = time.perf_counter() - start
            if name.startswith("curves:"):
                domain = name.split(":", 1)[1]
                curves[domain] = result
                for est, pts in result.items():
                    for step, value in pts:
                        run.log({"part": part, "domain": domain, "estimator": est, "step": step, "value": value},
                                "learning_curves.csv", step_key="part")
            else:
                rows += result
                for r in result:
                    run.log({"part": part, **dataclasses.asdict(r)}, "measurements.csv", step_key="part")
            run.log({"part": part, "unit": name, "seconds": seconds}, "speed.csv", step_key="part")
            done.append(name)
            timings[name] = seconds
            save()
            bar.update(1)
            bar.status(done=name, seconds=round(seconds, 1))
            if run.stop_requested:
                break
        if run.stop_requested:
            save()
            bar.close()
            where = f"{len(done)}/{len(todo)} domains done ({', '.join(done) or 'none'})"
            return run.interrupted(where)
    bar.close()
    table = write_table(rows, run.file("table.md"))
    plot_variance_bars(rows, run.file("variance_bars.png"))
    if "toy" in cfg.domains:
        plot_toy(rows, run.file("toy_variance_vs_k.png"))
    plot_learning_curves(curves, run.file("learning_curves.png"))
    run.write_summary({"units": done, "rows": len(rows), "seconds": timings, "repeats": cfg.repeats,
                       "curve_steps": cfg.curve_steps})
    run.close()
    print(table)
    print(f"wrote {run.path} ({sum(timings.values()):.0f} s of measurements)", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), open the run folder and compare; returns the exit code."""
    cli = ex.parse_cli(CompareConfig, argv, description=__doc__, log_every=1)
    run = ex.start_or_resume("compare", cli, name=lambda c: c.run_name)
    return run_comparison(run)


def entry() -> None:
    """The ``reparam-compare`` console command: one-line errors and exit codes (2 input, 130 Ctrl-C)."""
    ex.run_cli(main)
