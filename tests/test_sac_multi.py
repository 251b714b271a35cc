"""K seeds in one process (agents.multi.SACGroup, reparam-sac --num-seeds): each agent must learn exactly as a
single run of its seed (its own env, buffer, optimizer, temperature and random streams), whether the group's
gradient steps run fused (one graph for all agents) or each agent's eager update; the group's statistics across
seeds against scipy; the group run folder, its resume after kill -9 and after Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import agents.multi as multi_module
import agents.sac as sac_module
from agents import SAC, SACConfig, cli
from agents.multi import SACGroup, seed_stats
from agents.update import StackedUpdate
from reparam_apps import experiment as ex

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = dict(hidden_sizes=(32, 32), batch_size=32, learning_starts=100, device="cpu")
LONG = dict(TINY, total_steps=10_200)  # long enough for the fused step (the compile rule)
STATS = ("critic_loss", "actor_loss", "alpha", "entropy", "episode_return", "updates")


def fused_with(monkeypatch, backend):
    """Single runs and groups build their StackedUpdate with ``backend`` (False: op by op, exact)."""
    monkeypatch.setattr(sac_module, "StackedUpdate", lambda models, compile: StackedUpdate(models, backend))
    monkeypatch.setattr(multi_module, "StackedUpdate",
                        lambda models, compile, generators: StackedUpdate(models, backend, generators))


def single_rows(seed: int, steps: int, **cfg) -> list[dict]:
    model = SAC("Pendulum-v1", seed=seed, **cfg)
    rows = []
    model.learn(steps, callback=lambda m, r: rows.append(r), log_every=100)
    model.close()
    return rows


def appender(rows: list) -> object:
    return lambda model, metrics: rows.append(metrics)


def group_rows(seed: int, k: int, steps: int, **cfg) -> tuple[SACGroup, dict[int, list[dict]]]:
    group = SACGroup(SACConfig.for_env("Pendulum-v1", seed=seed, **cfg), k)
    rows = {s: [] for s in group.seeds}
    group.learn(steps, callbacks=[appender(rows[s]) for s in group.seeds], log_every=100)
    return group, rows


def table(rows: list[dict]) -> np.ndarray:
    return np.array([[r[k] for k in STATS] for r in rows], dtype=np.float64)


@pytest.mark.parametrize("path", ["fused", "eager"])
def test_each_seed_of_a_group_learns_as_its_single_run(monkeypatch, path):
    """K = 1 and K = 3 against single runs of the same seeds, 200 gradient steps: identical logged losses,
    returns and temperatures (op by op the fused step sums in the same order for any K; the eager group runs
    each agent's own _update)."""
    fused_with(monkeypatch, False)
    cfg = LONG if path == "fused" else dict(LONG, compile=False)
    singles = {s: single_rows(s, 300, **cfg) for s in (3, 4, 5)}
    for k in (1, 3):
        group, rows = group_rows(3, k, 300, **cfg)
        assert group._fused_state == ("running" if path == "fused" else "eager")
        for s in group.seeds:
            np.testing.assert_array_equal(table(rows[s]), table(singles[s]))
        group.close()
    # ...and the seeds differ from each other, so the equality above could fail.
    assert not np.allclose(table(singles[3])[1:, :4], table(singles[4])[1:, :4])


def test_traced_group_matches_single_runs_to_float_tolerance(monkeypatch):
    """Through dynamo + AOTAutograd (what inductor compiles) the K = 3 graph may fuse across agents and sum in
    another order: each seed's losses stay within float tolerance of its single run over 200 steps (observed
    ~2e-7 relative with inductor; a wrong agent index or stream moves them by O(1))."""
    fused_with(monkeypatch, "aot_eager")
    singles = {s: single_rows(s, 300, **LONG) for s in (3, 4, 5)}
    group, rows = group_rows(3, 3, 300, **LONG)
    for s in group.seeds:
        np.testing.assert_allclose(table(rows[s]), table(singles[s]), rtol=1e-4, atol=1e-5)
    group.close()


def test_group_save_load_continues_identically(monkeypatch, tmp_path):
    fused_with(monkeypatch, False)
    cfg = SACConfig.for_env("Pendulum-v1", seed=7, **LONG)
    a = SACGroup(cfg, 2)
    a.learn(300)
    b = SACGroup(cfg, 2)
    b.learn(200)
    b.save(tmp_path / "g.pt")
    # Each agent's tensors are views of the group's stacked ones; a checkpoint holds each agent's own values.
    alone = SAC("Pendulum-v1", seed=7, **LONG)
    alone.learn(200)
    ex.save_checkpoint(alone.checkpoint_state(), tmp_path / "alone.pt", "sac")
    ex.save_checkpoint(b.agents[1].checkpoint_state(), tmp_path / "member.pt", "sac")
    assert (tmp_path / "member.pt").stat().st_size < 1.05 * (tmp_path / "alone.pt").stat().st_size
    c = SACGroup.load(tmp_path / "g.pt")
    assert c.seeds == [7, 8] and c.num_timesteps == 200 and c.agents[1].buffer.size == 200
    c.learn(300)
    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    for x, y in zip(a.agents, c.agents, strict=True):
        np.testing.assert_array_equal(x.predict(obs)[0], y.predict(obs)[0])
    assert not np.array_equal(a.agents[0].predict(obs)[0], a.agents[1].predict(obs)[0])
    single = SAC("Pendulum-v1", seed=7, **LONG)
    single.save(tmp_path / "one.pt")
    with pytest.raises(ex.CheckpointError, match="single SAC run, not a group"):
        SACGroup.load(tmp_path / "one.pt")
    for m in (a, b, c, single, alone):
        m.close()


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 8, 9])
def test_seed_stats_against_scipy(k):
    stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(k).normal(-200, 50, size=k)
    got = seed_stats(x)
    assert got["mean"] == pytest.approx(x.mean())
    assert got["se"] == pytest.approx(stats.sem(x) if k > 1 else 0.0)
    assert got["iqm"] == pytest.approx(stats.trim_mean(x, 0.25))
    assert got["min"] == x.min() and got["max"] == x.max()
    if k >= 4:  # the IQM ignores the extremes
        y = np.sort(x)
        y[0], y[-1] = -1e6, 1e6
        assert seed_stats(y)["iqm"] == pytest.approx(got["iqm"])


