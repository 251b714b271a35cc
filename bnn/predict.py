"""Monte Carlo prediction with uncertainty decomposition, and the evaluation metrics."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .layers import bayes_layers
from .likelihoods import CategoricalLikelihood, Likelihood

__all__ = [
    "RegressionPrediction", "ClassificationPrediction", "predict", "accuracy", "categorical_nll", "brier_score",
    "expected_calibration_error", "reliability_bins", "rmse", "gaussian_log_likelihood", "interval_coverage",
    "prune_by_snr",
]


@dataclass
class RegressionPrediction:
    """Predictive mean and standard deviations, each (B, D): total^2 = aleatoric^2 + epistemic^2.
    ``sample_means`` / ``sample_vars``: (S, B, D) per-weight-sample means and noise variances."""

    mean: Tensor
    std: Tensor
    aleatoric_std: Tensor
    epistemic_std: Tensor
    sample_means: Tensor
    sample_vars: Tensor


@dataclass
class ClassificationPrediction:
    """Predictive probabilities (B, K); entropy H[E_w p(y|x,w)] (B,), and the mutual information
    I(y; w) = H[E p] - E H[p] (B,), the epistemic part. ``sample_probs``: (S, B, K)."""

    probs: Tensor
    entropy: Tensor
    mutual_information: Tensor
    sample_probs: Tensor


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(-1)  # 0 log 0 = 0


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, n_samples: int = 32, likelihood: Likelihood | None = None,
            batch_size: int | None = None) -> RegressionPrediction | ClassificationPrediction:
    """Average ``n_samples`` forward passes (weight samples in the layers' current sampling mode).

    likelihood: ``CategoricalLikelihood`` (the default) -> :class:`ClassificationPrediction`; a Gaussian
    likelihood -> :class:`RegressionPrediction` with the law of total variance:
    total var = E_w[s^2(x, w)] (aleatoric) + Var_w[m(x, w)] (epistemic).
    """
    if not isinstance(n_samples, int) or n_samples <= 0:
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}")
    likelihood = CategoricalLikelihood() if likelihood is None else likelihood
    was_training = model.training
    model.eval()
    try:
        chunks = [x] if batch_size is None else list(x.split(batch_size))
        outputs = torch.stack([torch.cat([model(c) for c in chunks]) for _ in range(n_samples)])  # (S, B, ...)
    finally:
        model.train(was_training)
    if likelihood.task == "classification":
        sample_probs = likelihood.probs(outputs)  # (S, B, K)
        probs = sample_probs.mean(0)
        entropy = _entropy(probs)
        mutual_information = (entropy - _entropy(sample_probs).mean(0)).clamp_min(0.0)
        return ClassificationPrediction(probs, entropy, mutual_information, sample_probs)
    means, variances = likelihood.mean_and_variance(outputs)  # (S, B, D) each
    mean = means.mean(0)
    epistemic_var = means.var(0, unbiased=False) if n_samples > 1 else torch.zeros_like(mean)
    aleatoric_var = variances.mean(0)
    return RegressionPrediction(mean, (aleatoric_var + epistemic_var).sqrt(), aleatoric_var.sqrt(),
                                epistemic_var.sqrt(), means, variances)


# -- classification metrics ----------------------------------------------------------------
def accuracy(probs: Tensor, labels: Tensor) -> float:
    return (probs.argmax(-1) == labels).float().mean().item()


def categorical_nll(probs: Tensor, labels: Tensor) -> float:
    """Mean -log p(y) of the predictive distribution (probabilities floored at the smallest float)."""
    p_true = probs.gather(-1, labels[:, None]).squeeze(-1)
    return -p_true.clamp_min(torch.finfo(probs.dtype).tiny).log().mean().item()


def brier_score(probs: Tensor, labels: Tensor) -> float:
    """Mean over examples of sum_k (p_k - 1[y = k])^2 (Brier 1950; 0 is perfect, 2 the worst)."""
    onehot = torch.nn.functional.one_hot(labels, probs.shape[-1]).to(probs.dtype)
    return (probs - onehot).square().sum(-1).mean().item()


def reliability_bins(probs: Tensor, labels: Tensor, n_bins: int = 15) -> tuple[Tensor, Tensor, Tensor]:
    """Per equal-width confidence bin: (mean confidence, accuracy, count)."""
    confidence, predicted = probs.max(-1)
    correct = (predicted == labels).to(probs.dtype)
    # bin b holds confidences in (b/n, (b+1)/n]; confidence 0 cannot occur (max of a distribution >= 1/K)
    index = (confidence * n_bins).ceil().long().clamp(1, n_bins) - 1
    count = torch.bincount(index, minlength=n_bins).to(probs.dtype)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    acc_sum = torch.bincount(index, weights=correct, minlength=n_bins)
    safe = count.clamp_min(1.0)
    return conf_sum / safe, acc_sum / safe, count


def expected_calibration_error(probs: Tensor, labels: Tensor, n_bins: int = 15) -> float:
    """ECE = sum_b (n_b / n) |acc_b - conf_b| over ``n_bins`` equal-width bins (Guo et al. 2017)."""
    conf, acc, count = reliability_bins(probs, labels, n_bins)
    return ((count / count.sum()) * (acc - conf).abs()).sum().item()


# -- regression metrics --------------------------------------------------------------------
def rmse(mean: Tensor, target: Tensor) -> float:
    return (mean - target.reshape(mean.shape)).square().mean().sqrt().item()


def gaussian_log_likelihood(target: Tensor, sample_means: Tensor, sample_vars: Tensor, y_scale: float = 1.0) -> float:
    """Mean test log-likelihood of the MC predictive mixture (1/S) sum_s N(y; m_s, v_s), in the units of
    ``y_scale * y`` (the standard UCI protocol: normalised predictions, -log y_scale per example).
    sample_means, sample_vars: (S, B, D); target (B, D)."""
    target = target.reshape(sample_means.shape[1:])
    log_n = -0.5 * ((target - sample_means).square() / sample_vars + sample_vars.log() + math.log(2 * math.pi))
    log_mix = torch.logsumexp(log_n, dim=0) - math.log(sample_means.shape[0])  # log (1/S) sum_s N(...)
    return (log_mix.sum(-1) - target.shape[-1] * math.log(y_scale)).mean().item()


def interval_coverage(mean: Tensor, std: Tensor, target: Tensor, level: float = 0.95) -> float:
    """Fraction of targets inside the central Gaussian interval mean +- z * std at ``level``."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    z = math.sqrt(2.0) * torch.erfinv(torch.tensor(level, dtype=torch.float64)).item()
    return ((target.reshape(mean.shape) - mean).abs() <= z * std).float().mean().item()


# -- pruning -------------------------------------------------------------------------------
@torch.no_grad()
def prune_by_snr(model: nn.Module, fraction: float) -> float:
    """Remove the ``fraction`` of weights (over all Bayesian layers' weight tensors) with the lowest
    signal-to-noise ratio |mu| / sigma (Blundell et al. 2015, Table 2): sets each layer's ``weight_mask``
    (removed weights are exactly 0 in every mode). Returns the SNR threshold used.
    ``fraction = 0`` clears the masks."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"prune fraction must be in [0, 1), got {fraction}")
    layers = bayes_layers(model)
    if not layers:
        raise ValueError("model has no Bayesian layers to prune")
    if fraction == 0.0:
        for layer in layers:
            layer.weight_mask = None
        return 0.0
    snr = torch.cat([layer.signal_to_noise().flatten() for layer in layers])
    n_remove = int(round(fraction * snr.numel()))
    if n_remove == 0:
        return 0.0
    threshold = snr.kthvalue(n_remove).values
    for layer in layers:
        layer.weight_mask = (layer.signal_to_noise() > threshold).to(layer.weight_mu.dtype)
    return threshold.item()

