"""The experiment spine: config -> CLI, the run-folder lifecycle, checksummed checkpoints, the divergence
guard, status lines. A toy domain below exercises it the way SAC, BNN, VAE and the comparison do."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import subprocess
import sys
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import pytest
import torch

from reparam_apps import experiment as ex


@dataclass
class ToyConfig(ex.TrainConfig):
    """A toy domain's settings."""

    task: str = field(default="line", metadata={"positional": True, "choices": ("line", "curve")})
    """What to fit."""
    steps: int = 20
    """Gradient steps."""
    lr: float = 0.1
    """Learning rate."""
    widths: tuple[int, ...] = (4, 4)
    """Hidden widths."""
    mode: Literal["a", "b"] = "a"
    """A choice."""
    scale: float | None = None
    """An optional scale (none: automatic)."""
    flag: bool = False
    """A switch."""

    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"steps", "device", "threads"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.lr > 0 or not math.isfinite(self.lr):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")

    @classmethod
    def contextual_defaults(cls, given: dict) -> dict:
        return {"steps": 30} if given.get("task") == "curve" else {}


def toy_main(argv: list[str], root, kill_at: int | None = None) -> tuple[int, ex.Run]:
    """A complete toy domain in a dozen lines: fit w to 3 by gradient steps, a row and a checkpoint per step."""
    cli = ex.parse_cli(ToyConfig, argv, log_every=1)
    run = ex.start_or_resume("toy", cli, name=lambda c: f"{c.task}_s{c.seed}", root=root, quiet=True)
    cfg = run.config
    torch.manual_seed(cfg.seed)
    w = torch.randn(1, requires_grad=True)
    step = 0
    state = run.load_checkpoint("toy")
    if state is not None:
        w.data.copy_(state["w"])
        step = state["step"]
        run.rewind(step)
    with run.interruptible():
        while step < cfg.steps:
            loss = (w - 3.0).square().sum()
            loss.backward()
            with torch.no_grad():
                w -= cfg.lr * w.grad
                w.grad = None
            step += 1
            run.check_finite({"loss": loss.item()}, step)
            run.log({"step": step, "loss": loss.item(), "w": w.item()})
            run.save_checkpoint({"w": w.detach().clone()}, "toy", step, check=[w])
            if kill_at is not None and step == kill_at:
                return -9, run  # as if killed right after this checkpoint
            if run.stop_requested:
                return run.interrupted(f"step {step}"), run
    run.write_summary({"w": w.item()})
    return 0, run


