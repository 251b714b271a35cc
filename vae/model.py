"""Variational autoencoders on the shared core: a Gaussian VAE and a categorical (Gumbel-Softmax) VAE,
each trainable with its pathwise estimator or with the score-function (REINFORCE) estimator.

Notation (Kingma & Welling 2014; Burda et al. 2016; Jang et al. 2017), per example x:

    ELBO(x)   = E_q[log p(x|z)] - KL(q(z|x) || p(z))                                   (1)
    loss      = -mean_batch( E_q[log p(x|z)] - beta_t KL )      beta_t: beta with linear warm-up  (2)
    IWAE_k(x) = log (1/k) sum_i p(x, z_i) / q(z_i|x),   z_i ~ q(z|x)                  (3)
    pathwise:        z = g_phi(eps), gradients through the sample                       (4)
    score function:  grad_phi E_q[f] = E_q[(f(z) - b) grad_phi log q(z|x)]               (5)

Everything is summed over pixels (and latent dims) and averaged over the batch: nats per example.
Shapes: B batch, D = H*W pixels, L latent size, S samples per example, N categorical latents of K classes.
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
from torch.distributions import Distribution, OneHotCategorical

from reparam_apps import GumbelSoftmax, Normal, kl_normal_std_normal, load_checkpoint, mc_kl, save_checkpoint
from reparam_apps.runs import CheckpointError

from .nets import ARCHS, make_decoder, make_encoder

__all__ = ["VAE", "CategoricalVAE", "VAELossTerms", "EstimatorProblem", "load_model", "categorical_kl_uniform",
           "LOGVAR_RANGE", "DECODER_LOG_STD_RANGE", "ESTIMATORS", "SF_BASELINES", "LIKELIHOODS", "KL_MODES",
           "CHECKPOINT_KIND"]

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


def categorical_kl_uniform(logits: Tensor) -> Tensor:
    """KL(Cat(softmax(logits)) || Uniform(K)) = sum_k q_k log q_k + log K, over the last dim."""
    log_q = torch.log_softmax(logits, dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


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
        """(B, H, W) or (B, D) -> (B, D)."""
        if x.shape[-1] == self.n_pixels and x.dim() == 2:
            return x
        if tuple(x.shape[-2:]) != self.image_shape:
            raise ValueError(f"expected images of shape (B, {self.image_shape[0]}, {self.image_shape[1]}) or "
                             f"(B, {self.n_pixels}), got {tuple(x.shape)}")
        return x.reshape(x.shape[0], self.n_pixels)

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
        model = load_model(path, map_location)
        if not isinstance(model, cls):
            raise CheckpointError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class VAE(_BaseVAE):
    """Gaussian VAE: q(z|x) = N(mu(x), diag sigma(x)^2), p(z) = N(0, I), p(x|z) Bernoulli or Gaussian.

    Defaults are the classic 784-400-20 MLP with a Bernoulli decoder (Kingma & Welling 2014).
    ``estimator='score-function'`` trains the same encoder with (5) instead of (4).
    """

    def __init__(self, image_shape: Sequence[int] = (28, 28), latent_dim: int = 20, hidden: Sequence[int] = (400,),
                 arch: str = "mlp", likelihood: str = "bernoulli", decoder_std: float | None = None,
                 kl: str = "analytic", estimator: str = "pathwise", sf_samples: int = 4, sf_baseline: str = "loo",
                 sf_baseline_decay: float = 0.9, train_samples: int = 1):
        _check_positive_int("latent_dim", latent_dim)
        super().__init__(image_shape, latent_dim, 2 * latent_dim, hidden, arch, likelihood, decoder_std, kl,
                         estimator, sf_samples, sf_baseline, sf_baseline_decay, train_samples)
        self.latent_dim = latent_dim
        self.config = dict(image_shape=list(self.image_shape), latent_dim=latent_dim, hidden=list(hidden), arch=arch,
                           likelihood=likelihood, decoder_std=decoder_std, kl=kl, estimator=estimator,
                           sf_samples=sf_samples, sf_baseline=sf_baseline, sf_baseline_decay=sf_baseline_decay,
                           train_samples=train_samples)

    def encode_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """mu and the clamped log-variance of q(z|x), each (B, L)."""
        mu, log_var = self.encoder(self._flat(x)).chunk(2, dim=-1)
        return mu, log_var.clamp(*LOGVAR_RANGE)

    def _q(self, mu: Tensor, log_var: Tensor) -> Normal:
        return Normal(mu, torch.exp(0.5 * log_var), event_dims=1, validate_args=False)  # sigma = exp(log_var / 2)

    def encode(self, x: Tensor) -> Normal:
        """q(z|x) as the core's reparameterized Normal (event over the L latent dims)."""
        return self._q(*self.encode_params(x))

    def prior(self, like: Tensor | None = None) -> Normal:
        p = next(self.parameters())
        zeros = torch.zeros(self.latent_dim, dtype=p.dtype, device=p.device) if like is None else torch.zeros_like(like)
        return Normal(zeros, torch.ones_like(zeros), event_dims=1, validate_args=False)

    def log_prior(self, z: Tensor) -> Tensor:
        return self.prior().log_prob(z)

    def log_posterior(self, x: Tensor, z: Tensor) -> Tensor:
        return self.encode(x).log_prob(z)

    def _analytic_kl(self, x: Tensor) -> Tensor:
        return kl_normal_std_normal(*self.encode_params(x)).sum(-1)

    def _draw_eval(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        return self.encode(x).rsample_and_log_prob((n,))

    def elbo_terms(self, x: Tensor, n_samples: int = 1) -> VAELossTerms:
        _check_positive_int("n_samples", n_samples)
        mu, log_var = self.encode_params(x)  # one encoder pass for the sample and the KL
        z = self._q(mu, log_var).rsample((n_samples,))  # (S, B, L), eq. (4)
        rec = self.log_likelihood(x, z).mean(0)
        kl = kl_normal_std_normal(mu, log_var).sum(-1)
        return VAELossTerms(rec - kl, rec, kl)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mean: (B, H, W)."""
        return self.decode(self.encode_params(x)[0])

    def sample(self, n: int) -> Tensor:
        """n images from the model: z ~ p(z), then the decoder's mean image, (n, H, W)."""
        _check_positive_int("n", n)
        return self.decode(self.prior().sample((n,)))

    def loss(self, x: Tensor, beta: float = 1.0, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss (2) with this model's estimator, and batch sums of the ELBO terms (beta = 1)."""
        x = self._flat(x)
        mu, log_var = self.encode_params(x)  # (B, L) each
        q = self._q(mu, log_var)
        prior = self.prior(mu)
        if self.estimator == "pathwise":
            z = q.rsample((self.train_samples,))  # (S, B, L): z = mu + sigma * eps, eq. (4)
            rec = self.log_likelihood(x, z)  # (S, B)
            kl = (kl_normal_std_normal(mu, log_var).sum(-1) if self.kl_mode == "analytic"
                  else mc_kl(q, prior, z=z))  # (B,)
            loss = -(rec.mean(0) - beta * kl).mean()
            return loss, self._stats(rec.mean(0), kl)
        # score function: z carries no gradient; the encoder learns only through log q, eq. (5)
        z = q.sample((self.sf_samples,))  # (S, B, L)
        log_q = q.log_prob(z)  # (S, B), differentiable in the encoder
        rec = self.log_likelihood(x, z)  # (S, B), differentiable in the decoder
        if self.kl_mode == "analytic":
            f = rec
            kl = kl_normal_std_normal(mu, log_var).sum(-1)  # exact gradient for the KL term
        else:
            kl_s = log_q - prior.log_prob(z)  # (S, B) single-sample KL estimates
            f = rec - beta * kl_s  # the whole ELBO integrand goes through (5); E_q[grad log q] = 0
            kl = kl_s.detach().mean(0)
        surrogate = self._score_function_term(f, log_q)
        loss = -(rec.mean(0) + surrogate - beta * kl).mean()
        return loss, self._stats(rec.mean(0), kl)

    def estimator_problem(self, x: Tensor) -> EstimatorProblem:
        """The encoder-side gradient problem for this batch (see EstimatorProblem)."""
        with torch.no_grad():
            mu, log_var = self.encode_params(x)
        mu = mu.clone().requires_grad_(True)
        sigma = torch.exp(0.5 * log_var).requires_grad_(True)
        x_flat = self._flat(x).detach()

        def f(z: Tensor) -> Tensor:  # (n, B, L) -> (n,)
            return self.log_likelihood(x_flat, z).sum(-1)

        def factory(m: Tensor, s: Tensor) -> Normal:
            return Normal(m, s, event_dims=1, validate_args=False)

        return EstimatorProblem(f, [mu, sigma], factory, factory)


class CategoricalVAE(_BaseVAE):
    """Discrete-latent VAE: N categorical latents of K classes, p(z) uniform, q(z|x) = prod Cat(softmax(l(x))).

    Pathwise training relaxes z with the core's ``GumbelSoftmax`` at temperature
    tau_t = max(tau_min, tau_0 exp(-r t)) (step t, Jang et al. 2017), optionally straight-through
    (``hard=True``: one-hot forward, relaxed gradient). Score-function training samples the discrete
    z from ``GumbelSoftmax.categorical()`` and uses (5). Evaluation (ELBO, IWAE, samples) always uses
    the discrete model, so the pathwise and score-function twins are measured on the same bound.
    """

    def __init__(self, image_shape: Sequence[int] = (28, 28), n_latents: int = 20, n_classes: int = 10,
                 hidden: Sequence[int] = (400,), arch: str = "mlp", likelihood: str = "bernoulli",
                 decoder_std: float | None = None, kl: str = "analytic", estimator: str = "pathwise",
                 temperature: float = 1.0, temperature_min: float = 0.5, anneal_rate: float = 1e-4,
                 hard: bool = False, sf_samples: int = 4, sf_baseline: str = "loo", sf_baseline_decay: float = 0.9,
                 train_samples: int = 1):
        _check_positive_int("n_latents", n_latents)
        _check_positive_int("n_classes", n_classes)
        if n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, got {n_classes}")
        for name, v in (("temperature", temperature), ("temperature_min", temperature_min)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if temperature_min > temperature:
            raise ValueError(f"temperature_min ({temperature_min}) must not exceed temperature ({temperature})")
        if not (math.isfinite(anneal_rate) and anneal_rate >= 0):
            raise ValueError(f"anneal_rate must be >= 0, got {anneal_rate}")
        if kl == "mc" and hard and estimator == "pathwise":
            raise ValueError("a straight-through (hard) sample has no Concrete density: use kl='analytic' with hard")
        z_dim = n_latents * n_classes
        super().__init__(image_shape, z_dim, z_dim, hidden, arch, likelihood, decoder_std, kl, estimator,
                         sf_samples, sf_baseline, sf_baseline_decay, train_samples)
        self.n_latents, self.n_classes = n_latents, n_classes
        self.temperature, self.temperature_min, self.anneal_rate, self.hard = (
            float(temperature), float(temperature_min), float(anneal_rate), bool(hard))
        self.config = dict(image_shape=list(self.image_shape), n_latents=n_latents, n_classes=n_classes,
                           hidden=list(hidden), arch=arch, likelihood=likelihood, decoder_std=decoder_std, kl=kl,
                           estimator=estimator, temperature=temperature, temperature_min=temperature_min,
                           anneal_rate=anneal_rate, hard=hard, sf_samples=sf_samples, sf_baseline=sf_baseline,
                           sf_baseline_decay=sf_baseline_decay, train_samples=train_samples)

    def temperature_at(self, step: int) -> float:
        """tau_t = max(tau_min, tau_0 exp(-r t))."""
        return max(self.temperature_min, self.temperature * math.exp(-self.anneal_rate * step))

    def logits(self, x: Tensor) -> Tensor:
        """Unnormalised log q(z|x): (B, N, K)."""
        return self.encoder(self._flat(x)).reshape(-1, self.n_latents, self.n_classes)

    def encode(self, x: Tensor, temperature: float | None = None, hard: bool | None = None) -> GumbelSoftmax:
        """q(z|x) relaxed as the core's GumbelSoftmax (default: the final temperature tau_min);
        ``.categorical()`` gives the discrete q."""
        tau = self.temperature_min if temperature is None else temperature
        return GumbelSoftmax(self.logits(x), tau, hard=self.hard if hard is None else hard, validate_args=False)

    def _decoder_input(self, z: Tensor) -> Tensor:
        return z.flatten(-2)  # (..., B, N, K) -> (..., B, N*K)

    def log_prior(self, z: Tensor) -> Tensor:
        """log p(z) of one-hot z under the uniform prior: -N log K, shape (..., B)."""
        return torch.full(z.shape[:-2], -self.n_latents * math.log(self.n_classes), dtype=z.dtype, device=z.device)

    def log_posterior(self, x: Tensor, z: Tensor) -> Tensor:
        """log q(z|x) of one-hot z under the discrete posterior, (..., B)."""
        return self.encode(x).categorical().log_prob(z).sum(-1)

    def _analytic_kl(self, x: Tensor) -> Tensor:
        return categorical_kl_uniform(self.logits(x)).sum(-1)

    def _draw_eval(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        cat = self.encode(x).categorical()
        z = cat.sample((n,))  # (n, B, N, K) one-hot
        return z, cat.log_prob(z).sum(-1)

    def elbo_terms(self, x: Tensor, n_samples: int = 1) -> VAELossTerms:
        _check_positive_int("n_samples", n_samples)
        logits = self.logits(x)
        z = OneHotCategorical(logits=logits, validate_args=False).sample((n_samples,))
        rec = self.log_likelihood(x, z).mean(0)
        kl = categorical_kl_uniform(logits).sum(-1)
        return VAELossTerms(rec - kl, rec, kl)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mode (argmax class of each latent): (B, H, W)."""
        logits = self.logits(x)
        return self.decode(F.one_hot(logits.argmax(-1), self.n_classes).to(logits.dtype))

    def sample(self, n: int) -> Tensor:
        """n images: z uniform one-hot, then the decoder's mean image, (n, H, W)."""
        _check_positive_int("n", n)
        p = next(self.parameters())
        idx = torch.randint(self.n_classes, (n, self.n_latents), device=p.device)
        return self.decode(F.one_hot(idx, self.n_classes).to(p.dtype))

    def loss(self, x: Tensor, beta: float = 1.0, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss (2) with this model's estimator at temperature tau_step."""
        x = self._flat(x)
        logits = self.logits(x)  # (B, N, K)
        q = GumbelSoftmax(logits, self.temperature_at(step), hard=self.hard, validate_args=False)
        kl_exact = categorical_kl_uniform(logits).sum(-1)  # (B,)
        if self.estimator == "pathwise":
            y = q.rsample((self.train_samples,))  # (S, B, N, K): softmax((l + g) / tau), eq. (4)
            rec = self.log_likelihood(x, y)  # (S, B)
            if self.kl_mode == "analytic":
                kl = kl_exact
            else:  # relaxed KL(Concrete q || Concrete prior) at the same temperature (Maddison et al. 2017)
                prior = GumbelSoftmax(torch.zeros_like(logits), q.temperature, validate_args=False)
                kl = mc_kl(q, prior, z=y).sum(-1)
            loss = -(rec.mean(0) - beta * kl).mean()
            return loss, self._stats(rec.mean(0), kl)
        cat = q.categorical()
        z = cat.sample((self.sf_samples,))  # (S, B, N, K) one-hot, no gradient
        log_q = cat.log_prob(z).sum(-1)  # (S, B)
        rec = self.log_likelihood(x, z)
        if self.kl_mode == "analytic":
            f, kl = rec, kl_exact
        else:
            kl_s = log_q - self.log_prior(z)
            f, kl = rec - beta * kl_s, kl_s.detach().mean(0)
        surrogate = self._score_function_term(f, log_q)
        loss = -(rec.mean(0) + surrogate - beta * kl).mean()
        return loss, self._stats(rec.mean(0), kl)

    def estimator_problem(self, x: Tensor, temperature: float | None = None) -> EstimatorProblem:
        """Gradient of E_q[log p(x|z)] w.r.t. the logits: the score factory is the discrete q (unbiased);
        the pathwise factory is the relaxed q at ``temperature`` (biased for the discrete objective)."""
        with torch.no_grad():
            logits = self.logits(x)
        logits = logits.clone().requires_grad_(True)
        tau = self.temperature_min if temperature is None else temperature
        x_flat = self._flat(x).detach()

        def f(z: Tensor) -> Tensor:  # (n, B, N, K) -> (n,)
            return self.log_likelihood(x_flat, z).sum(-1)

        return EstimatorProblem(
            f, [logits],
            lambda lg: GumbelSoftmax(lg, tau, hard=self.hard, validate_args=False),
            lambda lg: GumbelSoftmax(lg, tau, validate_args=False).categorical(),
        )


_MODEL_CLASSES: dict[str, type[_BaseVAE]] = {"VAE": VAE, "CategoricalVAE": CategoricalVAE}


def model_from_checkpoint(obj: dict[str, Any], source: str | Path) -> _BaseVAE:
    """Rebuild a model from a checkpoint dict (``model_class``, ``model_config``, ``model_state``)."""
    cls = _MODEL_CLASSES.get(obj.get("model_class", ""))
    if cls is None or not isinstance(obj.get("model_config"), dict) or "model_state" not in obj:
        raise CheckpointError(f"{source} does not hold a VAE model (missing class, config or weights)")
    config = dict(obj["model_config"])
    if config.get("sf_baseline") == "mean":  # checkpoints written before the rename: it meant the running mean
        config["sf_baseline"] = "running_mean"
    try:
        model = cls(**config)
        model.load_state_dict(obj["model_state"])
    except (TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{source}: the stored weights do not fit the stored config "
                              f"({str(err).strip().splitlines()[0]})") from None
    return model


def load_model(path: str | Path, map_location: Any = "cpu") -> _BaseVAE:
    """Load a VAE or CategoricalVAE written by ``save`` or by the training script."""
    return model_from_checkpoint(load_checkpoint(path, kind=CHECKPOINT_KIND, map_location=map_location), path)
