"""The 2-D energy toy: fit q to an unnormalised target p*(z) = exp(-U(z)) / Z by the reverse KL.

    KL(q || p*) = E_q[log q(z) + U(z)] + log Z                                                   (1)

The first term is minimised pathwise: z and log q(z) both come from ``rsample_and_log_prob`` (the
log-density from the noise, nothing inverted), so one batch gives an unbiased gradient of (1). log Z is
a constant for the fit; to compare fits it comes from quadrature on a fine grid (closed form for the
banana), and each q also gives the importance-sampled estimate

    log Z_hat = logsumexp_i(-U(z_i) - log q(z_i)) - log n,   z_i ~ q                             (2)

(consistent; biased low by about Var(w) / (2 n E[w]^2) for the weights w = exp(-U - log q)).

Energies (z = (z1, z2)):

    two_moons (Rezende and Mohamed 2015, Table 1, U1):
        U(z) = 1/2 ((||z|| - 2) / 0.4)^2 - log(exp(-1/2 ((z1 - 2) / 0.6)^2) + exp(-1/2 ((z1 + 2) / 0.6)^2))  (3)
    banana (a twisted Gaussian: z1 ~ N(0, a^2), z2 | z1 ~ N(b (z1^2 - a^2), d^2)):
        U(z) = z1^2 / (2 a^2) + (z2 - b (z1^2 - a^2))^2 / (2 d^2),   log Z = log(2 pi a d)              (4)

Rezende and Mohamed's U2 (a sine ridge) is not normalisable over R^2, so the banana (4) stands in for it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reparam_apps import Normal
from reparam_apps.flows import FLOW_KINDS, make_flow

__all__ = ["BANANA", "ENERGIES", "Energy", "FitResult", "KINDS", "Variational", "banana_energy", "evaluate",
           "fit", "log_z_quadrature", "plot_fits", "two_moons_energy"]

KINDS = ("gaussian",) + FLOW_KINDS
BANANA = {"a": 1.2, "b": 0.6, "d": 0.4}  # eq. (4)


def two_moons_energy(z: Tensor) -> Tensor:
    """Eq. (3): (..., 2) -> (...,)."""
    z1 = z[..., 0]
    ring = 0.5 * ((torch.linalg.vector_norm(z, dim=-1) - 2.0) / 0.4).square()
    lobes = torch.logaddexp(-0.5 * ((z1 - 2.0) / 0.6).square(), -0.5 * ((z1 + 2.0) / 0.6).square())
    return ring - lobes


def banana_energy(z: Tensor, a: float = BANANA["a"], b: float = BANANA["b"], d: float = BANANA["d"]) -> Tensor:
    """Eq. (4): (..., 2) -> (...,)."""
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * (z1 / a).square() + 0.5 * ((z2 - b * (z1.square() - a * a)) / d).square()


@dataclass(frozen=True)
class Energy:
    """A target: U, the plotting box (x_lo, x_hi, y_lo, y_hi), and log Z in closed form where known."""

    name: str
    fn: Callable[[Tensor], Tensor]
    box: tuple[float, float, float, float]
    log_z_exact: float | None = None

    def log_z(self, n: int = 801) -> float:
        """The closed form when there is one, else quadrature on the box (the mass outside is negligible)."""
        return self.log_z_exact if self.log_z_exact is not None else log_z_quadrature(self.fn, self.box, n)


ENERGIES = {
    "two_moons": Energy("two_moons", two_moons_energy, (-4.0, 4.0, -4.0, 4.0)),
    "banana": Energy("banana", banana_energy, (-4.5, 4.5, -2.0, 6.0),
                     math.log(2 * math.pi * BANANA["a"] * BANANA["d"])),
}


def _grid(box: tuple[float, float, float, float], n: int) -> tuple[Tensor, Tensor, Tensor]:
    """Cell-centred n x n grid: x (n,), y (n,), points (n, n, 2) indexed [y, x]."""
    x_lo, x_hi, y_lo, y_hi = box
    xs = torch.linspace(x_lo, x_hi, n, dtype=torch.float64)
    ys = torch.linspace(y_lo, y_hi, n, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xs, ys, torch.stack([xx, yy], -1)


def log_z_quadrature(energy: Callable[[Tensor], Tensor], box: tuple[float, float, float, float],
                     n: int = 801) -> float:
    """log of the integral of exp(-U) over the box, by the trapezoid rule in float64.

    Args:
        energy: U, (..., 2) -> (...,).
        box: (x_lo, x_hi, y_lo, y_hi).
        n: grid points per axis.
    """
    xs, ys, pts = _grid(box, n)
    with torch.no_grad():
        log_f = -energy(pts)  # (n, n)
    peak = log_f.max()
    inner = torch.trapezoid(torch.exp(log_f - peak), xs, dim=1)
    return float(peak + torch.log(torch.trapezoid(inner, ys)))


class Variational(nn.Module):
    """q(z): a diagonal Gaussian N(loc, exp(log_scale)^2), optionally pushed through a flow.

    Args:
        kind: ``gaussian`` or a flow kind of ``reparam_apps.flows.make_flow``.
        steps: flow steps K (ignored for ``gaussian``).
        hidden: hidden widths of the flow's step networks.
    """

    def __init__(self, kind: str, steps: int = 4, hidden: tuple[int, ...] = (32, 32)):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
        self.kind = kind
        self.loc = nn.Parameter(0.5 * torch.randn(2))
        self.log_scale = nn.Parameter(torch.zeros(2))
        self.flow = None if kind == "gaussian" else make_flow(kind, 2, steps, hidden=hidden)

    def forward(self):
        """The distribution (a ``FlowDistribution`` or an event-dim-1 ``Normal``)."""
        scale = self.log_scale.exp()
        if self.flow is None:
            return Normal(self.loc, scale, event_dims=1, validate_args=False)
        return self.flow(self.loc, scale, validate_args=False)


@dataclass
class FitResult:
    """A fitted q and what it reached: E_q[log q + U] (``neg_elbo``) and its standard error, the
    importance-sampled log Z (2) with its effective sample size, and the KL (1) with the reference log Z."""

    kind: str
    model: Variational
    losses: list[float]
    neg_elbo: float
    neg_elbo_se: float
    log_z_is: float
    ess: float
    kl: float
    n_eval: int


def fit(energy: Energy, kind: str, steps: int = 3000, batch: int = 256, lr: float = 5e-3, flow_steps: int = 4,
        hidden: tuple[int, ...] = (32, 32), seed: int = 0, log_z: float | None = None,
        n_eval: int = 20000) -> FitResult:
    """Minimise E_q[log q(z) + U(z)] (eq. 1 without log Z) with Adam, pathwise, then evaluate.

    Args:
        energy: the target.
        kind: ``gaussian`` or a flow kind.
        steps: optimiser steps.
        batch: samples per step.
        lr: Adam's learning rate (cosine-decayed to 0).
        flow_steps, hidden: the flow's size.
        seed: seeds the initialisation and the noise.
        log_z: the reference log Z (default: ``energy.log_z()``).
        n_eval: samples for the final estimates.
    """
    torch.manual_seed(seed)
    model = Variational(kind, flow_steps, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    losses = []
    for _ in range(steps):
        z, log_q = model().rsample_and_log_prob((batch,))  # (B, 2), (B,): nothing inverted
        loss = (log_q + energy.fn(z)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    stats = evaluate(model, energy, n_eval)
    ref = energy.log_z() if log_z is None else log_z
    return FitResult(kind, model, losses, stats["neg_elbo"], stats["neg_elbo_se"], stats["log_z_is"], stats["ess"],
                     stats["neg_elbo"] + ref, n_eval)


@torch.no_grad()
def evaluate(model: Variational, energy: Energy, n: int = 20000) -> dict[str, float]:
    """E_q[log q + U] with its standard error (sd / sqrt n), log Z_hat (2) and the ESS (sum w)^2 / sum w^2."""
    z, log_q = model().rsample_and_log_prob((n,))
    gap = (log_q + energy.fn(z)).double()  # (n,): log q - log p* up to log Z; -gap = log w
    log_w = -gap
    log_z_is = torch.logsumexp(log_w, 0) - math.log(n)
    ess = torch.exp(2 * torch.logsumexp(log_w, 0) - torch.logsumexp(2 * log_w, 0))
    return {"neg_elbo": float(gap.mean()), "neg_elbo_se": float(gap.std() / math.sqrt(n)),
            "log_z_is": float(log_z_is), "ess": float(ess)}


@torch.no_grad()
def _density(log_density: Callable[[Tensor], Tensor], box: tuple[float, float, float, float], n: int) -> Tensor:
    pts = _grid(box, n)[2].float()
    return log_density(pts.reshape(-1, 2)).reshape(n, n).exp()


def plot_fits(path, fits: dict[str, list[FitResult]], grid: int = 160) -> None:
    """One row per energy: the target's density, then each fit's density q(z) (``log_prob``, which inverts
    the flow), on the energy's box, titled with its KL (1).

    Args:
        path: the PNG to write.
        fits: {energy name: [FitResult, ...]} in column order.
        grid: heat-map resolution per axis.
    """
    from reparam_apps.experiment import save_figure, subplots

    ncols = 1 + max(len(v) for v in fits.values())
    fig, axes = subplots(len(fits), ncols, figsize=(2.2 * ncols, 2.3 * len(fits)), squeeze=False)
    for row, (name, results) in enumerate(fits.items()):
        energy = ENERGIES[name]
        log_z = energy.log_z()
        panels = [("target", lambda p, e=energy, c=log_z: -e.fn(p.double()).float() - c)]
        for r in results:
            panels.append((f"{r.kind}\nKL {r.kl:.3f}", lambda p, m=r.model: m().log_prob(p)))
        for col, ax in enumerate(axes[row]):
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(panels):
                ax.axis("off")
                continue
            title, log_density = panels[col]
            dens = _density(log_density, energy.box, grid)
            ax.imshow(dens.numpy(), origin="lower", extent=energy.box, aspect="auto", cmap="viridis")
            ax.set_title(title if col else f"{name}\ntarget", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
