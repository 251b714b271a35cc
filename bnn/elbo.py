"""The ELBO with its scaling made explicit.

For a training set of N examples, the negative ELBO is  sum_n -log p(y_n | x_n, w) + KL(q || p).
Per example (what a minibatch of B examples estimates without bias):

    loss = mean_{batch} NLL  +  kl_weight * KL / N

with kl_weight = 1 (each minibatch carries 1/M of the KL, M = N / B minibatches) or Blundell's
minibatch reweighting pi_i = 2^(M - i) / (2^M - 1) (Blundell et al. 2015, eq. 9), expressed per
example as kl_weight_i = M * pi_i: the weights still average to 1 over an epoch, so the epoch's total
is the same ELBO, with most of the KL paid by the first minibatches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor, nn

from .layers import model_kl
from .likelihoods import Likelihood

__all__ = ["BBBLossTerms", "elbo_loss", "blundell_kl_weight"]


@dataclass
class BBBLossTerms:
    """loss = nll + kl_weight * kl / n_data; all per example except ``kl`` (the whole model's KL)."""

    loss: Tensor
    nll: Tensor
    kl: Tensor
    kl_weight: float
    n_data: int


def blundell_kl_weight(batch_index: int, n_batches: int) -> float:
    """M * pi_i with pi_i = 2^(M-i) / (2^M - 1), i = 1..M (Blundell eq. 9), as a per-example KL weight.

    Computed in log space, so M in the thousands does not overflow."""
    if not isinstance(n_batches, int) or n_batches <= 0:
        raise ValueError(f"n_batches must be a positive integer, got {n_batches!r}")
    if not 1 <= batch_index <= n_batches:
        raise ValueError(f"batch_index must be in 1..{n_batches} (1-based), got {batch_index}")
    # log pi_i = (M - i) log 2 - log(2^M - 1) = -i log 2 - log(1 - 2^-M)
    log_pi = -batch_index * math.log(2.0) - math.log1p(-(2.0 ** -n_batches))
    return n_batches * math.exp(log_pi)


def elbo_loss(model: nn.Module, likelihood: Likelihood, x: Tensor, y: Tensor, n_data: int,
              n_samples: int = 1, kl_weight: float = 1.0) -> BBBLossTerms:
    """Per-example negative ELBO of a minibatch: mean NLL + kl_weight * KL / n_data, averaged over
    ``n_samples`` forward passes (each with its own weight sample and the KL of that sample).

    ``n_data`` is the size of the TRAINING SET (not the batch): passing the batch size over-weights the
    KL by N / B, the classic mistake; a value smaller than the batch is rejected.
    """
    batch = x.shape[0]
    if not isinstance(n_data, int) or n_data <= 0:
        raise ValueError(f"n_data must be the training-set size (a positive integer), got {n_data!r}")
    if n_data < batch:
        raise ValueError(f"n_data={n_data} is smaller than the minibatch ({batch}): pass the training-set size N")
    if not isinstance(n_samples, int) or n_samples <= 0:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    if not (kl_weight >= 0 and math.isfinite(kl_weight)):
        raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight}")
    nll: Tensor | None = None
    kl: Tensor | None = None
    for _ in range(n_samples):
        output = model(x)
        nll_s = likelihood.nll(output, y).mean()  # mean over the batch: estimates (1/N) sum_n
        kl_s = model_kl(model)  # KL of the sample just used
        nll, kl = (nll_s, kl_s) if nll is None else (nll + nll_s, kl + kl_s)
    if n_samples > 1:  # no graph nodes for a division by 1: a hot path
        nll, kl = nll / n_samples, kl / n_samples
    loss = nll + kl * (kl_weight / n_data)  # per-example negative ELBO
    return BBBLossTerms(loss=loss, nll=nll.detach(), kl=kl.detach(), kl_weight=float(kl_weight), n_data=n_data)
