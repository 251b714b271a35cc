"""Training and evaluation: the epoch loop, the ELBO and IWAE evaluations, and a whole run on the spine.

One host sync per epoch: batch statistics are summed on the device and read once at the end, so the
loop never waits on ``.item()`` between batches.

``train_run`` is what ``reparam-vae`` runs: an epoch loop that logs a metrics row, a status line and a
checkpoint every ``--log-every`` epochs. A checkpoint holds the model (its running-mean baseline is a
buffer), the optimizer, the epoch and gradient step (the Gumbel-Softmax temperature is a function of the
step) and every RNG state (python, numpy, torch CPU and CUDA), so that a run killed at any point and
resumed writes the same metrics.csv rows as an uninterrupted run. The data order needs no state of its
own: the shuffle draws from torch's generator and dynamic binarisation is seeded by (seed, epoch).

Under torchrun (``reparam_apps.experiment.distributed``) every rank holds the data, takes its share of each
global batch of --batch-size through ``DistributedDataParallel`` (``ShareLoss``, weighted so the averaged
gradient is the global batch's), and sums its evaluation terms with the others'. The shuffle then comes from
``epoch_order`` (the same on every rank, a function of (seed, epoch)) and each rank's latent noise from its
own stream, reseeded each epoch from (seed, rank, epoch): a run is repeatable for a given seed and world
size, and its checkpoint (rank 0's) resumes under any world size. One process is unchanged.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from reparam_apps import experiment as ex
from reparam_apps.experiment.distributed import (
    DistInfo,
    all_reduce_sum,
    any_rank,
    batch_weight,
    check_world_size,
    data_parallel,
    one_interrupt_per_press,
    rank_device,
    rank_seed,
    shard,
    single_process,
    zero_loss,
)
from reparam_apps.utils import rng_state, seed_everything, select_device, set_rng_state, set_threads

from .config import VAEConfig
from .data import VAEData, load_vae_data
from .model import CHECKPOINT_KIND, VAE, CategoricalVAE, _BaseVAE
from .plots import save_elbo_curves, save_manifold, save_reconstructions, save_samples

__all__ = ["beta_at", "train_epoch", "evaluate_elbo", "evaluate_iwae", "build_model", "load_data", "rng_state",
           "set_rng_state", "train_run", "ShareLoss", "epoch_order"]


def beta_at(step: int, beta: float, warmup_steps: int) -> float:
    """Linear KL warm-up: beta_t = beta * min(1, (t + 1) / warmup_steps); beta itself when warmup_steps = 0."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)


class ShareLoss(nn.Module):
    """The training loss (2) of this rank's share of a global batch times its weight w_r (eq. (1) of
    ``reparam_apps.experiment.distributed``), computed in ``forward`` so that DistributedDataParallel
    averages its gradients; an empty share gives a zero loss that still joins the all-reduce."""

    def __init__(self, model: _BaseVAE):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, weight: float, beta: float, step: int) -> tuple[Tensor, dict[str, Tensor]]:
        if x.shape[0] == 0:
            return zero_loss(self.model), {}
        loss, stats = self.model.loss(x, beta=beta, step=step)
        return loss * weight, stats


def epoch_order(seed: int, epoch: int, n: int) -> Tensor:
    """The shuffle of ``epoch`` (0-based) under torchrun: a permutation of n (CPU) from (seed, epoch) alone,
    the same on every rank whatever each rank's noise stream has drawn."""
    words = np.random.SeedSequence([seed, 0x5EED0, epoch]).generate_state(1, np.uint64)[0]
    return torch.randperm(n, generator=torch.Generator().manual_seed(int(words) >> 1))


