"""Run-folder figures: reconstructions vs inputs, prior samples, the 2-D latent manifold, the ELBO curves.

Figures are made without pyplot (``reparam_apps.experiment.subplots``), so no GUI backend is ever chosen."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from reparam_apps.experiment import plot_curves, save_figure, subplots

from .model import VAE, _BaseVAE

__all__ = ["image_grid", "save_image_grid", "save_reconstructions", "save_samples", "save_manifold", "save_elbo_curves"]


def image_grid(images: Tensor, nrow: int, pad: int = 1) -> np.ndarray:
    """(n, H, W) images in [0, 1] -> one (rows * (H + pad), nrow * (W + pad)) array, row-major."""
    images = images.detach().float().cpu().clamp(0, 1)
    n, h, w = images.shape
    rows = math.ceil(n / nrow)
    grid = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = images[i]
    return grid


def save_image_grid(path: str | os.PathLike, images: Tensor, nrow: int, title: str = "") -> None:
    grid = image_grid(images, nrow)
    fig, ax = subplots(figsize=(min(8.0, 0.45 * nrow + 1), min(8.0, 0.45 * grid.shape[0] / (grid.shape[1] / nrow)
                                                                    + 1)))
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=9)
    save_figure(fig, path)


@torch.no_grad()
def save_reconstructions(path: str | os.PathLike, model: _BaseVAE, x: Tensor, n: int = 10) -> None:
    """Rows alternate: inputs, then their reconstructions (decoder mean at the posterior mean/mode)."""
    model.eval()
    nrow = min(10, n, x.shape[0])
    x = x[: (min(n, x.shape[0]) // nrow) * nrow]  # whole rows of nrow images
    recon = model.reconstruct(x).reshape(-1, nrow, *model.image_shape)  # (rows, nrow, H, W)
    inputs = x.reshape(-1, nrow, *model.image_shape)
    pairs = torch.stack([inputs, recon], dim=1)  # (rows, 2, nrow, H, W): input row, then its reconstructions
    save_image_grid(path, pairs.reshape(-1, *model.image_shape), nrow=nrow,
                    title="inputs (odd rows) and reconstructions (even rows)")


@torch.no_grad()
def save_samples(path: str | os.PathLike, model: _BaseVAE, n: int = 64) -> None:
    """Decoder means of n latents drawn from the prior."""
    model.eval()
    nrow = int(math.ceil(math.sqrt(n)))
    save_image_grid(path, model.sample(n), nrow=nrow, title="samples from the prior (decoder mean)")


@torch.no_grad()
def save_manifold(path: str | os.PathLike, model: VAE, n: int = 15) -> None:
    """The 2-D latent manifold: decoder means on an n x n grid of standard-normal quantiles."""
    if not isinstance(model, VAE) or model.latent_dim != 2:
        raise ValueError("the latent manifold needs a Gaussian VAE with latent size 2")
    model.eval()
    p = torch.linspace(0.5 / n, 1 - 0.5 / n, n, dtype=torch.float64)
    q = (math.sqrt(2.0) * torch.erfinv(2 * p - 1)).to(next(model.parameters()))  # Phi^-1(p)
    zz = torch.stack(torch.meshgrid(q, q.flip(0), indexing="xy"), dim=-1).reshape(-1, 2)  # (n*n, 2), row-major
    save_image_grid(path, model.decode(zz), nrow=n, title="latent manifold: decoder mean over a quantile grid")


def save_elbo_curves(path: str | os.PathLike, rows: Sequence[Mapping[str, str]], title: str = "") -> None:
    """Train and test ELBO per epoch from the rows of metrics.csv (``epoch``, ``train_elbo``, ``test_elbo``)."""
    ep = [int(r["epoch"]) for r in rows]
    plot_curves(path, {"train ELBO": (ep, [float(r["train_elbo"]) for r in rows]),
                       "test ELBO": (ep, [float(r["test_elbo"]) for r in rows])},
                xlabel="epoch", ylabel="ELBO (nats per example)", title=title)
