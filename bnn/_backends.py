"""Execution backends of the Bayesian layers: what a sampling mode needs from q(w) = N(mu, softplus(rho)^2).

A sampling mode (``bnn.layers``) asks a backend for one "kind" of term per parameter tensor (weight, Bayesian bias)
and for standard-normal noise of its own (local reparameterization's output noise, Flipout's signs):

    SAMPLE        w  = mu + sigma eps     (reparam: one weight sample per minibatch)           (1)
    PERTURBATION  dW = sigma eps          (Flipout)                                            (2)
    VARIANCE      sigma^2                 (local reparameterization)                           (3)

with sigma = softplus(rho), eps ~ N(0, I), and the KL(q || p) bookkeeping in a :class:`KLCache`.

* :data:`EAGER`: torch ops per tensor (any dtype and device, pruning masks, any prior, frozen noise); noise from
  the core's ``Normal.sample_noise``; the KL is computed later by the layer from the cached sigmas (and, for the
  Monte Carlo estimate, the cached sample).
* :data:`FUSED`: the training hot path of a Gaussian prior with closed-form KL: one autograd node per tensor gives
  the term and its KL together, the core's native kernel where it can serve the tensors (``native.usable_for``,
  which ``REPARAM_APPS_NATIVE=0`` turns off), else :class:`_FusedGaussianPosterior`; noise from the native stream
  where it can. :func:`linear_sample_node` runs a whole ``BayesLinear`` in reparam mode as one node.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from reparam_apps import Normal, native

SAMPLE, PERTURBATION, VARIANCE = 0, 1, 2  # the kinds (1)-(3); the native kernel's own codes
KIND_OF_MODE = {"reparam": SAMPLE, "flipout": PERTURBATION, "local": VARIANCE}
_NATIVE_KINDS = {SAMPLE: "sample", PERTURBATION: "perturbation", VARIANCE: "variance"}


class KLCache(NamedTuple):
    """What one forward pass leaves for ``BayesLayer.kl_divergence()`` (each pass feeds at most one KL)."""

    kl: Tensor | None = None  # the closed-form KL computed with the pass (FUSED), else None
    weight_sigma: Tensor | None = None  # EAGER: the pass's softplus(rho), reused by the KL
    bias_sigma: Tensor | None = None
    weight_sample: Tensor | None = None  # EAGER with a Monte Carlo KL: the weight sample the pass used ...
    bias_sample: Tensor | None = None
    perturbation: bool = False  # ... or Flipout's dW, the sample being mu + dW (formed by the KL, after the output)


class PosteriorTerms(NamedTuple):
    """A backend's answer for one kind: the weight's and a Bayesian bias's terms (no pruning mask applied)."""

    weight: Tensor  # (1), (2) or (3) for the weight
    bias: Tensor | None  # the same for a Bayesian bias; None without one
    cache: KLCache