def train_epoch(model: _BaseVAE, optimizer: torch.optim.Optimizer, x: Tensor, batch_size: int, step: int = 0,
                beta: float = 1.0, warmup_steps: int = 0, on_batch: Callable[[], None] | None = None, *,
                perm: Tensor | None = None, dist_info: DistInfo | None = None,
                ddp: nn.Module | None = None) -> tuple[dict[str, float], int]:
    """One pass over x (N, D) in shuffled minibatches; returns the epoch's mean ELBO terms
    (nats per example, beta = 1) and the new global step.

    Args:
        perm: the epoch's order of the N examples (default: ``torch.randperm`` from torch's generator).
        dist_info, ddp: under torchrun, this rank's place and ``ShareLoss(model)`` under DDP: each global
            batch of ``batch_size`` is sharded over the ranks and the epoch's sums are added up over them.
    """
    info = dist_info or single_process()
    if info.distributed and ddp is None:
        raise ValueError("train_epoch over several ranks needs ddp = data_parallel(ShareLoss(model), ...)")
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, device=x.device) if perm is None else perm.to(x.device)
    sums: dict[str, Tensor] = {}
    for start in range(0, n, batch_size):
        idx = perm[start:start + batch_size]  # the global batch
        mine = shard(idx, info)
        xb = x[mine]  # (b, D)
        if ddp is None:
            loss, stats = model.loss(xb, beta=beta_at(step, beta, warmup_steps), step=step)
        else:
            loss, stats = ddp(xb, batch_weight(len(mine), len(idx), info), beta_at(step, beta, warmup_steps), step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in stats.items():
            sums[k] = sums[k] + v if k in sums else v
        step += 1
        if on_batch is not None:
            on_batch()
    keys = [k for k in sums if k != "n"]
    if info.distributed:  # one all-reduce per epoch: the sums of every rank's shares
        total = all_reduce_sum(torch.stack([sums[k] for k in [*keys, "n"]]), info)
        sums = dict(zip([*keys, "n"], total.unbind(), strict=True))
    values = (torch.stack([sums[k] for k in keys]) / sums["n"]).tolist()  # the epoch's one host sync
    return dict(zip(keys, values, strict=True)), step


def _my_rows(x: Tensor, info: DistInfo) -> Tensor:
    """This rank's rows of an evaluation set (all of them for one process)."""
    return x if not info.distributed else x[shard(torch.arange(x.shape[0], device=x.device), info)]


@torch.no_grad()
def evaluate_elbo(model: _BaseVAE, x: Tensor, batch_size: int = 1000, n_samples: int = 1,
                  dist_info: DistInfo | None = None) -> dict[str, float]:
    """Mean ELBO, reconstruction term and KL over x (nats per example), analytic KL. Under torchrun
    (``dist_info``) each rank takes its rows of x and the sums are added up: every rank gets the mean over x."""
    info = dist_info or single_process()
    model.eval()
    n, x = x.shape[0], _my_rows(x, info)
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        t = model.elbo_terms(x[start:start + batch_size], n_samples)
        totals += torch.stack([t.elbo.sum(), t.rec.sum(), t.kl.sum()]).double()
    elbo, rec, kl = (all_reduce_sum(totals, info) / n).tolist()
    return {"elbo": elbo, "rec": rec, "kl": kl}



@torch.no_grad()
def evaluate_iwae(model: _BaseVAE, x: Tensor, k: int, batch_size: int = 10, chunk_size: int | None = None,
                  dist_info: DistInfo | None = None) -> float:
    """Mean IWAE_k bound over x (nats per example), eq. (3) of vae.model, chunked over k (rows sharded over
    the ranks under torchrun, as ``evaluate_elbo``)."""
    info = dist_info or single_process()
    model.eval()
    n, x = x.shape[0], _my_rows(x, info)
    total = torch.zeros(1, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        total += model.iwae_bound(x[start:start + batch_size], k, chunk_size).double().sum()
    return float(all_reduce_sum(total, info)[0] / n)


# -- a run on the experiment spine ----------------------------------------------------------------
def build_model(cfg: VAEConfig, image_shape: tuple[int, int]) -> VAE | CategoricalVAE:
    """The model ``cfg`` describes, for images of ``image_shape`` (H, W)."""
    common = dict(image_shape=image_shape, hidden=cfg.hidden, arch=cfg.arch, likelihood=cfg.likelihood,
                  decoder_std=cfg.decoder_std, kl=cfg.kl, estimator=cfg.estimator, sf_samples=cfg.sf_samples,
                  sf_baseline=cfg.sf_baseline, train_samples=cfg.train_samples)
    if cfg.model == "categorical":
        return CategoricalVAE(n_latents=cfg.latent_dim, n_classes=cfg.n_classes, temperature=cfg.temperature,
                              temperature_min=cfg.temperature_min, anneal_rate=cfg.anneal_rate, hard=cfg.hard,
                              **common)
    return VAE(latent_dim=cfg.latent_dim, posterior=cfg.posterior, flow_steps=cfg.flow_steps, **common)


def load_data(cfg: VAEConfig, device: torch.device) -> VAEData:
    """The run's data on ``device`` (binarised as ``cfg.binarize`` says, training binarisation seeded by the seed)."""
    return load_vae_data(cfg.dataset, cfg.data_dir, cfg.binarize, seed=cfg.seed).to(device)


def _restore(run: ex.Run, model: _BaseVAE, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Load the checkpoint of a resumed run into model and optimizer; (epoch, step), (0, 0) for a fresh run."""
    state = run.load_checkpoint(CHECKPOINT_KIND, map_location="cpu")  # RNG states must stay on the CPU
    if state is None:
        return 0, 0
    try:
        model.load_state_dict(state["model_state"])
        optimizer.load_state_dict(state["optimizer"])
        epoch, step = int(state["epoch"]), int(state["gradient_step"])
        set_rng_state(state["rng"])
    except (KeyError, RuntimeError, ValueError, TypeError) as err:
        raise ex.CheckpointError(f"{run.checkpoint_path} does not fit this run's config "
                                 f"({str(err).strip().splitlines()[0]}): resume with the version that wrote it, "
                                 "or start a new run") from None
    run.rewind(epoch, key="epoch")
    return epoch, step


def train_run(run: ex.Run, data: VAEData | None = None, dist_info: DistInfo | None = None) -> int:
    """Train (or continue) the run in ``run`` to ``run.config.epochs``, then write its figures and summary.

    Args:
        run: the open run folder (``ex.start_or_resume("vae", ...)``); its config is a ``VAEConfig``.
        data: the run's data, if already loaded (``load_data``); loaded here otherwise.
        dist_info: this process's place under torchrun (``ex.init_distributed``); one process if None.
    Returns:
        0 when finished; 130 after a Ctrl-C (saved at the end of the current epoch).
    Raises:
        DivergenceError: a NaN or inf ELBO or parameter (the last good checkpoint is kept).
        UserError: more processes than training examples or than --batch-size.
    """
    cfg: VAEConfig = run.config
    info = dist_info or single_process()
    set_threads(cfg.threads)
    device = rank_device(select_device(cfg.device), info)
    seed_everything(cfg.seed)
    data = load_data(cfg, device) if data is None else data.to(device)
    check_world_size(data.n_train, cfg.batch_size, info)
    model = build_model(cfg, data.image_shape).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    epoch, step = _restore(run, model, optimizer)
    ddp = data_parallel(ShareLoss(model), info, device) if info.distributed else None  # after the restore
    if epoch > cfg.epochs:
        raise ex.UserError(f"{run.path} has done {epoch} epochs, more than --epochs {cfg.epochs}: pass --epochs "
                           f"{epoch} or more (or leave it out after a run that finished)")

    steps_per_epoch = math.ceil(data.n_train / cfg.batch_size)
    warmup_steps = int(round(cfg.warmup * steps_per_epoch))
    every = run.options.log_every
    bar = run.progress(cfg.epochs, f"VAE {cfg.model} {cfg.estimator} {cfg.dataset}", unit="epoch", initial=epoch)
    noted = False

    def on_batch() -> None:  # the first Ctrl-C is answered at once, the save waits for the epoch's end
        nonlocal noted
        if run.stop_requested and not noted and run.writable:
            noted = True
            print(f"\nCtrl-C: saving at the end of epoch {epoch + 1} (Ctrl-C again: stop now, unsaved)",
                  file=sys.stderr, flush=True)

    def save() -> None:
        state = {**model.checkpoint_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "gradient_step": step, "rng": rng_state()}
        if isinstance(model, CategoricalVAE):
            state["temperature"] = model.temperature_at(step)  # for the record: tau is a function of the step
        run.save_checkpoint(state, CHECKPOINT_KIND, epoch, check=[model], unit="epoch")

    t_window, n_window = time.perf_counter(), 0
    with run.interruptible(), one_interrupt_per_press(info):
        while epoch < cfg.epochs:
            perm = None
            if info.distributed:  # the shared order, and this rank's own noise: both functions of the epoch
                torch.manual_seed(rank_seed(cfg.seed, info, epoch))
                perm = epoch_order(cfg.seed, epoch, data.n_train)
            train, step = train_epoch(model, optimizer, data.train(epoch), cfg.batch_size, step, cfg.beta,
                                      warmup_steps, on_batch=on_batch, perm=perm, dist_info=info, ddp=ddp)
            epoch += 1
            n_window += 1
            bar.update(1)
            saved = False
            if epoch % every == 0 or epoch == cfg.epochs:
                test = evaluate_elbo(model, data.test, dist_info=info)
                run.check_finite({"train_elbo": train["elbo"], "test_elbo": test["elbo"]}, epoch, unit="epoch")
                row = {"epoch": epoch, "step": step, **{f"train_{k}": v for k, v in train.items()},
                       **{f"test_{k}": v for k, v in test.items()}}
                if isinstance(model, CategoricalVAE):
                    row["temperature"] = model.temperature_at(step)
                run.log(row)
                seconds = time.perf_counter() - t_window
                run.log({"epoch": epoch, "seconds": seconds, "epochs": n_window,
                         "examples_per_s": n_window * data.n_train / max(seconds, 1e-9)}, "speed.csv", "epoch")
                bar.status(train_elbo=train["elbo"], test_elbo=test["elbo"])
                save()
                saved = True
                run.report(epoch, row)  # a tuner's pruner hook (a no-op otherwise), after the checkpoint
                t_window, n_window = time.perf_counter(), 0
            if any_rank(run.stop_requested, info):  # every rank stops after the same epoch
                if not saved:
                    save()
                bar.close()
                return run.interrupted(f"epoch {epoch}/{cfg.epochs}")
    bar.close()
    _finish(run, cfg, model, data, epoch, info)
    return 0


def _finish(run: ex.Run, cfg: VAEConfig, model: _BaseVAE, data: VAEData, epoch: int, info: DistInfo) -> None:
    """Figures, the final ELBO (and IWAE bound), summary.json and the one-line result on stdout (the
    evaluations on every rank, the files and the line from the main one)."""
    if run.writable:
        rows = run.metrics().rows()
        save_elbo_curves(run.file("elbo.png"), rows, title=f"{cfg.model} VAE, {cfg.estimator}")
        save_reconstructions(run.file("reconstructions.png"), model, data.test[:20])
        save_samples(run.file("samples.png"), model)
        if isinstance(model, VAE) and model.latent_dim == 2:
            save_manifold(run.file("manifold.png"), model)
    final = evaluate_elbo(model, data.test, dist_info=info)
    summary: dict[str, Any] = {"epochs": epoch, "test_elbo": final["elbo"], "test_rec": final["rec"],
                               "test_kl": final["kl"], "data": data.name, "image_shape": list(data.image_shape),
                               "n_train": data.n_train, "n_test": int(data.test.shape[0])}
    msg = f"final test ELBO {final['elbo']:.2f} nats"
    if cfg.iwae_k > 0:
        subset = data.test[: cfg.iwae_n]
        summary.update(iwae=evaluate_iwae(model, subset, cfg.iwae_k, dist_info=info), iwae_k=cfg.iwae_k,
                       iwae_n=int(subset.shape[0]),
                       elbo_on_iwae_subset=evaluate_elbo(model, subset, dist_info=info)["elbo"])
        msg += (f", IWAE(k={cfg.iwae_k}) {summary['iwae']:.2f} nats on the first {subset.shape[0]} test "
                f"examples (ELBO there {summary['elbo_on_iwae_subset']:.2f})")
    run.write_summary(summary)
    run.close()
    if run.writable:
        print(f"{msg}; run folder {run.path}", flush=True)
