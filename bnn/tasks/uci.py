"""The UCI regression protocol (Hernandez-Lobato & Adams 2015): one fresh network per train/test split,
test RMSE and log-likelihood in original units, mean +- standard error over the splits.

Resumes at split granularity: every finished split's results and model are in the checkpoint; a killed
run continues with the next unfinished split, which restarts from its start on its own seed
(``derived_seed(seed, split)``), so its results are the ones an uninterrupted run gets.

``--workers N`` runs the splits on N processes (``concurrent.futures.ProcessPoolExecutor``, spawn): a split
is the same function of (config, split) there (``train_split``), so its rows equal the sequential run's at
the same torch thread count (a worker uses 1 thread unless --threads). The main process writes each split's
rows, splits.csv row and checkpoint in split order, as soon as the splits before it are written; a killed
or interrupted run keeps the splits finished in that order."""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from reparam_apps import experiment as ex
from reparam_apps.utils import select_device, set_threads

from ..likelihoods import GaussianLikelihood
from ..predict import gaussian_log_likelihood, interval_coverage, predict, rmse
from ..train import Trainer, derived_seed, make_mlp
from ..uci import load_uci_split, uci_n_splits
from .loop import KIND, mean_and_se

__all__ = ["run_uci", "seed_split", "train_split", "SplitOutcome"]


def seed_split(seed: int, split: int) -> int:
    """Seed python, numpy and torch for ``split`` of a run with ``seed``; returns the split's seed."""
    s = derived_seed(seed, 0x5B17, split)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


@dataclass
class SplitOutcome:
    """A finished split: ``entry`` as the checkpoint keeps it ({'result', 'model', 'likelihood', 'y_mean',
    'y_std'}), its wall-clock seconds, and (in-process only) the trained modules."""

    entry: dict[str, Any]
    seconds: float
    modules: list[nn.Module] | None = None


def train_split(cfg: Any, split: int, device: torch.device,
                on_epoch: Callable[[dict[str, Any]], bool]) -> SplitOutcome | None:
    """Train a fresh network on ``split`` from its own seed, then evaluate it on the split's test set.

    Args:
        cfg: the run's ``BNNConfig``.
        on_epoch: called with each epoch's row {'split', 'epoch', 'loss', 'nll', 'kl'}; True stops the split.
    Returns:
        The outcome, or None when ``on_epoch`` stopped it.
    """
    start = time.perf_counter()
    s = seed_split(cfg.seed, split)
    data = load_uci_split(cfg.data_dir, cfg.dataset, split)
    x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
    model = make_mlp(x_tr.shape[1], 1, cfg.hidden or data.n_hidden, cfg.layers, **cfg.layer_kwargs()).to(device)
    likelihood = GaussianLikelihood(init_std=0.5).to(device)
    trainer = Trainer(model, likelihood, x_tr, y_tr, batch_size=cfg.batch_size, lr=cfg.lr,
                      n_samples=cfg.train_samples, kl_schedule=cfg.kl_schedule, seed=s)
    for epoch in range(1, cfg.epochs + 1):
        if on_epoch({"split": split, "epoch": epoch, **trainer.epoch()}):
            return None
    pred = predict(model, data.x_test.to(device), n_samples=cfg.test_samples, likelihood=likelihood)
    y_te = data.y_test.to(device)
    result = {
        "split": split,
        "rmse": rmse(pred.mean, y_te) * data.y_std,  # original units
        "test_ll": gaussian_log_likelihood(y_te, pred.sample_means, pred.sample_vars, y_scale=data.y_std),
        "coverage_95": interval_coverage(pred.mean, pred.std, y_te, 0.95),
        "noise_std": likelihood.noise_std.item() * data.y_std,
    }
    entry = {"result": result, "model": model.state_dict(), "likelihood": likelihood.state_dict(),
             "y_mean": data.y_mean, "y_std": data.y_std}
    return SplitOutcome(entry, time.perf_counter() - start, [model, likelihood])


