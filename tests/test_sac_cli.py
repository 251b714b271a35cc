"""The SAC entry points (agents.cli, agents.enjoy) on the experiment spine: the run folder, reproducibility,
refusals, resume after kill -9 and after Ctrl-C (metrics equal to an uninterrupted run), checksums, the
divergence guard, and every bad-input path (one line on stderr, exit code 2). Two subprocesses: the real
script (also the reference run) and the real kill -9; everything else runs in-process."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from agents import SAC, CheckpointCallback, cli, enjoy
from reparam_apps import experiment as ex

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden-sizes", "32", "32", "--batch-size", "32", "--threads", "1", "--no-progress",
        "--log-every", "100", "--eval-episodes", "2", "--device", "cpu"]
RUN = ["--total-steps", "400", "--learning-starts", "100", "--eval-every", "200", *FAST]  # the reference run
COMPARED = ("metrics.csv", "evals.csv")  # deterministic; speed.csv holds the wall-clock columns


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: main(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def user_error(main, argv, capsys, code: int = 2) -> str:
    rc, _, err = run_main(main, argv, capsys)
    last = err.strip().splitlines()[-1]
    assert rc == code, err
    assert last.startswith("error: ") and "Traceback" not in err, err
    return last


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The real script in a subprocess (the smoke test): 400 steps, evaluations and checkpoints every 200."""
    out = tmp_path_factory.mktemp("sac") / "full"
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_sac.py"), *RUN, "--out", str(out)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("Pendulum-v1: step 400, eval return") and str(out) in res.stdout
    assert "SAC Pendulum-v1: step 400/400 (100%)" in res.stderr  # status lines: stderr is not a terminal
    return out


def test_script_run_folder_and_metrics_depend_on_the_seed(reference, tmp_path, capsys):
    for f in ("config.json", "metrics.csv", "speed.csv", "evals.csv", "log.txt", "latest.pt", "latest.previous.pt",
              "best.pt", "learning_curve.png", "summary.json"):
        assert (reference / f).is_file(), f
    header, *rows = (reference / "metrics.csv").read_text().splitlines()
    assert header == "step,episodes,episode_return,episode_length,critic_loss,actor_loss,alpha,entropy,updates"
    assert [int(r.split(",")[0]) for r in rows] == [100, 200, 300, 400]
    assert [int(r["step"]) for r in ex.MetricsCSV(reference / "evals.csv").rows()] == [200, 400]
    assert ex.load_checkpoint(reference / "latest.pt", "sac")["step"] == 400
    summary = json.loads((reference / "summary.json").read_text())
    assert summary["steps"] == 400 and summary["updates"] == 300
    # Same seed, same bytes: the resume tests below compare with this run. Another seed: other bytes (so
    # those equalities can fail).
    run_main(cli.main, [*RUN, "--seed", "1", "--total-steps", "200", "--out", str(tmp_path / "c")], capsys)
    assert (tmp_path / "c" / "metrics.csv").read_text().splitlines()[2] != rows[1]


