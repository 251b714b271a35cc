"""The toy regression of Blundell et al. (2015, section 5.2): intervals that widen away from the data."""

from __future__ import annotations

import math

import torch

from reparam_apps import experiment as ex
from reparam_apps.experiment.distributed import DistInfo

from ..layers import set_sampling
from ..likelihoods import GaussianLikelihood
from ..predict import predict
from ..train import Trainer, fit, make_mlp
from .loop import restore, seeded, train_epochs

__all__ = ["toy_curve", "toy_data", "run_toy"]


def toy_curve(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """y = x + 0.3 sin(2 pi (x + e)) + 0.3 sin(4 pi (x + e)) + e (Blundell et al. 2015, section 5.2)."""
    return x + 0.3 * torch.sin(2 * math.pi * (x + noise)) + 0.3 * torch.sin(4 * math.pi * (x + noise)) + noise


def toy_data(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~ U[0, 0.5], e ~ N(0, 0.02^2), y = toy_curve(x, e); (n, 1) each, from torch's current stream."""
    x = torch.rand(n, 1) * 0.5
    return x, toy_curve(x, 0.02 * torch.randn(n, 1))


def run_toy(run: ex.Run, device: torch.device, dist_info: DistInfo | None = None) -> int | None:
    """Train the BNN (resumable), then a deterministic net of the same size, and compare their predictions
    on [-0.4, 1.2]; writes toy_regression.png, loss.png and the summary. Returns 130 after a saved Ctrl-C.
    ``dist_info``: under torchrun the BNN trains data parallel; the rest (seconds) runs on rank 0 alone."""
    cfg = run.config
    x, y = (t.to(device) for t in toy_data(cfg.n_train))
    model = make_mlp(1, 1, cfg.hidden, cfg.layers, **cfg.layer_kwargs()).to(device)
    likelihood = GaussianLikelihood(init_std=0.1).to(device)
    trainer = Trainer(model, likelihood, x, y, batch_size=cfg.batch_size, lr=cfg.lr, n_samples=cfg.train_samples,
                      kl_schedule=cfg.kl_schedule, seed=cfg.seed, dist_info=dist_info)
    state = restore(run, trainer)
    start = 0 if state is None else int(state["step"])
    code = train_epochs(run, trainer, "toy BNN", start)
    if code is not None or not run.writable:
        return code
    # the baseline: not checkpointed (seconds), and a function of the state the last checkpoint holds
    baseline = make_mlp(1, 1, cfg.hidden, cfg.layers, bayesian=False).to(device)
    base_lik = GaussianLikelihood(init_std=0.1).to(device)
    fit(baseline, base_lik, x, y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, bayesian=False,
        seed=cfg.seed + 1)

    grid = torch.linspace(-0.4, 1.2, 321, device=device)[:, None]  # (G, 1)
    set_sampling(model, "reparam")  # one weight sample per pass: every sample is a whole, smooth function
    with seeded(device, cfg.seed, 0x7E57):
        pred = predict(model, grid, n_samples=cfg.test_samples, likelihood=likelihood)
    with torch.no_grad():
        base_mean = baseline(grid)
    inside = ((grid[:, 0] >= 0.0) & (grid[:, 0] <= 0.5)).cpu()
    std, epi = pred.std[:, 0].cpu(), pred.epistemic_std[:, 0].cpu()
    rows = run.metrics().rows()
    summary = {
        "std_inside": std[inside].mean().item(), "std_outside": std[~inside].mean().item(),
        "epistemic_std_inside": epi[inside].mean().item(), "epistemic_std_outside": epi[~inside].mean().item(),
        "noise_std": likelihood.noise_std.item(), "final_loss": float(rows[-1]["loss"]),
    }
    summary["widening_ratio"] = summary["std_outside"] / summary["std_inside"]
    _plot(run, grid, pred.mean[:, 0].cpu(), std, base_mean[:, 0].cpu(), x.cpu(), y.cpu())
    ex.plot_curves(run.file("loss.png"), {"neg. ELBO per example": ([int(r["epoch"]) for r in rows],
                                                                    [float(r["loss"]) for r in rows])},
                   "epoch", "loss", title="toy: training loss")
    print(f"toy: mean predictive std inside [0, 0.5] = {summary['std_inside']:.4f}, outside = "
          f"{summary['std_outside']:.4f} (x{summary['widening_ratio']:.1f}); epistemic "
          f"{summary['epistemic_std_inside']:.4f} -> {summary['epistemic_std_outside']:.4f}; learned noise std "
          f"{summary['noise_std']:.4f} (true 0.02)")
    run.write_summary(summary)
    return None


def _plot(run: ex.Run, grid: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, base_mean: torch.Tensor,
          x: torch.Tensor, y: torch.Tensor) -> None:
    g, m, s = grid[:, 0].cpu().numpy(), mean.numpy(), std.numpy()
    true_curve = toy_curve(grid.cpu(), torch.zeros_like(grid.cpu()))[:, 0].numpy()
    fig, axes = ex.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, title in zip(axes, ("Bayes by Backprop", "deterministic network (same size)"), strict=True):
        ax.plot(g, true_curve, "k:", lw=1, label="noise-free curve")
        ax.scatter(x.numpy(), y.numpy(), s=8, c="k", alpha=0.6, label="training data")
        ax.axvspan(0.0, 0.5, color="0.9", zorder=0)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylim(-1.5, 2.5)
    axes[0].plot(g, m, "C0", label="predictive mean")
    axes[0].fill_between(g, m - 2 * s, m + 2 * s, color="C0", alpha=0.25, label="+- 2 std (total)")
    axes[0].fill_between(g, m - s, m + s, color="C0", alpha=0.25)
    axes[1].plot(g, base_mean.numpy(), "C3", label="prediction")
    axes[0].legend(loc="upper left", fontsize=7)
    axes[0].set_ylabel("y")
    ex.save_figure(fig, run.file("toy_regression.png"))
