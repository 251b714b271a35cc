"""The BNN experiments through the package (bnn.cli.main, bnn.train): the toy intervals widen off the data,
a short classification run learns, UCI metrics come in original units, the fit loop's KL weights and
n_data, a resumed Trainer continues the same stream, Ctrl-C saves and resumes exactly, bad data is named."""

from __future__ import annotations

import io
import json
import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

import bnn
import bnn.train as bt
from bnn.cli import main
from reparam_apps import experiment as ex
from reparam_apps.data import DataError

pytestmark = pytest.mark.usefixtures("one_thread")

TINY_CLASSIFY = ["classify", "--epochs", "3", "--hidden", "16", "--batch-size", "64", "--test-samples", "4",
                 "--threads", "1", "--no-progress"]


def fake_uci(root: Path, rows: int = 48, n_splits: int = 3, scale: float = 100.0) -> np.ndarray:
    """A UCI-layout folder ``root/yacht`` (what bnn.uci reads): y = scale (x1 - x2 / 2 + 0.1 e), a constant
    third feature, ``n_splits`` random 3:1 splits. Returns the data table."""
    folder = root / "yacht"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    x = rng.normal(0.0, 1.0, (rows, 2))
    y = scale * (x @ np.array([1.0, -0.5]) + 0.1 * rng.normal(size=rows))
    data = np.column_stack([x, np.full(rows, 3.0), y])
    np.savetxt(folder / "data.txt", data)
    np.savetxt(folder / "index_features.txt", [0, 1, 2], fmt="%d")
    np.savetxt(folder / "index_target.txt", [3], fmt="%d")
    np.savetxt(folder / "n_splits.txt", [n_splits], fmt="%d")
    np.savetxt(folder / "n_hidden.txt", [8], fmt="%d")
    for k in range(n_splits):
        perm = rng.permutation(rows)
        np.savetxt(folder / f"index_train_{k}.txt", perm[: rows * 3 // 4], fmt="%d")
        np.savetxt(folder / f"index_test_{k}.txt", perm[rows * 3 // 4:], fmt="%d")
    return data


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


# -- the experiments ---------------------------------------------------------------------------
def test_toy_intervals_widen_off_the_data(tmp_path):
    out = tmp_path / "toy"
    # a short run (300 full-ish-batch steps); the full default run gives a x8.9 widening (README, Bayes by Backprop)
    assert main(["toy", "--epochs", "300", "--batch-size", "50", "--lr", "1e-2", "--init-rho", "-2", "--hidden",
                 "32", "--test-samples", "64", "--log-every", "100", "--threads", "1", "--out", str(out),
                 "--no-progress"]) == 0
    summary = summary_of(out)
    # outside [0, 0.5] the epistemic std is several times the in-range one, and the total std grows with it
    assert summary["epistemic_std_outside"] > 2.0 * summary["epistemic_std_inside"]
    assert summary["std_outside"] > 1.2 * summary["std_inside"]
    rows = ex.MetricsCSV(out / "metrics.csv").rows()
    assert [int(r["epoch"]) for r in rows] == [100, 200, 300]
    assert summary["final_loss"] == pytest.approx(float(rows[-1]["loss"]))
    for name in ("config.json", "metrics.csv", "speed.csv", "latest.pt", "toy_regression.png", "loss.png"):
        assert (out / name).is_file(), name


def test_short_classification_run_beats_chance_and_lowers_nll(tmp_path):
    out = tmp_path / "digits"
    assert main(["classify", "--dataset", "digits", "--epochs", "4", "--hidden", "64", "--batch-size", "32",
                 "--lr", "3e-3", "--test-samples", "8", "--threads", "1", "--out", str(out), "--no-progress"]) == 0
    s = summary_of(out)
    assert s["error"] < 0.25  # chance is 0.9 on 10 classes
    assert s["nll"] < 0.5 * s["initial_nll"]
    assert s["entropy_noise"] > s["entropy_in_dist"]  # noise images are less certain than real digits
    rows = ex.MetricsCSV(out / "metrics.csv").rows()
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4] and "seconds_per_epoch" not in rows[0]
    for name in ("config.json", "metrics.csv", "speed.csv", "latest.pt", "reliability.png", "test_error.png"):
        assert (out / name).is_file(), name


def test_uci_reports_in_original_units_over_the_splits(tmp_path):
    data = fake_uci(tmp_path / "uci")
    out = tmp_path / "run"
    assert main(["uci", "--dataset", "yacht", "--data-dir", str(tmp_path / "uci"), "--epochs", "3", "--batch-size",
                 "16", "--test-samples", "4", "--threads", "1", "--out", str(out), "--no-progress"]) == 0
    s = summary_of(out)
    splits = ex.MetricsCSV(out / "splits.csv").rows()
    assert [int(r["split"]) for r in splits] == [0, 1, 2] and s["n_splits"] == 3
    rmse = np.array([float(r["rmse"]) for r in splits])
    assert s["rmse"] == pytest.approx(rmse.mean(), rel=1e-5)  # CSV cells keep 6 significant digits
    assert s["rmse_se"] == pytest.approx(rmse.std(ddof=1) / math.sqrt(3), rel=1e-4)
    # 3 epochs barely move the net off the mean: its RMSE is about the target's std, in ORIGINAL units (~100,
    # not ~1 as in the normalised ones), and the log-likelihood carries the -log(y_std) of the change of units
    y_std = data[:, 3].std()
    assert 0.3 * y_std < s["rmse"] < 2.0 * y_std
    assert -math.log(y_std) - 5.0 < s["test_ll"] < -math.log(y_std)
    state = ex.load_checkpoint(out / "latest.pt", "bnn")
    assert [f["result"]["split"] for f in state["splits"]] == [0, 1, 2]


def test_divergence_stops_with_exit_3_naming_the_epoch(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("REPARAM_DEBUG", raising=False)
    argv = ["toy", "--epochs", "20", "--lr", "1e30", "--hidden", "8", "--threads", "1", "--log-every", "1",
            "--out", str(tmp_path / "r"), "--no-progress"]
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: main(argv))
    assert exc.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: training diverged at epoch ") and "loss is" in err[-1]


# -- the fit loop --------------------------------------------------------------------------------
def _tiny_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(10, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(10, 1, generator=g)
    return x, y


@pytest.mark.parametrize("schedule", ["uniform", "blundell"])
def test_trainer_passes_the_training_set_size_and_the_minibatch_kl_weights(monkeypatch, schedule):
    calls = []

    def recording(model, likelihood, x, y, n_data, n_samples=1, kl_weight=1.0):
        terms = bnn.elbo_loss(model, likelihood, x, y, n_data=n_data, n_samples=n_samples, kl_weight=kl_weight)
        calls.append((len(x), n_data, kl_weight, terms.loss.item()))
        return terms

    monkeypatch.setattr(bt, "elbo_loss", recording)
    torch.manual_seed(0)
    x, y = _tiny_problem()
    model = bnn.make_mlp(3, 1, 4, 1)
    trainer = bnn.Trainer(model, bnn.GaussianLikelihood(), x, y, batch_size=4, lr=1e-3, kl_schedule=schedule)
    row = trainer.epoch()
    # N = 10, |B| = 4: M = 3 minibatches of 4, 4, 2; Blundell: M pi_i = 3 * 2^(3-i) / (2^3 - 1)
    weights = [12 / 7, 6 / 7, 3 / 7] if schedule == "blundell" else [1.0, 1.0, 1.0]
    assert [c[0] for c in calls] == [4, 4, 2] and [c[1] for c in calls] == [10, 10, 10]
    assert [c[2] for c in calls] == pytest.approx(weights, rel=1e-12)
    # the epoch's loss is the example-weighted mean of the minibatch losses (float32 sums: rel 1e-6)
    assert row["loss"] == pytest.approx(sum(b * loss for b, _, _, loss in calls) / 10, rel=1e-6)


def test_deterministic_baseline_trains_on_the_mean_nll():
    torch.manual_seed(0)
    x, y = _tiny_problem()
    history = bnn.fit(bnn.make_mlp(3, 1, 4, 1, bayesian=False), bnn.GaussianLikelihood(), x, y, epochs=3,
                      batch_size=5, lr=1e-2, bayesian=False)
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all(h["kl"] == 0.0 and h["loss"] == h["nll"] for h in history)


def test_a_trainer_restored_from_its_state_continues_the_same_stream():
    """3 epochs straight == 1 epoch, checkpoint (model, trainer, random states), a fresh process-like rebuild
    with other weights, restore, 2 more epochs: bit for bit."""
    x, y = _tiny_problem()

    def build(seed: int):
        torch.manual_seed(seed)
        model = bnn.make_mlp(3, 1, 6, 2, sampling="flipout")
        lik = bnn.GaussianLikelihood()
        return model, lik, bnn.Trainer(model, lik, x, y, batch_size=4, lr=1e-2, kl_schedule="blundell", seed=5)

    model_a, _, trainer_a = build(0)
    rows_a = [trainer_a.epoch() for _ in range(3)]
    model_b, lik_b, trainer_b = build(0)
    rows_b = [trainer_b.epoch()]
    state = {"model": model_b.state_dict(), "lik": lik_b.state_dict(), "trainer": trainer_b.state_dict(),
             "rng": bt.rng_state()}
    buf = io.BytesIO()
    torch.save(state, buf)  # through bytes, as a checkpoint goes
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    model_c, lik_c, trainer_c = build(123)  # other weights, other random state
    model_c.load_state_dict(state["model"])
    lik_c.load_state_dict(state["lik"])
    trainer_c.load_state_dict(state["trainer"])
    bt.set_rng_state(state["rng"])
    rows_b += [trainer_c.epoch() for _ in range(2)]
    assert rows_b == rows_a
    for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q)
    assert trainer_c.epochs_done == 3


def test_nan_input_rows_are_named(tmp_path, monkeypatch):
    x, y = _tiny_problem()
    x[6, 1] = float("nan")
    with pytest.raises(ValueError, match=r"x row 6 holds NaN or inf \(1 such rows\)"):
        bnn.Trainer(bnn.make_mlp(3, 1, 4, 1), bnn.GaussianLikelihood(), x, y, batch_size=4, lr=1e-3)
    fake_uci(tmp_path / "uci")
    table = tmp_path / "uci" / "yacht" / "data.txt"
    lines = table.read_text().splitlines()
    lines[4] = " ".join(lines[4].split()[:3] + ["nan"])  # row 5's target
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"data.txt row 5, column 3: nan"):
        main(["uci", "--dataset", "yacht", "--data-dir", str(tmp_path / "uci"), "--out", str(tmp_path / "r"),
              "--no-progress"])
    # MNIST IDX files hold uint8 pixels; a loader handing over float pixels has them checked too
    from reparam_apps import data as rd

    images = np.zeros((5, 28, 28), dtype=np.float32)
    images[3, 2, 2] = np.inf
    idx = tmp_path / "mnist"
    idx.mkdir()
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (idx / name).write_bytes(b"")
    monkeypatch.setattr(rd, "read_idx", lambda p: images if "images" in str(p) else np.zeros(5, np.uint8))
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte: image 3 holds NaN or inf"):
        rd.load_mnist(idx)


# -- Ctrl-C ---------------------------------------------------------------------------------------
def test_ctrl_c_saves_exits_130_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path, monkeypatch, capsys):
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(TINY_CLASSIFY + ["--out", str(full)]) == 0
    log = ex.Run.log

    def log_then_ctrl_c(self, row, name="metrics.csv", step_key="step"):
        log(self, row, name, step_key)
        if name == "metrics.csv" and row.get("epoch") == 1:
            os.kill(os.getpid(), signal.SIGINT)  # as a first Ctrl-C at a terminal

    monkeypatch.setattr(ex.Run, "log", log_then_ctrl_c)
    assert main(TINY_CLASSIFY + ["--out", str(cut)]) == 130
    err = capsys.readouterr().err
    assert f"interrupted at epoch 1: saved {cut / 'latest.pt'}; continue with: " in err
    assert f"--out {cut} --resume" in err
    assert ex.load_checkpoint(cut / "latest.pt", "bnn")["step"] == 1 and not (cut / "summary.json").exists()
    monkeypatch.undo()
    assert main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    assert (cut / "metrics.csv").read_text() == (full / "metrics.csv").read_text()
    assert summary_of(cut) == summary_of(full)


def test_ctrl_c_in_a_uci_split_keeps_the_finished_ones_and_restarts_that_split(tmp_path, monkeypatch, capsys):
    fake_uci(tmp_path / "uci")
    argv = ["uci", "--dataset", "yacht", "--data-dir", str(tmp_path / "uci"), "--epochs", "2", "--batch-size", "16",
            "--test-samples", "4", "--log-every", "1", "--threads", "1", "--no-progress"]
    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main(argv + ["--out", str(full)]) == 0
    log = ex.Run.log

    def log_then_ctrl_c(self, row, name="metrics.csv", step_key="step"):
        log(self, row, name, step_key)
        if name == "metrics.csv" and (row.get("split"), row.get("epoch")) == (1, 1):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ex.Run, "log", log_then_ctrl_c)
    assert main(argv + ["--out", str(cut)]) == 130
    assert "interrupted at split 1 epoch 1 (split 1 restarts from its start on resume)" in capsys.readouterr().err
    assert [f["result"]["split"] for f in ex.load_checkpoint(cut / "latest.pt", "bnn")["splits"]] == [0]
    monkeypatch.undo()
    assert main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    for name in ("metrics.csv", "splits.csv"):
        assert (cut / name).read_text() == (full / name).read_text(), name
    assert summary_of(cut) == summary_of(full)


def test_test_metrics_do_not_perturb_training(tmp_path):
    """Evaluations run on their own seeded stream: evaluating every epoch or every second one leaves the
    training (and so epoch 2's row, test metrics included) the same."""
    argv = ["classify", "--epochs", "2", "--hidden", "16", "--batch-size", "128", "--test-samples", "2", "--threads",
            "1", "--no-progress"]
    assert main(argv + ["--log-every", "1", "--out", str(tmp_path / "a")]) == 0
    assert main(argv + ["--log-every", "2", "--out", str(tmp_path / "b")]) == 0
    rows_a = ex.MetricsCSV(tmp_path / "a" / "metrics.csv").rows()
    rows_b = ex.MetricsCSV(tmp_path / "b" / "metrics.csv").rows()
    assert [r["epoch"] for r in rows_a] == ["1", "2"] and [r["epoch"] for r in rows_b] == ["2"]
    assert rows_a[1] == rows_b[0]
