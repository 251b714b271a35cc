"""What the Gaussian and the categorical VAE share: constants, loss terms, networks, likelihood, the
score-function surrogate (5), the ELBO/IWAE plumbing (1), (3) and save/load. Equations: ``vae.model``.

Shapes: B batch, D = H*W pixels, S samples per example.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution

from reparam_apps import save_checkpoint
from reparam_apps.experiment import CheckpointError

from .nets import ARCHS, make_decoder, make_encoder

__all__ = ["VAELossTerms", "EstimatorProblem", "LOGVAR_RANGE", "DECODER_LOG_STD_RANGE", "ESTIMATORS",
           "SF_BASELINES", "LIKELIHOODS", "KL_MODES", "CHECKPOINT_KIND"]

# q(z|x)'s log-variance is clamped to this range: sigma in [6.7e-3, 148]. Outside it the KL term's
# exp(log_var) overflows or the sample collapses to the mean; trained models sit well inside.
LOGVAR_RANGE = (-10.0, 10.0)
# A learned Gaussian decoder's log-std is clamped to [log 0.01, log 10]: without a floor the
# likelihood of near-constant pixels (MNIST borders) grows without bound.
DECODER_LOG_STD_RANGE = (math.log(0.01), math.log(10.0))
ESTIMATORS = ("pathwise", "score-function")
SF_BASELINES = ("loo", "running_mean", "none")
LIKELIHOODS = ("bernoulli", "gaussian")
KL_MODES = ("analytic", "mc")
CHECKPOINT_KIND = "vae"
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclass
class VAELossTerms:
    """Per-example terms of (1), each of shape (B,), in nats."""

    elbo: Tensor
    rec: Tensor  # E_q[log p(x|z)], Monte Carlo over the drawn samples
    kl: Tensor  # KL(q(z|x) || p(z))


@dataclass
class EstimatorProblem:
    """d/dparams E_{q(params)}[f(z)] for one batch, in the form the core's estimators take:
    ``pathwise_gradient(f, pathwise_factory, params, n)`` and
    ``score_function_gradient(f, score_factory, params, n, baseline=...)``.

    ``params`` are q(z|x)'s parameters for the batch as fresh leaf tensors; f(z) = sum_batch log p(x|z)
    (decoder fixed). The KL term's gradient is exact in both estimators, so it is left out.
    """

    f: Callable[[Tensor], Tensor]  # (n, B, ...) -> (n,)
    params: list[Tensor]
    pathwise_factory: Callable[..., Distribution]
    score_factory: Callable[..., Distribution]


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(choices)}")


def _check_positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class _BaseVAE(nn.Module):
    """What the Gaussian and the categorical VAE share: networks, likelihood, ELBO/IWAE plumbing,
    the score-function surrogate, save/load. Subclasses define the latent distribution."""

    def __init__(self, image_shape: Sequence[int], z_dim: int, enc_out: int, hidden: Sequence[int], arch: str,
                 likelihood: str, decoder_std: float | None, kl: str, estimator: str, sf_samples: int,
                 sf_baseline: str, sf_baseline_decay: float, train_samples: int):
        super().__init__()
        _check_choice("architecture", arch, ARCHS)
        _check_choice("likelihood", likelihood, LIKELIHOODS)
        _check_choice("KL mode", kl, KL_MODES)
        _check_choice("estimator", estimator, ESTIMATORS)
        if sf_baseline == "mean":  # the old name: "mean" alone is ambiguous (the core's "loo" is a batch mean too)
            raise ValueError("sf_baseline='mean' is now called 'running_mean' (a running mean over batches); "
                             "'loo' is the leave-one-out mean over the samples of the same example")
        _check_choice("score-function baseline", sf_baseline, SF_BASELINES)
        for name, v in (("sf_samples", sf_samples), ("train_samples", train_samples)):
            _check_positive_int(name, v)
        if any(int(h) <= 0 for h in hidden):
            raise ValueError(f"hidden sizes must be positive, got {list(hidden)}")
        if len(image_shape) != 2 or any(int(s) <= 0 for s in image_shape):
            raise ValueError(f"image_shape must be (H, W) with positive sides, got {tuple(image_shape)}")
        if decoder_std is not None and not decoder_std > 0:
            raise ValueError(f"decoder_std must be positive (or None for a learned std), got {decoder_std}")
        if estimator == "score-function" and sf_baseline == "loo" and sf_samples < 2:
            raise ValueError("the leave-one-out baseline needs sf_samples >= 2 (or use sf_baseline='running_mean')")
        if not 0.0 <= sf_baseline_decay < 1.0:
            raise ValueError(f"sf_baseline_decay must be in [0, 1), got {sf_baseline_decay}")
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.n_pixels = self.image_shape[0] * self.image_shape[1]
        self.likelihood, self.decoder_std, self.kl_mode = likelihood, decoder_std, kl
        self.estimator, self.sf_samples, self.sf_baseline = estimator, sf_samples, sf_baseline
        self.sf_baseline_decay, self.train_samples = sf_baseline_decay, train_samples
        learned_std = likelihood == "gaussian" and decoder_std is None
        self.encoder = make_encoder(arch, self.image_shape, list(hidden), enc_out)
        self.decoder = make_decoder(arch, z_dim, list(hidden), self.image_shape, out_channels=2 if learned_std else 1)
        # running mean of f for sf_baseline='running_mean' (a buffer: saved in checkpoints, resumed exactly)
        self.register_buffer("baseline_ema", torch.zeros(()))
        self.register_buffer("baseline_ready", torch.zeros((), dtype=torch.bool))

    # -- to be defined by subclasses -----------------------------------------------------------
    config: dict[str, Any]

    def encode(self, x: Tensor) -> Distribution:
        raise NotImplementedError

    def _decoder_input(self, z: Tensor) -> Tensor:
        return z

    def log_prior(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def log_posterior(self, x: Tensor, z: Tensor) -> Tensor:
        raise NotImplementedError

    # -- decoder and likelihood ---------------------------------------------------------------
    def _flat(self, x: Tensor) -> Tensor:
        """(B, H, W) or (B, D) -> (B, D); a ValueError for another shape, or (Bernoulli) a pixel outside [0, 1]."""
        if not (x.shape[-1] == self.n_pixels and x.dim() == 2):
            if tuple(x.shape) in (self.image_shape, (self.n_pixels,)):
                raise ValueError(f"got one image of shape {tuple(x.shape)} without a batch dimension: pass "
                                 "x.unsqueeze(0) (shape (1, ...)) for a batch of one")
            if x.dim() != 3 or tuple(x.shape[-2:]) != self.image_shape:
                raise ValueError(f"expected images of shape (B, {self.image_shape[0]}, {self.image_shape[1]}) or "
                                 f"(B, {self.n_pixels}), got {tuple(x.shape)}")
            x = x.reshape(x.shape[0], self.n_pixels)
        if self.likelihood == "bernoulli":
            lo, hi = torch.aminmax(x.detach())
            if lo < 0 or hi > 1:  # BCE would quietly return a finite, meaningless number
                raise ValueError(f"the Bernoulli decoder needs pixel values in [0, 1], got values from {lo.item():.4g} "
                                 f"to {hi.item():.4g}: scale the images to [0, 1] (or use likelihood='gaussian')")
        return x

    def _decoder_out(self, z: Tensor) -> Tensor:
        """Decoder output for latents (..., B, *z_shape): (..., B, D) or (..., B, 2D) (mean, log-std)."""
        return self.decoder(self._decoder_input(z))

    def _log_lik_from_out(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) summed over pixels; x (B, D), out (..., B, D or 2D) -> (..., B)."""
        if self.likelihood == "bernoulli":
            # log Bernoulli(x; sigmoid(l)) = -BCE(l, x) = x l - softplus(l)
            return -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none").sum(-1)
        if self.decoder_std is None:
            mean, log_std = out.split(self.n_pixels, dim=-1)
            log_std = log_std.clamp(*DECODER_LOG_STD_RANGE)
        else:
            mean, log_std = out, torch.full_like(out, math.log(self.decoder_std))
        # log N(x; mean, std^2) = -(x - mean)^2 / (2 std^2) - log std - log sqrt(2 pi)
        return (-0.5 * ((x - mean) * torch.exp(-log_std)).square() - log_std - _HALF_LOG_2PI).sum(-1)

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) in nats; x (B, H, W) or (B, D), z (..., B, *z_shape) -> (..., B)."""
        return self._log_lik_from_out(self._flat(x), self._decoder_out(z))

    def decode(self, z: Tensor) -> Tensor:
        """The decoder's mean image E[x|z]: (..., B, *z_shape) -> (..., B, H, W)."""
        out = self._decoder_out(z)
        mean = torch.sigmoid(out) if self.likelihood == "bernoulli" else out[..., : self.n_pixels]
        return mean.reshape(*mean.shape[:-1], *self.image_shape)

    def log_weight(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x, z) - log q(z|x) for given latents z (..., B, *z_shape) -> (..., B); differentiable in
        encoder and decoder. Its mean over z ~ q is the ELBO; eq. (3) log-mean-exps it."""
        return self.log_likelihood(x, z) + self.log_prior(z) - self.log_posterior(x, z)

    # -- the score-function surrogate (5) ----------------------------------------------------
    def _score_function_term(self, f: Tensor, log_q: Tensor) -> Tensor:
        """Per-example surrogate mean_s (f_s - b_s).detach() * log q(z_s|x): its gradient is (5).

        f, log_q: (S, B). Baselines (each independent of the sample it multiplies, so (5) stays unbiased):
        'loo' b_s = mean_{t != s} f_t for the same x (S >= 2); 'running_mean' an exponential running mean
        of f over past batches, read before this batch updates it (before any update: the mean of the
        batch's other S B - 1 values); 'none' b = 0.
        """
        s = f.shape[0]
        if self.sf_baseline == "loo":
            b = (f.sum(0, keepdim=True) - f) / (s - 1)
        elif self.sf_baseline == "running_mean":
            b = self._running_baseline(f)
            if self.training:
                self._update_running_mean(f)
        else:
            b = torch.zeros_like(f)
        return ((f - b).detach() * log_q).mean(0)  # (B,)

    @torch.no_grad()
    def _running_baseline(self, f: Tensor) -> Tensor:
        """The running mean of f from past batches, broadcast to f's shape (S, B); before the first update,
        the leave-one-out mean of the other S B - 1 values of this batch (0 for a single value)."""
        m = f.numel()
        first = (f.sum() - f) / (m - 1) if m > 1 else torch.zeros_like(f)
        return torch.where(self.baseline_ready, self.baseline_ema, first)

    @torch.no_grad()
    def _update_running_mean(self, f: Tensor) -> None:
        """ema <- d ema + (1 - d) mean(f) (the first batch sets ema = mean(f))."""
        batch_mean, d = f.mean(), self.sf_baseline_decay
        self.baseline_ema.copy_(torch.where(self.baseline_ready, d * self.baseline_ema + (1 - d) * batch_mean,
                                            batch_mean))
        self.baseline_ready.fill_(True)

    @staticmethod
    def _stats(rec: Tensor, kl: Tensor) -> dict[str, Tensor]:
        """Batch sums (detached, on device: no host sync per batch) of the ELBO terms."""
        rec, kl = rec.detach(), kl.detach()
        return {"elbo": (rec - kl).sum(), "rec": rec.sum(), "kl": kl.sum(), "n": rec.new_tensor(float(rec.shape[0]))}

    # -- evaluation -----------------------------------------------------------------------------
    def _draw_eval(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """n latents per example from the model's q(z|x) and log q: (n, B, *z_shape), (n, B)."""
        raise NotImplementedError

    def _analytic_kl(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def elbo_terms(self, x: Tensor, n_samples: int = 1) -> VAELossTerms:
        """Eq. (1) per example with n_samples latents per example and the analytic KL."""
        _check_positive_int("n_samples", n_samples)
        z, _ = self._draw_eval(x, n_samples)
        rec = self.log_likelihood(x, z).mean(0)  # (B,)
        kl = self._analytic_kl(x)  # (B,)
        return VAELossTerms(rec - kl, rec, kl)

    def elbo(self, x: Tensor, n_samples: int = 1) -> Tensor:
        """The ELBO (1) per example, (B,), in nats (beta = 1, analytic KL)."""
        return self.elbo_terms(x, n_samples).elbo

    @torch.no_grad()
    def iwae_bound(self, x: Tensor, k: int, chunk_size: int | None = None) -> Tensor:
        """Eq. (3) per example, (B,), evaluated in chunks of latents so k = 5000 fits in memory:
        log mean_i w_i = logsumexp_chunks(logsumexp_i-in-chunk log w_i) - log k. No gradients."""
        _check_positive_int("k", k)
        x = self._flat(x)
        if chunk_size is None:
            chunk_size = max(1, 32768 // x.shape[0])  # at most ~32k decoded images in memory at once
        _check_positive_int("chunk_size", chunk_size)
        partial = []
        for start in range(0, k, chunk_size):
            z, log_q = self._draw_eval(x, min(chunk_size, k - start))
            log_w = self.log_likelihood(x, z) + self.log_prior(z) - log_q  # (n, B)
            partial.append(log_w.logsumexp(0))
        return torch.stack(partial).logsumexp(0) - math.log(k)

    # -- save / load -----------------------------------------------------------------------------
    def checkpoint_dict(self) -> dict[str, Any]:
        return {"model_class": type(self).__name__, "model_config": dict(self.config),
                "model_state": self.state_dict()}

    def save(self, path: str | Path) -> None:
        """Write the model (class, constructor config, weights) atomically."""
        save_checkpoint(self.checkpoint_dict(), path, kind=CHECKPOINT_KIND)

    @classmethod
    def load(cls, path: str | Path, map_location: Any = "cpu") -> _BaseVAE:
        """Read a model written by ``save`` (or a training checkpoint); CheckpointError if it does not fit."""
        from .model import load_model  # the registry of model classes lives above this module

        model = load_model(path, map_location)
        if not isinstance(model, cls):
            raise CheckpointError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model
