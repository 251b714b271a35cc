"""scripts/train_vae.py end to end (in-process for speed, one subprocess for the real exit code)."""

import csv
import json
import sys
from pathlib import Path

import pytest
from conftest import load_script

from reparam_apps import run_cli

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_vae.py"
FAST = ["--hidden", "32", "--latent-dim", "2", "--batch-size", "64", "--iwae-k", "20", "--iwae-n", "30",
        "--threads", "1"]


@pytest.fixture(scope="module")
def script():
    return load_script("train_vae")


def run(script, monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """Run the script's main through run_cli with these arguments; (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["train_vae.py", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        run_cli(script.main)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def metrics(folder: Path) -> list[dict]:
    with open(folder / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_folder_contents_and_resume_matches_an_uninterrupted_run(script, monkeypatch, capsys, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    code, out, _ = run(script, monkeypatch, capsys, "--out", full, "--epochs", 2, *FAST)
    assert code == 0 and "final test ELBO" in out and "IWAE(k=20)" in out
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "final.json", "reconstructions.png",
                 "samples.png", "elbo.png", "manifold.png"):
        assert (full / name).is_file(), name
    rows = metrics(full)
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert {"train_elbo", "train_rec", "train_kl", "test_elbo", "test_rec", "test_kl"} <= set(rows[0])
    final = json.loads((full / "final.json").read_text())
    assert final["iwae_k"] == 20 and final["iwae_n"] == 30 and final["test_elbo"] < 0
    # 1 epoch, then --resume to 2: the second epoch is the uninterrupted run's second epoch
    assert run(script, monkeypatch, capsys, "--out", part, "--epochs", 1, *FAST, "--iwae-k", 0)[0] == 0
    assert run(script, monkeypatch, capsys, "--out", part, "--epochs", 2, "--resume", *FAST)[0] == 0
    resumed = metrics(part)
    assert len(resumed) == 2
    for key in ("train_elbo", "test_elbo", "train_kl"):
        assert resumed[1][key] == rows[1][key], key
    # a second start on the same folder without --resume is refused
    code, _, err = run(script, monkeypatch, capsys, "--out", part, *FAST)
    assert code == 2 and "--resume" in err


def test_categorical_score_function_run(script, monkeypatch, capsys, tmp_path):
    code, out, _ = run(script, monkeypatch, capsys, "--out", tmp_path / "c", "--epochs", 1, "--model", "categorical",
                       "--estimator", "score-function", "--n-classes", "4", *FAST)
    assert code == 0 and "final test ELBO" in out
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())
    assert cfg["model"] == "categorical" and cfg["estimator"] == "score-function"
    assert "temperature" in metrics(tmp_path / "c")[0]


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist", "--data-dir", "{tmp}"], "t10k-images-idx3-ubyte"),
    (["--dataset", "mnist"], "--data-dir"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--epochs", "-1"], "--epochs must be positive"),
    (["--latent-dim", "0"], "--latent-dim must be positive"),
    (["--hidden", "400,abc"], "--hidden"),
    (["--model", "categorical", "--temperature", "0"], "--temperature must be a positive number"),
    (["--temperature", "0.3", "--temperature-min", "0.5"], "must not exceed"),
    (["--lr", "nan"], "--lr"),
    (["--arch", "conv", "--dataset", "digits", "--hidden", "8", "--epochs", "1", "--sf-samples", "1",
      "--estimator", "score-function"], "leave-one-out"),
    (["--resume"], "cannot resume"),
])
def test_bad_input_is_one_line_and_exit_code_2(script, monkeypatch, capsys, tmp_path, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run(script, monkeypatch, capsys, "--out", tmp_path / "run", *args)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err


def test_corrupt_checkpoint_on_resume_is_a_clear_error(script, monkeypatch, capsys, tmp_path):
    assert run(script, monkeypatch, capsys, "--out", tmp_path, "--epochs", 1, *FAST)[0] == 0
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00" * 100)
    code, _, err = run(script, monkeypatch, capsys, "--out", tmp_path, "--epochs", 2, "--resume", *FAST)
    assert code == 2 and "corrupt" in err and err.count("\n") == 1


def test_help_lists_every_flag_with_defaults_and_unknown_choices_exit_2(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train_vae.py", "--help"])
    with pytest.raises(SystemExit) as exc:
        script.build_parser().parse_args()
    assert exc.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--dataset", "--data-dir", "--model", "--latent-dim", "--epochs", "--batch-size", "--lr", "--beta",
                 "--warmup", "--seed", "--device", "--out", "--resume", "--iwae-k", "--hard", "--binarize"):
        assert flag in help_text, flag
    assert "(default: 100)" in help_text  # defaults are shown
    code, _, err = run(script, monkeypatch, capsys, "--model", "flow")
    assert code == 2 and "invalid choice" in err
