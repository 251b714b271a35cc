"""``reparam-bnn uci --workers N``: the UCI splits on a process pool give the sequential run's rows, a run
killed with splits in flight resumes with the ones it had written, and bad worker counts are refused.

Each split trains from its own seed (bnn.tasks.uci.seed_split), so a split is the same function of
(config, split) in a worker as in the main process at the same thread count (--threads 1 in both here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from test_bnn_experiments import fake_uci, summary_of

from bnn.cli import main
from reparam_apps import experiment as ex

pytestmark = pytest.mark.usefixtures("one_thread")


def _argv(root) -> list[str]:
    return ["uci", "--dataset", "yacht", "--data-dir", str(root / "uci"), "--epochs", "2", "--batch-size", "16",
            "--test-samples", "4", "--log-every", "1", "--threads", "1", "--no-progress"]


def test_two_workers_killed_then_resumed_equal_the_sequential_run(tmp_path):
    """Sequential reference in-process. Then a 2-worker run in a subprocess, SIGKILLed (the spine's
    REPARAM_TEST_KILL_AT_ROW) at its 6th row: rows per split are 2 metrics rows, the splits.csv row and the
    speed.csv row, so split 0 is written and checkpointed and split 1 half written. --resume (2 workers
    again, in-process) keeps split 0 and redoes splits 1 and 2 in workers: every row equals the sequential
    run's, and the checkpoint holds split 0's network as the sequential one does."""
    fake_uci(tmp_path / "uci")
    seq, cut = tmp_path / "seq", tmp_path / "cut"
    assert main([*_argv(tmp_path), "--out", str(seq)]) == 0
    cmd = [sys.executable, "-c", "from bnn.cli import entry; entry()", *_argv(tmp_path), "--workers", "2",
           "--out", str(cut)]
    proc = subprocess.run(cmd, env={**os.environ, "REPARAM_TEST_KILL_AT_ROW": "6"}, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr
    state = ex.load_checkpoint(cut / "latest.pt", "bnn")
    assert state["step"] == 1 and [f["result"]["split"] for f in state["splits"]] == [0]
    first = ex.load_checkpoint(seq / "latest.pt", "bnn")["splits"][0]
    assert state["splits"][0]["result"] == first["result"]
    assert all(bool((state["splits"][0]["model"][k] == v).all()) for k, v in first["model"].items())

    assert main(["--out", str(cut), "--resume", "--no-progress"]) == 0
    for name in ("metrics.csv", "splits.csv"):
        assert (cut / name).read_text() == (seq / name).read_text(), name
    assert summary_of(cut) == summary_of(seq)
    assert [r["split"] for r in ex.MetricsCSV(cut / "speed.csv").rows()] == ["0", "1", "2"]
    assert json.loads((cut / "config.json").read_text())["config"]["workers"] == 2


@pytest.mark.parametrize("argv, message", [
    (["--workers", "0"], "workers must be a positive integer, got 0"),
    (["--workers", "-2"], "workers must be a positive integer, got -2"),
])
def test_a_worker_count_below_one_is_refused_by_name(tmp_path, argv, message):
    fake_uci(tmp_path / "uci")
    with pytest.raises(ValueError, match=message):
        main([*_argv(tmp_path), *argv, "--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()  # refused before a folder is made


def test_workers_is_refused_for_a_task_that_trains_one_network(tmp_path):
    with pytest.raises(ValueError, match="workers runs the uci splits in parallel; classify trains one network"):
        main(["classify", "--workers", "2", "--out", str(tmp_path / "r")])