# -- config -> CLI -----------------------------------------------------------------------------------
def test_help_lists_every_field_with_its_doc_and_default(capsys):
    with pytest.raises(SystemExit) as exc:
        ex.parse_cli(ToyConfig, ["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    docs = ex.field_docs(ToyConfig)
    for f in dataclasses.fields(ToyConfig):
        assert docs[f.name], f"{f.name} has no docstring"
        assert " ".join(docs[f.name].split()) in text
        default = f.default
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
        assert f"(default: {shown})" in text, f.name
    for name in ("--out", "--seed", "--device", "--threads", "--resume", "--no-progress", "--log-every",
                 "--tensorboard"):
        assert name in text


def test_parse_records_only_typed_flags_and_converts_types():
    cli = ex.parse_cli(ToyConfig, ["curve", "--lr", "0.5", "--widths", "8", "16", "--scale", "none", "--flag",
                                   "--mode", "b", "--seed", "3"])
    assert cli.given == {"task": "curve", "lr": 0.5, "widths": (8, 16), "scale": None, "flag": True, "mode": "b",
                         "seed": 3}
    cfg = ex.build_config(ToyConfig, cli.given)
    assert cfg.steps == 30 and cfg.widths == (8, 16)  # contextual default under the typed values
    assert ex.build_config(ToyConfig, {"task": "curve", "steps": 5}).steps == 5


@pytest.mark.parametrize("argv, match", [
    (["--lr", "abc"], "not a number"),
    (["--mode", "c"], "invalid choice"),
    (["--nope"], "unrecognized arguments"),
])
def test_bad_flags_are_one_line_user_errors(argv, match):
    with pytest.raises(ex.UserError, match=match):
        ex.parse_cli(ToyConfig, argv)


def test_config_validation_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="lr must be a positive number"):
        toy_main(["--lr", "-1"], tmp_path)
    assert not (tmp_path / "toy").exists()  # nothing is written for a bad config
    with pytest.raises(ValueError, match="threads"):
        toy_main(["--threads", "-2"], tmp_path)


# -- the lifecycle -----------------------------------------------------------------------------------
def test_default_folders_are_fresh_and_resume_finds_the_newest(tmp_path):
    code1, run1 = toy_main([], tmp_path)
    code2, run2 = toy_main([], tmp_path)  # the same command twice just works
    assert code1 == code2 == 0 and run1.path != run2.path
    assert run1.path.parent == tmp_path / "toy" and run1.path.name.startswith("line_s0_")
    assert json.loads((run1.path / "config.json").read_text())["config"]["steps"] == 20
    code, run3 = toy_main(["--resume", "--steps", "25"], tmp_path)
    assert code == 0 and run3.path == run2.path
    rows = run3.metrics().rows()
    assert [int(r["step"]) for r in rows] == list(range(1, 26))  # no gap, no duplicate
    saved = json.loads((run3.path / "config.json").read_text())
    assert saved["config"]["steps"] == 25 and saved["resumes"][-1]["changed"] == {"steps": [20, 25]}
    with pytest.raises(ex.UserError, match="no run named curve_s0"):
        toy_main(["curve", "--resume"], tmp_path)


def test_occupied_out_is_refused_and_resume_refuses_changed_flags_by_name(tmp_path):
    out = str(tmp_path / "r")
    assert toy_main(["--out", out], tmp_path)[0] == 0
    before = (tmp_path / "r" / "metrics.csv").read_bytes()
    with pytest.raises(ex.UserError, match="already holds a run: continue it with --resume"):
        toy_main(["--out", out, "--lr", "0.2"], tmp_path)
    with pytest.raises(ex.UserError, match=r"--lr cannot change \(saved 0.1, given 0.5\)"):
        toy_main(["--out", out, "--resume", "--lr", "0.5"], tmp_path)
    with pytest.raises(ex.UserError, match="--widths cannot change"):
        toy_main(["--out", out, "--resume", "--widths", "3"], tmp_path)
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == before  # nothing touched
    assert toy_main(["--out", out, "--resume", "--lr", "0.1"], tmp_path)[0] == 0  # the same value is fine


def test_kill_then_resume_equals_an_uninterrupted_run(tmp_path):
    toy_main(["--out", str(tmp_path / "full")], tmp_path)
    assert toy_main(["--out", str(tmp_path / "cut")], tmp_path, kill_at=7)[0] == -9
    # a torn last row, as a kill during the CSV write leaves it
    with open(tmp_path / "cut" / "metrics.csv", "a") as fh:
        fh.write("8,0.12")
    assert toy_main(["--out", str(tmp_path / "cut"), "--resume"], tmp_path)[0] == 0
    full = (tmp_path / "full" / "metrics.csv").read_text()
    assert (tmp_path / "cut" / "metrics.csv").read_text() == full


def test_bit_flipped_checkpoint_is_refused_by_name_and_the_previous_is_kept(tmp_path):
    out = tmp_path / "r"
    toy_main(["--out", str(out)], tmp_path, kill_at=5)
    latest, previous = out / "latest.pt", out / "latest.previous.pt"
    assert ex.load_checkpoint(previous, "toy")["step"] == 4
    data = bytearray(latest.read_bytes())
    for i in range(len(data) // 2, len(data) // 2 + 100):
        data[i] ^= 0xFF
    latest.write_bytes(bytes(data))
    with pytest.raises(ex.CheckpointError, match=r"latest.pt is corrupt .*latest.previous.pt is kept"):
        toy_main(["--out", str(out), "--resume"], tmp_path)
    latest.rename(out / "latest.pt.bad")  # as the message says: move it aside, resume from the previous one
    code, run = toy_main(["--out", str(out), "--resume"], tmp_path)
    assert code == 0 and [int(r["step"]) for r in run.metrics().rows()] == list(range(1, 21))
    truncated = latest.read_bytes()[:-10]
    latest.write_bytes(truncated)
    with pytest.raises(ex.CheckpointError, match="corrupt or truncated"):
        ex.load_checkpoint(latest, "toy")


def test_failed_start_can_be_resumed_or_restarted(tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"domain": "toy", "config": dataclasses.asdict(ToyConfig()),
                                                 "run": {}, "resumes": []}))
    (out / "metrics.csv").write_text("step,loss\n1,0.5\n")
    code, run = toy_main(["--out", str(out)], tmp_path)  # restart: no checkpoint, nothing to lose
    assert code == 0 and len(run.metrics().rows()) == 20
    (out / "latest.pt").unlink()
    (out / "latest.previous.pt").unlink()
    code, run = toy_main(["--out", str(out), "--resume"], tmp_path)  # resume from step 0
    assert code == 0 and [int(r["step"]) for r in run.metrics().rows()] == list(range(1, 21))


