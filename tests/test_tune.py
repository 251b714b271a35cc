"""reparam-tune: Optuna studies over a domain's entry point (search, pruning, joining workers, many seeds).

A toy domain on the experiment spine (gradient steps on (w - 1)^2, so every value has a closed form) checks
the study mechanics in milliseconds; SAC on Pendulum with tiny networks checks the real integration, in
process and as two worker processes sharing one sqlite study.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from reparam_apps import experiment as ex
from reparam_apps import tune_cli
from reparam_apps.experiment import tune
from reparam_apps.experiment.report import Objective, reporting

ROOT = Path(__file__).resolve().parents[1]
HAS_OPTUNA = importlib.util.find_spec("optuna") is not None
needs_optuna = pytest.mark.skipif(not HAS_OPTUNA, reason="optuna is an optional extra: pip install -e '.[tune]'")
# SAC on Pendulum, tiny: 100 steps, 16-unit networks, batch 32, 50 random steps, an evaluation (1 episode) every 50
TINY_SAC = ["--total-steps", "100", "--hidden-sizes", "16", "--batch-size", "32", "--learning-starts", "50",
            "--eval-every", "50", "--eval-episodes", "1", "--log-every", "50", "--no-progress", "--threads", "1"]


# -- a toy domain with closed-form values -----------------------------------------------------------
@dataclass
class ToyConfig(ex.TrainConfig):
    """Gradient descent on (w - 1)^2 from w = 0."""

    lr: float = 0.1
    """Step size."""
    steps: int = 5
    """Gradient steps (one report each)."""
    widths: tuple[int, ...] = (4,)
    """A tuple field (unused)."""
    flag: bool = False
    """A switch (unused)."""
    scale: float | None = None
    """An optional number (unused)."""

    MAY_CHANGE_ON_RESUME: ClassVar[frozenset[str]] = frozenset({"steps", "device", "threads"})


STOP_AT: dict[str, int] = {}  # {"step": k}: the toy run acts as if Ctrl-C came at step k


def toy_score(lr: float, step: int, seed: int = 0) -> float:
    """w_k = 1 - (1 - 2 lr)^k, so -(w_k - 1)^2 = -(1 - 2 lr)^(2k); the seed shifts it by -seed^2."""
    return -((1.0 - 2.0 * lr) ** (2 * step)) - seed ** 2


def toy_main(argv: list[str]) -> int:
    cli = ex.parse_cli(ToyConfig, argv, log_every=1)
    run = ex.start_or_resume("toy", cli, name="toy", quiet=True)
    cfg = run.config
    state = run.load_checkpoint("toy")
    w, step = (0.0, 0) if state is None else (state["w"], state["step"])
    if state is not None:
        run.rewind(step)
    with run.interruptible():
        while step < cfg.steps:
            w -= cfg.lr * 2.0 * (w - 1.0)
            step += 1
            score = -((w - 1.0) ** 2) - cfg.seed ** 2
            run.log({"step": step, "score": score})
            run.save_checkpoint({"w": w}, "toy", step)
            if STOP_AT.get("step") == step:
                run.stop_requested = True
            run.report(step, {"score": score, "other": 1.0})
            if run.stop_requested:
                return run.interrupted(f"step {step}")
    run.write_summary({"score": score})
    return 0


TOY = tune.Domain(toy_main, ToyConfig, {"lr": {"type": "float", "low": 0.05, "high": 0.45}},
                  lambda c: Objective("score", "score", "maximize", c.steps), lambda c: "toy", "toy")


@pytest.fixture(autouse=True)
def optuna_logs_through_pytest():
    """Optuna's own stderr handler would keep a stream pytest's capture has closed: log through pytest's."""
    if not HAS_OPTUNA:
        yield
        return
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()
    yield
    optuna.logging.disable_propagation()
    optuna.logging.enable_default_handler()


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tune.DOMAINS, "toy", TOY)
    STOP_AT.clear()


def load(folder: Path, name: str = "toy"):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


