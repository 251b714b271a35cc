"""What the tasks share: the resumable epoch loop (toy, classify), seeded evaluation, summary statistics."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from reparam_apps import experiment as ex
from reparam_apps.experiment.distributed import any_rank, one_interrupt_per_press

from ..train import Trainer, derived_seed, rng_state, set_rng_state

__all__ = ["KIND", "restore", "train_epochs", "seeded", "mean_and_se"]

KIND = "bnn"  # the checkpoints' kind tag


@contextlib.contextmanager
def seeded(device: torch.device, seed: int, *words: int) -> Iterator[None]:
    """Run the block on its own random stream, derived from (seed, words), and give the training stream
    back untouched afterwards: what an evaluation draws then depends on neither --log-every nor the
    number of test samples, and never changes the training that follows."""
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        s = derived_seed(seed, *words)
        torch.default_generator.manual_seed(s)  # CPU: also the key of the native weight noise
        if cuda:
            torch.cuda.manual_seed(s)
        yield


def restore(run: ex.Run, trainer: Trainer) -> dict[str, Any] | None:
    """On --resume: load the model, likelihood, optimizer, data order and every random state of the last
    checkpoint, and drop the CSV rows logged after it. None for a fresh run (nothing to restore)."""
    state = run.load_checkpoint(KIND)
    if state is None:
        return None
    epoch = int(state["step"])
    if epoch > run.config.epochs:
        raise ex.UserError(f"this run has trained {epoch} epochs, more than --epochs {run.config.epochs}: resume "
                           f"with --epochs {epoch} or more")
    trainer.model.load_state_dict(state["model"])
    trainer.likelihood.load_state_dict(state["likelihood"])
    trainer.load_state_dict(state["trainer"])
    set_rng_state(state["rng"])
    run.rewind(epoch, key="epoch")
    return state


def train_epochs(run: ex.Run, trainer: Trainer, desc: str, start: int = 0,
                 evaluate: Callable[[int], dict[str, float]] | None = None, keep: dict[str, Any] | None = None,
                 status: Sequence[str] = ("loss",)) -> int | None:
    """Epochs ``start + 1 .. config.epochs``: a metrics row (and ``evaluate(epoch)``'s columns) and a
    checkpoint every --log-every epochs and at the last, the loss checked for NaN every epoch (exit 3),
    and a first Ctrl-C saved at the end of its epoch (under torchrun: when any rank saw it, all stop there).
    Returns 130 after a saved Ctrl-C, else None.

    Args:
        keep: what every checkpoint carries besides the training state (e.g. the initial test metrics).
        status: the row's columns shown in the progress bar / status lines.
    """
    cfg, every = run.config, run.options.log_every
    model, likelihood = trainer.model, trainer.likelihood
    bar = run.progress(cfg.epochs, desc, unit="epoch", initial=start)
    t0, n0 = time.perf_counter(), start
    try:
        with run.interruptible(), one_interrupt_per_press(trainer.info):
            for epoch in range(start + 1, cfg.epochs + 1):
                row: dict[str, Any] = {"epoch": epoch, **trainer.epoch()}
                run.check_finite({"loss": row["loss"]}, epoch, unit="epoch")
                bar.update()
                boundary = epoch % every == 0 or epoch == cfg.epochs
                if boundary:
                    if evaluate is not None:
                        row.update(evaluate(epoch))
                    run.log(row, step_key="epoch")
                    run.report(epoch, row)  # to reparam-tune's pruner, if it runs this run (else a no-op)
                    now = time.perf_counter()  # wall clock: its own CSV, so metrics.csv repeats exactly
                    run.log({"epoch": epoch, "seconds_per_epoch": (now - t0) / (epoch - n0)}, "speed.csv",
                            step_key="epoch")
                    t0, n0 = now, epoch
                    bar.status(**{k: row[k] for k in status})
                stop = any_rank(run.stop_requested, trainer.info)
                if boundary or stop:
                    state = {"model": model.state_dict(), "likelihood": likelihood.state_dict(),
                             "trainer": trainer.state_dict(), "rng": rng_state(), **(keep or {})}
                    run.save_checkpoint(state, KIND, epoch, check=[model, likelihood], unit="epoch")
                if stop and epoch < cfg.epochs:
                    return run.interrupted(f"epoch {epoch}")
    finally:
        bar.close()
    return None


def mean_and_se(values: Sequence[float]) -> tuple[float, float]:
    """Mean and its standard error s / sqrt(n) (0 for a single value)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else 0.0)
