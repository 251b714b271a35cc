"""The cross-domain comparison (compare.cli, reparam-compare): one --quick run end to end with its numbers
checked against the closed forms and the statistical claims the docs make; then the spine's lifecycle on
a small run (toy and discrete domains): Ctrl-C, kill -9 and --resume at domain granularity, refusals."""

import csv
import dataclasses
import io
import math
import os
import signal
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import pytest
import torch

import compare.domains
from compare import DOMAINS, CompareConfig, read_curves, read_rows
from compare.cli import main
from compare.domains import TOY_MU as MU
from compare.domains import TOY_SIGMA as SIGMA
from reparam_apps import experiment as ex
from reparam_apps.toy import TOY_OBJECTIVES

ROOT = Path(__file__).resolve().parents[1]
BIASED_BY_DESIGN = {"gumbel-softmax", "straight-through"}
SMALL = ["--domains", "toy", "discrete", "--quick", "--repeats", "10", "--threads", "1", "--no-progress"]
WALL_CLOCK = "us_per_estimate"


def cli(*args) -> tuple[int, str, str]:
    """Run main through run_cli (as the console command does); (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: main([str(a) for a in args]))
    return exc.value.code, out.getvalue(), err.getvalue()


def table(folder: Path, name: str) -> list[dict]:
    """A CSV's rows without the wall-clock column (it differs between any two runs)."""
    with open(folder / name, newline="") as fh:
        return [{k: v for k, v in r.items() if k != WALL_CLOCK} for r in csv.DictReader(fh)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare") / "quick"
    code, stdout, _ = cli("--quick", "--out", out, "--threads", "1", "--no-progress")
    assert code == 0 and "| sac |" in stdout
    return {"out": out, "rows": read_rows(out), "curves": read_curves(out)}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An uninterrupted small run: the reference of the interruption tests."""
    out = tmp_path_factory.mktemp("compare") / "small"
    assert cli("--out", out, *SMALL)[0] == 0
    return out


# -- the measurements -------------------------------------------------------------------------------
def test_quick_run_writes_table_csv_and_images(quick):
    out = quick["out"]
    for name in ("measurements.csv", "table.md", "variance_bars.png", "toy_variance_vs_k.png", "learning_curves.png",
                 "learning_curves.csv", "speed.csv", "config.json", "summary.json", "latest.pt"):
        assert (out / name).is_file(), name
    for png in out.glob("*.png"):
        assert png.read_bytes()[:4] == b"\x89PNG"
    text = (out / "table.md").read_text()
    for domain in DOMAINS:
        assert f"| {domain} |" in text
    assert {r["unit"] for r in table(out, "speed.csv")} == {*DOMAINS, "curves:toy", "curves:vae"}


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
        # 5 standard errors; the CSV's 6 significant digits are far below one
        assert abs(r.total_variance - r.closed_form_variance) < 5 * se, (r.case, r.estimator)


def test_every_unbiased_estimator_is_unbiased_in_every_domain(quick):
    rows = [r for r in quick["rows"] if r.estimator not in BIASED_BY_DESIGN]
    assert {r.domain for r in rows} == set(DOMAINS)
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
    sac = {r.estimator: r for r in quick["rows"] if r.domain == "sac"}
    assert sac["score"].total_variance > 100 * sac["pathwise"].total_variance
    assert sac["score+loo"].total_variance < 0.01 * sac["score"].total_variance  # the baseline matters there


def _mean_error_bound(r, path, repeats_ref: int) -> float:
    """A bound on |E_hat g - reference| that a correct (unbiased) estimator's mean exceeds with probability
    <= e^-9 ~ 1e-4: d = mean of R estimates - mean of R_ref pathwise estimates is ~N(0, Sigma) (CLT) with
    tr Sigma = V / R + V_path / R_ref, and |d|^2 <= tr Sigma (1 + 2 sqrt(t) + 2 t) = 25 tr Sigma at t = 9
    (Laurent-Massart, with tr Sigma^2 <= (tr Sigma)^2 and ||Sigma|| <= tr Sigma)."""
    return 5.0 * math.sqrt(r.total_variance / r.repeats + path.total_variance / repeats_ref)


def test_flows_pathwise_has_lower_variance_and_agrees_with_the_score_function_in_mean(quick):
    cases = {}
    for r in quick["rows"]:
        if r.domain == "flows":
            cases.setdefault(r.case, {})[r.estimator] = r
    assert set(cases) == {"VAE encoder (IAF posterior)", "SAC actor (IAF policy)"}
    repeats_ref = CompareConfig().reference_factor * next(iter(cases.values()))["pathwise"].repeats
    for case, rows in cases.items():
        path, score = rows["pathwise"], rows["score"]
        # observed ~1e3x (VAE) and ~6e3x (policy); a 10x margin is far outside the variances' sampling error
        assert score.total_variance > 10 * path.total_variance, case
        # both means sit within the bound of the same reference, so within the sum of the bounds of each other
        for r in (path, score):
            assert r.bias < _mean_error_bound(r, path, repeats_ref), (case, r.estimator, r.bias)
        assert path.snr > score.snr, case


def test_learning_curves_pathwise_ends_best(quick):
    toy, vae = quick["curves"]["toy"], quick["curves"]["vae"]
    assert toy["pathwise"][-1][1] < toy["score"][-1][1]
    assert toy["pathwise"][-1][1] < 0.1 * toy["pathwise"][0][1]  # it really optimised
    assert vae["pathwise"][-1][1] > vae["score"][-1][1]  # ELBO: higher is better
    assert vae["pathwise"][-1][1] > vae["pathwise"][0][1] + 5  # a real improvement (nats)
    assert {pts[0] for pts in vae.values()} == {vae["pathwise"][0]}  # every estimator starts from the same model


# -- the entry point on the spine ----------------------------------------------------------------------
def test_help_shows_every_field_with_its_doc_and_default(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    docs = ex.field_docs(CompareConfig)
    for f in dataclasses.fields(CompareConfig):
        assert docs.get(f.name), f"{f.name} has no docstring"
        if f.metadata.get("cli", True) is False:
            assert f"--{f.name}" not in text
            continue
        shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else str(f.default)
        assert "".join(docs[f.name].split()) in text and f"--{f.name.replace('_', '-')}" in text, f.name
        assert f"(default:{''.join(shown.split())})" in text, (f.name, shown)
    for flag in ("--out", "--resume", "--log-every", "--no-progress", "--tensorboard"):
        assert flag in text


def test_occupied_folder_and_changed_flags_on_resume_are_refused_by_name(small):
    before = (small / "measurements.csv").read_bytes()
    code, _, err = cli("--out", small, *SMALL)
    assert code == 2 and "already holds a run: continue it with --resume" in err
    for flag, value in (("--repeats", 50), ("--n-samples", 8), ("--domains", "toy"), ("--seed", 1)):
        code, _, err = cli("--out", small, "--resume", flag, value)
        assert code == 2 and f"{flag} cannot change" in err, (flag, err)
    assert (small / "measurements.csv").read_bytes() == before
    code, _, err = cli("--domains", "toy", "atari")
    assert code == 2 and err.startswith("error: domains must be one or more of toy") and err.count("\n") == 1


def test_ctrl_c_abandons_the_domain_saves_and_resume_gives_the_same_rows(tmp_path, monkeypatch, small):
    real = compare.domains.DOMAIN_FUNCTIONS["discrete"]

    def interrupted(cfg, stop):
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C as the discrete domain starts
        return real(cfg, stop)

    monkeypatch.setitem(compare.domains.DOMAIN_FUNCTIONS, "discrete", interrupted)
    out = tmp_path / "cut"
    code, _, err = cli("--out", out, *SMALL)
    assert code == 130 and "interrupted at 1/3 domains done (toy): saved" in err and "--resume" in err
    assert ex.load_checkpoint(out / "latest.pt", "compare")["done"] == ["toy"]
    assert {r["domain"] for r in table(out, "measurements.csv")} == {"toy"}
    monkeypatch.setitem(compare.domains.DOMAIN_FUNCTIONS, "discrete", real)
    code, stdout, _ = cli("--out", out, "--resume", "--threads", "2")  # threads may change
    assert code == 0 and "| discrete |" in stdout
    for name in ("measurements.csv", "learning_curves.csv"):
        assert table(out, name) == table(small, name), name


def test_kill_9_mid_domain_then_resume_by_name(tmp_path, monkeypatch, small):
    """The script in a subprocess, SIGKILLed after 2 rows of the discrete domain (the toy domain and its
    checkpoint done), then --resume without --out: the newest run of that name continues, the discrete
    rows are measured again, and the rows equal the uninterrupted run's."""
    n_toy = sum(r["domain"] == "toy" for r in table(small, "measurements.csv"))
    env = {**os.environ, "REPARAM_TEST_KILL_AT_ROW": str(n_toy + 1 + 2)}  # + the toy's speed.csv row
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_domains.py"), *SMALL], env=env,
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    (out,) = (tmp_path / "runs" / "compare").iterdir()
    assert out.name.startswith("toy-discrete-quick_s0_")
    assert (out / "measurements.csv").read_text().endswith("99999,0.")  # the torn row
    monkeypatch.chdir(tmp_path)
    code, _, err = cli("--resume", "--domains", "toy", "discrete", "--quick")  # the flags that name the run
    assert code == 0 and "resuming" in err
    for name in ("measurements.csv", "learning_curves.csv"):
        assert table(out, name) == table(small, name), name
