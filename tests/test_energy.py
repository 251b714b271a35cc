"""The 2-D energy toy (vae/energy.py): the energies' gradients against closed forms and finite differences,
log Z against the closed form, the reverse-KL estimate and the importance-sampled log Z against the
closed-form KL of a Gaussian q, and every flow kind beating the best diagonal Gaussian on the banana."""

from __future__ import annotations

import math

import pytest
import torch

from reparam_apps.flows import FLOW_KINDS
from vae.energy import (
    BANANA,
    ENERGIES,
    KINDS,
    Energy,
    Variational,
    banana_energy,
    evaluate,
    fit,
    log_z_quadrature,
    two_moons_energy,
)

pytestmark = pytest.mark.usefixtures("one_thread")
A, B, D = BANANA["a"], BANANA["b"], BANANA["d"]


def _two_moons_grad(z: torch.Tensor) -> torch.Tensor:
    """dU1/dz by hand: the ring term ((r - 2) / 0.4^2) z / r, minus the lobe mixture's softmax-weighted slopes."""
    z1 = z[:, 0]
    r = z.norm(dim=-1, keepdim=True)
    ring = (r - 2.0) / 0.16 * z / r
    a, b = -0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2
    wa = torch.sigmoid(a - b)
    dlobes = wa * (-(z1 - 2) / 0.36) + (1 - wa) * (-(z1 + 2) / 0.36)
    return ring - torch.stack([dlobes, torch.zeros_like(z1)], -1)


def _banana_grad(z: torch.Tensor) -> torch.Tensor:
    z1, z2 = z[:, 0], z[:, 1]
    res = z2 - B * (z1 ** 2 - A * A)
    return torch.stack([z1 / A ** 2 - 2 * B * z1 * res / D ** 2, res / D ** 2], -1)


@pytest.mark.parametrize("energy, grad", [(two_moons_energy, _two_moons_grad), (banana_energy, _banana_grad)])
def test_energy_gradients_match_closed_forms_and_finite_differences(energy, grad):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, 2, generator=g, dtype=torch.float64) * 2).requires_grad_()
    (auto,) = torch.autograd.grad(energy(z).sum(), z)
    torch.testing.assert_close(auto, grad(z.detach()), rtol=1e-10, atol=1e-10)
    h = 1e-6  # central differences: error O(h^2 U''') + O(eps / h), about 1e-8 here
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        fd = (energy(z.detach() + e) - energy(z.detach() - e)) / (2 * h)
        torch.testing.assert_close(fd, auto[:, i], rtol=1e-6, atol=1e-6)


def test_log_z_quadrature_matches_the_banana_closed_form_and_converges_on_the_moons():
    exact = math.log(2 * math.pi * A * D)
    assert ENERGIES["banana"].log_z() == exact
    # the box holds all but ~4e-8 of the mass: |z1| < 6.6 is 5.5 sd, and z2 - b (z1^2 - a^2) is within 12 d there
    assert log_z_quadrature(banana_energy, (-6.6, 6.6, -6.0, 31.0), 1601) == pytest.approx(exact, abs=1e-6)
    moons = ENERGIES["two_moons"]
    assert moons.log_z() == pytest.approx(log_z_quadrature(two_moons_energy, (-6.0, 6.0, -6.0, 6.0), 1601), abs=1e-6)


def _gaussian_kl_banana(m1: float, m2: float, s1: float, s2: float) -> float:
    """KL(N(m, diag s^2) || banana) in closed form: -H(q) + E_q[U] + log Z, with E[z1^4] of a Gaussian."""
    ez1_2 = m1 ** 2 + s1 ** 2
    var_z1_2 = 4 * m1 ** 2 * s1 ** 2 + 2 * s1 ** 4
    mean_res = m2 - B * (ez1_2 - A * A)
    e_u = ez1_2 / (2 * A * A) + (s2 ** 2 + B * B * var_z1_2 + mean_res ** 2) / (2 * D * D)
    neg_entropy = -math.log(s1 * s2) - math.log(2 * math.pi) - 1.0
    return neg_entropy + e_u + math.log(2 * math.pi * A * D)


def _best_gaussian_kl_banana() -> float:
    """min over diagonal Gaussians: m1 = 0, m2 = b (s1^2 - a^2), s2 = d, and u = s1^2 the positive root of
    -1 + u / a^2 + 4 b^2 u^2 / d^2 = 0 (the stationarity condition in s1)."""
    c2, c1 = 4 * B * B / D ** 2, 1 / A ** 2
    u = (-c1 + math.sqrt(c1 * c1 + 4 * c2)) / (2 * c2)
    return _gaussian_kl_banana(0.0, B * (u - A * A), math.sqrt(u), D)