# -- the command line -----------------------------------------------------------------------------------
FAST = ["--hidden-sizes", "32", "32", "--batch-size", "32", "--threads", "1", "--no-progress", "--log-every", "100",
        "--eval-episodes", "2", "--device", "cpu"]
RUN = ["--num-seeds", "2", "--seed", "4", "--total-steps", "400", "--learning-starts", "100", "--eval-every", "200",
       *FAST]
COMPARED = ("evals.csv", "seed_4/metrics.csv", "seed_5/metrics.csv", "seed_4/evals.csv", "seed_5/evals.csv")


def run_main(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: cli.main(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("group") / "full"
    before = torch.get_num_threads()
    with pytest.raises(SystemExit) as exc:
        ex.run_cli(lambda: cli.main([*RUN, "--out", str(out)]))
    torch.set_num_threads(before)
    assert exc.value.code == 0
    return out


def test_group_folder_and_each_seed_equals_its_single_run(reference, tmp_path, capsys):
    for f in ("config.json", "latest.pt", "evals.csv", "speed.csv", "learning_curve.png", "summary.json",
              *(f"seed_{s}/{n}" for s in (4, 5) for n in ("metrics.csv", "speed.csv", "evals.csv", "best.pt",
                                                          "learning_curve.png", "summary.json"))):
        assert (reference / f).is_file(), f
    summary = json.loads((reference / "summary.json").read_text())
    rows = ex.MetricsCSV(reference / "evals.csv").rows()
    assert [int(r["step"]) for r in rows] == [200, 400] and summary["seeds"] == [4, 5]
    finals = [float(rows[-1]["seed_4"]), float(rows[-1]["seed_5"])]
    assert summary["final_eval"]["mean"] == pytest.approx(np.mean(finals), rel=1e-5)
    assert float(rows[-1]["eval_se"]) == pytest.approx(np.std(finals, ddof=1) / np.sqrt(2), rel=1e-4)
    # Seed 5 of the group is the single run of seed 5: the same bytes.
    single = tmp_path / "single"
    assert run_main([*RUN[4:], "--seed", "5", "--out", str(single)], capsys)[0] == 0
    for f in ("metrics.csv", "evals.csv"):
        assert (single / f).read_bytes() == (reference / "seed_5" / f).read_bytes(), f
    assert (reference / "seed_4" / "metrics.csv").read_bytes() != (single / "metrics.csv").read_bytes()
    msg = run_main(["--resume", "--out", str(reference), "--num-seeds", "3"], capsys)[2]
    assert "--num-seeds cannot change" in msg


def test_group_kill_9_then_resume_equals_the_uninterrupted_run(reference, tmp_path, capsys):
    out = tmp_path / "cut"
    # seed_4's rows: 100 m s | 200 m s e | 300 m s: killed after its 7th, at step 300; latest.pt is from step 200
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPARAM_TEST_KILL_AT_ROW": "7"}
    res = subprocess.run([sys.executable, "-m", "agents.cli", *RUN, "--out", str(out)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert res.returncode == -9, res.stderr
    assert ex.load_checkpoint(out / "latest.pt", "sac")["step"] == 200
    code, stdout, _ = run_main(["--out", str(out), "--resume"], capsys)
    assert code == 0 and "step 400" in stdout
    for f in COMPARED:
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f


def test_group_ctrl_c_then_resume_equals_the_uninterrupted_run(reference, tmp_path, capsys, monkeypatch):
    on_step = cli.RunRecorder.on_step

    def ctrl_c_at_250(self, model):
        if model.num_timesteps == 250 and model.config.seed == 4:
            os.kill(os.getpid(), signal.SIGINT)
        return on_step(self, model)

    monkeypatch.setattr(cli.RunRecorder, "on_step", ctrl_c_at_250)
    out = tmp_path / "int"
    code, _, err = run_main([*RUN, "--out", str(out)], capsys)
    assert code == 130 and "interrupted at step 250" in err
    monkeypatch.undo()
    assert run_main(["--out", str(out), "--resume"], capsys)[0] == 0
    for f in COMPARED:
        assert (out / f).read_bytes() == (reference / f).read_bytes(), f
