"""reparam-bnn / scripts/train_bnn.py: --help, bad input as one line with exit code 2, the run folder's rules
(no overwrite, changed flags on --resume refused by name), and a real kill -9 then --resume giving the
metrics of an uninterrupted run, for classify (epoch checkpoints) and uci (split checkpoints); and the smoke test
of scripts/bench_bnn.py."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_bnn_experiments import TINY_CLASSIFY, fake_uci, summary_of

from bnn import BNNConfig
from bnn.cli import entry, main
from reparam_apps import experiment as ex
from reparam_apps.data import DataError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_bnn.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_help_documents_every_flag_with_its_default(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    docs = ex.field_docs(BNNConfig)
    for f in dataclasses.fields(BNNConfig):
        assert docs.get(f.name), f"{f.name} has no docstring"
        assert " ".join(docs[f.name].split()) in text, f.name
    for action in ex.build_parser(BNNConfig)._actions:
        if action.dest != "help":
            assert action.help and "(default: " in action.help, action.dest
    assert "(default: toy 3000, uci 400, classify 30)" in text  # per-task defaults shown
    assert "--log-every" in text and "classify 1" in text
    with pytest.raises(SystemExit):
        main(["toy", "--help"])
    assert "(default: 10)" in " ".join(capsys.readouterr().out.split())  # the toy's --log-every


@pytest.mark.parametrize("argv, error, match", [
    ([], ex.UserError, "name the task: toy, uci, classify"),
    (["bogus"], ex.UserError, "task must be one of toy, uci, classify"),
    (["toy", "--lr", "abc"], ex.UserError, "'abc' is not a number"),
    (["toy", "--sampling", "nope"], ex.UserError, "invalid choice"),
    (["toy", "--dataset", "digits"], ValueError, "toy takes no --dataset"),
    (["uci", "--dataset", "nope", "--data-dir", "."], ValueError, "unknown UCI dataset"),
    (["classify", "--dataset", "cifar"], ValueError, "unknown classify dataset"),
    (["uci"], ValueError, "needs --data-dir"),
    (["classify", "--dataset", "mnist"], ValueError, "needs --data-dir"),
    (["toy", "--epochs", "0"], ValueError, "epochs must be a positive integer"),
    (["toy", "--batch-size", "-3"], ValueError, "batch_size must be a positive integer"),
    (["toy", "--lr", "-1"], ValueError, "lr must be a positive number"),
    (["toy", "--prior-sigma", "0"], ValueError, "prior scale"),
    (["toy", "--prior", "mixture", "--prior-sigma2", "-1"], ValueError, "sigma2"),
    (["toy", "--init-rho", "-200"], ValueError, "sigma must be positive"),
])
def test_bad_flags_are_refused_before_anything_is_written(tmp_path, argv, error, match):
    with pytest.raises(error, match=match):
        main(argv + ["--out", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


def test_missing_data_is_named(tmp_path):
    with pytest.raises(DataError, match="/nonexistent/mnist does not exist"):
        main(["classify", "--dataset", "mnist", "--data-dir", "/nonexistent/mnist", "--out", str(tmp_path / "m")])
    (tmp_path / "yacht").mkdir()
    (tmp_path / "yacht" / "n_splits.txt").write_text("20\n")
    with pytest.raises(DataError, match="data.txt"):
        main(["uci", "--dataset", "yacht", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")])


def test_an_error_is_one_line_with_exit_code_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REPARAM_DEBUG", raising=False)
    monkeypatch.setattr(sys, "argv", ["reparam-bnn", "toy", "--prior-sigma", "-1", "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        entry()
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: prior scale"), lines


def test_the_run_folder_is_never_overwritten_and_resume_refuses_changed_flags(tmp_path):
    out = tmp_path / "r"
    argv = TINY_CLASSIFY[:2] + ["1"] + TINY_CLASSIFY[3:] + ["--out", str(out)]  # 1 epoch
    assert main(argv) == 0
    before = (out / "metrics.csv").read_bytes()
    with pytest.raises(ex.UserError, match="already holds a run: continue it with --resume"):
        main(argv)
    with pytest.raises(ex.UserError, match=r"--lr cannot change \(saved 0.001, given 0.5\)"):
        main(["--out", str(out), "--resume", "--lr", "0.5"])
    with pytest.raises(ex.UserError, match=r"--test-samples cannot change"):
        main(["--out", str(out), "--resume", "--test-samples", "9"])
    assert (out / "metrics.csv").read_bytes() == before  # nothing touched
    assert main(["--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0  # more epochs: allowed
    assert [r["epoch"] for r in ex.MetricsCSV(out / "metrics.csv").rows()] == ["1", "2"]
    (out / "config.json").write_text("{not json")
    with pytest.raises(ex.UserError, match=r"r/config.json is not a readable run config"):
        main(["--out", str(out), "--resume"])


def test_a_uci_resume_takes_more_splits_but_not_more_epochs(tmp_path, monkeypatch):
    fake_uci(tmp_path / "uci")
    monkeypatch.chdir(tmp_path)  # the default folder: runs/bnn/<task>-<dataset>_s<seed>_<time> below here
    argv = ["uci", "--dataset", "yacht", "--data-dir", str(tmp_path / "uci"), "--seed", "3", "--no-progress"]
    assert main(argv + ["--epochs", "1", "--splits", "1", "--test-samples", "2", "--threads", "1"]) == 0
    (out,) = (tmp_path / "runs" / "bnn").iterdir()
    assert out.name.startswith("uci-yacht_s3_") and (out / "latest.pt").is_file()
    with pytest.raises(ex.UserError, match=r"--epochs cannot change \(saved 1, given 2\).*--splits"):
        main(argv + ["--resume", "--epochs", "2"])  # without --out: the newest run of this name
    assert main(argv + ["--resume", "--splits", "2"]) == 0
    assert [r["split"] for r in ex.MetricsCSV(out / "splits.csv").rows()] == ["0", "1"]


def _killed(cmd: list[str], at_row: int) -> None:
    env = {**os.environ, "REPARAM_TEST_KILL_AT_ROW": str(at_row)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr


def test_kill_9_during_classify_then_resume_equals_an_uninterrupted_run(tmp_path):
    """The real script in a subprocess (also its smoke test), SIGKILLed mid-row after epoch 2's metrics row
    (rows per epoch: metrics.csv, speed.csv), before epoch 2's checkpoint; --resume redoes epoch 2."""
    cut, full = tmp_path / "cut", tmp_path / "full"
    _killed([sys.executable, str(SCRIPT), *TINY_CLASSIFY, "--out", str(cut)], at_row=3)
    assert (cut / "metrics.csv").read_text().endswith("99999,0.")  # the torn row is there
    assert ex.load_checkpoint(cut / "latest.pt", "bnn")["step"] == 1
    assert main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    assert main(TINY_CLASSIFY + ["--out", str(full)]) == 0
    assert (cut / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert summary_of(cut) == summary_of(full)
    assert [r["epoch"] for r in ex.MetricsCSV(cut / "speed.csv").rows()] == ["1", "2", "3"]


def test_kill_9_during_uci_then_resume_keeps_finished_splits_and_equals_an_uninterrupted_run(tmp_path):
    """The console command in a subprocess, SIGKILLed in split 1 (rows per split: 2 epochs, splits.csv,
    speed.csv); --resume keeps split 0 and restarts split 1 from its start on its own seed."""
    fake_uci(tmp_path / "uci")
    command = shutil.which("reparam-bnn", path=str(Path(sys.executable).parent))
    assert command, "reparam-bnn is not installed beside this python (pip install -e .)"
    argv = ["uci", "--dataset", "yacht", "--data-dir", str(tmp_path / "uci"), "--epochs", "2", "--batch-size", "16",
            "--test-samples", "4", "--log-every", "1", "--threads", "1", "--no-progress"]
    cut, full = tmp_path / "cut", tmp_path / "full"
    _killed([command, *argv, "--out", str(cut)], at_row=6)
    assert ex.load_checkpoint(cut / "latest.pt", "bnn")["step"] == 1  # split 0 finished
    assert main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    assert main(argv + ["--out", str(full)]) == 0
    for name in ("metrics.csv", "splits.csv"):
        assert (cut / name).read_text() == (full / name).read_text(), name
    assert summary_of(cut) == summary_of(full)
    saved = json.loads((cut / "config.json").read_text())
    assert len(saved["resumes"]) == 1 and saved["resumes"][0]["changed"] == {}


@pytest.mark.slow  # a formatting-only smoke run of a benchmark: `pytest -m slow`
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
