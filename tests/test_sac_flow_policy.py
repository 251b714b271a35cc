"""SAC's flow policy ((F1)-(F3) of agents/networks.py) against independent computations.

1. The core's ``tanh_squash``: action and log-det against torch.distributions' TanhTransform and
   AffineTransform; finite far out in the tails; scalar bounds count once per coordinate.
2. log pi(a|s) of ``Actor.sample`` equals the change of variables of the WHOLE map eps -> action, built here
   from the trunk, the head and the flow's ``transform`` (the steps' own log-dets are never read), with the
   Jacobian from ``torch.func.jacrev`` and the base density from torch.distributions: every flow kind.
3. The pathwise actor gradient reaches every flow parameter, and its directional derivative over ALL the
   actor's weights (trunk through the context, head, flow) equals a central finite difference on the same
   noise.
4. With identity steps (zero-initialised affine couplings: checked) the flow policy IS the tanh-Gaussian: the
   same actions, log pi and deterministic action on the same noise and weights.
5. SAC with ``policy='flow'`` trains a few hundred steps, and save/load round-trips; bad settings are refused.
"""

import math

import numpy as np
import pytest
import torch
from torch.distributions import AffineTransform, TanhTransform
from torch.distributions import Normal as TorchNormal
from torch.func import jacrev, vmap

from agents import SAC, SACConfig
from agents.networks import LOG_STD_MAX, LOG_STD_MIN, Actor, SquashedFlow
from reparam_apps import SquashBox, TanhNormal
from reparam_apps.distributions.tanh_normal import tanh_squash

pytestmark = pytest.mark.usefixtures("one_thread")
F64 = torch.float64
KINDS = ("planar", "iaf", "affine", "spline")
B, O, A = 5, 3, 2
LOW, HIGH = torch.tensor([-2.0, -0.5], dtype=F64), torch.tensor([2.0, 1.5], dtype=F64)


def actor(kind: str | None, steps: int = 2, perturb: bool = True, seed: int = 0) -> Actor:
    """A float64 actor O=3 -> trunk (6, 5) -> A=2 on the box [LOW, HIGH]; ``kind`` None: the tanh-Gaussian.
    ``perturb`` moves every flow weight off its initial value (zero-initialised couplings are the identity)."""
    torch.manual_seed(seed)
    policy = dict(policy="tanh-normal") if kind is None else dict(policy="flow", flow=kind, flow_steps=steps,
                                                                    flow_hidden=(7,))
    a = Actor(O, A, (6, 5), LOW, HIGH, **policy).double()
    if perturb and a.flow is not None:
        with torch.no_grad():
            for p in a.flow.parameters():
                p.add_(0.3 * torch.randn_like(p))
    return a


def observations(seed: int = 1) -> torch.Tensor:
    return torch.randn(B, O, dtype=F64, generator=torch.Generator().manual_seed(seed))


def base_by_hand(a: Actor, obs: torch.Tensor):
    """mu, sigma (B, A) and the context h (B, 5): the trunk's layers called one by one."""
    h = obs
    for layer in a.trunk:
        h = torch.relu(layer(h)) if isinstance(layer, torch.nn.Linear) else h
    mu, log_std = (h @ a.head.weight.T + a.head.bias).chunk(2, -1)
    return mu, log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).exp(), h