def run_uci(run: ex.Run, device: torch.device, dist_info: Any = None) -> int | None:
    """The splits 0 .. --splits - 1 not yet finished (on --workers processes); per split a row in splits.csv,
    per --log-every epochs a row in metrics.csv; writes uci_splits.png and the summary. Returns 130 after a
    saved Ctrl-C. (Under torchrun bnn.cli refuses uci: --workers is its parallelism.)"""
    cfg = run.config
    available = uci_n_splits(cfg.data_dir, cfg.dataset)
    n_splits = min(cfg.splits or available, available)
    state = run.load_checkpoint(KIND)
    finished: list[dict[str, Any]] = [] if state is None else list(state["splits"])
    if len(finished) > n_splits:
        raise ex.UserError(f"this run has finished {len(finished)} splits, more than --splits {n_splits}: resume "
                           f"with --splits {len(finished)} or more")
    if state is not None:
        run.rewind(len(finished) - 1, key="split")  # the unfinished split's rows go: it restarts
    bar = run.progress(n_splits * cfg.epochs, f"uci {cfg.dataset}", unit="epoch", initial=len(finished) * cfg.epochs)
    todo = range(len(finished), n_splits)
    try:
        with run.interruptible():
            if getattr(cfg, "workers", 1) > 1 and len(todo) > 0:
                code = _parallel_splits(run, device, todo, finished, bar)
            else:
                code = _sequential_splits(run, device, todo, finished, bar)
            if code is not None:
                return code
    finally:
        bar.close()
    results = [f["result"] for f in finished[:n_splits]]
    summary: dict[str, Any] = {"dataset": cfg.dataset, "n_splits": len(results), "epochs": cfg.epochs}
    for key in ("rmse", "test_ll", "coverage_95"):
        summary[key], summary[key + "_se"] = mean_and_se([r[key] for r in results])
    ex.plot_curves(run.file("uci_splits.png"), {"test RMSE": ([r["split"] for r in results],
                                                              [r["rmse"] for r in results])},
                   "split", "RMSE (original units)", title=f"{cfg.dataset}: test RMSE per split")
    print(f"{cfg.dataset}: RMSE {summary['rmse']:.3f} +- {summary['rmse_se']:.3f}   test LL "
          f"{summary['test_ll']:.3f} +- {summary['test_ll_se']:.3f}   ({len(results)} splits, {cfg.epochs} epochs)")
    run.write_summary(summary)
    return None


def _boundary(epoch: int, every: int, epochs: int) -> bool:
    return epoch % every == 0 or epoch == epochs


def _write_split(run: ex.Run, outcome: SplitOutcome, finished: list[dict[str, Any]]) -> None:
    """A finished split's splits.csv and speed.csv rows, then the checkpoint with it appended."""
    result, entry = outcome.entry["result"], outcome.entry
    split = result["split"]
    run.log(result, "splits.csv", step_key="split")
    run.report(split, result)  # to reparam-tune's pruner, if it runs this run (else a no-op)
    run.log({"split": split, "seconds": outcome.seconds}, "speed.csv", step_key="split")
    finished.append(entry)
    check = outcome.modules or [t for sd in (entry["model"], entry["likelihood"]) for t in sd.values()
                                if t.is_floating_point()]
    run.save_checkpoint({"splits": finished}, KIND, len(finished), check=check, unit="split")
    print(f"{run.config.dataset} split {split}: RMSE {result['rmse']:.3f}  LL {result['test_ll']:.3f}  "
          f"coverage {result['coverage_95']:.2f}", flush=True)