def test_the_best_gaussian_is_a_minimum_of_the_closed_form():
    best = _best_gaussian_kl_banana()
    c2, c1 = 4 * B * B / D ** 2, 1 / A ** 2
    u = (-c1 + math.sqrt(c1 * c1 + 4 * c2)) / (2 * c2)
    x0 = (0.0, B * (u - A * A), math.sqrt(u), D)
    for i in range(4):  # every coordinate moved either way raises the KL
        for step in (-1e-3, 1e-3):
            x = list(x0)
            x[i] += step
            assert _gaussian_kl_banana(*x) > best
    assert 0.55 < best < 0.65  # about 0.591 nats for a = 1.2, b = 0.6, d = 0.4


def test_evaluate_matches_the_closed_form_kl_of_a_gaussian_q():
    torch.manual_seed(0)
    q = Variational("gaussian")
    m, s = (0.3, -0.2), (0.8, 0.6)
    with torch.no_grad():
        q.loc.copy_(torch.tensor(m))
        q.log_scale.copy_(torch.tensor(s).log())
    n = 40000
    stats = evaluate(q, ENERGIES["banana"], n)
    kl = _gaussian_kl_banana(*m, *s)
    assert stats["neg_elbo"] + ENERGIES["banana"].log_z() == pytest.approx(kl, abs=4 * stats["neg_elbo_se"])  # 4 SE


def test_the_importance_sampled_log_z_is_consistent_when_the_weights_have_finite_variance():
    # On the banana no Gaussian q gives the weights a finite variance (p/q grows along the ridge), so the
    # check uses a Gaussian target N(0, 0.8^2 I), log Z = log(2 pi 0.8^2), and q = N(m, I), broader in every
    # direction: w = p*/q is bounded.
    target = Energy("gauss", lambda z: 0.5 * (z / 0.8).square().sum(-1), (-4.0, 4.0, -4.0, 4.0),
                    math.log(2 * math.pi * 0.64))
    torch.manual_seed(1)
    q = Variational("gaussian")
    with torch.no_grad():
        q.loc.copy_(torch.tensor([0.3, -0.2]))
        q.log_scale.zero_()
    n = 20000
    stats = evaluate(q, target, n)
    # delta method: SE(log Z_hat) = sqrt(Var(w) / (n E[w]^2)) = sqrt((n / ESS - 1) / n)
    se_log_z = math.sqrt((n / stats["ess"] - 1) / n)
    assert stats["log_z_is"] == pytest.approx(target.log_z(), abs=4 * se_log_z)
    assert 0.3 * n < stats["ess"] < n
    # KL(N(m, I) || N(0, 0.8^2 I)) in closed form, per dim: log(0.8) + (1 + m^2) / (2 * 0.64) - 1/2
    kl = sum(math.log(0.8) + (1 + mi ** 2) / 1.28 - 0.5 for mi in (0.3, -0.2))
    assert stats["neg_elbo"] + target.log_z() == pytest.approx(kl, abs=4 * stats["neg_elbo_se"])


FIT = {"steps": 250, "batch": 64, "lr": 5e-2, "hidden": (8,), "n_eval": 4000}


def test_a_fitted_gaussian_reaches_the_best_gaussian_and_no_further():
    best = _best_gaussian_kl_banana()
    r = fit(ENERGIES["banana"], "gaussian", **FIT)
    assert r.kl > best - 4 * r.neg_elbo_se  # no diagonal Gaussian beats the optimum (4 SE of the MC estimate)
    assert r.kl < best + 0.03
    assert r.losses[-1] < r.losses[0]


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_each_flow_beats_the_best_gaussian_on_the_banana(kind):
    # Every flow holds the diagonal Gaussians (its base), so it can only match them; 0.15 nats below the best
    # of them (25% of its KL) is the margin, far outside the estimate's 4 SE (about 0.05 nats at n_eval = 4000).
    best = _best_gaussian_kl_banana()
    r = fit(ENERGIES["banana"], kind, flow_steps=8 if kind == "planar" else 2, **FIT)
    assert r.kl + 4 * r.neg_elbo_se < best - 0.15, f"{kind}: KL {r.kl:.3f} vs best Gaussian {best:.3f}"


def test_variational_rejects_an_unknown_kind():
    assert KINDS[0] == "gaussian" and set(KINDS[1:]) == set(FLOW_KINDS)
    with pytest.raises(ValueError, match="unknown kind 'maf'"):
        Variational("maf")


def test_fit_energy_script_smoke(tmp_path):
    """scripts/fit_energy.py end to end with a few steps: the PNG and the table are written."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "fit_energy.py"
    res = subprocess.run([sys.executable, str(script), "--out", str(tmp_path), "--steps", "5", "--energies", "banana",
                          "--kinds", "gaussian", "iaf", "--grid", "20"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "flows_energy.png").stat().st_size > 0 and "iaf" in (tmp_path / "results.md").read_text()
