"""SAC's networks: the actor s -> TanhNormal over the env's Box (sampled only through the core), the critic
ensemble (n Q-networks as ONE module with stacked weights, evaluated with batched matmuls), Polyak averaging.

Shapes: B = batch size, n = number of critics, O = observation dim, A = action dim.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from reparam_apps import SquashBox, TanhNormal

__all__ = ["Actor", "CriticEnsemble", "polyak_update", "LOG_STD_MIN", "LOG_STD_MAX"]

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0  # SB3's bounds on the policy's log-std (hard clamp)


class Actor(nn.Module):
    """ReLU MLP trunk and one linear head producing [mu | log sigma] (B, 2A); log sigma is clamped
    to [LOG_STD_MIN, LOG_STD_MAX] like SB3. The distribution is ``reparam_apps.TanhNormal`` rescaled
    to [low, high] (a ``SquashBox``: the bounds' constants are computed once, not per step);
    ``log_prob_offset`` = sum log((high - low) / 2) converts its log-density (in env units) back to
    the unit box, so the entropy target -|A| means the same for every env."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: Sequence[int], low: Tensor, high: Tensor):
        super().__init__()
        layers: list[nn.Module] = []
        d = obs_dim
        for h in hidden:
            layers += [nn.Linear(d, h), nn.ReLU(inplace=True)]  # in place: Linear does not save its output
            d = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(d, 2 * act_dim)  # == SB3's separate mu and log_std layers, fused
        self.box = SquashBox(low, high)

    @property
    def log_prob_offset(self) -> Tensor:
        return self.box.log_volume

    def dist(self, obs: Tensor) -> TanhNormal:
        mu, log_std = self.head(self.trunk(obs)).float().chunk(2, dim=-1)  # (B, A) each, fp32 even under bf16
        log_std = log_std.clamp(LOG_STD_MIN, LOG_STD_MAX)
        return TanhNormal(mu, log_std.exp(), box=self.box, validate_args=False)

    def sample(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """a = low + (tanh(mu + sigma eps) + 1)(high - low)/2, eps ~ N(0, I) (reparameterized: differentiable
        in the actor's weights) and log pi(a|s) in the unit box. Shapes (B, A), (B,)."""
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
