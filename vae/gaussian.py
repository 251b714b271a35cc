"""The Gaussian VAE: p(z) = N(0, I) and q(z|x) a diagonal Gaussian (Kingma & Welling 2014), or that
Gaussian pushed through a normalizing flow conditioned on the encoder (Rezende & Mohamed 2015; Kingma et
al. 2016, IAF):

    eps ~ N(0, I),  z_0 = mu(x) + sigma(x) * eps,  z_k = f_k(z_{k-1}; h(x)),  z = z_K               (6)
    log q(z|x) = log N(eps; 0, I) - sum_i log sigma_i(x) - sum_k log |det df_k/dz_{k-1}|             (7)
    KL term of (1)-(2) with a flow: the Monte Carlo estimate mean_s [log q(z_s|x) - log p(z_s)]      (8)

h(x) is the encoder's last hidden layer; (7) comes from the core's ``rsample_and_log_prob`` (no inversion).
A flow has no closed-form KL, so a flow posterior trains and evaluates with (8) (``kl='mc'``; 'analytic' is
refused). The score-function estimator (5) needs log q of a detached sample, which inverts (6): allowed for
the iaf, affine and spline kinds, whose inverses are exact and differentiable; refused for planar, whose
inverse is a bisection that carries no gradient to the flow's parameters.

Shapes: B batch, D = H*W pixels, L latent size, S samples per example, C = feature_dim of the encoder.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from reparam_apps import Normal, kl_normal_std_normal, mc_kl
from reparam_apps.flows import FLOW_KINDS, FlowDistribution, make_flow

from .base import LOGVAR_RANGE, EstimatorProblem, VAELossTerms, _BaseVAE, _check_choice, _check_positive_int

__all__ = ["VAE", "POSTERIORS", "FLOW_HIDDEN"]

POSTERIORS = ("gaussian", *FLOW_KINDS)
FLOW_HIDDEN = (320,)  # the MADE / coupling width of each flow step (a width of the IAF paper's MNIST runs)
# Flow kinds whose inverse is exact and differentiable in the flow's parameters (score-function training).
_SF_FLOWS = ("iaf", "affine", "spline")


class VAE(_BaseVAE):
    """Gaussian VAE: q(z|x) = N(mu(x), diag sigma(x)^2) or a flow on it (6), p(z) = N(0, I), p(x|z) Bernoulli
    or Gaussian.

    Defaults are the classic 784-400-20 MLP with a Bernoulli decoder (Kingma & Welling 2014).
    ``estimator='score-function'`` trains the same encoder with (5) instead of (4).

    Args (beyond ``_BaseVAE``'s):
        posterior: 'gaussian', or a flow kind of ``reparam_apps.flows`` (planar, iaf, affine, spline).
        flow_steps: K >= 1 flow steps (ignored for the Gaussian posterior).
        flow_hidden: hidden widths of each step's network (MADE or coupling conditioner).
        kl: 'analytic' or 'mc'; None (default): analytic for the Gaussian posterior, mc for a flow.
    """

    def __init__(self, image_shape: Sequence[int] = (28, 28), latent_dim: int = 20, hidden: Sequence[int] = (400,),
                 arch: str = "mlp", likelihood: str = "bernoulli", decoder_std: float | None = None,
                 kl: str | None = None, estimator: str = "pathwise", sf_samples: int = 4, sf_baseline: str = "loo",
                 sf_baseline_decay: float = 0.9, train_samples: int = 1, posterior: str = "gaussian",
                 flow_steps: int = 2, flow_hidden: Sequence[int] = FLOW_HIDDEN):
        _check_positive_int("latent_dim", latent_dim)
        _check_choice("posterior", posterior, POSTERIORS)
        flow = posterior != "gaussian"
        kl = ("mc" if flow else "analytic") if kl is None else kl
        if flow:
            _check_positive_int("flow_steps", flow_steps)
            if not flow_hidden or any(not isinstance(w, int) or w <= 0 for w in flow_hidden):
                raise ValueError(f"flow_hidden must be one or more positive integers, got {flow_hidden!r}")
            if kl == "analytic":
                raise ValueError(f"the {posterior} flow posterior has no closed-form KL: use kl='mc' (the default "
                                 "with a flow)")
            if estimator == "score-function" and posterior not in _SF_FLOWS:
                raise ValueError(f"the score-function estimator needs log q(z|x) of a detached sample, and the "
                                 f"{posterior} flow's inverse carries no gradient: use one of {', '.join(_SF_FLOWS)}")
        super().__init__(image_shape, latent_dim, 2 * latent_dim, hidden, arch, likelihood, decoder_std, kl,
                         estimator, sf_samples, sf_baseline, sf_baseline_decay, train_samples)
        self.latent_dim, self.posterior = latent_dim, posterior
        self.flow_steps, self.flow_hidden = int(flow_steps), tuple(int(w) for w in flow_hidden)
        # the flow, conditioned on the encoder's last hidden layer h (B, C), as in the IAF paper
        self.flow = (make_flow(posterior, latent_dim, self.flow_steps, self.encoder.feature_dim, self.flow_hidden)
                     if flow else None)
        self.config = dict(image_shape=list(self.image_shape), latent_dim=latent_dim, hidden=list(hidden), arch=arch,
                           likelihood=likelihood, decoder_std=decoder_std, kl=kl, estimator=estimator,
                           sf_samples=sf_samples, sf_baseline=sf_baseline, sf_baseline_decay=sf_baseline_decay,
                           train_samples=train_samples, posterior=posterior, flow_steps=self.flow_steps,
                           flow_hidden=list(self.flow_hidden))

    def encode_params(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """mu and the clamped log-variance of q(z|x) (of the flow's base z_0 with a flow), each (B, L)."""
        return self._encode_all(x)[:2]

    def _encode_all(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """mu, log-variance (B, L) and, with a flow, the context h (B, C): one encoder pass."""
        if self.flow is None:
            out, h = self.encoder(self._flat(x)), None
        else:
            out, h = self.encoder.forward_features(self._flat(x))
        mu, log_var = out.chunk(2, dim=-1)
        return mu, log_var.clamp(*LOGVAR_RANGE), h

    def _q(self, mu: Tensor, log_var: Tensor, h: Tensor | None = None) -> Normal | FlowDistribution:
        sigma = torch.exp(0.5 * log_var)  # sigma = exp(log_var / 2)
        if self.flow is None:
            return Normal(mu, sigma, event_dims=1, validate_args=False)
        return self.flow(mu, sigma, context=h, validate_args=False)  # eq. (6)

    def encode(self, x: Tensor) -> Normal | FlowDistribution:
        """q(z|x): the core's reparameterized Normal (event over the L latent dims), or with a flow posterior
        the core's FlowDistribution (``rsample_and_log_prob`` gives z and (7))."""
        return self._q(*self._encode_all(x))

    def prior(self, like: Tensor | None = None) -> Normal:
        p = next(self.parameters())
        zeros = torch.zeros(self.latent_dim, dtype=p.dtype, device=p.device) if like is None else torch.zeros_like(like)
        return Normal(zeros, torch.ones_like(zeros), event_dims=1, validate_args=False)

    def log_prior(self, z: Tensor) -> Tensor:
        return self.prior().log_prob(z)

    def log_posterior(self, x: Tensor, z: Tensor) -> Tensor:
        return self.encode(x).log_prob(z)

    def _analytic_kl(self, x: Tensor) -> Tensor:
        if self.flow is not None:
            raise ValueError(f"the {self.posterior} flow posterior has no closed-form KL")
        return kl_normal_std_normal(*self.encode_params(x)).sum(-1)

    def _draw_eval(self, x: Tensor, n: int) -> tuple[Tensor, Tensor]:
        return self.encode(x).rsample_and_log_prob((n,))

    def elbo_terms(self, x: Tensor, n_samples: int = 1) -> VAELossTerms:
        """Eq. (1) per example with n_samples latents: the analytic KL for the Gaussian posterior, (8) on the
        same samples with a flow."""
        _check_positive_int("n_samples", n_samples)
        mu, log_var, h = self._encode_all(x)  # one encoder pass for the sample and the KL
        if self.flow is not None:
            z, log_q = self._q(mu, log_var, h).rsample_and_log_prob((n_samples,))  # (S, B, L), (S, B): (7)
            rec = self.log_likelihood(x, z).mean(0)
            kl = (log_q - self.log_prior(z)).mean(0)  # eq. (8)
            return VAELossTerms(rec - kl, rec, kl)
        z = self._q(mu, log_var).rsample((n_samples,))  # (S, B, L), eq. (4)
        rec = self.log_likelihood(x, z).mean(0)
        kl = kl_normal_std_normal(mu, log_var).sum(-1)
        return VAELossTerms(rec - kl, rec, kl)

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder mean at the posterior mean (with a flow: at the image of the base mean, eps = 0): (B, H, W)."""
        mu, log_var, h = self._encode_all(x)
        if self.flow is None:
            return self.decode(mu)
        return self.decode(self._q(mu, log_var, h).transform(torch.zeros_like(mu)))

    def sample(self, n: int) -> Tensor:
        """n images from the model: z ~ p(z), then the decoder's mean image, (n, H, W)."""
        _check_positive_int("n", n)
        return self.decode(self.prior().sample((n,)))

    def loss(self, x: Tensor, beta: float = 1.0, step: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """The training loss (2) with this model's estimator, and batch sums of the ELBO terms (beta = 1)."""
        x = self._flat(x)
        mu, log_var, h = self._encode_all(x)  # (B, L) each, h (B, C) or None
        q = self._q(mu, log_var, h)
        prior = self.prior(mu)
        if self.estimator == "pathwise" and self.flow is not None:
            z, log_q = q.rsample_and_log_prob((self.train_samples,))  # (S, B, L), (S, B): eqs. (6)-(7)
            rec = self.log_likelihood(x, z)  # (S, B)
            kl = mc_kl(q, prior, z=z, log_q=log_q)  # (B,), eq. (8)
            loss = -(rec.mean(0) - beta * kl).mean()
            return loss, self._stats(rec.mean(0), kl)
        if self.estimator == "pathwise":
            z = q.rsample((self.train_samples,))  # (S, B, L): z = mu + sigma * eps, eq. (4)
            rec = self.log_likelihood(x, z)  # (S, B)
            kl = (kl_normal_std_normal(mu, log_var).sum(-1) if self.kl_mode == "analytic"
                  else mc_kl(q, prior, z=z))  # (B,)
            loss = -(rec.mean(0) - beta * kl).mean()
            return loss, self._stats(rec.mean(0), kl)
        # score function: z carries no gradient; the encoder learns only through log q, eq. (5)
        z = q.sample((self.sf_samples,))  # (S, B, L)
        log_q = q.log_prob(z)  # (S, B), differentiable in the encoder (a flow: through its inverse)
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
        """The encoder-side gradient problem for this batch (see EstimatorProblem): params (mu, sigma), and with
        a flow posterior also the context h (the flow's weights stay fixed)."""
        with torch.no_grad():
            mu, log_var, h = self._encode_all(x)
        mu = mu.clone().requires_grad_(True)
        sigma = torch.exp(0.5 * log_var).requires_grad_(True)
        x_flat = self._flat(x).detach()

        def f(z: Tensor) -> Tensor:  # (n, B, L) -> (n,)
            return self.log_likelihood(x_flat, z).sum(-1)

        if self.flow is None:
            def factory(m: Tensor, s: Tensor) -> Normal:
                return Normal(m, s, event_dims=1, validate_args=False)

            return EstimatorProblem(f, [mu, sigma], factory, factory)
        if self.posterior not in _SF_FLOWS:
            raise ValueError(f"the {self.posterior} flow's inverse carries no gradient, so the score-function side "
                             f"of the problem is wrong: use one of {', '.join(_SF_FLOWS)}")
        flow = self.flow

        def flow_factory(m: Tensor, s: Tensor, c: Tensor) -> FlowDistribution:
            return flow(m, s, context=c, validate_args=False)

        return EstimatorProblem(f, [mu, sigma, h.clone().requires_grad_(True)], flow_factory, flow_factory)
