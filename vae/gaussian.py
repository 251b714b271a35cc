"""The Gaussian VAE: q(z|x) = N(mu(x), diag sigma(x)^2), p(z) = N(0, I) (Kingma & Welling 2014).

Shapes: B batch, D = H*W pixels, L latent size, S samples per example.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reparam_apps import Normal, kl_normal_std_normal, mc_kl

from .base import LOGVAR_RANGE, EstimatorProblem, VAELossTerms, _BaseVAE, _check_positive_int

__all__ = ["VAE"]


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