def test_default_folder_refusals_and_enjoy(reference, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--total-steps", "200", "--learning-starts", "100", *FAST]
    assert run_main(cli.main, args, capsys)[0] == 0
    (folder,) = (tmp_path / "runs" / "sac").iterdir()
    assert folder.name.startswith("Pendulum-v1_s0_")
    # enjoy: a run name without its time stamp finds the newest such folder; a folder uses its best.pt
    code, out, err = run_main(enjoy.main, ["runs/sac/Pendulum-v1_s0", "--episodes", "2"], capsys)
    assert code == 0 and "2 episodes, return" in out and str(folder.name) in err
    code, out, _ = run_main(enjoy.main, [str(reference), "--episodes", "2"], capsys)
    assert code == 0 and "checkpoint step" in out
    before = (reference / "metrics.csv").read_bytes()
    assert "already holds a run" in user_error(cli.main, [*RUN, "--out", str(reference)], capsys)
    msg = user_error(cli.main, ["--resume", "--out", str(reference), "--learning-rate", "0.1"], capsys)
    assert "--learning-rate cannot change" in msg
    msg = user_error(cli.main, ["--resume", "--out", str(reference), "--env", "MountainCarContinuous-v0"], capsys)
    assert "--env cannot change" in msg
    assert "holds no run" in user_error(cli.main, ["--resume", "--out", str(tmp_path / "nothing")], capsys)
    assert (reference / "metrics.csv").read_bytes() == before  # refusals touch nothing


def test_kill_9_then_resume_equals_the_uninterrupted_run(reference, tmp_path, capsys):
    out = tmp_path / "cut"
    # Rows: 100 m s | 200 m s e | 300 m s (killed after the 7th row; latest.pt is from step 200)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPARAM_TEST_KILL_AT_ROW": "7"}
    res = subprocess.run([sys.executable, "-m", "agents.cli", *RUN, "--out", str(out)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == -9, res.stderr
    assert (out / "speed.csv").read_text().endswith("99999,0.")  # the torn row
    assert ex.load_checkpoint(out / "latest.pt", "sac")["step"] == 200
    code, stdout, _ = run_main(cli.main, ["--out", str(out), "--resume"], capsys)
    assert code == 0 and "step 400" in stdout
    for f in COMPARED:
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f


def test_ctrl_c_saves_mid_window_and_resume_equals_the_uninterrupted_run(reference, tmp_path, capsys, monkeypatch):
    on_step = cli.RunRecorder.on_step

    def ctrl_c_at_250(self, model):  # a real SIGINT, handled by the run's handler
        if model.num_timesteps == 250:
            os.kill(os.getpid(), signal.SIGINT)
        return on_step(self, model)

    monkeypatch.setattr(cli.RunRecorder, "on_step", ctrl_c_at_250)
    out = tmp_path / "int"
    code, _, err = run_main(cli.main, [*RUN, "--out", str(out)], capsys)
    assert code == 130 and "interrupted at step 250: saved" in err and "--resume" in err
    assert ex.load_checkpoint(out / "latest.pt", "sac")["step"] == 250  # mid-window: its partial sums are saved
    monkeypatch.undo()
    assert run_main(cli.main, ["--out", str(out), "--resume", "--total-steps", "400"], capsys)[0] == 0
    for f in COMPARED:
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f
    saved = json.loads((out / "config.json").read_text())
    assert len(saved["resumes"]) == 1 and saved["config"]["eval_every"] == 200
    # The evaluation state came back too: the same best model (at step 200, before the interruption).
    best = [json.loads((d / "summary.json").read_text())["best_eval_mean"] for d in (out, reference)]
    assert best[0] == best[1]
    assert best[0] == pytest.approx(max(float(r["eval_mean"]) for r in ex.MetricsCSV(out / "evals.csv").rows()),
                                    rel=1e-5)  # the CSV keeps 6 significant digits


def test_bit_flipped_checkpoint_is_refused_by_name(reference, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference, out)
    latest = out / "latest.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0x01
    latest.write_bytes(bytes(data))
    msg = user_error(cli.main, ["--resume", "--out", str(out)], capsys)
    assert f"{latest} is corrupt or truncated" in msg and "latest.previous.pt is kept" in msg
    assert "corrupt or truncated" in user_error(enjoy.main, [str(latest)], capsys)
    assert "trained on Pendulum-v1" in user_error(enjoy.main, [str(out / "best.pt"), "--env",
                                                               "MountainCarContinuous-v0"], capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "not a reparam-apps checkpoint" in user_error(enjoy.main, [str(tmp_path / "junk.pt")], capsys)
    assert "does not exist" in user_error(enjoy.main, [str(tmp_path / "none.pt")], capsys)


def test_divergence_exits_3_naming_the_step_and_keeps_a_finite_checkpoint(tmp_path, capsys):
    out = tmp_path / "div"
    msg = user_error(cli.main, ["--learning-rate", "1e6", "--total-steps", "2000", "--learning-starts", "100",
                                "--eval-every", "100", *FAST, "--out", str(out)], capsys, code=3)
    assert "training diverged at step 1" in msg and f"the last good checkpoint {out / 'latest.pt'} is kept" in msg
    state = ex.load_checkpoint(out / "latest.pt", "sac")
    assert state["step"] == 100
    for name in ("actor", "critic", "critic_target"):
        assert all(torch.isfinite(v).all() for v in state[name].values()), name
    assert [r["step"] for r in ex.MetricsCSV(out / "metrics.csv").rows()] == ["100"]  # no row after it


def test_a_nan_model_is_never_checkpointed(tmp_path):
    parsed = ex.parse_cli(cli.SACTrainConfig, ["--total-steps", "200", *FAST, "--out", str(tmp_path / "r")])
    run = ex.start_or_resume("sac", parsed, name=cli.run_name, quiet=True)
    model = SAC(run.config)
    recorder = cli.RunRecorder(run, run.progress(200, "test"))
    recorder.save_checkpoint(model)
    good = run.checkpoint_path.read_bytes()
    with torch.no_grad():
        model.actor.head.weight[0, 0] = float("nan")
    with pytest.raises(ex.DivergenceError, match=r"step 0: parameter head.weight holds NaN"):
        recorder.save_checkpoint(model)
    with pytest.raises(ex.DivergenceError, match=r"step 0: parameter head.weight holds NaN"):
        CheckpointCallback(100, path=tmp_path / "lib.pt").save(model)  # the library's callback too
    assert run.checkpoint_path.read_bytes() == good and not (tmp_path / "lib.pt").exists()
    model.close()


class CountingMake:
    """gym.make that counts its calls (a module-level class, so vector envs holding it stay picklable)."""

    calls = 0
    make = staticmethod(gym.make)

    def __call__(self, *args, **kwargs):
        CountingMake.calls += 1
        return CountingMake.make(*args, **kwargs)


def test_each_env_is_built_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gym, "make", CountingMake())
    args = ["--total-steps", "200", "--learning-starts", "150", "--num-envs", "2", *FAST, "--out", str(tmp_path / "r")]
    assert run_main(cli.main, args, capsys)[0] == 0
    assert CountingMake.calls == 3  # two training envs and the evaluation env
    CountingMake.calls = 0
    assert run_main(cli.main, ["--out", str(tmp_path / "r"), "--resume", "--total-steps", "300"], capsys)[0] == 0
    assert CountingMake.calls == 1  # the training envs come back from the checkpoint


# -- bad input -------------------------------------------------------------------------------------------
class _Unbounded(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (2,))
    action_space = gym.spaces.Box(-float("inf"), float("inf"), (1,))


if "SACCliUnbounded-v0" not in gym.registry:
    gym.register("SACCliUnbounded-v0", entry_point=_Unbounded)


@pytest.mark.parametrize("argv, match", [
    (["--env", "CartPole-v1"], "SAC needs a continuous Box action space"),
    (["--env", "Pendulum-v2"], "did you mean Pendulum-v1"),
    (["--env", "NoSuchEnvAtAll-v0"], "unknown environment id"),
    (["--env", "SACCliUnbounded-v0"], "unbounded action bounds"),
    (["--learning-rate", "-1"], "learning_rate must be positive"),
    (["--learning-rate", "nan"], "learning_rate must be positive and finite"),
    (["--target-entropy", "inf"], "target_entropy must be a finite number"),
    (["--batch-size", "0"], "batch_size must be positive"),
    (["--batch-size", "512", "--buffer-size", "100"], "larger than buffer_size"),
    (["--learning-starts", "500", "--total-steps", "400"], "never take a gradient step"),
    (["--tau", "2"], "tau must be in"),
    (["--gamma", "-0.1"], "gamma must be in"),
    (["--alpha", "often"], "neither a number nor 'auto'"),
    (["--eval-episodes", "0"], "eval_episodes must be a positive integer"),
    (["--device", "tpu"], "device must be 'auto', 'cpu' or 'cuda[:N]'"),
    (["--total-steps", "1e5"], "'1e5' is not an integer"),
])
def test_train_bad_input(argv, match, tmp_path, capsys):
    line = user_error(cli.main, [*argv, "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert match in line
    assert not (tmp_path / "r").exists()  # nothing is written for bad input


def test_missing_optional_dependency_names_the_extra(tmp_path, capsys, monkeypatch):
    def fake_make(env_id, **kwargs):
        raise gym.error.DependencyNotInstalled('MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`')

    monkeypatch.setattr(gym, "make", fake_make)
    line = user_error(cli.main, ["--env", "HalfCheetah-v5", "--out", str(tmp_path / "r")], capsys)
    assert "optional dependency" in line and ".[mujoco]" in line
    assert not (tmp_path / "r").exists()


def test_tensorboard_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    line = user_error(cli.main, ["--tensorboard", "--total-steps", "300", *FAST, "--out", str(tmp_path / "r")],
                      capsys)
    assert "pip install tensorboard" in line


@pytest.mark.parametrize("module", [cli, enjoy])
def test_help_shows_every_option_with_its_doc_and_default(module, capsys):
    code, out, _ = run_main(module.main, ["--help"], capsys)
    assert code == 0
    text = " ".join(out.split())
    if module is cli:
        docs = ex.field_docs(cli.SACTrainConfig)
        for f in dataclasses.fields(cli.SACTrainConfig):
            assert docs.get(f.name), f"{f.name} has no docstring"
            assert " ".join(docs[f.name].split()) in text, f.name
        flags = [f.metadata.get("flag", ex.flag_name(f.name)) for f in dataclasses.fields(cli.SACTrainConfig)]
        flags += [ex.flag_name(f.name) for f in dataclasses.fields(ex.RunOptions)]
        assert "(default: 1000000; Pendulum-v1 20000," in text and "--env ID" in text
    else:
        flags = ["--env", "--episodes", "--seed", "--stochastic", "--render", "--video", "--device"]
    parser_help = out.split("options:")[1]
    for flag in flags:  # "  --flag VALUE", or "  --flag, --no-flag" for a switch that is on by default
        entry = re.split(rf"  {flag}[ ,]", parser_help)[1].split("\n  --")[0]
        assert "(default" in entry, flag
    if module is cli:
        assert "--compile, --no-compile" in parser_help
