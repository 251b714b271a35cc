"""reparam-vae (vae.cli) on the experiment spine: help, run folders, resume rules, kill -9 and Ctrl-C.

Runs are tiny (8x8 digits, 32 hidden units, 2-3 epochs) and in-process; two subprocesses run the real
script: one killed with SIGKILL mid-row, one resuming it to the end.
"""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import vae.train
from reparam_apps import experiment as ex
from vae.cli import main
from vae.config import VAEConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden", "32", "--latent-dim", "2", "--batch-size", "64", "--iwae-k", "20", "--iwae-n", "30",
        "--threads", "1", "--no-progress"]
WALL_CLOCK = {"seconds", "examples_per_s"}  # only in speed.csv; metrics.csv must match exactly


def cli(*args) -> tuple[int, str, str]:
    """Run main through run_cli (as the console command does); (exit code, stdout, stderr)."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err), pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: main([str(a) for a in args]))
    return exc.value.code, out.getvalue(), err.getvalue()


def metrics(folder: Path, name: str = "metrics.csv") -> list[dict]:
    with open(folder / name, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> Path:
    """An uninterrupted 3-epoch run: the reference for every resume test."""
    out = tmp_path_factory.mktemp("vae") / "full"
    code, stdout, _ = cli("--out", out, "--epochs", 3, *FAST)
    assert code == 0 and "final test ELBO" in stdout and "IWAE(k=20)" in stdout
    return out


def test_help_shows_every_field_with_its_doc_and_default(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = "".join(capsys.readouterr().out.split())  # argparse wraps lines, also at hyphens
    docs = ex.field_docs(VAEConfig)
    for f in dataclasses.fields(VAEConfig):
        assert docs.get(f.name), f"{f.name} has no docstring"
        assert "".join(docs[f.name].split()) in text, f.name
        flag = "--" + f.name.replace("_", "-")
        assert flag in text, flag
        shown = f.metadata.get("shown_default", f.default)
        shown = " ".join(map(str, shown)) if isinstance(shown, tuple) else str(shown)
        if isinstance(f.default, float) and 0 < abs(f.default) < 1e-3:
            shown = f"{f.default:g}"
        assert "".join(f"(default: {shown})".split()) in text, (f.name, shown)
    for flag in ("--out", "--resume", "--log-every", "--no-progress", "--tensorboard"):
        assert flag in text


def test_run_folder_contents(full):
    for name in ("config.json", "metrics.csv", "speed.csv", "latest.pt", "latest.previous.pt", "log.txt",
                 "summary.json", "reconstructions.png", "samples.png", "elbo.png", "manifold.png"):
        assert (full / name).is_file(), name
    rows = metrics(full)
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert [r["step"] for r in rows] == ["23", "46", "69"]  # ceil(1437 / 64) = 23 batches per epoch
    assert not WALL_CLOCK & set(rows[0]) and WALL_CLOCK <= set(metrics(full, "speed.csv")[0])
    for r in rows:  # ELBO = rec - KL, each row
        assert float(r["test_elbo"]) == pytest.approx(float(r["test_rec"]) - float(r["test_kl"]), abs=2e-4)
    assert float(rows[-1]["test_elbo"]) > float(rows[0]["test_elbo"]) + 3  # it learns (about 8 nats here)
    summary = json.loads((full / "summary.json").read_text())
    assert summary["iwae_k"] == 20 and summary["iwae_n"] == 30 and summary["epochs"] == 3
    assert summary["iwae"] >= summary["elbo_on_iwae_subset"] - 0.5  # IWAE_k >= ELBO, up to MC noise
    saved = json.loads((full / "config.json").read_text())
    assert saved["domain"] == "vae" and saved["config"]["hidden"] == [32] and saved["config"]["binarize"] == "dynamic"
    state = ex.load_checkpoint(full / "latest.pt", "vae")
    assert state["epoch"] == 3 and state["gradient_step"] == 69 and set(state["rng"]) >= {"python", "numpy", "torch"}


def test_default_folders_are_fresh_and_resume_continues_the_newest(tmp_path, monkeypatch, full):
    monkeypatch.chdir(tmp_path)
    assert cli("--epochs", 1, *FAST, "--iwae-k", 0)[0] == 0
    assert cli("--epochs", 1, *FAST, "--iwae-k", 0)[0] == 0  # the same command twice: a second folder
    first, second = sorted((tmp_path / "runs" / "vae").iterdir())
    assert first.name.startswith("gaussian-digits_s0_") and second.name.startswith("gaussian-digits_s0_")
    code, _, err = cli("--resume", "--epochs", 3, "--no-progress")  # more epochs may change
    assert code == 0 and f"resuming: {Path('runs/vae') / second.name}" in err
    assert metrics(second) == metrics(full)  # 1 epoch, then resumed to 3: the uninterrupted run's rows
    assert len(metrics(first)) == 1


def test_occupied_folder_and_changed_flags_on_resume_are_refused_by_name(full):
    before = (full / "metrics.csv").read_bytes()
    code, _, err = cli("--out", full, *FAST)
    assert code == 2 and "already holds a run: continue it with --resume" in err and err.count("\n") == 1
    for flag, value in (("--lr", 0.5), ("--latent-dim", 3), ("--model", "categorical"), ("--hidden", 64)):
        code, _, err = cli("--out", full, "--resume", flag, value)
        assert code == 2 and f"{flag} cannot change" in err, (flag, err)
    assert (full / "metrics.csv").read_bytes() == before  # nothing touched
    code, _, err = cli("--out", full, "--resume", "--epochs", 2)
    assert code == 2 and "has done 3 epochs, more than --epochs 2" in err
    code, stdout, _ = cli("--out", full, "--resume", "--epochs", 3, "--iwae-k", 20)  # a finished run: evaluated again
    assert code == 0 and "IWAE(k=20)" in stdout and (full / "metrics.csv").read_bytes() == before


def test_kill_9_then_resume_gives_the_uninterrupted_rows(tmp_path, full):
    """The script in a subprocess, killed by a real SIGKILL right after its 3rd CSV row (metrics row 2, before
    its checkpoint), then --resume: the metrics rows are the uninterrupted run's (speed.csv holds the wall-clock)."""
    script = [sys.executable, str(ROOT / "scripts" / "train_vae.py")]
    out = tmp_path / "cut"
    env = {**os.environ, "REPARAM_TEST_KILL_AT_ROW": "3"}
    proc = subprocess.run([*script, "--out", str(out), "--epochs", "3", *FAST], env=env, capture_output=True,
                          text=True, cwd=tmp_path)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert (out / "metrics.csv").read_text().endswith("99999,0.")  # the torn row
    assert ex.load_checkpoint(out / "latest.pt", "vae")["epoch"] == 1
    code, stdout, err = cli("--out", out, "--resume")
    assert code == 0 and "final test ELBO" in stdout and "resuming" in err
    assert metrics(out) == metrics(full)
    assert [r["epoch"] for r in metrics(out, "speed.csv")] == ["1", "2", "3"]
    assert json.loads((out / "summary.json").read_text())["test_elbo"] == pytest.approx(
        json.loads((full / "summary.json").read_text())["test_elbo"], abs=0)


