"""``bayesianize``: turn a deterministic network into a Bayesian one in place (``nn.Linear`` -> ``BayesLinear``,
``nn.Conv2d`` -> ``BayesConv2d``), with fresh posteriors or MOPED ones (Krishnan et al. 2020)."""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from .layers import DEFAULT_INIT_RHO, BayesConv2d, BayesLayer, BayesLinear, inverse_softplus
from .priors import Prior

__all__ = ["bayesianize"]


def bayesianize(model: nn.Module, prior: Prior | None = None, init_rho: float = DEFAULT_INIT_RHO,
                sampling: str = "reparam", kl_method: str = "auto", bayesian_bias: bool = True,
                moped_delta: float | None = None) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` (in place, recursively) by its Bayesian twin.

    Args:
        model: the network (or a bare ``nn.Linear`` / ``nn.Conv2d``).
        prior, init_rho, sampling, kl_method, bayesian_bias: passed to every new layer.
        moped_delta: None for fresh means (nn's default init) and rho = init_rho; ``d`` for MOPED: means = the
            trained weights, sigma = d * |w| (floored at the smallest positive float so rho stays finite).

    Returns ``model`` (or, for a bare ``nn.Linear`` / ``nn.Conv2d``, its Bayesian replacement). Other modules with
    parameters of their own (``nn.BatchNorm2d``, ``nn.Embedding``, ``nn.Conv1d``, ...) stay deterministic, and a
    ``UserWarning`` names each of them (path and type): their weights get no posterior and no KL.
    """
    if moped_delta is not None and not (float(moped_delta) > 0 and math.isfinite(moped_delta)):
        raise ValueError(f"moped_delta must be a positive number (sigma = delta * |w|), got {moped_delta}")
    kwargs = {"prior": prior, "init_rho": init_rho, "sampling": sampling, "kl_method": kl_method,
              "bayesian_bias": bayesian_bias}
    if isinstance(model, (nn.Linear, nn.Conv2d)):  # a bare layer: convert it through a one-slot container
        return bayesianize(nn.Sequential(model), moped_delta=moped_delta, **kwargs)[0]
    left: list[str] = []
    _convert(model, "", kwargs, moped_delta, left)
    if left:
        warnings.warn(f"bayesianize left {len(left)} module(s) with parameters deterministic (only nn.Linear and "
                      f"nn.Conv2d have Bayesian twins): {', '.join(left)}", UserWarning, stacklevel=2)
    return model


def _convert(module: nn.Module, path: str, kwargs: dict, moped_delta: float | None, left: list[str]) -> None:
    """Convert ``module``'s children in place; append '<path> (<type>)' of each module left deterministic."""
    if not isinstance(module, BayesLayer) and next(module.parameters(recurse=False), None) is not None:
        left.append(f"{path or '<root>'} ({type(module).__name__})")
    for name, child in list(module.named_children()):
        child_path = f"{path}.{name}" if path else name
        if isinstance(child, BayesLayer):
            continue
        new = _bayes_twin(child, child_path, kwargs)
        if new is None:
            _convert(child, child_path, kwargs, moped_delta, left)
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
        setattr(module, name, new)


def _bayes_twin(child: nn.Module, path: str, kwargs: dict) -> BayesLayer | None:
    """A fresh Bayesian layer shaped like ``child`` (an nn.Linear / nn.Conv2d), else None."""
    if not isinstance(child, (nn.Linear, nn.Conv2d)):
        return None
    factory = {"device": child.weight.device, "dtype": child.weight.dtype}
    if isinstance(child, nn.Linear):
        return BayesLinear(child.in_features, child.out_features, bias=child.bias is not None, **kwargs, **factory)
    if child.padding_mode != "zeros":
        raise ValueError(f"{path}: padding_mode={child.padding_mode!r} is not supported (only 'zeros')")
    return BayesConv2d(child.in_channels, child.out_channels, child.kernel_size, child.stride, child.padding,
                       child.dilation, child.groups, bias=child.bias is not None, **kwargs, **factory)


def _moped_rho(w: Tensor, delta: float) -> Tensor:
    sigma = (delta * w.abs()).clamp_min(torch.finfo(w.dtype).tiny)  # sigma = delta |w| > 0
    return inverse_softplus(sigma)
