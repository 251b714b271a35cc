"""Reparameterized distributions: noise and transform as two separate, visible steps.

Every family implements one small contract on top of ``torch.distributions.Distribution``::

    eps = d.sample_noise(sample_shape)      # parameter-free noise from a fixed base distribution
    z   = d.transform(eps)                  # deterministic, differentiable g_phi(eps)
    z   = d.rsample(sample_shape)           # == d.transform(d.sample_noise(sample_shape))
    z, log_q = d.rsample_and_log_prob(...)  # log-density computed from eps: nothing is inverted

so gradients w.r.t. the parameters phi flow through the samples (the pathwise estimator).
``event_dims`` sums ``log_prob``/``entropy`` over that many trailing dimensions (like
``torch.distributions.Independent``); ``TanhNormal`` and ``GumbelSoftmax`` default to one event dim.
Each family also has ``support``, ``arg_constraints``, ``expand``, ``to_torch()``, ``cdf``/``icdf`` where a
closed form exists, and closed-form KLs in ``torch.distributions.kl_divergence`` (see ``reparam_apps.kl``).

Modules: ``base`` (the contract, validation), ``loc_scale`` (Normal, Laplace, Logistic, LogNormal,
Gumbel), ``gumbel_softmax``, ``tanh_normal`` (TanhNormal, SquashBox).

Validation (``validate_args=True``) raises ``ValueError`` naming the bad argument (NaN or infinite
parameters included); it costs a device sync, so hot paths (SAC actor, BNN layers) pass
``validate_args=False``, which runs no check at all.
"""

from .base import ReparamDistribution, set_default_validate_args
from .gumbel_softmax import GumbelSoftmax
from .loc_scale import Gumbel, Laplace, Logistic, LogNormal, Normal
from .tanh_normal import SquashBox, TanhNormal

__all__ = [
    "ReparamDistribution",
    "Normal",
    "Laplace",
    "Logistic",
    "LogNormal",
    "Gumbel",
    "GumbelSoftmax",
    "TanhNormal",
    "SquashBox",
    "set_default_validate_args",
]