# -- the search space -------------------------------------------------------------------------------
@pytest.mark.parametrize("space, match", [
    ({"lr": {"type": "float", "low": 0.3, "high": 0.3}}, "low < high"),
    ({"lr": {"type": "float", "low": 0.5, "high": 0.1}}, "low < high"),
    ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, "low must be > 0"),
    ({"lr": {"type": "float", "low": -1.0, "high": 0.1, "log": True}}, "low must be > 0"),
    ({"lr": {"type": "float", "low": 0.1}}, "needs low and high"),
    ({"lr": {"type": "float", "low": 0.1, "hgh": 0.2}}, "unknown key 'hgh'"),
    ({"lr": {"type": "uniform", "low": 0.1, "high": 0.2}}, "type: float, int or categorical"),
    ({"steps": {"type": "int", "low": 1.5, "high": 4}}, "must be integers"),
    ({"widths": {"type": "categorical", "choices": []}}, "non-empty list of choices"),
    ({"lr": {"type": "float", "low": "abc", "high": 0.2}}, "finite number"),
])
def test_search_space_structure_errors(space, match):
    with pytest.raises(ex.UserError, match=match):
        tune.parse_space(space)


@pytest.mark.parametrize("space, base, match", [
    ({"stepz": {"type": "int", "low": 1, "high": 2}}, [], "unknown parameter 'stepz'.*did you mean 'steps'"),
    ({"steps": {"type": "float", "low": 1, "high": 4}}, [], "int field: search it as int or categorical"),
    ({"widths": {"type": "int", "low": 1, "high": 4}}, [], "categorical"),
    ({"lr": {"type": "float", "low": 0.1, "high": 0.2}}, ["--lr", "0.3"], "also fixed after --"),
    ({"seed": {"type": "int", "low": -1, "high": 4}}, [], "seed = -1 is refused: seed must be"),  # its validation
])
def test_search_space_checked_against_the_config(space, base, match):
    with pytest.raises(ex.UserError, match=match):
        tune.check_space(tune.parse_space(space), ToyConfig, base, from_file=True)


def test_default_space_drops_fields_fixed_after_the_separator():
    notes = []
    kept = tune.check_space(tune.parse_space({"lr": {"type": "float", "low": 0.1, "high": 0.2},
                                              "steps": {"type": "int", "low": 1, "high": 9}}),
                            ToyConfig, ["--lr", "0.3"], from_file=False, note=notes.append)
    assert [p.name for p in kept] == ["steps"] and "lr is fixed" in notes[0]


def test_every_default_space_fits_its_domain_config():
    for name, domain in tune.DOMAINS.items():
        base = ["toy"] if name == "bnn" else []
        params = tune.check_space(tune.parse_space(domain.space), domain.load_config(), base, from_file=True)
        assert [p.name for p in params] == list(domain.space), name


@pytest.mark.parametrize("name, value", [("lr", 0.1 + 1e-12), ("steps", 7), ("widths", "8 16"), ("flag", True),
                                         ("flag", False), ("scale", None), ("scale", 2.5)])
def test_sampled_values_become_flags_that_parse_back(name, value):
    given = ex.parse_cli(ToyConfig, tune.value_flags(ToyConfig, name, value)).given
    config = ex.build_config(ToyConfig, given)
    expected = tuple(int(v) for v in value.split()) if name == "widths" else value
    assert getattr(config, name) == expected


def test_search_space_file_yaml_and_json(tmp_path):
    pytest.importorskip("yaml")
    (tmp_path / "s.yaml").write_text("lr: {type: float, low: 1e-4, high: 1.0e-1, log: true}\n"
                                     "widths: {type: categorical, choices: [[4], [8, 8]]}\n")
    params = tune.parse_space(tune.load_space(tmp_path / "s.yaml"))
    assert params[0] == tune.Param("lr", "float", 1e-4, 0.1, log=True)  # YAML's "1e-4" string read as 1e-4
    assert params[1].choices == ("4", "8 8")
    (tmp_path / "s.json").write_text('{"lr": {"type": "float", "low": 0.1,}}')
    with pytest.raises(ex.UserError, match="not valid JSON"):
        tune.load_space(tmp_path / "s.json")


