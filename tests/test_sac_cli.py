"""The SAC scripts: run folder, reproducibility, resume (also after SIGINT), and every bad-input path
(one line on stderr, exit code 2)."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from conftest import load_script

from agents import SAC, SACConfig
from reparam_apps import run_cli

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--hidden-sizes", "32", "32", "--batch-size", "32", "--threads", "1", "--no-progress",
        "--log-every", "100", "--eval-episodes", "2", "--device", "cpu"]


def _load(name: str):
    return load_script(name)


train = _load("train_sac")
enjoy = _load("enjoy_sac")


@pytest.fixture(autouse=True)
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def run_main(main, argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: main(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def user_error(main, argv, capsys) -> str:
    code, _, err = run_main(main, argv, capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# -- the run folder, reproducibility and resume ---------------------------------------------------------
def test_run_folder_and_same_seed_identical_csv(tmp_path, capsys):
    args = ["--total-steps", "400", "--learning-starts", "100", "--eval-every", "200", *FAST]
    for name in ("a", "b"):
        code, out, _ = run_main(train.main, [*args, "--out", str(tmp_path / name)], capsys)
        assert code == 0 and "eval return" in out
    a, b = tmp_path / "a", tmp_path / "b"
    for f in ("config.json", "metrics.csv", "speed.csv", "evals.csv", "latest.pt", "best.pt", "learning_curve.png"):
        assert (a / f).is_file(), f
    header = (a / "metrics.csv").read_text().splitlines()[0]
    assert header == "step,episodes,episode_return,episode_length,critic_loss,actor_loss,alpha,entropy,updates"
    assert len((a / "metrics.csv").read_text().splitlines()) == 5
    assert (a / "metrics.csv").read_bytes() == (b / "metrics.csv").read_bytes()
    assert (a / "evals.csv").read_bytes() == (b / "evals.csv").read_bytes()
    # A different seed gives a different run (so the equality above can fail).
    run_main(train.main, [*args, "--seed", "1", "--out", str(tmp_path / "c")], capsys)
    assert (tmp_path / "c" / "metrics.csv").read_bytes() != (a / "metrics.csv").read_bytes()
    # The same folder again without --resume is refused.
    assert "already holds a run" in user_error(train.main, [*args, "--out", str(a)], capsys)
    # enjoy: a run folder, mean +- std
    code, out, _ = run_main(enjoy.main, [str(a), "--episodes", "2"], capsys)
    assert code == 0 and "2 episodes, return" in out


def test_resume_continues_the_same_run(tmp_path, capsys):
    common = ["--learning-starts", "100", "--eval-every", "150", *FAST]
    run_main(train.main, ["--total-steps", "600", *common, "--out", str(tmp_path / "full")], capsys)
    run_main(train.main, ["--total-steps", "300", *common, "--out", str(tmp_path / "part")], capsys)
    code, out, _ = run_main(train.main, ["--total-steps", "600", "--resume", "--out", str(tmp_path / "part")], capsys)
    assert code == 0 and "step 600" in out
    for f in ("metrics.csv", "evals.csv"):
        assert (tmp_path / "full" / f).read_bytes() == (tmp_path / "part" / f).read_bytes(), f
    # Changing a hyperparameter on resume is refused; so is resuming a folder that is not a run.
    msg = user_error(train.main, ["--resume", "--out", str(tmp_path / "part"), "--learning-rate", "0.1"], capsys)
    assert "--learning-rate" in msg
    assert "not a run folder" in user_error(train.main, ["--resume", "--out", str(tmp_path / "nothing")], capsys)


def test_sigint_saves_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    # SIGINT arrives mid-run (after the first metrics row, i.e. past step 100).
    cmd = [sys.executable, str(ROOT / "scripts" / "train_sac.py"), "--total-steps", "100000",
           "--learning-starts", "50", "--eval-every", "50000", *FAST, "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "metrics.csv").is_file():
        time.sleep(0.2)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted at step" in err and "--resume" in err
    step = SAC.load(out / "latest.pt").num_timesteps
    assert 0 < step < 100_000
    res = subprocess.run([*cmd[:2], "--resume", "--out", str(out), "--total-steps", str(step + 250), "--no-progress"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"step {step + 250}" in res.stdout
    steps = [int(line.split(",")[0]) for line in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == step + 250  # no duplicated or lost rows


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
    (["--batch-size", "0"], "batch_size must be positive"),
    (["--batch-size", "512", "--buffer-size", "100"], "larger than buffer_size"),
    (["--learning-starts", "500", "--total-steps", "400"], "never take a gradient step"),
    (["--tau", "2"], "tau must be in"),
    (["--gamma", "-0.1"], "gamma must be in"),
    (["--eval-episodes", "0"], "--eval-episodes must be positive"),
    (["--device", "tpu"], "unknown device"),
])
def test_train_bad_input(argv, match, tmp_path, capsys):
    line = user_error(train.main, [*argv, "--out", str(tmp_path / "r"), "--no-progress"], capsys)
    assert match in line
    assert not (tmp_path / "r" / "config.json").exists()


def test_missing_optional_dependency_names_the_extra(tmp_path, capsys, monkeypatch):
    def fake_make(env_id, **kwargs):
        raise gym.error.DependencyNotInstalled('MuJoCo is not installed, run `pip install "gymnasium[mujoco]"`')

    monkeypatch.setattr(gym, "make", fake_make)
    line = user_error(train.main, ["--env", "HalfCheetah-v5", "--out", str(tmp_path / "r")], capsys)
    assert "optional dependency" in line and ".[mujoco]" in line


def test_box2d_missing_is_reported(tmp_path, capsys):
    try:
        import Box2D  # noqa: F401
    except ImportError:
        line = user_error(train.main, ["--env", "LunarLanderContinuous-v3", "--out", str(tmp_path / "r")], capsys)
        assert "box2d" in line.lower()
    else:
        pytest.skip("Box2D is installed here")


def test_tensorboard_missing(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    line = user_error(train.main, ["--tensorboard", "--total-steps", "300", *FAST, "--out", str(tmp_path / "r")],
                      capsys)
    assert "pip install tensorboard" in line


def test_checkpoint_errors(tmp_path, capsys):
    run_main(train.main, ["--total-steps", "200", "--learning-starts", "100", *FAST, "--out", str(tmp_path / "r")],
             capsys)
    ckpt = tmp_path / "r" / "latest.pt"
    assert "trained on Pendulum-v1" in user_error(enjoy.main, [str(ckpt), "--env", "MountainCarContinuous-v0"], capsys)
    data = ckpt.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 3])
    assert "corrupt or truncated" in user_error(enjoy.main, [str(tmp_path / "trunc.pt")], capsys)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert "corrupt or truncated" in user_error(enjoy.main, [str(tmp_path / "junk.pt")], capsys)
    assert "does not exist" in user_error(enjoy.main, [str(tmp_path / "none.pt")], capsys)
    # A corrupt latest.pt also stops --resume with one line.
    ckpt.write_bytes(data[:100])
    assert "corrupt or truncated" in user_error(train.main, ["--resume", "--out", str(tmp_path / "r")], capsys)


def test_real_process_exit_code_and_no_traceback():
    res = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_sac.py"), "--env", "CartPole-v1"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().startswith("error:") and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_help_lists_every_option_with_default():
    text = train.build_parser().format_help()
    for f in dataclasses.fields(SACConfig):
        if f.name != "env_id":
            assert "--" + f.name.replace("_", "-") in text
    for flag in ("--seed", "--total-steps", "--eval-every", "--eval-episodes", "--out", "--resume", "--tensorboard",
                 "--no-progress"):
        assert flag in text
    assert text.count("(default") >= len(dataclasses.fields(SACConfig)) + 6
