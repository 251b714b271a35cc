"""The cross-domain comparison: one --quick run end to end, then its numbers checked against the
closed forms and the statistical claims the README makes."""

import math

import numpy as np
import pytest
import torch
from conftest import load_script

from reparam_apps.toy import TOY_OBJECTIVES

compare_domains = load_script("compare_domains")
MU, SIGMA = compare_domains.TOY_MU, compare_domains.TOY_SIGMA

BIASED_BY_DESIGN = {"gumbel-softmax", "straight-through"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    cfg = compare_domains.CompareConfig(out=str(out), quick=True, progress=False)
    return compare_domains.run(cfg)


def test_quick_run_writes_table_csv_and_images(quick):
    out = quick["out"]
    for name in ("measurements.csv", "table.md", "variance_bars.png", "toy_variance_vs_k.png",
                 "learning_curves.png", "learning_curves.csv", "config.json"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    table = (out / "table.md").read_text()
    for domain in compare_domains.DOMAINS:
        assert f"| {domain} |" in table


def _sample_variance_se(per_sample, n, repeats):
    """Standard error of the sample variance of a mean of n per-sample estimates, from the estimator's
    exact central moments (Gauss-Hermite quadrature over eps ~ N(0, 1))."""
    x, w = np.polynomial.hermite_e.hermegauss(120)
    w = w / w.sum()
    v = per_sample(x)
    c = v - (w * v).sum()
    mu2, mu4 = (w * c**2).sum(), (w * c**4).sum()
    var, m4 = mu2 / n, (mu4 + 3 * (n - 1) * mu2**2) / n**3
    return math.sqrt((m4 - var**2) / repeats)


def test_toy_variances_match_closed_forms(quick):
    rows = [r for r in quick["rows"] if r.domain == "toy" and r.estimator in ("pathwise", "score")]
    assert len(rows) >= 10
    for r in rows:
        key = next(k for k, o in TOY_OBJECTIVES.items() if r.case.startswith(o.name))
        obj, k = TOY_OBJECTIVES[key], float(r.case.split("k=")[1])

        def per_sample(eps, obj=obj, k=k, est=r.estimator):
            x = torch.tensor(MU + SIGMA * eps, dtype=torch.float64, requires_grad=True)
            fx = obj.f(x, k)
            if est == "score":
                return (fx * (x - MU) / SIGMA**2).detach().numpy()
            (g,) = torch.autograd.grad(fx.sum(), x)
            return g.numpy()

        se = _sample_variance_se(per_sample, r.n_samples, r.repeats)
        assert abs(r.total_variance - r.closed_form_variance) < 5 * se, (r.case, r.estimator)


def test_every_unbiased_estimator_is_unbiased_in_every_domain(quick):
    rows = [r for r in quick["rows"] if r.estimator not in BIASED_BY_DESIGN]
    assert {r.domain for r in rows} == set(compare_domains.DOMAINS)
    for r in rows:
        # max |z| over 8 projections of an unbiased estimator exceeds 4.5 with probability ~5e-5
        assert r.bias_z < 4.5, (r.domain, r.case, r.estimator, r.bias_z)


def test_gumbel_softmax_relaxation_bias_is_detected(quick):
    gs = next(r for r in quick["rows"] if r.estimator == "gumbel-softmax")
    assert gs.bias_z > 4.5 and gs.variance_ratio < 0.5  # lower variance, bought with bias


def test_score_function_variance_exceeds_pathwise_in_vae_and_bnn(quick):
    for domain in ("vae", "bnn"):
        rows = {r.estimator: r for r in quick["rows"] if r.domain == domain}
        for name in ("score", "score+loo", "score+optimal"):
            assert rows[name].total_variance > 5 * rows["pathwise"].total_variance, (domain, name)
    bnn = {r.estimator: r for r in quick["rows"] if r.domain == "bnn"}
    # local reparameterization and Flipout decorrelate the examples of a batch: lower variance
    assert bnn["local-reparam"].total_variance < bnn["pathwise"].total_variance
    assert bnn["flipout"].total_variance < bnn["pathwise"].total_variance


def test_learning_curves_pathwise_ends_best(quick):
    toy, vae = quick["curves"]["toy"], quick["curves"]["vae"]
    assert toy["pathwise"][-1][1] < toy["score"][-1][1]
    assert toy["pathwise"][-1][1] < 0.1 * toy["pathwise"][0][1]  # it really optimised
    assert vae["pathwise"][-1][1] > vae["score"][-1][1]  # ELBO: higher is better
    assert vae["pathwise"][-1][1] > vae["pathwise"][0][1] + 5  # a real improvement (nats)


def test_bad_domain_is_a_clear_error(tmp_path):
    import reparam_apps as ra

    with pytest.raises(ra.UserError, match="unknown domain"):
        compare_domains.run(compare_domains.CompareConfig(out=str(tmp_path), domains=["atari"]))