# -- optional dependency, bad storage --------------------------------------------------------------
def test_missing_optuna_is_one_line_exit_2(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna -> ImportError
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: tune_cli.main(["--domain", "sac", "--", "--total-steps", "300"]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs the optional optuna package: pip install -e '.[tune]'" in err
    assert not any(tmp_path.iterdir())  # nothing written


@needs_optuna
@pytest.mark.parametrize("url", ["sqlite:////nonexistent-dir/sub/study.db", "not a url", "nosuchdb://host/x"])
def test_storage_that_cannot_be_opened_is_one_line_exit_2(toy, tmp_path, capsys, url):
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: tune_cli.main(["--domain", "toy", "--storage", url, "--out", str(tmp_path / "s")]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: cannot open the study storage")


@needs_optuna
def test_bad_space_file_through_the_command_is_exit_2(toy, tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps({"lrr": {"type": "float", "low": 0.1, "high": 0.2}}))
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: tune_cli.main(["--domain", "toy", "--space", str(tmp_path / "s.json"), "--out",
                                          str(tmp_path / "s")]))
    assert exc.value.code == 2
    assert "unknown parameter 'lrr'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()  # refused before the study folder exists


# -- the study mechanics on the toy ----------------------------------------------------------------
def test_run_report_is_a_no_op_without_a_tuner_and_reaches_an_installed_reporter(tmp_path):
    assert ex.Run.reporter is None
    assert toy_main(["--out", str(tmp_path / "a")]) == 0  # no reporter: report does nothing
    seen = []
    with reporting(lambda run, step, values: seen.append((run.path, step, values["score"]))):
        assert toy_main(["--out", str(tmp_path / "b"), "--lr", "0.25", "--steps", "3"]) == 0
    assert ex.Run.reporter is None
    assert seen == [(tmp_path / "b", k, pytest.approx(toy_score(0.25, k), abs=1e-15)) for k in (1, 2, 3)]


@needs_optuna
def test_pruned_trial_ends_cleanly_and_its_folder_stays_resumable(toy, tmp_path):
    import optuna

    out = tmp_path / "study"
    out.mkdir()
    study = optuna.create_study(study_name="toy", storage=f"sqlite:///{out / 'study.db'}", direction="maximize")
    study.enqueue_trial({"lr": 0.4})  # step-1 score -(0.2)^2 = -0.04
    study.enqueue_trial({"lr": 0.05})  # step-1 score -(0.9)^2 = -0.81: below the median of trial 0 -> pruned
    assert tune_cli.main(["--domain", "toy", "--n-trials", "2", "--pruner-startup-trials", "1", "--out", str(out),
                          "--heartbeat", "0"]) == 0
    t0, t1 = load(out).trials
    assert t0.state.name == "COMPLETE" and t0.value == pytest.approx(toy_score(0.4, 5), rel=1e-12)
    assert t0.intermediate_values == pytest.approx({k: toy_score(0.4, k) for k in range(1, 6)}, rel=1e-12)
    assert t1.state.name == "PRUNED" and t1.intermediate_values == pytest.approx({1: toy_score(0.05, 1)})
    folder = Path(t1.user_attrs["run_folder"])
    mark = json.loads((folder / "trial.json").read_text())
    assert mark["state"] == "pruned" and mark["last_step"] == 1 and mark["trial"] == 1
    assert (folder / "latest.pt").is_file() and len(ex.MetricsCSV(folder / "metrics.csv").rows()) == 1
    assert toy_main(["--out", str(folder), "--resume"]) == 0  # a normal run folder: it continues to the end
    assert json.loads((folder / "summary.json").read_text())["score"] == pytest.approx(toy_score(0.05, 5))
    rows = ex.MetricsCSV(out / "summary.csv").rows()
    assert [(r["trial"], r["state"], float(r["lr"])) for r in rows] == [("0", "complete", 0.4), ("1", "pruned", 0.05)]
    assert (out / "optimization_history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_optuna
def test_interrupted_trial_is_continued_by_the_same_command(toy, tmp_path, capsys):
    argv = ["--domain", "toy", "--n-trials", "1", "--out", str(tmp_path / "s"), "--sampler-seed", "3", "--no-plots"]
    STOP_AT["step"] = 2
    assert tune_cli.main(argv) == ex.EXIT_INTERRUPTED
    err = capsys.readouterr().err  # the run's own hint names the domain's command, the tuner's its own
    assert f"continue with: toy --out {tmp_path / 's' / 'trials' / 'trial_0000'} --resume" in err
    assert "the same command continues it" in err
    first, queued = load(tmp_path / "s").get_trials(deepcopy=False)
    assert first.state.name == "FAIL" and first.user_attrs["outcome"] == "interrupted"
    assert queued.state.name == "WAITING" and queued.user_attrs["retry_of"] == 0
    STOP_AT.clear()
    assert tune_cli.main(argv) == 0
    trials = load(tmp_path / "s").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    done = trials[1]
    assert done.params == first.params and done.user_attrs["run_folder"] == first.user_attrs["run_folder"]
    lr = first.params["lr"]
    assert done.value == pytest.approx(toy_score(lr, 5), rel=1e-12)
    rows = ex.MetricsCSV(Path(done.user_attrs["run_folder"]) / "metrics.csv").rows()
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]  # resumed at its checkpoint: no row twice


@needs_optuna
def test_a_dead_workers_trial_is_retried_from_its_checkpoint(toy, tmp_path):
    import socket
    import time

    import optuna

    out = tmp_path / "s"
    folder = out / "trials" / "trial_0000"
    STOP_AT["step"] = 2
    assert toy_main(["--out", str(folder), "--lr", "0.3"]) == ex.EXIT_INTERRUPTED  # the dead worker's run: step 2
    STOP_AT.clear()
    storage = tune_cli.open_storage(f"sqlite:///{out / 'study.db'}", heartbeat=1)
    study = optuna.create_study(study_name="toy", storage=storage, direction="maximize")
    study.enqueue_trial({"lr": 0.3})
    with pytest.warns(UserWarning, match="Heartbeat"):  # optuna expects heartbeats from Study.optimize
        trial = study.ask()  # RUNNING, and its worker's heartbeat stops after one beat
    trial.suggest_float("lr", 0.05, 0.45)
    trial.set_user_attr("run_folder", str(folder))
    trial.set_user_attr("host", socket.gethostname())
    storage.record_heartbeat(trial._trial_id)
    time.sleep(3.2)  # past the grace period, 2 heartbeats = 2 s (sqlite's clock has 1 s steps)
    argv = ["--domain", "toy", "--n-trials", "1", "--out", str(out), "--heartbeat", "1", "--no-plots"]
    assert tune_cli.main(argv) == 0
    dead, retry = load(out).trials
    assert dead.state.name == "FAIL" and retry.state.name == "COMPLETE"
    assert retry.user_attrs["retry_of"] == 0 and retry.params == {"lr": 0.3}
    assert retry.user_attrs["run_folder"] == str(folder) and retry.value == pytest.approx(toy_score(0.3, 5))
    assert sorted(retry.intermediate_values) == [3, 4, 5]  # continued from the checkpoint at step 2
    assert [int(r["step"]) for r in ex.MetricsCSV(folder / "metrics.csv").rows()] == [1, 2, 3, 4, 5]


@needs_optuna
def test_a_different_command_cannot_join_the_study(toy, tmp_path):
    out = str(tmp_path / "s")
    assert tune_cli.main(["--domain", "toy", "--n-trials", "1", "--out", out, "--no-plots"]) == 0
    with pytest.raises(ex.UserError, match="made by another command"):
        tune_cli.main(["--domain", "toy", "--n-trials", "1", "--out", out, "--", "--steps", "6"])


def test_seed_statistics_by_hand_and_against_scipy():
    stats = tune.seed_statistics([1, 2, 3, 4, 100, 6, 7, 8])
    # n 8: floor(8/4) = 2 values cut at each end of 1 2 3 4 6 7 8 100 -> IQM (3 + 4 + 6 + 7) / 4 = 5
    assert stats["n"] == 8 and stats["iqm"] == 5.0 and stats["mean"] == 131 / 8 and stats["median"] == 5.0
    dev2 = sum((v - 131 / 8) ** 2 for v in [1, 2, 3, 4, 100, 6, 7, 8])
    assert stats["se"] == pytest.approx(math.sqrt(dev2 / 7) / math.sqrt(8), rel=1e-14)
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n in range(1, 12):
        x = rng.normal(size=n)
        s = tune.seed_statistics(x)
        assert s["iqm"] == pytest.approx(scipy_stats.trim_mean(x, 0.25), rel=1e-12)
        assert (math.isnan(s["se"]) if n == 1 else s["se"] == pytest.approx(scipy_stats.sem(x), rel=1e-12))


@needs_optuna
def test_seeds_mode_table_against_a_hand_computation(toy, tmp_path):
    out = tmp_path / "s"
    assert tune_cli.main(["--domain", "toy", "--seeds", "5", "--out", str(out), "--", "--lr", "0.25"]) == 0
    c = 0.5 ** 10  # (1 - 2 lr)^(2 steps); seed s adds -s^2: values -c - {0, 1, 4, 9, 16}
    rows = ex.MetricsCSV(out / "seeds.csv").rows()
    assert [int(r["seed"]) for r in rows] == [0, 1, 2, 3, 4] and {r["state"] for r in rows} == {"complete"}
    assert [float(r["value"]) for r in rows] == pytest.approx([-c - s * s for s in range(5)], rel=1e-12)
    stats = ex.MetricsCSV(out / "seed_stats.csv").rows()[0]
    assert float(stats["n"]) == 5 and float(stats["mean"]) == pytest.approx(-c - 6, rel=1e-12)
    # SE: the offsets 0 1 4 9 16 have mean 6 and squared deviations 36 25 4 9 100 (sum 174): s^2 = 174 / 4
    assert float(stats["se"]) == pytest.approx(math.sqrt(174 / 4) / math.sqrt(5), rel=1e-12)
    assert float(stats["iqm"]) == pytest.approx(-c - (9 + 4 + 1) / 3, rel=1e-12)  # n 5: one cut at each end
    assert "| 5 |" in (out / "seeds.md").read_text()
    assert tune_cli.main(["--domain", "toy", "--seeds", "5", "--out", str(out), "--", "--lr", "0.25"]) == 0
    assert len(load(out, "toy-seeds").trials) == 5  # all seeds done: a second worker starts none


# -- SAC --------------------------------------------------------------------------------------------
@needs_optuna
def test_sac_study_on_pendulum_with_a_second_worker_process(tmp_path):
    """Two trials in this process while the real script, in a second process, runs two more on the same sqlite
    study: four trials between them, each number once, each a complete run folder with the sampled values."""
    out = tmp_path / "study"
    argv = ["--domain", "sac", "--n-trials", "2", "--out", str(out), "--", "--env", "Pendulum-v1", *TINY_SAC]
    worker = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "tune.py"), "--no-plots", *argv], cwd=tmp_path,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        code = tune_cli.main(argv)
    finally:
        log = worker.communicate(timeout=300)[0]
    assert (code, worker.returncode) == (0, 0), log
    study = load(out, "sac-Pendulum-v1")
    assert [t.number for t in study.trials] == [0, 1, 2, 3]
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4  # MedianPruner waits for 5 finished trials
    space = {p.name: p for p in tune.parse_space(tune.DOMAINS["sac"].space)}
    for t in study.trials:
        folder = Path(t.user_attrs["run_folder"])
        assert folder.resolve() == (out / "trials" / f"trial_{t.number:04d}").resolve()
        config = json.loads((folder / "config.json").read_text())["config"]
        assert set(t.params) == {"learning_rate", "gamma", "tau"}  # batch and widths are fixed after --
        for name, value in t.params.items():  # the sampled value is the one the run trained with
            assert config[name] == value
            p = space[name]
            assert p.low <= value <= p.high if p.type == "float" else value in p.choices
        assert config["hidden_sizes"] == [16] and config["batch_size"] == 32
        assert t.value == json.loads((folder / "summary.json").read_text())["eval_mean"]
        evals = ex.MetricsCSV(folder / "evals.csv").rows()
        # evals.csv keeps 6 significant digits: relative error <= 5e-6
        assert t.intermediate_values == pytest.approx({int(r["step"]): float(r["eval_mean"]) for r in evals},
                                                      rel=1e-5)
        assert sorted(t.intermediate_values) == [50, 100]
        assert json.loads((folder / "trial.json").read_text())["state"] == "complete"
    for name in ("optimization_history", "param_importances", "intermediate_values"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    table = ex.MetricsCSV(out / "summary.csv").rows()  # written by the worker that finished last
    assert [(int(r["trial"]), float(r["value"])) for r in table] == [(t.number, t.value) for t in study.trials]
    best = max(study.trials, key=lambda t: t.value)
    assert f"Best: trial {best.number}, eval_mean" in (out / "summary.md").read_text()


def test_help_and_print_space(capsys):
    with pytest.raises(SystemExit) as exc:
        tune_cli.main(["--help"])
    assert exc.value.code == 0 and "--seeds K" in capsys.readouterr().out
    assert tune_cli.main(["--domain", "sac", "--print-space"]) == 0
    text = capsys.readouterr().out
    yaml = pytest.importorskip("yaml")
    assert tune.parse_space(yaml.safe_load(text)) == tune.parse_space(tune.DOMAINS["sac"].space)