def test_ctrl_c_saves_at_the_epoch_end_exits_130_and_resumes_exactly(tmp_path, monkeypatch):
    """Ctrl-C during epoch 1 with --log-every 2: the checkpoint is written at epoch 1 (no row there), and
    the resumed run's rows equal an uninterrupted --log-every 2 run's."""
    args = ["--epochs", 3, "--log-every", 2, *FAST, "--iwae-k", 0]
    assert cli("--out", tmp_path / "full2", *args)[0] == 0
    real = vae.train.train_epoch

    def interrupted_epoch(*a, **k):
        os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C: noted, training goes on to the epoch's end
        return real(*a, **k)

    monkeypatch.setattr(vae.train, "train_epoch", interrupted_epoch)
    code, _, err = cli("--out", tmp_path / "cut", *args)
    assert code == 130
    assert "saving at the end of epoch 1" in err and "interrupted at epoch 1/3: saved" in err and "--resume" in err
    assert ex.load_checkpoint(tmp_path / "cut" / "latest.pt", "vae")["epoch"] == 1
    assert not (tmp_path / "cut" / "metrics.csv").exists()
    monkeypatch.setattr(vae.train, "train_epoch", real)
    assert cli("--out", tmp_path / "cut", "--resume")[0] == 0
    rows = metrics(tmp_path / "cut")
    assert [r["epoch"] for r in rows] == ["2", "3"] and rows == metrics(tmp_path / "full2")


