"""The flows domain: pathwise vs score function when the sampled distribution is a normalizing flow.

Two cases, each the gradient w.r.t. the weights of the network that feeds the flow (the flow's own weights
held fixed, as in ``vae.VAE.estimator_problem``): the base N(mu, sigma^2) and the context h enter through
them, so the chain rule goes through (mu, sigma, h):

    g_theta = (d mu / d theta)^T g_mu + (d sigma / d theta)^T g_sigma + (d h / d theta)^T g_h          (1)

* the IAF posterior of a digits VAE (``vae.VAE(posterior='iaf')``, partly trained), the reconstruction term
  E_q[log p(x|z)] of a batch of 32 test images w.r.t. the encoder's weights;
* SAC's flow policy (``agents.SAC(policy='flow', policy_flow='iaf')``, a short Pendulum run: the action is
  1-d, where an IAF step is a state-dependent affine map of u, so q(u|s) stays Gaussian), the actor loss
  E_s E_a[alpha log pi(a|s) - min_j Q_j(s, a)] on 64 replay states at the run's critic, w.r.t. the actor's
  trunk and Gaussian head. The score function works on the pre-squash u ~ q(u|s) (the change of variables
  a = squash(u) leaves E[f] unchanged), with f(u) = alpha log pi(squash(u)|s) - min Q held fixed:
  E[grad log q] = 0 makes the direct term of alpha log pi zero-mean, so it is left out (unbiased).

The score function needs log q of a detached sample, through the flow's exact inverse (IAF: D passes).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

import reparam_apps as ra
from reparam_apps.distributions.tanh_normal import tanh_squash

from .config import CompareConfig
from .digits_vae import digits_data, train_digits_vae
from .stats import Row, StopRequested, measure, never, reference

__all__ = ["flows_domain", "flow_vae_rows", "flow_policy_rows", "FLOW_KIND", "FLOW_STEPS"]

FLOW_KIND, FLOW_STEPS = "iaf", 2  # both cases: IAF (exact, differentiable inverse: the score function needs it)
Stop = Callable[[], bool]
Grads = tuple[Tensor, ...]


def _pulled_back(outputs: list[Tensor], params: list[Tensor], estimate: Callable[[list[Tensor]], Grads]
                 ) -> Callable[[], Grads]:
    """An estimator of d/dparams from one of d/d(outputs) (fresh leaves with the outputs' values), by (1)."""
    def run() -> Grads:
        leaves = [o.detach().requires_grad_() for o in outputs]
        grads = estimate(leaves)
        return torch.autograd.grad(outputs, params, grad_outputs=list(grads), retain_graph=True)
    return run


def flow_vae_rows(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """The IAF-posterior VAE: a 64-64-8 VAE with 2 IAF steps (width 64) trained pathwise for about 300 or 1000
    steps; the gradient of the reconstruction term of 32 test images w.r.t. the encoder's weights."""
    data = digits_data(cfg.seed)
    model, _ = train_digits_vae(cfg, data, "pathwise", "loo", 300 if cfg.quick else 1000, stop=stop,
                                posterior=FLOW_KIND, flow_steps=FLOW_STEPS)
    x = data.test[:32]  # (B, D)
    problem = model.estimator_problem(x)  # the flow's factories, params [mu, sigma, h] as detached leaves
    mu, log_var = model.encode_params(x)  # (B, L) each, with the encoder's graph
    sigma = torch.exp(0.5 * log_var)
    h = model.encoder.forward_features(x)[1]  # (B, C): the context the flow reads
    for mine, theirs in zip((mu, sigma, h), problem.params, strict=True):  # the same q(z|x) as the VAE's
        torch.testing.assert_close(mine.detach(), theirs.detach())
    enc_params = list(model.encoder.parameters())
    n = cfg.n_samples
    f = lambda z: model.log_likelihood(x, z)  # noqa: E731  (n, B, L) -> (n, B) per-image terms

    def est(kind: str, baseline: str | None = None) -> Callable[[], Grads]:
        if kind == "pathwise":
            return _pulled_back([mu, sigma, h], enc_params,
                                lambda p: ra.pathwise_gradient(f, problem.pathwise_factory, p, n))
        return _pulled_back([mu, sigma, h], enc_params,
                            lambda p: ra.score_function_gradient(f, problem.score_factory, p, n, baseline))

    ests = {"pathwise": est("pathwise"), "score": est("score"), "score+loo": est("score", "loo"),
            "score+optimal": est("score", "optimal")}
    ref = reference(ests["pathwise"], cfg.repeats * cfg.reference_factor, cfg.seed, stop)
    return measure("flows", "VAE encoder (IAF posterior)", ests, ref, cfg.repeats, n, cfg.seed, stop=stop)


def flow_policy_rows(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """SAC's flow policy on Pendulum (2 IAF steps, the defaults otherwise), trained for 600 or 3000 steps (the
    estimators need a critic, not a good policy); the actor loss gradient on 64 replay states w.r.t. the actor's
    trunk and Gaussian head."""
    from agents import SAC

    model = SAC("Pendulum-v1", seed=cfg.seed, threads=cfg.threads, device="cpu", learning_starts=200,
                policy="flow", policy_flow=FLOW_KIND, policy_flow_steps=FLOW_STEPS)
    try:
        if model.actor.flow is None:
            raise ValueError("SAC built a tanh-Gaussian actor for policy='flow': agents/sac.py must build its actor "
                             "with Actor.from_config")
        model.learn(600 if cfg.quick else 3000, callback=lambda m, metrics: not stop(), log_every=100)
        if stop():
            raise StopRequested
        obs = model.buffer.sample(64, np.random.default_rng(cfg.seed), model.device)[0]  # (B, O)
        actor, critic = model.actor, model.critic
        alpha = float(model.log_alpha.detach().exp())
        params = list(actor.trunk.parameters()) + list(actor.head.parameters())  # the flow's weights held fixed
        n, batch = cfg.n_samples, obs.shape[0]
        obs_rep = obs.repeat(n, 1)  # (n * B, O): row i * B + b holds state b

        def q_min(a: Tensor) -> Tensor:  # (n * B, A) -> (n * B,)
            return critic(obs_rep, a, detach_params=True).min(0).values

        def pathwise() -> Grads:  # the actor's own reparameterized sample, as in SAC's update
            a, logp = actor.sample(obs_rep)
            return torch.autograd.grad((alpha * logp - q_min(a)).mean(), params)

        dist = actor.dist(obs)  # SquashedFlow: loc, scale (B, A) and context (B, H) with the actor's graph
        outputs = [dist.loc, dist.scale, dist.context]
        fac = lambda m, s, c: actor.flow(m, s, context=c, validate_args=False)  # noqa: E731  q(u|s)
        fixed = fac(*(o.detach() for o in outputs))

        def f(u: Tensor) -> Tensor:  # (n, B, A) -> (n, B): the per-state terms of the loss (a mean over states)
            a, log_det = tanh_squash(u, actor.box)
            logp = fixed.log_prob(u) - log_det + actor.log_prob_offset  # unit-box log pi, as SAC's
            return (alpha * logp - q_min(a.reshape(n * batch, -1)).reshape(n, batch)) / batch

        def score(baseline: str | None) -> Callable[[], Grads]:
            return _pulled_back(outputs, params, lambda p: ra.score_function_gradient(f, fac, p, n, baseline))

        ests = {"pathwise": pathwise, "score": score(None), "score+loo": score("loo")}
        ref = reference(pathwise, cfg.repeats * cfg.reference_factor, cfg.seed, stop)
        return measure("flows", "SAC actor (IAF policy)", ests, ref, cfg.repeats, n, cfg.seed, stop=stop)
    finally:
        model.close()


def flows_domain(cfg: CompareConfig, stop: Stop = never) -> list[Row]:
    """Both flow cases (the VAE's IAF posterior, SAC's IAF policy), each re-seeded."""
    rows = flow_vae_rows(cfg, stop)
    ra.seed_everything(cfg.seed)
    return rows + flow_policy_rows(cfg, stop)
