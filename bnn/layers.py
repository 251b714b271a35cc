"""Bayes-by-Backprop layers: ``BayesLinear`` and ``BayesConv2d`` (Blundell et al. 2015).

Each weight has a factorised Gaussian posterior q(w) = N(mu, sigma^2), sigma = softplus(rho).
All noise comes from the core: its native posterior kernel (``reparam_apps.native``: noise, transform and
closed-form KL sums in one pass) for float32 CPU tensors, ``reparam_apps.Normal`` (``sample_noise`` /
``transform`` / ``rsample``) otherwise; KL terms use ``reparam_apps.kl_normal_normal``. In training, a
``BayesLinear`` in reparam mode with a Gaussian prior is one autograd node (sample, linear map and KL);
it draws the same noise as the per-tensor path, so samples, outputs and gradients are the same bit for bit
(the KL value to float32 rounding). Each sampling mode below is written once, over an execution backend
(``bnn._backends``: EAGER torch ops, or FUSED one-node-per-tensor with the KL, native where it can).

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

from reparam_apps import Normal, kl_normal_normal

from ._backends import EAGER, FUSED, PERTURBATION, SAMPLE, VARIANCE, KLCache, PosteriorTerms, linear_sample_node
from .priors import GaussianPrior, Prior

__all__ = [
    "BayesLayer", "BayesLinear", "BayesConv2d", "SAMPLING_MODES", "NOISE_MODES", "KL_METHODS",
    "DEFAULT_INIT_RHO", "inverse_softplus", "bayes_layers", "model_kl", "set_sampling", "set_noise",
    "mean_weights", "frozen_noise", "resample_frozen",
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


class BayesLayer(nn.Module):
    """Shared machinery of the Bayesian layers (parameters, modes, KL). Subclasses define
    ``_affine(x, weight, bias)`` (the deterministic layer) and ``_signs_shapes`` (Flipout's sign shapes)."""

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
        self._kl_cache: KLCache | None = None  # what the last forward pass left for kl_divergence()
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

    def _fused_sample_forward(self, x: Tensor, loc_p: float, scale_p: float) -> tuple[Tensor, Tensor] | None:
        """(output, KL) from one node for the whole layer in reparam mode, where a subclass has one; else None."""
        return None

    def _cache_kl(self, value: KLCache | None) -> None:
        object.__setattr__(self, "_kl_cache", value)  # skips nn.Module's parameter/buffer checks: a hot path

    def _masked(self, w: Tensor) -> Tensor:
        return w if self.weight_mask is None else w * self.weight_mask

    def forward(self, x: Tensor) -> Tensor:
        self._cache_kl(None)
        if self.noise == "mean":
            return self._affine(x, self._masked(self.weight_mu), self.bias_mu)
        if self.noise == "frozen":  # the stored noise through the eager transform: a reparam pass
            return self._reparam(x, EAGER.terms(self, SAMPLE, frozen=True))
        # the fused backend computes the closed-form KL with the pass: training with a Gaussian prior
        fused = (self.kl_is_closed_form and self.weight_mask is None and torch.is_grad_enabled()
                 and self.weight_mu.requires_grad)
        backend = FUSED if fused else EAGER
        if self.sampling == "local":
            return self._local(x, backend)
        if self.sampling == "flipout":
            return self._flipout(x, backend)
        if fused:  # a whole BayesLinear as one node, where the kernel can serve it
            loc_p, scale_p = self.prior.gaussian()
            node = self._fused_sample_forward(x, loc_p, scale_p)
            if node is not None:
                self._cache_kl(KLCache(kl=node[1]))
                return node[0]
        return self._reparam(x, backend.terms(self, SAMPLE))

    def _reparam(self, x: Tensor, terms: PosteriorTerms) -> Tensor:
        """Blundell et al. 2015: y = x w^T + b with one weight sample w = mu + sigma eps per minibatch."""
        out = self._affine(x, self._masked(terms.weight), self.bias_mu if terms.bias is None else terms.bias)
        self._cache_kl(terms.cache)
        return out

    def _local(self, x: Tensor, backend) -> Tensor:
        """Kingma et al. 2015, eq. 6: y ~ N(gamma, delta), gamma = x mu + b_mu, delta = x^2 sigma^2 + sigma_b^2."""
        terms = backend.terms(self, VARIANCE)
        gamma = self._affine(x, self._masked(self.weight_mu), self.bias_mu)  # (B, out, ...)
        delta = self._affine(x.square(), self._masked(terms.weight), terms.bias)
        # Variance can be exactly 0 (an all-zero input row, no Bayesian bias): clamp so sqrt has a gradient.
        std = delta.clamp_min(torch.finfo(delta.dtype).tiny).sqrt()
        out = Normal(gamma, std, validate_args=False).transform(backend.noise(gamma.shape, gamma))
        self._cache_kl(terms.cache)  # no weight sample: an MC KL draws its own in kl_divergence()
        return out

    def _flipout(self, x: Tensor, backend) -> Tensor:
        """Wen et al. 2018, eq. 4: y_n = x_n mu + ((x_n o s_n) dW) o r_n, dW = sigma o eps shared by the minibatch,
        Rademacher signs s_n, r_n per example (the signs of standard-normal noise, one draw for both)."""
        terms = backend.terms(self, PERTURBATION)
        shape_in, shape_out = self._signs_shapes(x, self.weight_mu.shape[0])
        n_in = math.prod(shape_in[1:])
        signs = backend.noise((x.shape[0], n_in + math.prod(shape_out[1:])), x).sign()
        sign_in, sign_out = signs[:, :n_in].reshape(shape_in), signs[:, n_in:].reshape(shape_out)
        out = (self._affine(x, self._masked(self.weight_mu), self.bias_mu)
               + self._affine(x * sign_in, self._masked(terms.weight), terms.bias) * sign_out)
        self._cache_kl(terms.cache)
        return out

    # -- KL --------------------------------------------------------------------------------
    def kl_divergence(self) -> Tensor:
        """KL(q || p) of this layer (a scalar): closed form for a Gaussian prior, else the Monte Carlo
        estimate log q(w) - log p(w) on the weight sample the last forward pass used (a fresh draw when
        that pass formed no weight sample: local reparameterization or the mean network)."""
        cache = self._kl_cache
        self._cache_kl(None)  # each forward's sample feeds at most one KL
        if cache is not None and cache.kl is not None:
            if cache.kl.requires_grad or not torch.is_grad_enabled():
                return cache.kl  # computed with the forward pass by the fused backend
            cache = None
        usable = cache is not None and (cache.weight_sigma.requires_grad or not torch.is_grad_enabled())
        w_sigma, b_sigma = (cache.weight_sigma, cache.bias_sigma) if usable else (self.weight_sigma(),
                                                                                  self.bias_sigma())
        mask = self.weight_mask
        if self.kl_is_closed_form:
            loc_p, scale_p = self.prior.gaussian()
            kl_w = kl_normal_normal(self.weight_mu, w_sigma, loc_p, scale_p)  # elementwise closed form
            kl = (kl_w if mask is None else kl_w * mask).sum()
            if b_sigma is not None:
                kl = kl + kl_normal_normal(self.bias_mu, b_sigma, loc_p, scale_p).sum()
            return kl
        q_w = Normal(self.weight_mu, w_sigma, validate_args=False)
        w, b = self._weight_sample(cache) if usable else (None, None)
        w = q_w.rsample() if w is None else w
        # Blundell eq. 2 with one sample: KL ~ log q(w | theta) - log p(w)
        kl_w = q_w.log_prob(w) - self.prior.log_prob(w)
        kl = (kl_w if mask is None else kl_w * mask).sum()
        if b_sigma is not None:
            q_b = Normal(self.bias_mu, b_sigma, validate_args=False)
            b = q_b.rsample() if b is None else b
            kl = kl + (q_b.log_prob(b) - self.prior.log_prob(b)).sum()
        return kl

    def _weight_sample(self, cache: KLCache) -> tuple[Tensor | None, Tensor | None]:
        """The (weight, bias) sample a forward pass used, from its cache (None where it formed none)."""
        w, b = cache.weight_sample, cache.bias_sample
        if cache.perturbation:  # Flipout kept dW: the sample is mu + dW
            w = None if w is None else self.weight_mu + w
            b = None if b is None else self.bias_mu + b
        return w, b

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
        return linear_sample_node(x, self.weight_mu, self.weight_rho, self.bias_mu, self.bias_rho, loc_p, scale_p)

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


def model_kl(model: nn.Module) -> Tensor:
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
