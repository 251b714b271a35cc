"""Classification (8x8 digits or MNIST): test error, NLL, calibration, out-of-distribution entropy and
pruning by signal-to-noise (Blundell et al. 2015, Table 2).

Under torchrun the training is data parallel (``bnn.train.Trainer``); each logged evaluation predicts on
this rank's rows of the test set and gathers the probabilities, so the metrics are computed on all of them
as one process does; the final evaluation (a one-off, on the trained model) runs on rank 0 alone."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from reparam_apps import experiment as ex
from reparam_apps.data import load_images
from reparam_apps.experiment.distributed import DistInfo, gather_rows, shard, single_process

from ..layers import mean_weights
from ..likelihoods import CategoricalLikelihood
from ..predict import (
    ClassificationPrediction,
    accuracy,
    brier_score,
    categorical_nll,
    expected_calibration_error,
    predict,
    prune_by_snr,
    reliability_bins,
)
from ..train import Trainer, make_mlp
from .loop import restore, seeded, train_epochs

__all__ = ["classification_metrics", "test_set_metrics", "run_classify"]

EPOCH_TEST_SAMPLES = 8  # the per-epoch test metrics' Monte Carlo samples (at most): cheap, and a fixed estimator


def classification_metrics(pred: ClassificationPrediction | torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Test error, NLL, Brier score and 15-bin ECE of a prediction (or of its probabilities (N, K))."""
    probs = pred if isinstance(pred, torch.Tensor) else pred.probs
    return {"error": 1.0 - accuracy(probs, labels), "nll": categorical_nll(probs, labels),
            "brier": brier_score(probs, labels), "ece": expected_calibration_error(probs, labels, 15)}


def test_set_metrics(model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor, n_samples: int,
                 info: DistInfo) -> dict[str, float]:
    """``classification_metrics`` of ``predict(model, x, n_samples)``; under torchrun each rank predicts its
    rows of x and the probabilities are gathered, so every rank gets the metrics of the whole set."""
    if not info.distributed:
        return classification_metrics(predict(model, x, n_samples=n_samples), labels)
    mine = shard(torch.arange(len(x), device=x.device), info)
    probs = gather_rows(predict(model, x[mine], n_samples=n_samples).probs, len(x), info)  # (N, K)
    return classification_metrics(probs, labels)


def run_classify(run: ex.Run, device: torch.device, dist_info: DistInfo | None = None) -> int | None:
    """Train on the images (resumable, test metrics every logged epoch), then evaluate the final model with
    the full test samples; writes reliability.png, test_error.png and the summary. 130 after a saved Ctrl-C.
    ``dist_info``: this process's place under torchrun (one process if None)."""
    cfg = run.config
    info = dist_info or single_process()
    data = load_images(cfg.dataset, cfg.data_dir, seed=cfg.seed)
    flat = lambda t: t.reshape(len(t), -1).to(device)  # noqa: E731  (N, H, W) -> (N, H W)
    x_tr, y_tr, x_te, y_te = flat(data.x_train), data.y_train.to(device), flat(data.x_test), data.y_test.to(device)
    model = make_mlp(x_tr.shape[1], data.n_classes, cfg.hidden, cfg.layers, **cfg.layer_kwargs()).to(device)
    likelihood = CategoricalLikelihood()
    trainer = Trainer(model, likelihood, x_tr, y_tr, batch_size=cfg.batch_size, lr=cfg.lr,
                      n_samples=cfg.train_samples, kl_schedule=cfg.kl_schedule, seed=cfg.seed, dist_info=info)

    def evaluate(epoch: int) -> dict[str, float]:
        with seeded(device, cfg.seed, 0xE7A1, epoch):
            metrics = test_set_metrics(model, x_te, y_te, min(cfg.test_samples, EPOCH_TEST_SAMPLES), info)
        return {f"test_{k}": v for k, v in metrics.items()}

    state = restore(run, trainer)
    if state is None:
        with seeded(device, cfg.seed, 0xE7A1, 0):
            initial = test_set_metrics(model, x_te, y_te, cfg.test_samples, info)
        start = 0
    else:
        initial, start = state["initial"], int(state["step"])
    code = train_epochs(run, trainer, f"classify {cfg.dataset}", start, evaluate=evaluate, keep={"initial": initial},
                        status=("loss", "test_error"))
    if code is not None or not run.writable:  # the final evaluation and the files: the main rank's
        return code
    with seeded(device, cfg.seed, 0xF1A1):
        summary, pred = _final_evaluation(model, x_te, y_te, data.x_test, cfg.test_samples, device)
    summary.update({"initial_" + k: v for k, v in initial.items()})
    _plots(run, pred, y_te, cfg.dataset, summary["ece"])
    print(f"{cfg.dataset}: test error {summary['error']:.4f} (start {summary['initial_error']:.3f}), "
          f"NLL {summary['nll']:.4f} (start {summary['initial_nll']:.3f}), ECE {summary['ece']:.4f}, "
          f"Brier {summary['brier']:.4f}")
    print(f"predictive entropy: in-distribution {summary['entropy_in_dist']:.3f}, noise images "
          f"{summary['entropy_noise']:.3f}, rotated {summary['entropy_rotated']:.3f} "
          f"(max {math.log(data.n_classes):.3f})")
    print("pruned by SNR (mean network error): " + ", ".join(
        f"{f}%: {summary[f'pruned_{f}_error']:.4f}" for f in (50, 75, 95, 98)))
    run.write_summary(summary)
    return None