def _sequential_splits(run: ex.Run, device: torch.device, todo: range, finished: list[dict[str, Any]],
                       bar: ex.Progress) -> int | None:
    cfg, every = run.config, run.options.log_every
    where = [0]  # the epoch last trained
    for split in todo:

        def on_epoch(row: dict[str, Any]) -> bool:
            run.check_finite({"loss": row["loss"]}, row["epoch"], unit=f"split {row['split']} epoch")
            bar.update()
            if _boundary(row["epoch"], every, cfg.epochs):
                run.log(row, step_key="epoch")
                bar.status(split=row["split"], loss=row["loss"])
            where[:] = [row["epoch"]]
            return run.stop_requested

        outcome = train_split(cfg, split, device, on_epoch)
        if outcome is None:
            run.save_checkpoint({"splits": finished}, KIND, len(finished), unit="split")
            return run.interrupted(f"split {split} epoch {where[0]} (split {split} restarts from its start on "
                                   "resume)")
        _write_split(run, outcome, finished)
    return None


# -- --workers: the splits on a process pool ---------------------------------------------------------------------
_STOP: Any = None  # the pool's stop event, in each worker
_PARENT = 0  # the main process's pid, in each worker


def _init_worker(threads: int, stop: Any, parent: int) -> None:
    """In each worker: its thread count, the shared stop event, and a watch on the main process (a worker
    whose main process was killed exits, instead of waiting forever on the pool's queue); Ctrl-C is the main
    process's to answer."""
    global _STOP, _PARENT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    set_threads(threads)
    _STOP, _PARENT = stop, parent
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True, name="parent-watch").start()


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _worker_split(cfg: Any, split: int, device: str, every: int) -> dict[str, Any]:
    """One split in a worker: its logged rows, the first row with a NaN or inf loss (training stops there),
    and its outcome (None if stopped: the main process asked, or died)."""
    rows: list[dict[str, Any]] = []
    bad: list[dict[str, Any]] = []

    def on_epoch(row: dict[str, Any]) -> bool:
        if not math.isfinite(row["loss"]):
            bad.append(row)
            return True
        if _boundary(row["epoch"], every, cfg.epochs):
            rows.append(row)
        return _STOP is not None and _STOP.is_set()

    outcome = train_split(cfg, split, select_device(device), on_epoch)
    if outcome is not None:
        outcome.modules = None  # the state dicts travel back, not the modules
    return {"rows": rows, "bad": bad[0] if bad else None, "outcome": outcome}


def _parallel_splits(run: ex.Run, device: torch.device, todo: range, finished: list[dict[str, Any]],
                     bar: ex.Progress) -> int | None:
    cfg, every = run.config, run.options.log_every
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    stop = ctx.Event()
    pool = cf.ProcessPoolExecutor(max_workers=min(cfg.workers, len(todo)), mp_context=ctx,
                                  initializer=_init_worker, initargs=(cfg.threads or 1, stop, os.getpid()))
    try:
        futures = [pool.submit(_worker_split, cfg, split, str(device), every) for split in todo]
        for split, future in zip(todo, futures, strict=True):
            out = _result_unless_stopped(run, future)
            if out is None or (out["outcome"] is None and out["bad"] is None):
                stop.set()
                run.save_checkpoint({"splits": finished}, KIND, len(finished), unit="split")
                return run.interrupted(f"split {split} (the splits from {split} on restart from their start on "
                                       "resume)")
            for row in out["rows"]:
                run.log(row, step_key="epoch")
            if out["bad"] is not None:
                bad = out["bad"]
                run.check_finite({"loss": bad["loss"]}, bad["epoch"], unit=f"split {split} epoch")
            bar.update(cfg.epochs)
            if out["rows"]:
                bar.status(split=split, loss=out["rows"][-1]["loss"])
            _write_split(run, out["outcome"], finished)
    finally:
        stop.set()  # running workers stop at their next epoch; queued splits are dropped
        pool.shutdown(wait=True, cancel_futures=True)
    return None


def _result_unless_stopped(run: ex.Run, future: cf.Future) -> dict[str, Any] | None:
    """The split's result when it is done, or None as soon as a Ctrl-C asks the run to stop."""
    while True:
        try:
            return future.result(timeout=0.2)
        except cf.TimeoutError:
            if run.stop_requested:
                return None