def test_categorical_score_function_with_a_running_mean_baseline(tmp_path):
    code, stdout, _ = cli("--out", tmp_path / "c", "--epochs", 1, "--model", "categorical", "--estimator",
                          "score-function", "--sf-baseline", "running_mean", "--n-classes", 4, *FAST)
    assert code == 0 and "final test ELBO" in stdout
    cfg = json.loads((tmp_path / "c" / "config.json").read_text())["config"]
    assert cfg["model"] == "categorical" and cfg["estimator"] == "score-function"
    row = metrics(tmp_path / "c")[0]
    # tau_t = max(0.5, 1.0 * exp(-1e-4 * 15)) after 23 steps (ceil(1437 / 64))
    assert float(row["temperature"]) == pytest.approx(0.997703, abs=1e-6)
    state = ex.load_checkpoint(tmp_path / "c" / "latest.pt", "vae")
    assert bool(state["model_state"]["baseline_ready"])  # the running mean is part of the checkpoint


def test_flow_posterior_from_the_command_line(tmp_path):
    """--posterior iaf builds the flow VAE (checkpoint and folder name say so) and trains with a Monte Carlo KL."""
    out = tmp_path / "r"
    code, stdout, _ = cli("--out", out, "--epochs", 1, "--posterior", "iaf", "--flow-steps", 2, *FAST)
    assert code == 0 and "final test ELBO" in stdout
    cfg = json.loads((out / "config.json").read_text())["config"]
    assert (cfg["posterior"], cfg["flow_steps"], cfg["kl"]) == ("iaf", 2, "mc")
    state = ex.load_checkpoint(out / "latest.pt", "vae")
    assert any(".flow." in k or k.startswith("flow.") for k in state["model_state"]), "no flow parameters saved"
    assert ex.build_config(VAEConfig, {"posterior": "iaf"}).run_name == "gaussian-iaf-digits_s0"


@pytest.mark.parametrize("args,message", [
    (["--dataset", "mnist", "--data-dir", "{tmp}"], "t10k-images-idx3-ubyte"),
    (["--dataset", "mnist"], "--data-dir"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--epochs", "-1"], "epochs must be a positive integer"),
    (["--latent-dim", "0"], "latent_dim must be a positive integer"),
    (["--hidden", "400", "abc"], "'abc' is not an integer"),
    (["--model", "categorical", "--temperature", "0"], "temperature must be a positive number"),
    (["--temperature", "0.3", "--temperature-min", "0.5"], "must not exceed"),
    (["--lr", "nan"], "lr must be a positive number"),
    (["--sf-samples", "1", "--estimator", "score-function"], "leave-one-out"),
    (["--sf-baseline", "mean"], "invalid choice"),
    (["--model", "categorical", "--hard", "--kl", "mc"], "--kl analytic"),
    (["--model", "flow"], "invalid choice"),
    (["--resume"], "no run named gaussian-digits_s0"),
])
def test_bad_input_is_one_line_exit_2_and_leaves_no_folder(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_divergence_exits_3_and_keeps_no_bad_checkpoint(tmp_path):
    code, _, err = cli("--out", tmp_path / "d", "--lr", "1e10", "--epochs", 2, *FAST)
    assert code == 3 and "training diverged at epoch 1: train_elbo is nan" in err
    assert not (tmp_path / "d" / "latest.pt").exists()  # the diverged state was never saved


def test_corrupt_checkpoint_on_resume_is_a_clear_error(tmp_path, full):
    out = tmp_path / "r"
    assert cli("--out", out, "--epochs", 1, *FAST, "--iwae-k", 0)[0] == 0
    (out / "latest.pt").write_bytes(b"\x00" * 100)
    code, _, err = cli("--out", out, "--epochs", 2, "--resume")
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("error: ") and "latest.pt is not a reparam-apps checkpoint" in err
