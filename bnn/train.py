"""Fitting a Bayes-by-Backprop network: Adam on the per-example negative ELBO, epoch by epoch.

Each minibatch B_i (i = 1..M, M = ceil(N / |B|)) of a shuffled epoch takes one Adam step on

    loss_i = mean_{n in B_i} -log p(y_n | x_n, w) + kl_weight_i * KL(q || p) / N            (1)

with N the TRAINING-SET size (``bnn.elbo_loss``), kl_weight_i = 1 ("uniform") or Blundell's
M * pi_i, pi_i = 2^(M-i) / (2^M - 1) (Blundell et al. 2015, eq. 9, ``bnn.blundell_kl_weight``). Both
weightings average to 1 over an epoch, so an epoch's summed loss is the full negative ELBO / N.

``Trainer`` holds everything an epoch needs besides the model (the optimizer and the data-order
generator) and gives it as a ``state_dict``, so a run can checkpoint between epochs and continue the
same stream; ``fit`` is the plain loop over it for users and for the cross-domain comparison.

Under torchrun (``dist_info`` with N ranks) every rank draws the same order, takes its share of each
global minibatch B_i through ``DistributedDataParallel`` with its mean loss (1) weighted by N b_r / |B_i|
(``reparam_apps.experiment.distributed``, eq. (1)), so the averaged gradient is the global minibatch's:
eq. (1) keeps N as the training-set size and the KL term is KL / N on every rank, not multiplied by the
number of ranks. Each rank draws its own weight noise: at the start of every epoch it reseeds torch's
default generator (which keys the native kernel's noise) from (seed, rank, epoch), so the averaged
gradient averages independent noise draws, and a run is repeatable for a given seed and world size.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from reparam_apps.experiment import check_finite_values
from reparam_apps.experiment.distributed import (
    DistInfo,
    all_reduce_sum,
    batch_weight,
    check_world_size,
    data_parallel,
    rank_seed,
    shard,
    single_process,
    zero_loss,
)
from reparam_apps.utils import derived_seed, rng_state, set_rng_state

from .elbo import blundell_kl_weight, elbo_loss
from .layers import DEFAULT_INIT_RHO, BayesLinear
from .likelihoods import Likelihood

__all__ = ["KL_SCHEDULES", "Trainer", "ShareLoss", "fit", "make_mlp", "derived_seed", "rng_state", "set_rng_state",
           "check_finite_rows"]

KL_SCHEDULES = ("uniform", "blundell")


def check_finite_rows(t: Tensor, name: str) -> None:
    """ValueError naming the first row of ``t`` (N, ...) that holds a NaN or inf: bad input, not divergence."""
    if t.is_floating_point():
        bad = ~torch.isfinite(t.reshape(len(t), -1)).all(1)  # (N,)
        if bool(bad.any()):
            row = int(bad.nonzero()[0, 0])
            raise ValueError(f"{name} row {row} holds NaN or inf ({int(bad.sum())} such rows): clean the data")


def make_mlp(n_in: int, n_out: int, hidden: int, layers: int, *, bayesian: bool = True,
             activation: type[nn.Module] = nn.ReLU, **layer_kwargs: Any) -> nn.Sequential:
    """``layers`` hidden layers of ``hidden`` units: BayesLinear (``layer_kwargs``: prior, init_rho,
    sampling, ...) or, with ``bayesian=False``, nn.Linear of the same sizes (the deterministic baseline)."""
    sizes = [n_in] + [hidden] * layers + [n_out]
    layer_kwargs.setdefault("init_rho", DEFAULT_INIT_RHO)
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        modules.append(BayesLinear(a, b, **layer_kwargs) if bayesian else nn.Linear(a, b))
        if i < len(sizes) - 2:
            modules.append(activation())
    return nn.Sequential(*modules)


def _adam(params: list[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)  # one kernel for all parameters
    except RuntimeError:  # torch < 2.4 has no fused CPU Adam
        return torch.optim.Adam(params, lr=lr)


class ShareLoss(nn.Module):
    """Eq. (1) on this rank's share of a global minibatch, times its weight N_ranks b_r / |B| (zero, with a
    path to every parameter, for an empty share), computed in ``forward`` so that DDP averages its gradients.
    Returns (weighted loss, the unweighted (loss, nll, kl) of the share)."""

    def __init__(self, model: nn.Module, likelihood: Likelihood, n_data: int, n_samples: int, bayesian: bool):
        super().__init__()
        self.model, self.likelihood = model, likelihood
        self.n_data, self.n_samples, self.bayesian = n_data, n_samples, bayesian

    def forward(self, x: Tensor, y: Tensor, kl_weight: float, weight: float) -> tuple[Tensor, Tensor]:
        if len(x) == 0:
            zero = zero_loss(self)
            return zero, zero.detach().expand(3)
        if self.bayesian:
            terms = elbo_loss(self.model, self.likelihood, x, y, n_data=self.n_data, n_samples=self.n_samples,
                              kl_weight=kl_weight)
            loss, nll, kl = terms.loss, terms.nll, terms.kl
        else:
            loss = self.likelihood.nll(self.model(x), y).mean()
            nll, kl = loss.detach(), torch.zeros((), device=x.device)
        return loss * weight, torch.stack([loss.detach(), nll, kl])


class Trainer:
    """Adam on eq. (1) over shuffled minibatches of (x, y), one epoch per ``epoch()`` call.

    Args:
        model: the network (its Bayesian layers carry the KL; a deterministic net with ``bayesian=False``).
        likelihood: p(y | f(x, w)); its parameters (a learned noise std) are trained too.
        x, y: the whole training set, (N, ...) each, on the model's device.
        batch_size: minibatch size |B| (the last minibatch of an epoch may be smaller).
        lr: Adam's learning rate.
        n_samples: weight samples per step (eq. (1) averaged over them).
        kl_schedule: 'uniform' or 'blundell' (the per-minibatch KL weight of eq. (1)).
        bayesian: False trains ``model`` on the mean NLL alone (a deterministic baseline).
        seed: seed of the data-order generator (its own stream: the weight noise stays on torch's) and, under
            torchrun, of each rank's noise stream.
        dist_info: this process's place under torchrun: each minibatch of ``batch_size`` is a global one,
            sharded over the ranks (one process if None or a world of 1).
    Raises:
        ValueError: a bad setting, or a row of x or y holding NaN or inf (named).
        UserError: more ranks than training rows or than ``batch_size``.
    """

    def __init__(self, model: nn.Module, likelihood: Likelihood, x: Tensor, y: Tensor, *, batch_size: int,
                 lr: float, n_samples: int = 1, kl_schedule: str = "uniform", bayesian: bool = True, seed: int = 0,
                 dist_info: DistInfo | None = None):
        if len(x) != len(y) or len(x) == 0:
            raise ValueError(f"x and y must hold the same positive number of rows, got {len(x)} and {len(y)}")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if kl_schedule not in KL_SCHEDULES:
            raise ValueError(f"kl_schedule must be one of {', '.join(KL_SCHEDULES)}, got {kl_schedule!r}")
        check_finite_rows(x, "x")
        check_finite_rows(y, "y")
        self.model, self.likelihood, self.x, self.y = model, likelihood, x, y
        self.batch_size, self.n_samples = batch_size, n_samples
        self.kl_schedule, self.bayesian = kl_schedule, bayesian
        self.optimizer = _adam(list(model.parameters()) + list(likelihood.parameters()), lr)
        self.order = torch.Generator().manual_seed(derived_seed(seed, 0x0DA7A))  # the data order
        self.epochs_done = 0
        self.seed, self.info = seed, dist_info or single_process()
        check_world_size(len(x), batch_size, self.info)
        self._ddp: nn.Module | None = None  # made at the first epoch: after a resume has loaded the state

    @property
    def n_batches(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def epoch(self) -> dict[str, float]:
        """One pass over the shuffled data. Returns the epoch's per-example means of the loss (eq. (1)),
        the NLL and the KL (the whole model's, per weight sample): {'loss', 'nll', 'kl'}."""
        x, y, n, m = self.x, self.y, len(self.x), self.n_batches
        self.model.train()
        perm = torch.randperm(n, generator=self.order).to(x.device)
        if self.info.distributed:
            return self._sharded_epoch(perm)
        sums = torch.zeros(3, device=x.device)  # (loss, nll, kl) summed over examples: read once per epoch
        for i, idx in enumerate(perm.split(self.batch_size), start=1):
            xb, yb = x[idx], y[idx]
            if self.bayesian:
                weight = blundell_kl_weight(i, m) if self.kl_schedule == "blundell" else 1.0
                terms = elbo_loss(self.model, self.likelihood, xb, yb, n_data=n, n_samples=self.n_samples,
                                  kl_weight=weight)
                loss, nll, kl = terms.loss, terms.nll, terms.kl
            else:
                loss = self.likelihood.nll(self.model(xb), yb).mean()
                nll, kl = loss.detach(), torch.zeros((), device=x.device)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums += torch.stack([loss.detach(), nll, kl]).float() * len(idx)
        self.epochs_done += 1
        loss, nll, kl = (sums / n).tolist()
        return {"loss": loss, "nll": nll, "kl": kl}

    def _sharded_epoch(self, perm: Tensor) -> dict[str, float]:
        """``epoch`` under torchrun: this rank's shares of the global minibatches, its own noise stream, and
        the sums added up over the ranks (every rank returns what one process would)."""
        x, y, n, m, info = self.x, self.y, len(self.x), self.n_batches, self.info
        if self._ddp is None:
            self._ddp = data_parallel(ShareLoss(self.model, self.likelihood, n, self.n_samples, self.bayesian),
                                      info, x.device)
        torch.manual_seed(rank_seed(self.seed, info, self.epochs_done))  # this rank's weight noise (native keys)
        sums = torch.zeros(3, device=x.device)
        for i, idx in enumerate(perm.split(self.batch_size), start=1):
            mine = shard(idx, info)
            weight = blundell_kl_weight(i, m) if self.kl_schedule == "blundell" else 1.0
            loss, terms = self._ddp(x[mine], y[mine], weight, batch_weight(len(mine), len(idx), info))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            sums += terms.float() * len(mine)
        self.epochs_done += 1
        loss, nll, kl = (all_reduce_sum(sums, info) / n).tolist()
        return {"loss": loss, "nll": nll, "kl": kl}

    def state_dict(self) -> dict[str, Any]:
        """The optimizer, the data-order generator and the epoch count (not the model: save it beside)."""
        return {"optimizer": self.optimizer.state_dict(), "order": self.order.get_state(),
                "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.order.set_state(state["order"].cpu())
        self.epochs_done = int(state["epochs_done"])


def fit(model: nn.Module, likelihood: Likelihood, x: Tensor, y: Tensor, *, epochs: int, batch_size: int,
        lr: float = 1e-3, n_samples: int = 1, kl_schedule: str = "uniform", bayesian: bool = True, seed: int = 0,
        on_epoch: Callable[[int, dict[str, float]], dict[str, Any] | None] | None = None) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` epochs of eq. (1) (arguments as ``Trainer``).

    Args:
        on_epoch: called as ``on_epoch(epoch, row)`` after each epoch; a dict it returns joins the row.
    Returns:
        One row per epoch: {'epoch', 'loss', 'nll', 'kl', ...}.
    Raises:
        DivergenceError: an epoch's loss is NaN or inf (named with its epoch).
    """
    if not isinstance(epochs, int) or epochs <= 0:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    trainer = Trainer(model, likelihood, x, y, batch_size=batch_size, lr=lr, n_samples=n_samples,
                      kl_schedule=kl_schedule, bayesian=bayesian, seed=seed)
    history = []
    for epoch in range(1, epochs + 1):
        row: dict[str, Any] = {"epoch": epoch, **trainer.epoch()}
        check_finite_values({"loss": row["loss"]}, epoch, unit="epoch")
        if on_epoch is not None:
            row.update(on_epoch(epoch, row) or {})
        history.append(row)
    return history
