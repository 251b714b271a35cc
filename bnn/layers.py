"""Bayes-by-Backprop layers: ``BayesLinear`` and ``BayesConv2d`` (Blundell et al. 2015).

Each weight has a factorised Gaussian posterior q(w) = N(mu, sigma^2), sigma = softplus(rho).
All noise comes from the core: its native posterior kernel (``reparam_apps.native``: noise, transform and
closed-form KL sums in one pass) for float32 CPU tensors, ``reparam_apps.Normal`` (``sample_noise`` /
``transform`` / ``rsample``) otherwise; KL terms use ``reparam_apps.kl_normal_normal``. In training, a
``BayesLinear`` in reparam mode with a Gaussian prior is one autograd node (sample, linear map and KL);
it draws the same noise as the per-tensor path, so samples, outputs and gradients are the same bit for bit
(the KL value to float32 rounding).

Sampling modes (``layer.sampling``, or :func:`set_sampling` for a whole model):

* ``"reparam"``  one weight sample w = mu + sigma * eps per forward pass, shared by the minibatch
  (the paper).
* ``"local"``    local reparameterization (Kingma et al. 2015): the pre-activations are Gaussian,
  b = N(x mu, x^2 sigma^2), and are sampled directly; no weight sample (one independent weight
  draw per example, in distribution).
* ``"flipout"``  Flipout (Wen et al. 2018): one weight perturbation dW = sigma * eps per minibatch,
  decorrelated across examples by random signs: b_n = x_n mu + ((x_n o s_n) dW) o r_n.

Noise modes (``layer.noise``, or :func:`set_noise` / the context managers):
``"sample"`` (default), ``"mean"`` (posterior means, deterministic), ``"frozen"`` (reuse one stored
weight sample until :func:`resample_frozen` is called).

KL (``kl_method``): ``"closed"`` for a Gaussian prior (exact, no sampling), ``"mc"`` = log q(w) - log p(w)
on the weight sample the forward pass used (Blundell's estimator; a separate weight draw under local
reparameterization, which never forms a weight), ``"auto"`` = closed when possible.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reparam_apps import Normal, kl_normal_normal, native

from .priors import GaussianPrior, Prior

__all__ = [
    "BayesLayer", "BayesLinear", "BayesConv2d", "SAMPLING_MODES", "NOISE_MODES", "KL_METHODS",
    "DEFAULT_INIT_RHO", "inverse_softplus", "bayes_layers", "kl_divergence", "set_sampling", "set_noise",
    "mean_weights", "frozen_noise", "resample_frozen", "bayesianize",
]

SAMPLING_MODES = ("reparam", "local", "flipout")
NOISE_MODES = ("sample", "mean", "frozen")
KL_METHODS = ("auto", "closed", "mc")
DEFAULT_INIT_RHO = -5.0  # sigma = softplus(-5) = 6.7e-3 at the start: the network starts near its mean


def inverse_softplus(sigma: Tensor | float) -> Tensor:
    """rho with softplus(rho) = sigma, i.e. rho = log(expm1(sigma)), stable for small and large sigma."""
    sigma = torch.as_tensor(sigma, dtype=torch.get_default_dtype()) if not isinstance(sigma, Tensor) else sigma
    # log(expm1(s)) = s + log(1 - exp(-s)) = s + log(-expm1(-s)): no overflow for large s
    return sigma + torch.log(-torch.expm1(-sigma))


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: choose one of {', '.join(choices)}")
    return value


def _check_init_rho(init_rho: float, dtype: torch.dtype) -> float:
    init_rho = float(init_rho)
    sigma = F.softplus(torch.tensor(init_rho, dtype=dtype))
    if not math.isfinite(init_rho) or not bool(sigma > 0):
        raise ValueError(
            f"init_rho={init_rho} gives sigma = softplus(rho) = {sigma.item():g} in {dtype}: "
            "sigma must be positive, use init_rho > -80 (default -5 -> sigma 6.7e-3)")
    return init_rho


_WEIGHT, _DELTA, _VARIANCE = 0, 1, 2  # what the fused op returns: mu + sigma eps, sigma eps, sigma^2


class _FusedGaussianPosterior(torch.autograd.Function):
    """One node for the hot path of a Gaussian-prior layer: sigma = softplus(rho) computed once, the layer's
    input built from it (weight mu + sigma eps, perturbation sigma eps, or variance sigma^2), and the closed-form
    KL(N(mu, sigma^2) || N(m, s^2)) summed, with an analytic backward (a handful of elementwise passes instead
    of autograd's ~20). The noise eps comes from the core (``Normal.sample_noise``); tests check the value and
    both gradients against the unfused ``Normal.transform`` + ``kl_normal_normal`` path."""

    @staticmethod
    def forward(ctx, mu: Tensor, rho: Tensor, eps: Tensor | None, kind: int, loc_p: float, scale_p: float):
        sigma = F.softplus(rho)  # sigma = log(1 + exp(rho))
        if kind == _WEIGHT:
            out = torch.addcmul(mu, sigma, eps)  # w = mu + sigma * eps
        elif kind == _DELTA:
            out = sigma * eps  # dW = sigma * eps (Flipout)
        else:
            out = sigma.square()  # sigma^2 (local reparameterization)
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
        if ctx.kind == _WEIGHT:
            grad_mu += grad_out  # dw/dmu = 1
            grad_sigma.addcmul_(grad_out, eps)  # dw/dsigma = eps
        elif ctx.kind == _DELTA:
            grad_sigma.addcmul_(grad_out, eps)
        else:
            grad_sigma.addcmul_(grad_out, sigma, value=2.0)  # d sigma^2 / d sigma = 2 sigma
        grad_rho = grad_sigma.mul_(torch.sigmoid(rho))  # d softplus(rho) / d rho = sigmoid(rho)
        return grad_mu, grad_rho, None, None, None, None


def _standard_noise(shape: torch.Size | tuple, like: Tensor) -> Tensor:
    """eps ~ N(0, I) of ``shape``: the core's native counter-based stream where it can serve ``like``
    (float32 CPU), else the core's ``Normal.sample_noise`` (the fused op applies the transform itself)."""
    if native.usable_for(like):
        return native.standard_normal(tuple(shape))
    return Normal(like.new_zeros(()), like.new_ones(()), validate_args=False).sample_noise(tuple(shape))


_NATIVE_KINDS = {_WEIGHT: "sample", _DELTA: "perturbation", _VARIANCE: "variance"}


def _cpu_autocast() -> bool:
    """CPU autocast is on (torch >= 2.4 takes the device type; older releases have a CPU-specific call)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:
        return torch.is_autocast_cpu_enabled()


def _gaussian_posterior(mu: Tensor, rho: Tensor, kind: int, loc_p: float, scale_p: float) -> tuple[Tensor, Tensor]:
    """(layer input, closed-form KL) for one parameter tensor: the core's native kernel when it can serve the
    tensors (noise drawn, transformed and reduced in one pass), else the eager fused node."""
    if native.usable_for(mu, rho):
        return native.gaussian_posterior(mu, rho, _NATIVE_KINDS[kind], loc_p, scale_p)
    eps = None if kind == _VARIANCE else _standard_noise(mu.shape, mu)
    return _FusedGaussianPosterior.apply(mu, rho, eps, kind, loc_p, scale_p)


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
        sums = native.posterior_forward(w_mu, w_rho, w, eps_w, _WEIGHT, loc_p, key_w, second, key_b)
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
        native.posterior_backward(grad_w, w_mu, w_rho, ctx.eps_w, grad_w_mu, grad_w_rho, _WEIGHT, ctx.loc_p, g_kl,
                                  ctx.scale_p, second=second)
        if grad_w is not None:
            native.WORKSPACE.give_back(grad_w)
        return grad_x, grad_w_mu, grad_w_rho, grad_b_mu, grad_b_rho, None, None


class BayesLayer(nn.Module):
    """Shared machinery of the Bayesian layers (parameters, modes, KL). Subclasses define
    ``_affine(x, weight, bias)`` (the deterministic layer) and ``_signs_shape``."""

    def __init__(self, weight_shape: tuple[int, ...], bias_features: int, bias: bool = True,
                 bayesian_bias: bool = True, prior: Prior | None = None, init_rho: float = DEFAULT_INIT_RHO,
                 sampling: str = "reparam", kl_method: str = "auto", device=None, dtype=None):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.prior = GaussianPrior(1.0) if prior is None else prior
        if not isinstance(self.prior, Prior):
            raise TypeError(f"prior must be a bnn.Prior, got {type(self.prior).__name__}")
        self.init_rho = _check_init_rho(init_rho, dtype or torch.get_default_dtype())
        self.sampling = _check_choice("sampling mode", sampling, SAMPLING_MODES)
        self.kl_method = _check_choice("kl_method", kl_method, KL_METHODS)
        if self.kl_method == "closed" and self.prior.gaussian() is None:
            raise ValueError(f"kl_method='closed' needs a Gaussian prior, got {self.prior!r}: use 'mc' or 'auto'")
        self.noise = "sample"
        self.weight_mu = nn.Parameter(torch.empty(weight_shape, **factory))
        self.weight_rho = nn.Parameter(torch.empty(weight_shape, **factory))
        self.bayesian_bias = bool(bias and bayesian_bias)
        self.bias_mu = nn.Parameter(torch.empty(bias_features, **factory)) if bias else None
        self.bias_rho = nn.Parameter(torch.empty(bias_features, **factory)) if self.bayesian_bias else None
        # frozen noise (eps of the weight and bias), pruning mask: buffers so .to(device) moves them
        self.register_buffer("frozen_weight_eps", None, persistent=False)
        self.register_buffer("frozen_bias_eps", None, persistent=False)
        self.register_buffer("weight_mask", None)
        self._kl_cache: tuple | None = None  # what the last forward pass left for kl_divergence()
        self.reset_parameters()

    # -- parameters ------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        """Means like torch.nn's default (Kaiming-uniform, a = sqrt(5)); rho = init_rho everywhere."""
        nn.init.kaiming_uniform_(self.weight_mu, a=math.sqrt(5))
        nn.init.constant_(self.weight_rho, self.init_rho)
        if self.bias_mu is not None:
            fan_in = self.weight_mu[0].numel()
            bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0
            nn.init.uniform_(self.bias_mu, -bound, bound)
        if self.bias_rho is not None:
            nn.init.constant_(self.bias_rho, self.init_rho)

    @property
    def kl_is_closed_form(self) -> bool:
        return self.kl_method != "mc" and self.prior.gaussian() is not None

    def weight_sigma(self) -> Tensor:
        return F.softplus(self.weight_rho)  # sigma = log(1 + exp(rho)) (Blundell eq. 1 setup)

    def bias_sigma(self) -> Tensor | None:
        return None if self.bias_rho is None else F.softplus(self.bias_rho)

    def signal_to_noise(self) -> Tensor:
        """|mu| / sigma per weight (Blundell et al. 2015, section 5.1 pruning)."""
        return self.weight_mu.abs() / self.weight_sigma()

    # -- modes -----------------------------------------------------------------------------
    def resample_frozen(self) -> None:
        """Draw the weight noise that ``noise='frozen'`` reuses."""
        with torch.no_grad():
            self.frozen_weight_eps = Normal(self.weight_mu, self.weight_sigma(), validate_args=False).sample_noise()
            self.frozen_bias_eps = (None if self.bias_rho is None else
                                    Normal(self.bias_mu, self.bias_sigma(), validate_args=False).sample_noise())

    def set_noise(self, noise: str) -> None:
        self.noise = _check_choice("noise mode", noise, NOISE_MODES)
        if noise == "frozen" and self.frozen_weight_eps is None:
            self.resample_frozen()

    # -- forward ---------------------------------------------------------------------------
    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _signs_shapes(self, x: Tensor, out_features: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        raise NotImplementedError

    def _cache_kl(self, value: tuple | None) -> None:
        object.__setattr__(self, "_kl_cache", value)  # skips nn.Module's parameter/buffer checks: a hot path

    def _masked(self, w: Tensor) -> Tensor:
        return w if self.weight_mask is None else w * self.weight_mask

    def forward(self, x: Tensor) -> Tensor:
        self._cache_kl(None)
        b_mu = self.bias_mu
        if self.noise == "mean":
            return self._affine(x, self._masked(self.weight_mu), b_mu)
        if (self.noise == "sample" and self.kl_is_closed_form and self.weight_mask is None
                and torch.is_grad_enabled() and self.weight_mu.requires_grad):
            return self._fused_forward(x)
        w_sigma, b_sigma = self.weight_sigma(), self.bias_sigma()  # softplus once per forward
        q_w = Normal(self.weight_mu, w_sigma, validate_args=False)
        q_b = None if b_sigma is None else Normal(b_mu, b_sigma, validate_args=False)
        mc = not self.kl_is_closed_form

        if self.noise == "frozen":
            w = q_w.transform(self.frozen_weight_eps)  # w = mu + sigma * eps_frozen
            b = b_mu if q_b is None else q_b.transform(self.frozen_bias_eps)
            self._cache_kl((w_sigma, b_sigma, w, b if q_b is not None else None))
            return self._affine(x, self._masked(w), b)

        if self.sampling == "reparam":
            w = q_w.rsample()  # w = mu + sigma * eps, eps ~ N(0, I): one sample per minibatch
            b = b_mu if q_b is None else q_b.rsample()
            self._cache_kl((w_sigma, b_sigma, w if mc else None, b if (mc and q_b is not None) else None))
            return self._affine(x, self._masked(w), b)

        mu_w = self._masked(self.weight_mu)
        if self.sampling == "local":
            # Kingma et al. 2015, eq. 6: b ~ N(gamma, delta), gamma = x mu, delta = x^2 sigma^2
            gamma = self._affine(x, mu_w, b_mu)  # (B, out, ...)
            delta = self._affine(x.square(), self._masked(w_sigma.square()),
                                 None if b_sigma is None else b_sigma.square())
            # Variance can be exactly 0 (an all-zero input row, no Bayesian bias): clamp so sqrt has a gradient.
            std = delta.clamp_min(torch.finfo(delta.dtype).tiny).sqrt()
            self._cache_kl((w_sigma, b_sigma, None, None))  # MC KL needs its own weight draw: kl_divergence()
            return Normal(gamma, std, validate_args=False).rsample()

        # Flipout (Wen et al. 2018, eq. 4): y_n = x_n mu + ((x_n o s_n) dW) o r_n, dW = sigma o eps
        eps_w = q_w.sample_noise()
        delta_w = w_sigma * eps_w
        eps_b = None if q_b is None else q_b.sample_noise()
        delta_b = None if q_b is None else b_sigma * eps_b
        shape_in, shape_out = self._signs_shapes(x, self.weight_mu.shape[0])
        n_in = math.prod(shape_in[1:])
        # Rademacher signs s_n, r_n = sign of standard-normal noise from the core (one draw for both)
        unit = Normal(x.new_zeros(()), x.new_ones(()), validate_args=False)
        signs = unit.sample_noise((x.shape[0], n_in + math.prod(shape_out[1:]))).sign()
        sign_in, sign_out = signs[:, :n_in].reshape(shape_in), signs[:, n_in:].reshape(shape_out)
        out = self._affine(x, mu_w, b_mu) + self._affine(x * sign_in, self._masked(delta_w), delta_b) * sign_out
        if mc:
            w = self.weight_mu + delta_w  # the weight sample this minibatch used, for log q(w) - log p(w)
            b = None if delta_b is None else b_mu + delta_b
            self._cache_kl((w_sigma, b_sigma, w, b))
        else:
            self._cache_kl((w_sigma, b_sigma, None, None))
        return out

    def _fused_sample_forward(self, x: Tensor, loc_p: float, scale_p: float) -> tuple[Tensor, Tensor] | None:
        """(output, KL) from one node for the whole layer in reparam mode, where a subclass has one; else None."""
        return None

    def _fused_forward(self, x: Tensor) -> Tensor:
        """Training hot path (Gaussian prior, closed-form KL): one fused node per parameter tensor gives the
        layer's input and its KL together; kl_divergence() returns that KL."""
        loc_p, scale_p = self.prior.gaussian()
        b_mu = self.bias_mu
        kind = {"reparam": _WEIGHT, "flipout": _DELTA, "local": _VARIANCE}[self.sampling]
        if kind == _WEIGHT:
            fused = self._fused_sample_forward(x, loc_p, scale_p)
            if fused is not None:
                self._cache_kl(("fused", fused[1]))
                return fused[0]
        w_term, kl = _gaussian_posterior(self.weight_mu, self.weight_rho, kind, loc_p, scale_p)
        b_term = b_mu
        if self.bias_rho is not None:
            b_term, kl_b = _gaussian_posterior(b_mu, self.bias_rho, kind, loc_p, scale_p)
            kl = kl + kl_b
        self._cache_kl(("fused", kl))
        if kind == _WEIGHT:
            return self._affine(x, w_term, b_term)  # one weight sample per minibatch
        if kind == _VARIANCE:
            # Kingma et al. 2015, eq. 6: b ~ N(x mu, x^2 sigma^2)
            gamma = self._affine(x, self.weight_mu, b_mu)
            delta = self._affine(x.square(), w_term, None if self.bias_rho is None else b_term)
            std = delta.clamp_min(torch.finfo(delta.dtype).tiny).sqrt()
            # b = gamma + std * eps: the core's transform on its (native, where it can) standard-normal noise
            return Normal(gamma, std, validate_args=False).transform(_standard_noise(gamma.shape, gamma))
        # Flipout (Wen et al. 2018, eq. 4), signs from the core's standard-normal noise
        shape_in, shape_out = self._signs_shapes(x, self.weight_mu.shape[0])
        n_in = math.prod(shape_in[1:])
        signs = _standard_noise((x.shape[0], n_in + math.prod(shape_out[1:])), x).sign()
        sign_in, sign_out = signs[:, :n_in].reshape(shape_in), signs[:, n_in:].reshape(shape_out)
        delta_b = None if self.bias_rho is None else b_term
        return self._affine(x, self.weight_mu, b_mu) + self._affine(x * sign_in, w_term, delta_b) * sign_out

    # -- KL --------------------------------------------------------------------------------
    def kl_divergence(self) -> Tensor:
        """KL(q || p) of this layer (a scalar): closed form for a Gaussian prior, else the Monte Carlo
        estimate log q(w) - log p(w) on the weight sample the last forward pass used (a fresh draw when
        that pass formed no weight sample: local reparameterization or the mean network)."""
        cache = self._kl_cache
        self._cache_kl(None)  # each forward's sample feeds at most one KL
        if cache is not None and cache[0] == "fused":
            if cache[1].requires_grad or not torch.is_grad_enabled():
                return cache[1]  # computed with the forward pass by the fused op
            cache = None
        usable = cache is not None and (cache[0].requires_grad or not torch.is_grad_enabled())
        w_sigma, b_sigma = (cache[0], cache[1]) if usable else (self.weight_sigma(), self.bias_sigma())
        mask = self.weight_mask
        if self.kl_is_closed_form:
            loc_p, scale_p = self.prior.gaussian()
            kl_w = kl_normal_normal(self.weight_mu, w_sigma, loc_p, scale_p)  # elementwise closed form
            kl = (kl_w if mask is None else kl_w * mask).sum()
            if b_sigma is not None:
                kl = kl + kl_normal_normal(self.bias_mu, b_sigma, loc_p, scale_p).sum()
            return kl
        q_w = Normal(self.weight_mu, w_sigma, validate_args=False)
        w = cache[2] if usable and cache[2] is not None else q_w.rsample()
        # Blundell eq. 2 with one sample: KL ~ log q(w | theta) - log p(w)
        kl_w = q_w.log_prob(w) - self.prior.log_prob(w)
        kl = (kl_w if mask is None else kl_w * mask).sum()
        if b_sigma is not None:
            q_b = Normal(self.bias_mu, b_sigma, validate_args=False)
            b = cache[3] if usable and cache[3] is not None else q_b.rsample()
            kl = kl + (q_b.log_prob(b) - self.prior.log_prob(b)).sum()
        return kl

    def extra_repr(self) -> str:
        return (f"sampling={self.sampling}, noise={self.noise}, prior={self.prior!r}, "
                f"init_rho={self.init_rho:g}, bayesian_bias={self.bayesian_bias}")


class BayesLinear(BayesLayer):
    """A Bayesian ``nn.Linear``: y = x W^T + b with W ~ q(W) = N(mu, softplus(rho)^2).

    Args: in_features, out_features, bias (as nn.Linear); bayesian_bias (False keeps a point-estimate
    bias); prior (default GaussianPrior(1.0)); init_rho (default -5, sigma = 6.7e-3); sampling
    ('reparam' | 'local' | 'flipout'); kl_method ('auto' | 'closed' | 'mc').
    Input (*, in_features) -> output (*, out_features); local/flipout need a leading batch dim.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.in_features, self.out_features = in_features, out_features
        super().__init__((out_features, in_features), out_features, bias=bias, **kwargs)

    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def _fused_sample_forward(self, x: Tensor, loc_p: float, scale_p: float) -> tuple[Tensor, Tensor] | None:
        w_mu, w_rho, b_mu, b_rho = self.weight_mu, self.weight_rho, self.bias_mu, self.bias_rho
        if x.dtype != torch.float32 or not x.is_cpu or _cpu_autocast():
            return None
        if not native.usable_for(w_mu, w_rho, *(t for t in (b_mu, b_rho) if t is not None)):
            return None
        return _BayesLinearSample.apply(x, w_mu, w_rho, b_mu, b_rho, float(loc_p), float(scale_p))

    def _signs_shapes(self, x: Tensor, out_features: int):
        if x.dim() != 2:
            raise ValueError(f"flipout BayesLinear expects input (batch, {self.in_features}), got {tuple(x.shape)}")
        return (x.shape[0], self.in_features), (x.shape[0], out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias_mu is not None}, " + super().extra_repr())


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BayesConv2d(BayesLayer):
    """A Bayesian ``nn.Conv2d`` (stride, padding, dilation, groups as in torch; zero padding).

    Input (B, C_in, H, W) -> output (B, C_out, H', W'). Flipout flips signs per example and channel,
    so within one example the perturbed kernel is shared by every position, as a true weight sample is.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                 stride: int | tuple[int, int] = 1, padding: int | tuple[int, int] | str = 0,
                 dilation: int | tuple[int, int] = 1, groups: int = 1, bias: bool = True, **kwargs):
        for name, value in (("in_channels", in_channels), ("out_channels", out_channels), ("groups", groups)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must be divisible "
                             f"by groups ({groups})")
        self.kernel_size = _pair(kernel_size)
        if min(self.kernel_size) <= 0:
            raise ValueError(f"kernel_size must be positive, got {kernel_size!r}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride, self.dilation, self.groups = _pair(stride), _pair(dilation), groups
        self.padding = padding if isinstance(padding, str) else _pair(padding)
        super().__init__((out_channels, in_channels // groups, *self.kernel_size), out_channels, bias=bias, **kwargs)

    def _affine(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _signs_shapes(self, x: Tensor, out_features: int):
        if x.dim() != 4:
            raise ValueError(f"flipout BayesConv2d expects input (B, C, H, W), got {tuple(x.shape)}")
        return (x.shape[0], self.in_channels, 1, 1), (x.shape[0], out_features, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias_mu is not None}, " + super().extra_repr())


# -- whole-model helpers -------------------------------------------------------------------
def bayes_layers(model: nn.Module) -> list[BayesLayer]:
    return [m for m in model.modules() if isinstance(m, BayesLayer)]


def kl_divergence(model: nn.Module) -> Tensor:
    """Sum of every Bayesian layer's KL(q || p) (call after the forward pass whose sample it scores)."""
    layers = bayes_layers(model)
    if not layers:
        raise ValueError("model has no Bayesian layers (BayesLinear / BayesConv2d): nothing to take a KL of")
    kl = layers[0].kl_divergence()
    for layer in layers[1:]:
        kl = kl + layer.kl_divergence()
    return kl


def set_sampling(model: nn.Module, sampling: str) -> nn.Module:
    """Set the sampling mode ('reparam' | 'local' | 'flipout') of every Bayesian layer."""
    _check_choice("sampling mode", sampling, SAMPLING_MODES)
    for layer in bayes_layers(model):
        layer.sampling = sampling
    return model


def set_noise(model: nn.Module, noise: str) -> nn.Module:
    """Set the noise mode ('sample' | 'mean' | 'frozen') of every Bayesian layer."""
    _check_choice("noise mode", noise, NOISE_MODES)
    for layer in bayes_layers(model):
        layer.set_noise(noise)
    return model


def resample_frozen(model: nn.Module) -> None:
    """Draw a new frozen weight sample in every Bayesian layer."""
    for layer in bayes_layers(model):
        layer.resample_frozen()


@contextlib.contextmanager
def _noise_context(model: nn.Module, noise: str) -> Iterator[nn.Module]:
    layers = bayes_layers(model)
    before = [layer.noise for layer in layers]
    try:
        for layer in layers:
            layer.set_noise(noise)
        yield model
    finally:
        for layer, old in zip(layers, before, strict=True):
            layer.noise = old


def mean_weights(model: nn.Module):
    """Context manager: every Bayesian layer uses its posterior means (the deterministic mean network)."""
    return _noise_context(model, "mean")


def frozen_noise(model: nn.Module, resample: bool = True):
    """Context manager: every Bayesian layer reuses one weight sample (a fresh one if ``resample``)."""
    if resample:
        resample_frozen(model)
    return _noise_context(model, "frozen")


def bayesianize(model: nn.Module, prior: Prior | None = None, init_rho: float = DEFAULT_INIT_RHO,
                sampling: str = "reparam", kl_method: str = "auto", bayesian_bias: bool = True,
                moped_delta: float | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (in place, recursively) by its Bayesian twin.

    ``moped_delta=None``: fresh means (nn's default init) and rho = init_rho.
    ``moped_delta=d`` (MOPED, Krishnan et al. 2020): means = the trained weights, sigma = d * |w|
    (floored at the smallest positive float so rho stays finite). Returns ``model`` (or, for a bare
    ``nn.Linear`` / ``nn.Conv2d``, its Bayesian replacement).
    """
    if moped_delta is not None and not (float(moped_delta) > 0 and math.isfinite(moped_delta)):
        raise ValueError(f"moped_delta must be a positive number (sigma = delta * |w|), got {moped_delta}")
    kwargs = {"prior": prior, "init_rho": init_rho, "sampling": sampling, "kl_method": kl_method,
              "bayesian_bias": bayesian_bias}
    if isinstance(model, (nn.Linear, nn.Conv2d)):  # a bare layer: convert it through a one-slot container
        holder = bayesianize(nn.Sequential(model), moped_delta=moped_delta, **kwargs)
        return holder[0]
    for name, child in list(model.named_children()):
        if isinstance(child, BayesLayer):
            continue
        factory = {}
        if isinstance(child, (nn.Linear, nn.Conv2d)):
            factory = {"device": child.weight.device, "dtype": child.weight.dtype}
        if isinstance(child, nn.Linear):
            new = BayesLinear(child.in_features, child.out_features, bias=child.bias is not None, **kwargs, **factory)
        elif isinstance(child, nn.Conv2d):
            if child.padding_mode != "zeros":
                raise ValueError(f"{name}: padding_mode={child.padding_mode!r} is not supported (only 'zeros')")
            new = BayesConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride,
                              child.padding, child.dilation, child.groups, bias=child.bias is not None,
                              **kwargs, **factory)
        else:
            bayesianize(child, moped_delta=moped_delta, **kwargs)
            continue
        if moped_delta is not None:
            with torch.no_grad():
                new.weight_mu.copy_(child.weight)
                new.weight_rho.copy_(_moped_rho(child.weight, moped_delta))
                if child.bias is not None:
                    new.bias_mu.copy_(child.bias)
                    if new.bias_rho is not None:
                        new.bias_rho.copy_(_moped_rho(child.bias, moped_delta))
        new.train(child.training)
        setattr(model, name, new)
    return model


def _moped_rho(w: Tensor, delta: float) -> Tensor:
    sigma = (delta * w.abs()).clamp_min(torch.finfo(w.dtype).tiny)  # sigma = delta |w| > 0
    return inverse_softplus(sigma)
