"""SAC's whole gradient step as ONE function of stacked tensors: both losses, the backward pass, Adam and Polyak
averaging, for K agents at once (K = 1: a single run), compiled by ``torch.compile`` into one graph.

The function is ``sac_step``; ``StackedUpdate`` binds it to K ``SAC`` models. It computes exactly what
``SAC._update`` computes (the equations head ``agents/sac.py``; tested against it on the same batch and noise):

  y       = r + gamma (1 - d) (min_j Q'_j(s', a') - alpha log pi(a'|s')),  a' = f(eps'; s'), no gradient   (eq. 6)
  J_Q     = 1/2 sum_j mean_B (Q_j(s, a) - y)^2                           -> critic weights                 (eq. 5)
  J_pi    = mean_B [alpha log pi(a~|s) - min_j Q_j(s, a~)],  a~ = f(eps; s)  -> actor weights only (dQ/da)  (eq. 7)
  J_alpha = -log alpha mean_B (log pi(a~|s) + H_target)                  -> log alpha only                 (eq. 18)
  Adam:     m <- b1 m + (1 - b1) g,  v <- b2 v + (1 - b2) g^2,  p <- p - lr m^ / (sqrt(v^) + e),
            m^ = m / (1 - b1^t),  v^ = v / (1 - b2^t)
  Polyak:   theta' <- theta' + tau (theta - theta')

Agent k's losses depend on its own parameters only, so the gradient of their sum is each agent's own gradient,
and Adam is elementwise: stacking K agents changes nothing but the float summation order of shared kernels.

Why not autograd + ``torch.optim.Adam`` here: the eager step is ~700 operator calls (dispatch cost dominates a
256-unit network); as one graph, inductor fuses the elementwise work into a few C++ loops around the matrix
products. The matrix products go to oneDNN where this torch has it (CPU, float32): on AMD CPUs MKL's sgemm runs
its AVX2 code while oneDNN uses AVX-512, twice the throughput on this project's benchmark machine.

Shapes: K agents, B batch, O observation dim, A action dim, n critics, H hidden width.
"""

from __future__ import annotations

import functools
import re
import types
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from reparam_apps.distributions.base import HALF_LOG_2PI, LOG2
from reparam_apps.distributions.tanh_normal import fused_tanh_gaussian

from .linear import ONEDNN_MIN_MACS, THIN, linear, onednn_available
from .networks import LOG_STD_MAX, LOG_STD_MIN, Actor, CriticEnsemble

if TYPE_CHECKING:
    from .sac import SAC

__all__ = ["StackedUpdate", "sac_step", "StepSpec", "unsupported_reason"]


# -- the step ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepSpec:
    """What is fixed for a compiled step (a change means another graph): the networks' structure and the
    hyperparameters."""

    n_actor_layers: int  # linear layers of the actor, its head included
    n_critic_layers: int
    n_critics: int
    act_dim: int
    gamma: float
    tau: float
    target_entropy: float
    learn_alpha: bool
    lrs: tuple[float, ...]  # per trainable tensor: actor params, critic params, then log alpha if learned
    betas: tuple[float, float]
    adam_eps: float
    onednn_min_macs: int | None  # see ``agents.linear.linear``
    batch_rows: bool = True  # one product for the actor on [s; s'] and the critics on [(s, a); (s, a~)]
    thin: int = THIN  # layers with a dim up to this as multiply-and-sum (``agents.linear.linear``)


def _actor(spec: StepSpec, ap: Sequence[Tensor], k: int, obs: Tensor, rows: int | None = None) -> tuple[Tensor, Tensor]:
    """Agent k's Gaussian head: mu, sigma (M, A) for obs (M, O); ap = [W_1, b_1, ..., W_head, b_head] (K, ...);
    ``rows``: only the first rows carry gradient."""
    h = obs
    for i in range(spec.n_actor_layers):
        h = linear(h, ap[2 * i][k], ap[2 * i + 1][k], i < spec.n_actor_layers - 1, spec.onednn_min_macs,
                   w_rows=rows, x_rows=rows, thin=spec.thin)
    mu, log_std = h.chunk(2, dim=-1)
    return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp()


