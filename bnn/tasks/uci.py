"""The UCI regression protocol (Hernandez-Lobato & Adams 2015): one fresh network per train/test split,
test RMSE and log-likelihood in original units, mean +- standard error over the splits.

Resumes at split granularity: every finished split's results and model are in the checkpoint; a killed
run continues with the next unfinished split, which restarts from its start on its own seed
(``derived_seed(seed, split)``), so its results are the ones an uninterrupted run gets."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
import torch

from reparam_apps import experiment as ex

from ..likelihoods import GaussianLikelihood
from ..predict import gaussian_log_likelihood, interval_coverage, predict, rmse
from ..train import Trainer, derived_seed, make_mlp
from ..uci import load_uci_split, uci_n_splits
from .loop import KIND, mean_and_se

__all__ = ["run_uci", "seed_split"]


def seed_split(seed: int, split: int) -> int:
    """Seed python, numpy and torch for ``split`` of a run with ``seed``; returns the split's seed."""
    s = derived_seed(seed, 0x5B17, split)
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def run_uci(run: ex.Run, device: torch.device) -> int | None:
    """The splits 0 .. --splits - 1 not yet finished; per split a row in splits.csv, per --log-every epochs
    a row in metrics.csv; writes uci_splits.png and the summary. Returns 130 after a saved Ctrl-C."""
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
    every = run.options.log_every
    bar = run.progress(n_splits * cfg.epochs, f"uci {cfg.dataset}", unit="epoch", initial=len(finished) * cfg.epochs)
    try:
        with run.interruptible():
            for split in range(len(finished), n_splits):
                start = time.perf_counter()
                s = seed_split(cfg.seed, split)
                data = load_uci_split(cfg.data_dir, cfg.dataset, split)
                x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
                model = make_mlp(x_tr.shape[1], 1, cfg.hidden or data.n_hidden, cfg.layers,
                                 **cfg.layer_kwargs()).to(device)
                likelihood = GaussianLikelihood(init_std=0.5).to(device)
                trainer = Trainer(model, likelihood, x_tr, y_tr, batch_size=cfg.batch_size, lr=cfg.lr,
                                  n_samples=cfg.train_samples, kl_schedule=cfg.kl_schedule, seed=s)
                for epoch in range(1, cfg.epochs + 1):
                    row = {"split": split, "epoch": epoch, **trainer.epoch()}
                    run.check_finite({"loss": row["loss"]}, epoch, unit=f"split {split} epoch")
                    bar.update()
                    if epoch % every == 0 or epoch == cfg.epochs:
                        run.log(row, step_key="epoch")
                        bar.status(split=split, loss=row["loss"])
                    if run.stop_requested:
                        run.save_checkpoint({"splits": finished}, KIND, len(finished), unit="split")
                        return run.interrupted(f"split {split} epoch {epoch} (split {split} restarts from its "
                                               "start on resume)")
                pred = predict(model, data.x_test.to(device), n_samples=cfg.test_samples, likelihood=likelihood)
                y_te = data.y_test.to(device)
                result = {
                    "split": split,
                    "rmse": rmse(pred.mean, y_te) * data.y_std,  # original units
                    "test_ll": gaussian_log_likelihood(y_te, pred.sample_means, pred.sample_vars,
                                                          y_scale=data.y_std),
                    "coverage_95": interval_coverage(pred.mean, pred.std, y_te, 0.95),
                    "noise_std": likelihood.noise_std.item() * data.y_std,
                }
                run.log(result, "splits.csv", step_key="split")
                run.report(split, result)  # to reparam-tune's pruner, if it runs this run (else a no-op)
                run.log({"split": split, "seconds": time.perf_counter() - start}, "speed.csv", step_key="split")
                finished.append({"result": result, "model": model.state_dict(),
                                 "likelihood": likelihood.state_dict(), "y_mean": data.y_mean, "y_std": data.y_std})
                run.save_checkpoint({"splits": finished}, KIND, len(finished), check=[model, likelihood], unit="split")
                print(f"{cfg.dataset} split {split}: RMSE {result['rmse']:.3f}  LL {result['test_ll']:.3f}  "
                      f"coverage {result['coverage_95']:.2f}", flush=True)
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