def _final_evaluation(model: torch.nn.Module, x_te: torch.Tensor, y_te: torch.Tensor, images: torch.Tensor,
                      n_samples: int, device: torch.device) -> tuple[dict[str, Any], ClassificationPrediction]:
    """The final model's test metrics, mean-network error, out-of-distribution entropies and pruned errors.
    images: the test images (N, H, W) (rotated for the out-of-distribution set)."""
    pred = predict(model, x_te, n_samples=n_samples)
    summary: dict[str, Any] = classification_metrics(pred, y_te)
    with mean_weights(model):
        summary["mean_net_error"] = 1.0 - accuracy(predict(model, x_te, n_samples=1).probs, y_te)
    # out of distribution: uniform noise images and the test images rotated by 90 degrees
    noise_images = torch.rand(x_te.shape).to(device)  # (N, H W) uniform pixels
    rotated = torch.rot90(images, 1, dims=(1, 2)).reshape(len(x_te), -1).to(device)
    for name, p in (("in_dist", pred), ("noise", predict(model, noise_images, n_samples=n_samples)),
                    ("rotated", predict(model, rotated, n_samples=n_samples))):
        summary[f"entropy_{name}"] = p.entropy.mean().item()
        summary[f"mutual_info_{name}"] = p.mutual_information.mean().item()
    # pruning by signal-to-noise (Blundell et al. 2015, Table 2), evaluated with the mean network
    for fraction in (0.5, 0.75, 0.95, 0.98):
        prune_by_snr(model, fraction)
        with mean_weights(model):
            probs = predict(model, x_te, n_samples=1).probs
        summary[f"pruned_{int(fraction * 100)}_error"] = 1.0 - accuracy(probs, y_te)
    prune_by_snr(model, 0.0)
    return summary, pred


def _plots(run: ex.Run, pred: ClassificationPrediction, y_te: torch.Tensor, dataset: str, ece: float) -> None:
    conf, acc, count = reliability_bins(pred.probs, y_te, 15)
    fig, ax = ex.subplots(figsize=(4.5, 4.2))
    centers = (np.arange(15) + 0.5) / 15
    used = count.cpu().numpy() > 0
    conf, acc = conf.cpu().numpy(), acc.cpu().numpy()
    ax.bar(centers[used], acc[used], width=1 / 15, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(conf[used], acc[used], "C3o", ms=3, label="(confidence, accuracy)")
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{dataset}: ECE {ece:.3f}")
    ax.legend(fontsize=7)
    ex.save_figure(fig, run.file("reliability.png"))
    rows = run.metrics().rows()
    ex.plot_curves(run.file("test_error.png"),
                   {"test error": ([int(r["epoch"]) for r in rows], [float(r["test_error"]) for r in rows])},
                   "epoch", "error", title=f"{dataset}: test error ({EPOCH_TEST_SAMPLES} samples)")
