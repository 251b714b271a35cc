"""SAC's networks: the actor s -> a squashed distribution over the env's Box (sampled only through the core),
the critic ensemble (n Q-networks as ONE module with stacked weights, evaluated with batched matmuls), Polyak
averaging.

The actor's policy is a tanh-Gaussian (``reparam_apps.TanhNormal``) or, with ``policy='flow'``, the same
Gaussian pushed through a conditional normalizing flow before the squash (``reparam_apps.flows``):

    eps ~ N(0, I),  u_0 = mu(s) + sigma(s) eps,  u = f_K o ... o f_1(u_0; h(s)),  a = mid + half tanh(u)    (F1)
    log pi(a|s) = log q(u|s) - sum_i [log(1 - tanh(u_i)^2) + log half_i]                                 (F2)
    log q(u|s) = log N(eps; 0, I) - sum_i log sigma_i(s) - sum_k log |det df_k/du_{k-1}|                 (F3)

h(s) is the trunk's output (the features the Gaussian head reads); (F3) comes from the noise and the steps'
log-dets (``FlowDistribution.rsample_and_log_prob``, nothing inverted) and (F2) from ``tanh_squash``.

Shapes: B = batch size, n = number of critics, O = observation dim, A = action dim, H = trunk width.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from reparam_apps import SquashBox, TanhNormal
from reparam_apps.distributions.tanh_normal import tanh_squash
from reparam_apps.flows import FLOW_KINDS, FlowDistribution, make_flow

from .config import POLICIES, SACConfig

__all__ = ["Actor", "SquashedFlow", "CriticEnsemble", "polyak_update", "LOG_STD_MIN", "LOG_STD_MAX", "POLICIES",
           "POLICY_FLOW_HIDDEN"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's bounds on the policy's log-std (hard clamp)
POLICY_FLOW_HIDDEN = (64,)  # width of each flow step's network (MADE / conditioner / hyper-network input)
_COUPLINGS = ("affine", "spline")  # they transform one half given the other: action dim >= 2


class SquashedFlow:
    """pi(.|s) of the flow policy (F1)-(F3): ``pre_squash`` (the core's FlowDistribution of u) squashed into
    the box by ``tanh_squash``. What SAC uses of a policy distribution: ``rsample_and_log_prob``, ``sample``
    and ``mode``; ``loc``, ``scale`` (the base Gaussian's, (B, A)) and ``context`` (h(s), (B, H)) for
    estimators that work on u (score function: log pi(a|s) = log q(u|s) - a term free of the parameters).

    Args:
        pre_squash: q(u|s), a FlowDistribution with the base N(mu(s), sigma(s)^2) and context h(s).
        box: the action box.
    """

    def __init__(self, pre_squash: FlowDistribution, box: SquashBox):
        self.pre_squash, self.box = pre_squash, box

    @property
    def loc(self) -> Tensor:
        return self.pre_squash.base.loc

    @property
    def scale(self) -> Tensor:
        return self.pre_squash.base.scale

    @property
    def context(self) -> Tensor | None:
        return self.pre_squash.context

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """action (F1) and log pi(action|s) in env units (F2): (*sample_shape, B, A), (*sample_shape, B)."""
        u, log_q = self.pre_squash.rsample_and_log_prob(sample_shape)  # (F3): from the noise, no inversion
        action, log_det = tanh_squash(u, self.box)
        return action, log_q - log_det

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return tanh_squash(self.pre_squash.rsample(sample_shape), self.box)[0]

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    @property
    def mode(self) -> Tensor:
        """The deterministic action: the squashed flow of the base mean, squash(f(mu(s); h(s))) (eps = 0). It is
        TanhNormal's ``mode`` when the steps are the identity; like that one, not the density's exact mode."""
        return tanh_squash(self.pre_squash.transform(torch.zeros_like(self.loc)), self.box)[0]


class Actor(nn.Module):
    """ReLU MLP trunk and one linear head producing [mu | log sigma] (B, 2A); log sigma is clamped
    to [LOG_STD_MIN, LOG_STD_MAX] like SB3. The distribution is ``reparam_apps.TanhNormal`` rescaled
    to [low, high] (a ``SquashBox``: the bounds' constants are computed once, not per step), or with
    ``policy='flow'`` a ``SquashedFlow`` (F1)-(F3) whose flow is conditioned on the trunk's output h(s);
    ``log_prob_offset`` = sum log((high - low) / 2) converts its log-density (in env units) back to
    the unit box, so the entropy target -|A| means the same for every env.

    Args:
        obs_dim, act_dim: O and A.
        hidden: the trunk's widths (its last is the flow's context size H).
        low, high: the action box.
        policy: 'tanh-normal' or 'flow'.
        flow: the flow kind (``reparam_apps.flows.FLOW_KINDS``; the couplings need A >= 2).
        flow_steps: K >= 1.
        flow_hidden: widths of each flow step's network.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], low: Tensor, high: Tensor,
                 policy: str = "tanh-normal", flow: str = "iaf", flow_steps: int = 2,
                 flow_hidden: Sequence[int] = POLICY_FLOW_HIDDEN):
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]  # in place: Linear does not save its output
            d = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(d, 2 * act_dim)  # == SB3's separate mu and log_std layers, fused
        self.box = SquashBox(low, high)
        self.policy = policy
        self.flow = None
        if policy == "flow":
            if flow in _COUPLINGS and act_dim < 2:
                raise ValueError(f"the {flow} flow transforms one half of the action given the other, so it needs an "
                                 f"action dim >= 2 (this env has {act_dim}): use iaf or planar")
            if flow not in FLOW_KINDS:
                raise ValueError(f"unknown policy flow {flow!r}: use one of {', '.join(FLOW_KINDS)}")
            self.flow = make_flow(flow, act_dim, int(flow_steps), context_dim=d, hidden=tuple(flow_hidden))

    @classmethod
    def from_config(cls, config: SACConfig, obs_dim: int, act_dim: int, low: Tensor, high: Tensor) -> Actor:
        """The actor a ``SACConfig`` describes (hidden_sizes, policy, policy_flow, policy_flow_steps)."""
        return cls(obs_dim, act_dim, config.hidden_sizes, low, high, policy=config.policy, flow=config.policy_flow,
                   flow_steps=config.policy_flow_steps)

    @property
    def log_prob_offset(self) -> Tensor:
        return self.box.log_volume

    def dist(self, obs: Tensor) -> TanhNormal | SquashedFlow:
        """pi(.|s) for a batch of observations (B, O): TanhNormal, or SquashedFlow with ``policy='flow'``."""
        h = self.trunk(obs)  # (B, H)
        out = self.head(h)
        mu, log_std = out.to(torch.promote_types(out.dtype, torch.float32)).chunk(2, dim=-1)  # (B, A), fp32 under bf16
        std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()
        if self.flow is None:
            return TanhNormal(mu, std, box=self.box, validate_args=False)
        return SquashedFlow(self.flow(mu, std, context=h, validate_args=False), self.box)  # (F1): context h(s)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """a = low + (squash(u) + 1)(high - low)/2 with u = mu + sigma eps (or its flow (F1)), eps ~ N(0, I)
        (reparameterized: differentiable in the actor's weights) and log pi(a|s) in the unit box. Shapes
        (B, A), (B,)."""
        action, log_q = self.dist(obs).rsample_and_log_prob()
        return action, log_q + self.box.log_volume


class CriticEnsemble(nn.Module):
    """n ReLU MLPs Q_j(s, a) stored as stacked weights W_l (n, fan_in, fan_out) and biases (n, 1, fan_out);
    one ``torch.baddbmm`` per layer evaluates all critics at once. Each member is initialised like
    ``nn.Linear`` (U(-1/sqrt(fan_in), 1/sqrt(fan_in))). Actions are fed in the unit box, like SB3."""

    def __init__(self, n: int, obs_dim: int, act_dim: int, hidden: Sequence[int], low: Tensor, high: Tensor):
        super().__init__()
        self.n = n
        sizes = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
            bound = 1.0 / math.sqrt(fan_in)
            self.weights.append(nn.Parameter(torch.empty(n, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, 1, fan_out).uniform_(-bound, bound)))
        self.register_buffer("act_mid", 0.5 * (high + low))
        self.register_buffer("act_half_range", 0.5 * (high - low))

    def forward(self, obs: Tensor, act: Tensor, detach_params: bool = False) -> Tensor:
        """Q-values (n, B) for obs (B, O) and env-unit actions (B, A). ``detach_params`` treats the
        weights as constants (the actor loss needs dQ/da only, not dQ/dtheta: saves the weight grads)."""
        x = torch.cat([obs, (act - self.act_mid) / self.act_half_range], dim=-1)  # (B, O + A)
        h = x.expand(self.n, *x.shape)  # (n, B, O + A), a view
        *hidden, (w_out, b_out) = zip(self.weights, self.biases, strict=True)
        for w, b in hidden:
            if detach_params:
                w, b = w.detach(), b.detach()
            h = torch.baddbmm(b, h, w).relu_()  # (n, B, fan_out) = relu(b + h @ W), all critics in one call;
            # relu in place: baddbmm's backward does not need its output
        if detach_params:
            w_out, b_out = w_out.detach(), b_out.detach()
        # Output layer (fan_out 1): a row-wise dot product, 2-4x cheaper here than a batched matmul with N = 1.
        return ((h * w_out.transpose(1, 2)).sum(-1) + b_out.squeeze(-1)).float()  # (n, B)


def polyak_update(params: Iterable[Tensor], target_params: Iterable[Tensor], tau: float) -> None:
    """theta' <- tau theta + (1 - tau) theta'  (== theta'.lerp_(theta, tau)), in place, no autograd."""
    params, target_params = list(params), list(target_params)
    if len(params) != len(target_params):
        raise ValueError(f"{len(params)} parameters but {len(target_params)} target parameters")
    with torch.no_grad():
        torch._foreach_lerp_(target_params, params, tau)  # one call for all tensors