def _critics(spec: StepSpec, cp: Sequence[Tensor], k: int, obs: Tensor, act_unit: Tensor,
             w_rows: int | None = None) -> Tensor:
    """Agent k's Q_j(s, a) (n, M) from obs (M, O) and unit-box actions (M, A); cp = [W_0.., b_0..] with
    W_l (K, n, I, N) and b_l (K, n, 1, N) (CriticEnsemble's layout); ``w_rows``: only the first rows teach them."""
    L = spec.n_critic_layers
    x = torch.cat([obs, act_unit], dim=-1)  # (M, O + A)
    qs = []
    for j in range(spec.n_critics):
        h = x
        for layer in range(L):
            w, b = cp[layer][k, j], cp[L + layer][k, j, 0]  # (I, N), (N,)
            h = linear(h, w, b, layer < L - 1, spec.onednn_min_macs, stored_t=True, w_rows=w_rows, thin=spec.thin)
        qs.append(h.squeeze(-1))
    return torch.stack(qs)  # (n, M)


def _squash(spec: StepSpec, mu: Tensor, std: Tensor, eps: Tensor, mid: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """a = mid + half tanh(mu + sigma eps) and log pi(a|s) in the unit box, through the core's fused
    tanh-Gaussian node (the noise eps (M, A) is drawn outside, so the stream equals the eager path's)."""
    const = -(HALF_LOG_2PI + 2 * LOG2) * spec.act_dim  # unit-box log-density: the box's log-volume cancels
    return fused_tanh_gaussian(mu, std, eps, mid, half, 1, const)


def _losses(actor_p: list[Tensor], critic_p: list[Tensor], log_alpha: Tensor, spec: StepSpec,
            target_p: list[Tensor], batch: tuple[Tensor, ...], eps_next: Tensor, eps: Tensor,
            consts: tuple[Tensor, ...]) -> tuple[Tensor, Tensor]:
    """Sum over agents of J_Q + J_pi (+ J_alpha), and per-agent stats (K, 4) [J_Q, J_pi, alpha, -mean log pi]."""
    obs, act, rew, next_obs, term = batch  # (K, B, O), (K, B, A), (K, B), (K, B, O), (K, B)
    mid, half, c_mid, c_half = consts
    total, stats = 0.0, []
    for k in range(obs.shape[0]):
        alpha = log_alpha[k].detach().exp()  # (1,)
        b = obs.shape[1]
        c_act = (act[k] - c_mid) / c_half
        if spec.batch_rows:  # the actor on [s; s'] in one pass; only the s rows carry gradient
            mu, std = _actor(spec, actor_p, k, torch.cat([obs[k], next_obs[k]]), rows=b)
            mu_pi, std_pi, mu_next, std_next = mu[:b], std[:b], mu[b:].detach(), std[b:].detach()
        else:
            mu_pi, std_pi = _actor(spec, actor_p, k, obs[k])
            with torch.no_grad():
                mu_next, std_next = _actor(spec, actor_p, k, next_obs[k])
        with torch.no_grad():  # target (eq. 6)
            next_a, next_log_pi = _squash(spec, mu_next, std_next, eps_next[k], mid, half)
            c_next = (next_a - c_mid) / c_half
            q_next = _critics(spec, target_p, k, next_obs[k], c_next).min(dim=0).values
            y = rew[k] + spec.gamma * (1.0 - term[k]) * (q_next - alpha * next_log_pi)  # (B,)
        a_pi, log_pi = _squash(spec, mu_pi, std_pi, eps[k], mid, half)
        if spec.batch_rows:  # the critics on [(s, a); (s, a~)]: only the (s, a) rows teach their weights (eq. 7)
            q_all = _critics(spec, critic_p, k, torch.cat([obs[k], obs[k]]),
                             torch.cat([c_act, (a_pi - c_mid) / c_half]), w_rows=b)
            q, q_pi = q_all[:, :b], q_all[:, b:].min(dim=0).values
        else:
            q = _critics(spec, critic_p, k, obs[k], c_act)  # (n, B)
            frozen = [p.detach() for p in critic_p]  # eq. 7: only dQ/da reaches the actor
            q_pi = _critics(spec, frozen, k, obs[k], (a_pi - c_mid) / c_half).min(dim=0).values
        critic_loss = 0.5 * (q - y).square().mean(dim=1).sum()  # eq. 5
        actor_loss = (alpha * log_pi - q_pi).mean()
        total = total + critic_loss + actor_loss
        if spec.learn_alpha:  # eq. 18
            total = total - (log_alpha[k] * (log_pi.detach() + spec.target_entropy)).mean()
        stats.append(torch.stack([critic_loss.detach(), actor_loss.detach(), alpha[0], -log_pi.detach().mean()]))
    return total, torch.stack(stats)


def sac_step(actor_p: list[Tensor], critic_p: list[Tensor], log_alpha: Tensor, target_p: list[Tensor],
             exp_avg: list[Tensor], exp_avg_sq: list[Tensor], steps: Tensor, factors: Tensor, batch: tuple[Tensor, ...],
             eps_next: Tensor, eps: Tensor, consts: tuple[Tensor, ...], spec: StepSpec) -> Tensor:
    """One SAC gradient step of K agents, in place: parameters, Adam moments, step counts, target critics.

    Args:
        actor_p, critic_p: the agents' parameters stacked on a leading K axis (the modules' order).
        log_alpha: (K, 1).
        target_p: the target critics, like critic_p.
        exp_avg, exp_avg_sq: Adam's moments of actor_p + critic_p (+ log_alpha if learned), same shapes.
        steps: (K, P) Adam step counts (one per agent and trainable tensor; equal within an agent).
        factors: (2, K) this step's 1 / (1 - b1^t) and 1 / sqrt(1 - b2^t) (computed outside: inside, inductor
            would recompute the powers for every vector of every parameter).
        batch: obs (K, B, O), act (K, B, A), rew (K, B), next_obs (K, B, O), term (K, B).
        eps_next, eps: (K, B, A) standard normal noise of the target's and the actor loss's actions.
        consts: the actor's box mid and half range, the critic's action mid and half range, each (A,).
        spec: structure and hyperparameters.
    Returns:
        (K, 4) detached stats: critic loss, actor loss, alpha (before the step), entropy estimate.
    """
    trainable = (0, 1, 2) if spec.learn_alpha else (0, 1)
    grads, stats = torch.func.grad(_losses, argnums=trainable, has_aux=True)(
        actor_p, critic_p, log_alpha, spec, target_p, batch, eps_next, eps, consts)
    params = [*actor_p, *critic_p] + ([log_alpha] if spec.learn_alpha else [])
    flat_grads = [*grads[0], *grads[1]] + ([grads[2]] if spec.learn_alpha else [])
    b1, b2 = spec.betas
    steps.add_(1.0)
    for p, g, m, v, lr in zip(params, flat_grads, exp_avg, exp_avg_sq, spec.lrs, strict=True):
        shape = (-1,) + (1,) * (p.dim() - 1)
        m.lerp_(g, 1.0 - b1)
        v.mul_(b2).addcmul_(g, g, value=1.0 - b2)
        denom = v.sqrt() * factors[1].view(shape) + spec.adam_eps
        p.sub_((lr * factors[0]).view(shape) * m / denom)
    for tp, p in zip(target_p, critic_p, strict=True):
        tp.lerp_(p, spec.tau)
    return stats


# -- binding K SAC models --------------------------------------------------------------------------------
_ACTOR_NAME = re.compile(r"^(trunk\.\d+|head)\.(weight|bias)$")


def unsupported_reason(model: SAC) -> str | None:
    """Why ``StackedUpdate`` cannot run this model's update (None: it can)."""
    actor, critic = model.actor, model.critic
    if type(actor) is not Actor or getattr(actor, "policy", "tanh-normal") != "tanh-normal":
        return "only the tanh-normal policy has the fused update"
    if type(critic) is not CriticEnsemble:
        return "the critic is not a CriticEnsemble"
    if not all(_ACTOR_NAME.match(n) for n, _ in actor.named_parameters()):
        return "the actor has parameters beyond its MLP"
    if model.config.bf16:
        return "bf16 autocast runs in the eager update"
    return None


class StackedUpdate:
    """The gradient step of K ``SAC`` models (same env and hyperparameters, any seeds) as one ``sac_step`` call.

    Binding stacks each agent's parameters, target critics and Adam moments into (K, ...) tensors and points
    the agents' modules and ``optimizer.state`` at views of them, so each model stays usable on its own (acting,
    ``save``, the eager ``_update``) and a checkpoint reads the current values. ``bind`` again after anything
    replaces those tensors (``optimizer.load_state_dict`` does).

    Args:
        models: K models built from configs that differ at most in their seeds.
        compile: run ``sac_step`` through ``torch.compile`` (True: inductor; a string: that backend, e.g.
            "aot_eager" for a quick trace in tests) or, False, op by op (the reference).
        generators: one torch.Generator per model for the policy noise; None: the global generator (K = 1).
    """

    def __init__(self, models: Sequence[SAC], compile: bool | str = True,
                 generators: Sequence[torch.Generator] | None = None):
        self.models = list(models)
        for m in self.models:
            reason = unsupported_reason(m)
            if reason is not None:
                raise ValueError(f"no fused update for this model: {reason}")
        first = self.models[0]
        self.device = first.device
        if generators is not None and len(generators) != len(self.models):
            raise ValueError("one generator per model")
        self.generators = list(generators) if generators is not None else None
        cfg = first.config
        self.batch_size = cfg.batch_size
        self.fn = _compiled("inductor" if compile is True else compile) if compile else sac_step
        self.bind()
        groups = {id(p): g for g in first.optimizer.param_groups for p in g["params"]}
        trainable = self._trainable(first)
        group0 = first.optimizer.param_groups[0]
        self.spec = StepSpec(
            n_actor_layers=len(self._actor_params(first)) // 2, n_critic_layers=len(first.critic.weights),
            n_critics=first.critic.n, act_dim=first.act_dim, gamma=cfg.gamma, tau=cfg.tau,
            target_entropy=first.target_entropy, learn_alpha=first.learn_alpha,
            lrs=tuple(float(groups[id(p)]["lr"]) for p in trainable), betas=tuple(group0["betas"]),
            adam_eps=float(group0["eps"]),
            onednn_min_macs=ONEDNN_MIN_MACS if onednn_available(self.device) else None)
        actor, critic = first.actor, first.critic
        self.consts = (actor.box.mid, actor.box.half_range, critic.act_mid, critic.act_half_range)
        obs_dim, act_dim = first.obs_dim, first.act_dim
        k = len(self.models)
        width = 2 * obs_dim + act_dim + 2
        pin = self.device.type == "cuda"
        self._host = torch.zeros((k, self.batch_size, width), pin_memory=pin)  # (K, B, 2O + A + 2)
        self._host_np = self._host.numpy()
        self._factors = torch.zeros((2, k), pin_memory=pin)
        self._factors_np = self._factors.numpy()

    # -- layout ---------------------------------------------------------------------------------------
    @staticmethod
    def _actor_params(m: SAC) -> list[Tensor]:
        return list(m.actor.parameters())

    @staticmethod
    def _trainable(m: SAC) -> list[Tensor]:
        return [*m.actor.parameters(), *m.critic.parameters()] + ([m.log_alpha] if m.learn_alpha else [])

    def bind(self) -> None:
        """(Re)stack every agent's tensors into (K, ...) storage and alias the agents' tensors to views of it."""
        models = self.models
        with torch.no_grad():
            self.actor_p = _stack_and_alias([self._actor_params(m) for m in models])
            self.critic_p = _stack_and_alias([list(m.critic.parameters()) for m in models])
            self.target_p = _stack_and_alias([list(m.critic_target.parameters()) for m in models])
            (self.log_alpha,) = _stack_and_alias([[m.log_alpha] for m in models])
            trainable = [self._trainable(m) for m in models]
            moments = {"exp_avg": [], "exp_avg_sq": []}
            steps = torch.zeros(len(models), len(trainable[0]), device=self.device)
            for k, (m, ps) in enumerate(zip(models, trainable, strict=True)):
                for i, p in enumerate(ps):
                    state = m.optimizer.state[p]
                    if "step" in state:
                        steps[k, i] = float(state["step"])
                    for name in moments:
                        moments[name].append(state.get(name, torch.zeros_like(p)))
            per_param = len(trainable[0])
            for name, flat in moments.items():
                stacked = _stack_and_alias([flat[k * per_param:(k + 1) * per_param] for k in range(len(models))],
                                           alias=False)
                setattr(self, name, stacked)
            self.steps = steps
            self.steps_host = steps.numpy() if steps.device.type == "cpu" else None  # a view: always current
            for k, (m, ps) in enumerate(zip(models, trainable, strict=True)):
                for i, p in enumerate(ps):  # torch's Adam reads and writes these very tensors
                    m.optimizer.state[p] = {"step": steps[k, i], "exp_avg": self.exp_avg[i][k],
                                            "exp_avg_sq": self.exp_avg_sq[i][k]}
        self._bound = [(m, ps[0], m.optimizer.state[ps[0]]) for m, ps in zip(models, trainable, strict=True)]

    def _check_bound(self) -> None:
        """``bind`` again if a model's optimizer state was replaced (``load_state_dict``, another binding)."""
        if any(m.optimizer.state.get(p) is not bound for m, p, bound in self._bound):
            self.bind()

    # -- a step -------------------------------------------------------------------------------------------
    def sample(self) -> tuple[Tensor, ...]:
        """Each agent's batch from its own buffer and generator (the eager path's draws): (K, B, ...) views."""
        if self.models[0].buffer.on_device:  # gathered where the rows live: no batch crosses from the host
            batch = torch.stack([m.buffer.rows(m.rng.integers(0, m.buffer.size, size=self.batch_size))
                                 for m in self.models])
        else:
            for k, m in enumerate(self.models):
                m.buffer.rows(m.rng.integers(0, m.buffer.size, size=self.batch_size), out=self._host_np[k])
            batch = self._host.to(self.device, non_blocking=True)
        o, a = self.models[0].obs_dim, self.models[0].act_dim
        return (batch[..., :o], batch[..., o:o + a], batch[..., o + a], batch[..., o + a + 1:2 * o + a + 1],
                batch[..., -1])

    def noise(self) -> tuple[Tensor, Tensor]:
        """(K, B, A) twice: agent k's target noise then its actor-loss noise, in the eager path's order."""
        shape, dev = (self.batch_size, self.models[0].act_dim), self.device
        target_noise, actor_noise = [], []
        for g in self.generators or [None]:
            target_noise.append(torch.randn(shape, generator=g, device=dev))  # drawn first, as compute_target's
            actor_noise.append(torch.randn(shape, generator=g, device=dev))
        return torch.stack(target_noise), torch.stack(actor_noise)

    def adam_factors(self) -> Tensor:
        """(2, K): 1 / (1 - b1^t), 1 / sqrt(1 - b2^t) for the coming step t of each agent (in float64 on the host)."""
        t = (self.steps_host[:, 0] if self.steps_host is not None else self.steps[:, 0].cpu().numpy()) + 1.0
        b1, b2 = self.spec.betas
        self._factors_np[0] = 1.0 / (1.0 - b1 ** t)
        self._factors_np[1] = 1.0 / np.sqrt(1.0 - b2 ** t)
        return self._factors.to(self.device, non_blocking=True)

    def step(self, batch: tuple[Tensor, ...] | None = None) -> Tensor:
        """One gradient step of every agent (on ``batch``, (K, B, ...), or on freshly sampled ones); returns
        the (K, 4) stats [critic_loss, actor_loss, alpha, entropy]."""
        self._check_bound()
        batch = self.sample() if batch is None else batch
        eps_next, eps = self.noise()
        stats = self.fn(self.actor_p, self.critic_p, self.log_alpha, self.target_p, self.exp_avg, self.exp_avg_sq,
                        self.steps, self.adam_factors(), batch, eps_next, eps, self.consts, self.spec)
        for m in self.models:
            m.num_updates += 1
        return stats


_KEPT_GUARDS = frozenset({"TENSOR_MATCH", "SEQUENCE_LENGTH", "LENGTH_CHECK", "GLOBAL_STATE", "GRAD_MODE",
                          "DETERMINISTIC_ALGORITHMS", "DEFAULT_DEVICE", "FUNCTORCH_STACK_MATCH"})


def _guards_to_keep(entries: Sequence[Any]) -> list[bool]:
    """Dynamo checks ~450 guards before each call (0.1-0.4 ms here): keep those that tell this function's graphs
    apart (tensor shapes, dtypes, strides; list lengths; the spec's values; grad mode and the like) and drop the
    ones on this module's code and globals, which do not change, and on input aliasing, which never happens."""
    return [e.guard_type in _KEPT_GUARDS or e.name.split(".")[0].split("[")[0] in ("spec", "L['spec']")
            for e in entries]


@functools.cache
def _compiled(backend: str) -> Any:
    """``sac_step`` compiled by ``backend``, on a code object of its own: dynamo caches graphs per code object,
    and with most guards dropped, two backends must not share a cache (one per backend: the graphs of every
    ``StackedUpdate`` of the process, told apart by the kept guards)."""
    code = sac_step.__code__.replace(co_name=f"sac_step_{backend}")
    fn = types.FunctionType(code, sac_step.__globals__, code.co_name, sac_step.__defaults__, sac_step.__closure__)
    options: dict[str, Any] = {"guard_filter_fn": _guards_to_keep}
    if backend == "inductor":  # the wrapper's ~70 shape asserts per call: ~0.1 ms (3% of a 2x256 step)
        options.update(size_asserts=False, alignment_asserts=False)
    return torch.compile(fn, backend=backend, fullgraph=True, dynamic=False, options=options)


def _stack_and_alias(per_model: list[list[Tensor]], alias: bool = True) -> list[Tensor]:
    """Stack the i-th tensor of every model into (K, ...) and (alias) make each model's tensor a view of it."""
    stacked = []
    for tensors in zip(*per_model, strict=True):
        s = torch.stack([t.detach() for t in tensors]).contiguous()
        if alias:
            for k, t in enumerate(tensors):
                t.data = s[k]
        stacked.append(s)
    return stacked

