"""Training and evaluation loops shared by scripts/train_vae.py, scripts/bench_vae.py and the tests.

One host sync per epoch: batch statistics are summed on the device and read once at the end, so the
loop never waits on ``.item()`` between batches.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .model import _BaseVAE

__all__ = ["beta_at", "train_epoch", "evaluate", "evaluate_iwae"]


def beta_at(step: int, beta: float, warmup_steps: int) -> float:
    """Linear KL warm-up: beta_t = beta * min(1, (t + 1) / warmup_steps); beta itself when warmup_steps = 0."""
    if warmup_steps <= 0:
        return beta
    return beta * min(1.0, (step + 1) / warmup_steps)


def train_epoch(model: _BaseVAE, optimizer: torch.optim.Optimizer, x: Tensor, batch_size: int, step: int = 0,
                beta: float = 1.0, warmup_steps: int = 0,
                on_batch: Callable[[], None] | None = None) -> tuple[dict[str, float], int]:
    """One pass over x (N, D) in shuffled minibatches; returns the epoch's mean ELBO terms
    (nats per example, beta = 1) and the new global step."""
    model.train()
    n = x.shape[0]
    perm = torch.randperm(n, device=x.device)
    sums: dict[str, Tensor] = {}
    for start in range(0, n, batch_size):
        xb = x[perm[start:start + batch_size]]  # (b, D)
        loss, stats = model.loss(xb, beta=beta_at(step, beta, warmup_steps), step=step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        for k, v in stats.items():
            sums[k] = sums[k] + v if k in sums else v
        step += 1
        if on_batch is not None:
            on_batch()
    keys = [k for k in sums if k != "n"]
    values = (torch.stack([sums[k] for k in keys]) / sums["n"]).tolist()  # the epoch's one host sync
    return dict(zip(keys, values, strict=True)), step


@torch.no_grad()
def evaluate(model: _BaseVAE, x: Tensor, batch_size: int = 1000, n_samples: int = 1) -> dict[str, float]:
    """Mean ELBO, reconstruction term and KL over x (nats per example), analytic KL."""
    model.eval()
    totals = torch.zeros(3, dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        t = model.elbo_terms(x[start:start + batch_size], n_samples)
        totals += torch.stack([t.elbo.sum(), t.rec.sum(), t.kl.sum()]).double()
    elbo, rec, kl = (totals / x.shape[0]).tolist()
    return {"elbo": elbo, "rec": rec, "kl": kl}


@torch.no_grad()
def evaluate_iwae(model: _BaseVAE, x: Tensor, k: int, batch_size: int = 10, chunk_size: int | None = None) -> float:
    """Mean IWAE_k bound over x (nats per example), eq. (3) of vae.model, chunked over k."""
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=x.device)
    for start in range(0, x.shape[0], batch_size):
        total += model.iwae_bound(x[start:start + batch_size], k, chunk_size).double().sum()
    return float(total / x.shape[0])
