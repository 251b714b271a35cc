"""SAC's equations, each against a reference computed independently of ``agents`` (numbers as in
Haarnoja et al. 2018b, arXiv:1812.05905):

  target (eq. 6):  y = r + gamma (1 - d) (min_j Q'_j(s', a') - alpha log pi(a'|s')),  a' ~ pi(.|s'), no autograd
  critic (eq. 5):  J_Q = 1/2 sum_j mean_B (Q_j(s, a) - y)^2                      -> critic weights only
  actor  (eq. 7):  J_pi = mean_B [alpha log pi(a|s) - min_j Q_j(s, a)],  a = f(eps; s)  -> actor weights only
  alpha  (eq. 18): J_alpha = -log_alpha mean_B (log pi(a|s) + H_target)             -> log_alpha only
  Polyak:          theta' <- tau theta + (1 - tau) theta'

The reference redraws the policy noise eps of every ``actor.sample`` call (from the RNG state recorded
just before it) and rebuilds a = low + (tanh(mu + sigma eps) + 1)(high - low)/2 and log pi(a|s) from
elementary ops in float64, so the actor's pathwise gradient (through dQ/da) is computed by plain autograd,
not by the fused sampler under test. Q-values come from ``CriticEnsemble.forward`` (checked against
independent MLPs in test_sac.py). Gradients of ``_update``'s single backward pass are read in an
optimizer step pre-hook. The target critic is perturbed so that it differs from the online critic.
"""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from torch.distributions import Normal

from agents import SAC

pytestmark = pytest.mark.usefixtures("one_thread")

B, O, A = 16, 3, 2  # batch, observation dim, action dim (2: sums over the action dims are exercised)
LOW, HIGH = np.array([-2.0, 0.0], np.float32), np.array([1.0, 3.0], np.float32)  # asymmetric box
GAMMA, TAU, ALPHA0 = 0.9, 0.3, 0.37  # none of them 0.5 or 1, so swapped / dropped factors show
# float32 code vs float64 reference on 16-wide nets: the largest observed gradient difference is 9e-8
# (10x under atol); the injected bugs of tests/mutants/sac.py move the checked values by far more.
TOL = dict(rtol=1e-5, atol=1e-6)


class StepEnv(gym.Env):
    """obs = [episode, t, 1], reward = t after the step. Even episodes terminate at t == 3; odd ones
    run until the TimeLimit truncates them at t == 5 (max_episode_steps below)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (O,), np.float32)
    action_space = gym.spaces.Box(LOW, HIGH, (A,), np.float32)

    def __init__(self):
        self.episode, self.t = -1, 0

    def _obs(self) -> np.ndarray:
        return np.array([self.episode, self.t, 1.0], np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        return self._obs(), float(self.t), self.episode % 2 == 0 and self.t == 3, False, {}


gym.register("SACEquationsStep-v0", entry_point=StepEnv, max_episode_steps=5)


def make_model(**overrides) -> SAC:
    cfg = dict(hidden_sizes=(16, 16), batch_size=B, total_steps=400, learning_starts=399, buffer_size=400,
               gamma=GAMMA, tau=TAU, init_alpha=ALPHA0, seed=0, device="cpu")
    model = SAC("SACEquationsStep-v0", **{**cfg, **overrides})
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # the target critics differ from the online ones (a fresh copy would hide a mix-up)
        for p in model.critic_target.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model


def make_batch(seed: int = 1) -> tuple[torch.Tensor, ...]:
    """Hand-made transitions: obs (B, O), act (B, A) inside the box, rew (B,), next_obs (B, O), term (B,)."""
    g = torch.Generator().manual_seed(seed)
    low, high = torch.from_numpy(LOW), torch.from_numpy(HIGH)
    obs = torch.randn(B, O, generator=g)
    act = low + (high - low) * torch.rand(B, A, generator=g)
    rew = torch.randn(B, generator=g)
    next_obs = torch.randn(B, O, generator=g)
    term = (torch.arange(B) % 3 == 0).float()  # a mix of terminal and bootstrapped rows
    return obs, act, rew, next_obs, term


class SampleRecorder:
    """Replaces ``model.actor.sample`` by a pass-through that records, per call, the input and the global
    RNG state just before it, so the reference can redraw the same eps ~ N(0, I) (B, A)."""

    def __init__(self, model: SAC):
        self.model, self.orig, self.calls = model, model.actor.sample, []
        model.actor.sample = self

    def __call__(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        state = torch.get_rng_state()
        action, log_pi = self.orig(obs)
        self.calls.append((obs.detach().clone(), state, action.detach().clone()))
        return action, log_pi

    def policy(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a (B, A) float32, log pi(a|s) (B,) float64 in the unit box) for the recorded call on ``obs``,
        by hand, differentiable in the actor's weights."""
        calls = [c for c in self.calls if torch.equal(c[0], obs)]
        assert len(calls) == 1, f"actor.sample was called {len(calls)} times on this batch"
        _, state, action = calls[0]
        gen = torch.Generator()
        gen.set_state(state)
        eps = torch.randn(obs.shape[0], A, generator=gen).double()
        dist = self.model.actor.dist(obs)
        mu, sigma = dist.loc.double(), dist.scale.double()
        u = mu + sigma * eps
        low, high = torch.from_numpy(LOW).double(), torch.from_numpy(HIGH).double()
        a = low + (torch.tanh(u) + 1.0) * (high - low) / 2.0
        # change of variables u -> tanh(u) (unit box): log N(u; mu, sigma) - sum log(1 - tanh(u)^2)
        log_pi = (Normal(mu, sigma).log_prob(u) - torch.log1p(-torch.tanh(u) ** 2)).sum(-1)
        torch.testing.assert_close(a.float(), action, rtol=1e-5, atol=1e-5, msg="redrawn noise differs")
        return a.float(), log_pi