# -- EAGER ---------------------------------------------------------------------------------------------------------
def _eager_term(mu: Tensor, sigma: Tensor, kind: int, keep_sample: bool,
                eps: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """(term, the sample it implies when ``keep_sample``) for one tensor; ``eps`` replaces fresh noise (frozen)."""
    q = Normal(mu, sigma, validate_args=False)
    if kind == SAMPLE:
        w = q.rsample() if eps is None else q.transform(eps)  # (1)
        return w, (w if keep_sample else None)
    if kind == PERTURBATION:
        delta = sigma * q.sample_noise()  # (2)
        return delta, (delta if keep_sample else None)  # the sample is mu + delta: KLCache.perturbation
    return sigma.square(), None  # (3): local reparameterization forms no weight sample


class _Eager:
    """Per-tensor torch ops; the KL comes later from the cache (closed form or log q(w) - log p(w))."""

    fused = False

    def terms(self, layer, kind: int, frozen: bool = False) -> PosteriorTerms:
        w_sigma, b_sigma = layer.weight_sigma(), layer.bias_sigma()  # softplus once per forward
        mc = not layer.kl_is_closed_form
        eps_w, eps_b = (layer.frozen_weight_eps, layer.frozen_bias_eps) if frozen else (None, None)
        w, w_sample = _eager_term(layer.weight_mu, w_sigma, kind, mc, eps_w)
        b = b_sample = None
        if b_sigma is not None:
            b, b_sample = _eager_term(layer.bias_mu, b_sigma, kind, mc, eps_b)
        return PosteriorTerms(w, b, KLCache(None, w_sigma, b_sigma, w_sample, b_sample, kind == PERTURBATION))

    @staticmethod
    def noise(shape: torch.Size | tuple, like: Tensor) -> Tensor:
        """eps ~ N(0, I) of ``shape`` in ``like``'s dtype and device (the core's Normal.sample_noise)."""
        return Normal(like.new_zeros(()), like.new_ones(()), validate_args=False).sample_noise(tuple(shape))


# -- FUSED ---------------------------------------------------------------------------------------------------------
class _FusedGaussianPosterior(torch.autograd.Function):
    """One node for one parameter tensor of a Gaussian-prior layer: sigma = softplus(rho) computed once, the term
    (1)-(3) built from it, and the closed-form KL(N(mu, sigma^2) || N(m, s^2)) summed, with an analytic backward (a
    handful of elementwise passes instead of autograd's ~20). The noise eps comes from the caller (the core's
    ``Normal.sample_noise`` or native stream); tests check the value and both gradients against the unfused
    ``Normal.transform`` + ``kl_normal_normal`` path."""

    @staticmethod
    def forward(ctx, mu: Tensor, rho: Tensor, eps: Tensor | None, kind: int, loc_p: float, scale_p: float):
        sigma = F.softplus(rho)  # sigma = log(1 + exp(rho))
        if kind == SAMPLE:
            out = torch.addcmul(mu, sigma, eps)  # (1)
        elif kind == PERTURBATION:
            out = sigma * eps  # (2)
        else:
            out = sigma.square()  # (3)
        # sum_i [log(s / sigma_i) + (sigma_i^2 + (mu_i - m)^2) / (2 s^2) - 1/2], by reductions:
        # n (log s - 1/2) - sum log sigma + (|sigma|^2 + |mu - m|^2) / (2 s^2)
        centred = mu if loc_p == 0.0 else mu - loc_p
        flat_sigma, flat_mu = sigma.reshape(-1), centred.reshape(-1)
        kl = (sigma.numel() * (math.log(scale_p) - 0.5) - sigma.log().sum()
              + (torch.dot(flat_sigma, flat_sigma) + torch.dot(flat_mu, flat_mu)) / (2.0 * scale_p**2))
        ctx.save_for_backward(centred, rho, sigma, eps)
        ctx.kind, ctx.inv_var_p = kind, 1.0 / scale_p**2
        return out, kl

    @staticmethod
    def backward(ctx, grad_out: Tensor, grad_kl: Tensor):
        centred, rho, sigma, eps = ctx.saved_tensors
        # dKL/dmu = (mu - m) / s^2;  dKL/dsigma = sigma / s^2 - 1 / sigma
        kl_scale = grad_kl * ctx.inv_var_p  # 0-dim
        grad_mu = centred * kl_scale
        grad_sigma = sigma.reciprocal().mul_(-grad_kl).addcmul_(sigma, kl_scale)  # in place: fewer passes
        if ctx.kind == SAMPLE:
            grad_mu += grad_out  # dw/dmu = 1
            grad_sigma.addcmul_(grad_out, eps)  # dw/dsigma = eps
        elif ctx.kind == PERTURBATION:
            grad_sigma.addcmul_(grad_out, eps)
        else:
            grad_sigma.addcmul_(grad_out, sigma, value=2.0)  # d sigma^2 / d sigma = 2 sigma
        grad_rho = grad_sigma.mul_(torch.sigmoid(rho))  # d softplus(rho) / d rho = sigmoid(rho)
        return grad_mu, grad_rho, None, None, None, None


def standard_noise(shape: torch.Size | tuple, like: Tensor) -> Tensor:
    """eps ~ N(0, I) of ``shape``: the core's native counter-based stream where it can serve ``like``
    (float32 CPU), else the core's ``Normal.sample_noise``."""
    if native.usable_for(like):
        return native.standard_normal(tuple(shape))
    return _Eager.noise(shape, like)


def _gaussian_posterior(mu: Tensor, rho: Tensor, kind: int, loc_p: float, scale_p: float) -> tuple[Tensor, Tensor]:
    """(term, closed-form KL) for one parameter tensor: the core's native kernel when it can serve the tensors
    (noise drawn, transformed and reduced in one pass), else the eager fused node."""
    if native.usable_for(mu, rho):
        return native.gaussian_posterior(mu, rho, _NATIVE_KINDS[kind], loc_p, scale_p)
    eps = None if kind == VARIANCE else standard_noise(mu.shape, mu)
    return _FusedGaussianPosterior.apply(mu, rho, eps, kind, loc_p, scale_p)


class _Fused:
    """One node per tensor with its closed-form KL (needs a Gaussian prior, no mask, grad enabled)."""

    fused = True

    def terms(self, layer, kind: int) -> PosteriorTerms:
        loc_p, scale_p = layer.prior.gaussian()
        w, kl = _gaussian_posterior(layer.weight_mu, layer.weight_rho, kind, loc_p, scale_p)
        b = None
        if layer.bias_rho is not None:
            b, kl_b = _gaussian_posterior(layer.bias_mu, layer.bias_rho, kind, loc_p, scale_p)
            kl = kl + kl_b
        return PosteriorTerms(w, b, KLCache(kl=kl))

    noise = staticmethod(standard_noise)


EAGER, FUSED = _Eager(), _Fused()


# -- a whole BayesLinear in reparam mode as one node ---------------------------------------------------------------
def _cpu_autocast() -> bool:
    """CPU autocast is on (torch >= 2.4 takes the device type; older releases have a CPU-specific call)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


class _BayesLinearSample(torch.autograd.Function):
    """``BayesLinear`` in reparam mode with a Gaussian prior as one node: w = mu + sigma eps and b likewise, y =
    x w^T + b, and the closed-form KL. The core's native kernel draws the noise, transforms it and sums the KL terms
    in one pass, with a key for the weight and then one for the bias, as the per-tensor path draws them: both
    paths give the same samples, outputs and gradients. The weight sample and its noise never leave the node, so
    their buffers (and the backward pass's dL/dw) come from the core's workspace and are reused every step.
    Backward: dL/dx = g w, dL/dw = g^T x, then the kernel maps dL/dw, dL/db and dL/dKL to (mu, rho)."""

    @staticmethod
    def forward(ctx, x: Tensor, w_mu: Tensor, w_rho: Tensor, b_mu: Tensor | None, b_rho: Tensor | None,
                loc_p: float, scale_p: float):
        ws = native.WORKSPACE
        w, eps_w = ws.take(w_mu.shape), ws.take(w_mu.shape)  # w = mu + sigma eps: (out, in)
        if b_rho is None:  # point-estimate bias (b = b_mu) or none
            b, eps_b, second, (key_w,), key_b = b_mu, None, None, native.new_keys(1), None
        else:
            b, eps_b = torch.empty_like(b_mu), torch.empty_like(b_mu)
            second, (key_w, key_b) = (b_mu, b_rho, b, eps_b), native.new_keys(2)
        sums = native.posterior_forward(w_mu, w_rho, w, eps_w, SAMPLE, loc_p, key_w, second, key_b)
        kl = native.gaussian_kl(w_mu.numel() + (0 if b_rho is None else b_mu.numel()), sums, scale_p)
        y = F.linear(x, w, b)  # (*, in) -> (*, out)
        ctx.save_for_backward(x, w_mu, w_rho, b_mu, b_rho)
        ctx.w, ctx.eps_w, ctx.eps_b, ctx.loc_p, ctx.scale_p = w, eps_w, eps_b, loc_p, scale_p
        ws.recycle_with(ctx, w, eps_w)
        return y, torch.scalar_tensor(kl, dtype=w_mu.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y: Tensor | None, grad_kl: Tensor | None):
        x, w_mu, w_rho, b_mu, b_rho = ctx.saved_tensors
        g_kl = 0.0 if grad_kl is None else float(grad_kl)
        grad_x = grad_w = grad_b = None
        if grad_y is not None:
            g2 = grad_y.reshape(-1, w_mu.shape[0])  # (B, out)
            if ctx.needs_input_grad[0]:
                grad_x = grad_y @ ctx.w  # (*, out) (out, in) -> (*, in)
            grad_w = torch.mm(g2.t(), x.reshape(-1, w_mu.shape[1]), out=native.WORKSPACE.take(w_mu.shape))
            grad_b = g2.sum(0) if b_mu is not None else None
        grad_w_mu, grad_w_rho = torch.empty_like(w_mu), torch.empty_like(w_rho)
        grad_b_mu, grad_b_rho, second = grad_b, None, None
        if b_rho is not None:
            grad_b_mu, grad_b_rho = torch.empty_like(b_mu), torch.empty_like(b_rho)
            second = (grad_b, b_mu, b_rho, ctx.eps_b, grad_b_mu, grad_b_rho)
        native.posterior_backward(grad_w, w_mu, w_rho, ctx.eps_w, grad_w_mu, grad_w_rho, SAMPLE, ctx.loc_p, g_kl,
                                  ctx.scale_p, second=second)
        if grad_w is not None:
            native.WORKSPACE.give_back(grad_w)
        return grad_x, grad_w_mu, grad_w_rho, grad_b_mu, grad_b_rho, None, None


def linear_sample_node(x: Tensor, w_mu: Tensor, w_rho: Tensor, b_mu: Tensor | None, b_rho: Tensor | None,
                       loc_p: float, scale_p: float) -> tuple[Tensor, Tensor] | None:
    """(y, KL) of a reparam-mode ``BayesLinear`` from one node, or None where the native kernel cannot serve it
    (not float32 CPU, CPU autocast on, kernel unavailable)."""
    if x.dtype != torch.float32 or not x.is_cpu or _cpu_autocast():
        return None
    if not native.usable_for(w_mu, w_rho, *(t for t in (b_mu, b_rho) if t is not None)):
        return None
    return _BayesLinearSample.apply(x, w_mu, w_rho, b_mu, b_rho, float(loc_p), float(scale_p))