# --------------------------------------------------------------------------------------------- 1. squash
def test_tanh_squash_matches_torch_transforms_and_stays_finite():
    box = SquashBox(LOW, HIGH)
    u = torch.tensor([[0.3, -1.2], [4.0, 0.0], [-2.5, 7.0]], dtype=F64)
    action, log_det = tanh_squash(u, box)
    steps = [TanhTransform(), AffineTransform(0.5 * (HIGH + LOW), 0.5 * (HIGH - LOW))]
    ref, ref_ld = u, torch.zeros_like(u)
    for t in steps:
        y = t(ref)
        ref_ld, ref = ref_ld + t.log_abs_det_jacobian(ref, y), y
    torch.testing.assert_close(action, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(log_det, ref_ld.sum(-1), rtol=1e-10, atol=1e-10)
    a_unit, ld_unit = tanh_squash(u)  # no box: tanh only, log(1 - tanh^2) = log(4) - 2 log(e^u + e^-u)
    torch.testing.assert_close(a_unit, torch.tanh(u))
    torch.testing.assert_close(ld_unit, (math.log(4) - 2 * torch.logaddexp(u, -u)).sum(-1))
    far = torch.tensor([[-40.0, 400.0]], dtype=torch.float32)  # tanh(u) == +-1 in float: still exact and finite
    torch.testing.assert_close(tanh_squash(far)[1], torch.tensor([4 * math.log(2) - 80 - 800.0]))  # log 4 - 2|u| each
    scalar = SquashBox(torch.tensor(-3.0, dtype=F64), torch.tensor(3.0, dtype=F64))  # one bound for both dims
    torch.testing.assert_close(tanh_squash(u, scalar)[1], tanh_squash(u)[1] + 2 * math.log(3.0))


# ------------------------------------------------------------------------- 2. log pi from the whole map
@pytest.mark.parametrize("kind", KINDS)
def test_log_pi_is_the_change_of_variables_of_the_whole_map(kind):
    a, obs = actor(kind), observations()
    torch.manual_seed(7)
    action, log_pi = a.sample(obs)  # (B, A), (B,) in the unit box
    torch.manual_seed(7)
    eps = torch.randn(B, A, dtype=F64)  # the same noise (the base draws one standard normal per coordinate)
    mu, sigma, h = base_by_hand(a, obs)
    mid, half = 0.5 * (HIGH + LOW), 0.5 * (HIGH - LOW)

    def to_action(e, m, s, c):  # one state: eps (A,) -> action (A,), the context built here from the trunk
        u = a.flow(m, s, context=c, validate_args=False).transform(e)
        return mid + half * torch.tanh(u)

    jac = vmap(jacrev(to_action))(eps, mu, sigma, h)  # (B, A, A), d action / d eps
    torch.testing.assert_close(action, vmap(to_action)(eps, mu, sigma, h), rtol=1e-12, atol=1e-12)
    log_base = TorchNormal(torch.zeros_like(eps), 1.0).log_prob(eps).sum(-1)
    log_pi_env = log_base - torch.linalg.slogdet(jac)[1]  # density of the action in env units
    torch.testing.assert_close(log_pi, log_pi_env + (0.5 * (HIGH - LOW)).log().sum(), rtol=1e-9, atol=1e-9)
    dist = a.dist(obs)
    assert isinstance(dist, SquashedFlow)
    torch.testing.assert_close(dist.mode, vmap(to_action)(torch.zeros_like(eps), mu, sigma, h))
    assert ((dist.sample((4,)) > LOW) & (dist.sample((4,)) < HIGH)).all()


# ------------------------------------------------------------------------- 3. the pathwise gradient
def _loss(a: Actor, obs: torch.Tensor) -> torch.Tensor:
    """An actor loss on fixed noise: E[alpha log pi - Q(s, a)] with a smooth stand-in critic."""
    torch.manual_seed(11)
    action, log_pi = a.sample(obs)
    q = (action * torch.tensor([0.7, -1.3], dtype=F64)).sum(-1) - action.square().sum(-1) + obs[:, 0] * action[:, 0]
    return (0.2 * log_pi - q).mean()


@pytest.mark.parametrize("kind", ["iaf", "spline"])
def test_pathwise_gradient_reaches_the_flow_and_matches_finite_differences(kind):
    a, obs = actor(kind), observations()
    params = list(a.parameters())
    grads = torch.autograd.grad(_loss(a, obs), params)
    flow_ids = {id(p) for p in a.flow.parameters()}
    for p, g in zip(params, grads, strict=True):
        if id(p) in flow_ids and p.numel() > 0:
            assert g.abs().max() > 1e-8, "a flow parameter gets no gradient"
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction, strict=True))
    h = 1e-6

    def shifted(sign: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(sign * h * d)
            value = float(_loss(a, obs))
            for p, d in zip(params, direction, strict=True):
                p.sub_(sign * h * d)
        return value

    numeric = (shifted(1.0) - shifted(-1.0)) / (2 * h)  # central difference: error O(h^2) + rounding ~1e-10
    assert abs(float(analytic) - numeric) < 1e-6 * max(1.0, abs(numeric))


# ------------------------------------------------------------------------- 4. identity steps
def test_identity_flow_is_the_tanh_gaussian_on_the_same_noise():
    flow_actor, gauss = actor("affine", steps=3, perturb=False), actor(None)
    gauss.load_state_dict(flow_actor.state_dict(), strict=False)  # the same trunk and head
    obs = observations()
    mu, sigma, h = base_by_hand(flow_actor, obs)
    u0 = torch.randn(B, A, dtype=F64)
    for step in flow_actor.flow.transforms:  # zero-initialised couplings: each step is the identity
        y, log_det = step(u0, h)
        assert torch.equal(y, u0) and torch.equal(log_det, torch.zeros(B, dtype=F64))
    torch.manual_seed(3)
    a_flow, lp_flow = flow_actor.sample(obs)
    torch.manual_seed(3)
    a_gauss, lp_gauss = gauss.sample(obs)
    torch.testing.assert_close(a_flow, a_gauss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lp_flow, lp_gauss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(flow_actor.dist(obs).mode, gauss.dist(obs).mode)
    assert isinstance(gauss.dist(obs), TanhNormal)


def test_flow_actor_state_dict_round_trips():
    a, obs = actor("spline"), observations()
    b = actor("spline", perturb=False, seed=5)  # other weights, the same architecture
    b.load_state_dict(a.state_dict())
    torch.manual_seed(2)
    ref = a.sample(obs)
    torch.manual_seed(2)
    for x, y in zip(ref, b.sample(obs), strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.dist(obs).mode, b.dist(obs).mode)


# ------------------------------------------------------------------------- 5. SAC with the flow policy
def test_sac_trains_with_the_flow_policy_and_round_trips(tmp_path):
    model = SAC("Pendulum-v1", seed=0, total_steps=300, learning_starts=100, batch_size=32, buffer_size=300,
                hidden_sizes=(16, 16), policy="flow", policy_flow="iaf", policy_flow_steps=2, threads=1)
    assert model.actor.policy == "flow" and model.actor.flow is not None, \
        "agents/sac.py must build its actor with Actor.from_config (policy, policy_flow, policy_flow_steps)"
    flow_before = [p.detach().clone() for p in model.actor.flow.parameters()]
    seen = []
    model.learn(callback=lambda m, metrics: seen.append(metrics), log_every=100)
    assert model.num_updates == 200 and np.isfinite([r["critic_loss"] for r in seen[1:]]).all()
    assert any(not torch.equal(b, p) for b, p in zip(flow_before, model.actor.flow.parameters(), strict=True))
    obs = np.array([[0.3, -0.9, 0.5], [1.0, 0.0, -2.0]], dtype=np.float32)
    path = tmp_path / "sac.pt"
    model.save(path)
    loaded = SAC.load(path)
    assert loaded.config.policy == "flow" and loaded.config.policy_flow == "iaf"
    np.testing.assert_array_equal(loaded.predict(obs)[0], model.predict(obs)[0])
    for (k, v), (k2, v2) in zip(model.actor.state_dict().items(), loaded.actor.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), k
    model.close()
    loaded.close()


def test_bad_flow_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="needs an action dim >= 2"):
        Actor(3, 1, (8,), -torch.ones(1), torch.ones(1), policy="flow", flow="spline")
    with pytest.raises(ValueError, match="policy must be one of tanh-normal, flow"):
        SACConfig.for_env("Pendulum-v1", policy="normalizing")
    with pytest.raises(ValueError, match="policy_flow must be one of planar, iaf"):
        SACConfig.for_env("Pendulum-v1", policy="flow", policy_flow="maf")
    with pytest.raises(ValueError, match="policy_flow_steps must be a positive integer"):
        SACConfig.for_env("Pendulum-v1", policy="flow", policy_flow_steps=0)