def q_values(critic, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Q_j(s, a) (n, B) in float64."""
    return critic(obs, act).double()


def reference_target(model: SAC, rec: SampleRecorder, rew, next_obs, term, alpha: float) -> torch.Tensor:
    """y (B,) float64 by eq. 6, with the TARGET critics and the recorded next-action noise."""
    with torch.no_grad():
        next_a, next_log_pi = rec.policy(next_obs)
        q_next = q_values(model.critic_target, next_obs, next_a).min(dim=0).values
        return rew.double() + GAMMA * (1.0 - term.double()) * (q_next - alpha * next_log_pi)


def run_update(model: SAC, batch) -> tuple[torch.Tensor, dict[str, list], dict[str, list]]:
    """``model._update(*batch)``; returns its stats and, per parameter group, the gradients seen by the
    optimizer step and the parameter values right after the step (before Polyak averaging)."""
    groups = {"actor": list(model.actor.parameters()), "critic": list(model.critic.parameters()),
              "log_alpha": [model.log_alpha]}
    grads, stepped = {}, {}

    def pre(opt, args, kwargs):
        grads.update({k: [None if p.grad is None else p.grad.clone() for p in ps] for k, ps in groups.items()})

    def post(opt, args, kwargs):
        stepped.update({k: [p.detach().clone() for p in ps] for k, ps in groups.items()})

    hooks = [model.optimizer.register_step_pre_hook(pre), model.optimizer.register_step_post_hook(post)]
    stats = model._update(*batch)
    for h in hooks:
        h.remove()
    assert grads, "_update did not call optimizer.step"
    return stats, grads, stepped


def assert_grads_close(got: list, ref: list, what: str) -> None:
    assert len(got) == len(ref)
    for g, r in zip(got, ref, strict=True):
        assert g is not None, f"{what}: a parameter received no gradient"
        torch.testing.assert_close(g.double(), r.double(), **TOL, msg=lambda m: f"{what}: {m}")


def rel_diff(a: list, b: list) -> float:
    """||a - b|| / ||b|| over a list of tensors (how far a bug would move a gradient)."""
    num = sum(float((x - y).double().square().sum()) for x, y in zip(a, b, strict=True))
    return math.sqrt(num / sum(float(y.double().square().sum()) for y in b))


# -- the target ----------------------------------------------------------------------------------------
def test_target_matches_hand_computation_with_target_critics():
    model = make_model()
    rec = SampleRecorder(model)
    _, _, rew, next_obs, term = make_batch()
    alpha = torch.tensor([ALPHA0])
    y = model.compute_target(rew, next_obs, term, alpha)
    ref = reference_target(model, rec, rew, next_obs, term, ALPHA0)
    assert y.shape == (B,) and not y.requires_grad  # computed without autograd
    torch.testing.assert_close(y.double(), ref, **TOL)
    terminal = term.bool()
    torch.testing.assert_close(y[terminal], rew[terminal], rtol=0, atol=0)  # d = 1: no bootstrap at all
    # The checks can fail: the online critics, max or mean instead of min, and alpha = 1 all move y by far
    # more than TOL on the bootstrapped rows.
    with torch.no_grad():
        next_a, next_log_pi = rec.policy(next_obs)
        q_t, q_o = q_values(model.critic_target, next_obs, next_a), q_values(model.critic, next_obs, next_a)
    live = ~terminal
    assert (q_t.min(0).values - q_o.min(0).values)[live].abs().min() > 1e-2
    assert (q_t.max(0).values - q_t.min(0).values)[live].abs().min() > 1e-3
    assert ((1 - ALPHA0) * next_log_pi)[live].abs().min() > 1e-2
    model.close()


def test_truncation_bootstraps_and_termination_does_not_through_learn():
    """Episodes 0, 2 terminate at t = 3; episode 1 is truncated by the time limit at t = 5. The buffer
    must store d = 1 for the terminations only, and keep the final obs of the truncated step."""
    model = make_model()
    model.learn(12)  # rows: ep 0 (3 steps, terminated), ep 1 (5 steps, truncated), ep 2 (3 steps, term.), ep 3
    obs, act, rew, next_obs, term = model.buffer.sample(200, np.random.default_rng(0), torch.device("cpu"))
    episode, t_next = obs[:, 0], next_obs[:, 1]
    terminated = (episode % 2 == 0) & (t_next == 3)
    truncated = (episode % 2 == 1) & (t_next == 5)
    assert terminated.any() and truncated.any()
    torch.testing.assert_close(term, terminated.float(), rtol=0, atol=0)
    torch.testing.assert_close(next_obs[:, 0], episode, rtol=0, atol=0)  # s' is the final obs, not the reset obs
    torch.testing.assert_close(t_next, obs[:, 1] + 1, rtol=0, atol=0)
    torch.testing.assert_close(rew, t_next, rtol=0, atol=0)
    # Through the target: the truncated step bootstraps exactly like a non-terminal one.
    alpha = torch.tensor([ALPHA0])
    torch.manual_seed(3)
    y = model.compute_target(rew, next_obs, term, alpha)
    torch.manual_seed(3)
    y_boot = model.compute_target(rew, next_obs, torch.zeros_like(term), alpha)
    torch.testing.assert_close(y[terminated], rew[terminated], rtol=0, atol=0)
    torch.testing.assert_close(y[~terminated], y_boot[~terminated], rtol=0, atol=0)
    assert (y[truncated] - rew[truncated]).abs().min() > 1e-2
    model.close()


# -- the three losses of one update and their gradients ------------------------------------------------
@pytest.mark.parametrize("learn_alpha", [True, False])
def test_update_losses_and_isolated_gradients(learn_alpha):
    model = make_model() if learn_alpha else make_model(alpha=ALPHA0)
    assert model.learn_alpha is learn_alpha
    rec = SampleRecorder(model)
    obs, act, rew, next_obs, term = batch = make_batch()
    alpha = model.log_alpha.exp().item()
    assert alpha == pytest.approx(ALPHA0)
    stats, grads, _ = run_update(model, batch)

    # The reference runs on a second model built alike (same seed: the pre-update weights), with the
    # noise recorded in the first one's update.
    model2 = make_model() if learn_alpha else make_model(alpha=ALPHA0)
    rec2 = SampleRecorder(model2)
    rec2.calls = rec.calls  # the same recorded noise
    actor_p, critic_p = list(model2.actor.parameters()), list(model2.critic.parameters())

    y = reference_target(model2, rec2, rew, next_obs, term, alpha)  # (B,), a constant

    # Critic (eq. 5): gradients of the critic loss alone, into the critics only.
    critic_loss = 0.5 * (q_values(model2.critic, obs, act) - y).square().mean(dim=1).sum()
    ref_critic = torch.autograd.grad(critic_loss, critic_p)
    assert_grads_close(grads["critic"], ref_critic, "critic")

    # Actor (eq. 7): pathwise, a = f(eps; s) built by hand; critic weights constant (grad w.r.t. actor only).
    a_pi, log_pi = rec2.policy(obs)
    q_pi = q_values(model2.critic, obs, a_pi).min(dim=0).values
    actor_loss = (alpha * log_pi - q_pi).mean()
    ref_actor = torch.autograd.grad(actor_loss, actor_p, retain_graph=True)
    assert_grads_close(grads["actor"], ref_actor, "actor")
    # The check can fail: dropping the pathwise dQ/da term (a detached action) or using the mean over the
    # critics moves the actor gradient by far more than TOL.
    no_q = torch.autograd.grad((alpha * log_pi).mean(), actor_p, retain_graph=True)
    mean_q = torch.autograd.grad((alpha * log_pi - q_values(model2.critic, obs, a_pi).mean(0)).mean(), actor_p)
    assert rel_diff(no_q, ref_actor) > 0.05 and rel_diff(mean_q, ref_actor) > 1e-3

    # Temperature (eq. 18): d/d log_alpha of -log_alpha mean(log pi + H_target), log pi a constant.
    if learn_alpha:
        ref_alpha = -(log_pi.detach() + model.target_entropy).mean()
        assert grads["log_alpha"][0] is not None
        torch.testing.assert_close(grads["log_alpha"][0].double(), ref_alpha.reshape(1), **TOL)
        assert abs(math.log(alpha)) > 0.5  # so log pi leaking into the actor through this loss would show
    else:
        assert grads["log_alpha"][0] is None and model.log_alpha.exp().item() == pytest.approx(ALPHA0)

    # The reported stats: [critic loss, actor loss, alpha, entropy estimate -mean log pi].
    ref_stats = torch.stack([critic_loss, actor_loss, torch.tensor(alpha, dtype=torch.float64), -log_pi.mean()])
    torch.testing.assert_close(stats.double(), ref_stats.detach(), **TOL)
    # No gradient ever reaches the target critics.
    assert all(p.grad is None for p in model.critic_target.parameters())
    model.close()
    model2.close()


def test_temperature_moves_alpha_towards_the_target_entropy():
    """Sign of eq. 18: entropy below target -> alpha grows; above -> alpha shrinks (one Adam step of +-lr)."""
    for target_entropy, direction in ((50.0, 1.0), (-50.0, -1.0)):
        model = make_model(target_entropy=target_entropy, learning_rate=1e-3)
        before = model.log_alpha.item()
        _, grads, stepped = run_update(model, make_batch())
        assert float(grads["log_alpha"][0]) * direction < 0
        # Adam's first step moves each parameter by lr * sign(grad) (|m_hat / sqrt(v_hat)| = 1).
        assert stepped["log_alpha"][0].item() - before == pytest.approx(direction * 1e-3, rel=1e-3)
        model.close()


# -- Polyak averaging ----------------------------------------------------------------------------------
def test_update_polyak_averages_the_target_critics():
    model = make_model()
    before = [p.detach().clone() for p in model.critic_target.parameters()]
    _, _, stepped = run_update(model, make_batch())
    # theta' <- tau theta + (1 - tau) theta' with theta the critics AFTER the optimizer step.
    for t, b, c in zip(model.critic_target.parameters(), before, stepped["critic"], strict=True):
        torch.testing.assert_close(t, TAU * c + (1 - TAU) * b, rtol=1e-6, atol=1e-7)
        assert (c - b).abs().max() > 1e-2  # tau vs 1 - tau is distinguishable
    # ...and the online critics are left as the optimizer made them (not pulled towards the targets).
    for p, c in zip(model.critic.parameters(), stepped["critic"], strict=True):
        torch.testing.assert_close(p.detach(), c, rtol=0, atol=0)
    model.close()