def test_unusable_out_and_broken_config_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ex.UserError, match="is a file, not a folder"):
        toy_main(["--out", str(tmp_path / "file")], tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ex.UserError, match="holds files that are not a run"):
        toy_main(["--out", str(tmp_path / "other")], tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{not json")
    with pytest.raises(ex.UserError, match=r"bad/config.json is not a readable run config"):
        toy_main(["--out", str(bad), "--resume"], tmp_path)
    with pytest.raises(ex.UserError, match="holds no run"):
        toy_main(["--out", str(tmp_path / "empty"), "--resume"], tmp_path)


def test_missing_tensorboard_leaves_no_folder_behind(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with pytest.raises(ex.UserError, match="pip install tensorboard"):
        toy_main(["--out", str(tmp_path / "tb"), "--tensorboard"], tmp_path)
    assert not (tmp_path / "tb").exists()


# -- guards and interruption -------------------------------------------------------------------------
def test_divergence_stops_with_a_named_step_and_keeps_the_last_good_checkpoint(tmp_path):
    out = tmp_path / "r"
    with pytest.raises(ex.DivergenceError, match=r"diverged at step \d+: loss is (inf|nan).*latest.pt is kept"):
        toy_main(["--out", str(out), "--lr", "1e30"], tmp_path)
    state = ex.load_checkpoint(out / "latest.pt", "toy")
    assert torch.isfinite(state["w"]).all()
    with pytest.raises(ex.DivergenceError, match="parameter tensor holds NaN or inf"):
        ex.check_finite_parameters([torch.tensor([1.0, float("nan")])], step=3)


def test_sigint_saves_and_exits_130(tmp_path, capsys):
    import os
    import signal

    cli = ex.parse_cli(ToyConfig, ["--out", str(tmp_path / "r")])
    run = ex.start_or_resume("toy", cli, name="toy", quiet=True)
    with run.interruptible():
        os.kill(os.getpid(), signal.SIGINT)
        assert run.stop_requested
        run.save_checkpoint({"w": torch.zeros(1)}, "toy", step=4)
        assert run.interrupted("step 4") == 130
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    err = capsys.readouterr().err
    assert "interrupted at step 4: saved" in err and "--resume" in err


@pytest.mark.parametrize("error, rc, text", [
    (ex.UserError("bad flag: fix it"), 2, "error: bad flag: fix it"),
    (ex.DivergenceError("training diverged at step 3"), 3, "error: training diverged at step 3"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (None, 0, ""),
])
def test_run_cli_exit_codes(error, rc, text, capsys, monkeypatch):
    monkeypatch.delenv("REPARAM_DEBUG", raising=False)

    def main() -> int:
        if error is not None:
            raise error
        return 0

    with pytest.raises(SystemExit) as exc:
        ex.run_cli(main)
    assert exc.value.code == rc
    err = capsys.readouterr().err
    assert err.strip() == text  # one line, no traceback


def test_status_lines_when_not_a_terminal(tmp_path):
    stream = io.StringIO()  # not a tty: status lines instead of a bar
    bar = ex.Progress(100, "toy", unit="step", log_file=tmp_path / "log.txt", stream=stream)
    bar.update(40)
    line = bar.status(loss=0.25, ret=-812.25)
    assert stream.getvalue().strip() == line
    assert line.startswith("toy: step 40/100 (40%) | loss 0.25 | ret -812.2 | ") and "step/s | ETA " in line
    assert line in (tmp_path / "log.txt").read_text()
    assert ex.format_duration(145) == "2m25s" and ex.format_duration(3725) == "1h02m"


def test_metrics_csv_repairs_a_torn_row_and_survives_non_numeric_cells(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("step,loss\n1,0.5\n2,0.2")  # the last row torn
    table = ex.MetricsCSV(path)
    assert [r["step"] for r in table.rows()] == ["1"]
    table.append({"step": 2, "loss": 0.25})
    table.truncate_after("step", 1)
    assert [r["step"] for r in table.rows()] == ["1"]


def test_importing_the_core_has_no_side_effects():
    code = ("import os, sys; os.umask(0o027); import reparam_apps, bnn, vae, agents; "
            "assert os.umask(0o022) == 0o027; assert 'matplotlib.pyplot' not in sys.modules; "
            "import matplotlib; assert matplotlib.rcParams._get_backend_or_none() in (None,), "
            "matplotlib.rcParams._get_backend_or_none()")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_kill_9_in_a_subprocess_then_resume(tmp_path):
    """A real SIGKILL mid-row (the spine's REPARAM_TEST_KILL_AT_ROW hook), then --resume: the same rows."""
    import os

    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_experiment import toy_main; "
            "toy_main(sys.argv[2:], sys.argv[1])")
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    out = str(tmp_path / "cut")
    env = {**os.environ, "REPARAM_TEST_KILL_AT_ROW": "6"}
    proc = subprocess.run([sys.executable, "-c", code, tests_dir, "--out", out], env=env, capture_output=True)
    assert proc.returncode == -9
    assert (tmp_path / "cut" / "metrics.csv").read_text().endswith("99999,0.")  # the torn row is there
    assert toy_main(["--out", out, "--resume"], tmp_path)[0] == 0
    toy_main(["--out", str(tmp_path / "full")], tmp_path)
    assert (tmp_path / "cut" / "metrics.csv").read_text() == (tmp_path / "full" / "metrics.csv").read_text()
