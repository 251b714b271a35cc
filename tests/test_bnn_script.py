"""scripts/train_bnn.py end to end: the toy intervals widen off the data, a short classification run
learns, the run folder is complete, and bad input gives one line and exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_script

from reparam_apps import UserError
from reparam_apps.data import DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_bnn.py"


@pytest.fixture(scope="module")
def train_bnn():
    return load_script("train_bnn")


pytestmark = pytest.mark.usefixtures("one_thread")


def test_toy_intervals_widen_off_the_data(train_bnn, tmp_path):
    out = tmp_path / "toy"
    # a short run (300 full-ish-batch steps); the full default run gives a x8.9 widening (README, Bayes by Backprop)
    assert train_bnn.main(["toy", "--epochs", "300", "--batch-size", "50", "--lr", "1e-2", "--init-rho", "-2",
                           "--hidden", "32", "--test-samples", "64", "--out", str(out), "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    # outside [0, 0.5] the epistemic std is several times the in-range one, and the total std grows with it
    assert summary["epistemic_std_outside"] > 2.0 * summary["epistemic_std_inside"]
    assert summary["std_outside"] > 1.2 * summary["std_inside"]
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "toy_regression.png", "loss.png"):
        assert (out / name).is_file(), name


def test_short_classification_run_beats_chance_and_lowers_nll(train_bnn, tmp_path):
    out = tmp_path / "digits"
    assert train_bnn.main(["classify", "--dataset", "digits", "--epochs", "4", "--hidden", "64", "--batch-size", "32",
                           "--lr", "3e-3", "--test-samples", "8", "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["error"] < 0.25  # chance is 0.9 on 10 classes
    assert s["nll"] < 0.5 * s["initial_nll"]
    assert s["entropy_noise"] > s["entropy_in_dist"]  # noise images are less certain than real digits
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "reliability.png", "test_error.png"):
        assert (out / name).is_file(), name


@pytest.mark.parametrize("argv, error, match", [
    (["bogus"], UserError, "invalid choice"),
    (["uci", "--dataset", "nope", "--data-dir", "."], UserError, "unknown UCI dataset"),
    (["classify", "--dataset", "cifar"], UserError, "unknown classify dataset"),
    (["uci"], UserError, "--data-dir"),
    (["toy", "--epochs", "0"], UserError, "positive"),
    (["toy", "--batch-size", "-3"], UserError, "positive"),
    (["toy", "--prior-sigma", "0"], ValueError, "prior scale"),
    (["toy", "--prior", "mixture", "--prior-sigma2", "-1"], ValueError, "sigma2"),
    (["toy", "--init-rho", "-200"], ValueError, "sigma must be positive"),
    (["classify", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist"], DataError, "does not exist"),
])
def test_bad_input_is_rejected_with_a_clear_error(train_bnn, tmp_path, argv, error, match):
    with pytest.raises(error, match=match):
        train_bnn.main(argv + ["--out", str(tmp_path / "run")])


def test_missing_uci_file_names_the_file(train_bnn, tmp_path):
    (tmp_path / "yacht").mkdir()
    (tmp_path / "yacht" / "n_splits.txt").write_text("20\n")
    with pytest.raises(DataError, match="data.txt"):
        train_bnn.main(["uci", "--dataset", "yacht", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])


def test_cli_exit_code_and_one_line_error(tmp_path):
    for argv in (["toy", "--prior-sigma", "-1"],):  # one subprocess: importing torch is the slow part
        proc = subprocess.run([sys.executable, str(SCRIPT), *argv, "--out", str(tmp_path / "r")],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr


def test_help_documents_every_flag_with_its_default(train_bnn):
    text = train_bnn.build_parser().format_help()
    for action in train_bnn.build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and ("default" in action.help), action.dest
    assert "toy" in text and "classify" in text


def test_benchmark_script_smoke_runs_timing_and_a_two_seed_accuracy_table():
    """scripts/bench_bnn.py end to end on the embedded digits, a few steps (timings are not asserted: speed claims
    live in the benchmark's own output), and a non-positive flag is refused with one line."""
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_bnn.py"), "--threads", "1", "--rounds", "1", "--steps", "2",
           "--no-peers", "--accuracy", "--epochs", "1", "--seeds", "2", "--test-samples", "2"]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    for row in ("| plain MLP | ", "| ours reparam | ", "| ours local | ", "| ours flipout | "):
        assert res.stdout.count(row) == 2, row  # the timing table and the accuracy table
    assert "seed 1 ours reparam" in res.stdout and "+-" in res.stdout
    bad = subprocess.run(cmd[:2] + ["--seeds", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--seeds must be positive" in bad.stderr and "Traceback" not in bad.stderr
