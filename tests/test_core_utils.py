"""Run folders, atomic checkpoints, metrics CSV, seeding, devices, CLI errors and data loaders."""

import gzip
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import reparam_apps as ra
from reparam_apps.data import DataError, load_digits, load_images, load_mnist, read_idx
from reparam_apps.experiment import plot_curves


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    target = tmp_path / "ckpt.pt"
    ra.save_checkpoint({"step": 1}, target, kind="test")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # a kill between the write and the rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        ra.save_checkpoint({"step": 2}, target, kind="test")
    monkeypatch.undo()
    assert ra.load_checkpoint(target, kind="test")["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # usual permissions, not mkstemp's 0600


def test_checkpoint_round_trip_and_clear_errors(tmp_path):
    path = tmp_path / "c.pt"
    state = {"weights": torch.arange(5.0), "buffer": np.arange(3), "step": 7}
    ra.save_checkpoint(state, path, kind="sac")
    loaded = ra.load_checkpoint(path, kind="sac")
    assert torch.equal(loaded["weights"], state["weights"]) and loaded["step"] == 7
    with pytest.raises(ra.CheckpointError, match="'sac' checkpoint, expected 'vae'"):
        ra.load_checkpoint(path, kind="vae")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ra.CheckpointError, match="corrupt or truncated"):
        ra.load_checkpoint(path, kind="sac")
    with pytest.raises(ra.CheckpointError, match="does not exist"):
        ra.load_checkpoint(tmp_path / "missing.pt", kind="sac")
    torch.save({"a": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ra.CheckpointError, match="not a reparam-apps checkpoint"):
        ra.load_checkpoint(tmp_path / "foreign.pt", kind="sac")


def test_metrics_csv_widens_header_and_truncates_on_resume(tmp_path):
    m = ra.MetricsCSV(tmp_path / "metrics.csv")
    m.append({"step": 1, "loss": 0.5})
    m.append({"step": 2, "loss": 0.25, "alpha": torch.tensor(0.1)})
    m.append({"step": 3, "loss": 0.125})
    rows = m.rows()
    assert [r["step"] for r in rows] == ["1", "2", "3"]
    assert rows[0]["alpha"] == "" and float(rows[1]["alpha"]) == pytest.approx(0.1)
    m.truncate_after("step", 2)
    assert [r["step"] for r in ra.MetricsCSV(tmp_path / "metrics.csv").rows()] == ["1", "2"]
    again = ra.MetricsCSV(tmp_path / "metrics.csv")  # reopening reads the existing header
    again.append({"step": 3, "loss": 1.0, "alpha": 0.2})
    assert again.rows()[-1] == {"step": "3", "loss": "1", "alpha": "0.2"}


def test_seeding_reproduces_all_generators():
    def draw():
        import random

        return random.random(), np.random.rand(), torch.rand(1).item()

    ra.seed_everything(123)
    a = draw()
    ra.seed_everything(123)
    assert draw() == a
    with pytest.raises(ValueError, match="seed"):
        ra.seed_everything(-1)


def test_select_device():
    assert ra.select_device("cpu") == torch.device("cpu")
    assert ra.select_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device"):
        ra.select_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            ra.select_device("cuda")


def test_run_cli_turns_user_errors_into_one_line_exit_2(tmp_path):
    code = ("from reparam_apps import run_cli, Normal; import torch\n"
            "run_cli(lambda: Normal(torch.zeros(1), -torch.ones(1)))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={k: v for k, v in os.environ.items() if k != "REPARAM_DEBUG"})
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: scale must be positive") and "Traceback" not in r.stderr


def test_plot_curves_writes_png(tmp_path):
    plot_curves(tmp_path / "c.png", {"a": ([0, 1, 2], [1, 2, 3]), "b": ([0, 1, 2], [3, 2, 1])}, "x", "y",
                bands={"a": ([0, 1, 2], [2, 3, 4])})
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- data


def test_digits_embedded_default():
    d = load_digits(seed=0)
    assert d.x_train.shape[1:] == (8, 8) and len(d.x_train) + len(d.x_test) == 1797
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1 and d.n_classes == 10
    assert torch.equal(load_digits(seed=0).y_test, d.y_test) and not torch.equal(load_digits(seed=1).y_test, d.y_test)


def test_mnist_test_files_read_and_split(shared_data):
    labels = read_idx(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz")
    # The first ten labels of the official t10k file.
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9] and labels.shape == (10000,)
    d = load_mnist(shared_data / "mnist", n_test=2000, seed=0)
    assert d.x_train.shape == (8000, 28, 28) and d.x_test.shape == (2000, 28, 28)
    assert float(d.x_train.max()) == 1.0 and float(d.x_train.min()) == 0.0
    assert sorted(torch.cat([d.y_train, d.y_test]).bincount().tolist()) == sorted(np.bincount(labels).tolist())


def test_mnist_broken_folders_fail_clearly(tmp_path, shared_data):
    with pytest.raises(DataError, match="does not exist"):
        load_mnist(tmp_path / "nowhere")
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        load_mnist(tmp_path)
    shutil.copy(shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz", tmp_path)
    raw = gzip.decompress((shared_data / "mnist" / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw[:5000])  # truncated
    with pytest.raises(DataError, match="not a readable IDX file"):
        load_mnist(tmp_path)
    with pytest.raises(DataError, match="--data-dir"):
        load_images("mnist")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_images("cifar")
