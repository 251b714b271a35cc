"""The categorical VAE: N categorical latents of K classes, relaxed with the core's Gumbel-Softmax for the
pathwise estimator (Jang et al. 2017; Maddison et al. 2017), discrete for the score function and evaluation.

Shapes: B batch, D = H*W pixels, S samples per example, N categorical latents of K classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import OneHotCategorical

from reparam_apps import GumbelSoftmax, mc_kl

from .base import EstimatorProblem, VAELossTerms, _BaseVAE, _check_positive_int

__all__ = ["CategoricalVAE", "categorical_kl_uniform"]


def categorical_kl_uniform(logits: Tensor) -> Tensor:
    """KL(Cat(softmax(logits)) || Uniform(K)) = sum_k q_k log q_k + log K, over the last dim."""
    log_q = torch.log_softmax(logits, dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


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
