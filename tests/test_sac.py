"""SAC unit tests: the policy's log-density against SB3 and the core, the fused ensemble against
independent MLPs, Polyak averaging, save/load, the buffer. The update's equations (target, the three
losses and their gradients, Polyak inside the update) are in test_sac_equations.py."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from stable_baselines3.common.distributions import SquashedDiagGaussianDistribution

from agents import (
    SAC,
    Callback,
    CheckpointCallback,
    CriticEnsemble,
    EvalCallback,
    ReplayBuffer,
    SACConfig,
    StopOnReturn,
    config_for,
    evaluate_policy,
)
from agents.sac import polyak_update
from reparam_apps import CheckpointError, DivergenceError, TanhNormal
from reparam_apps import experiment as ex

SMALL = dict(hidden_sizes=(32, 32), batch_size=32, learning_starts=50, total_steps=400, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


class TerminatingEnv(gym.Env):
    """1-d toy: obs = [t], reward = action, terminates at t == 5 (a true terminal state), truncated by
    TimeLimit otherwise never (max_episode_steps is large)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-3.0, 1.0, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), float(action[0]), self.t == 5, False, {}


class UnboundedEnv(TerminatingEnv):
    action_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)


gym.register("SACTestTerminating-v0", entry_point=TerminatingEnv, max_episode_steps=100)
gym.register("SACTestUnbounded-v0", entry_point=UnboundedEnv, max_episode_steps=100)


# -- the policy ----------------------------------------------------------------------------------
def test_actor_log_prob_matches_sb3_and_core():
    model = SAC("Pendulum-v1", seed=0, **SMALL)  # Pendulum: action box [-2, 2]
    torch.manual_seed(1)
    obs = torch.randn(64, 3)
    with torch.no_grad():
        mu, log_std = model.actor.head(model.actor.trunk(obs)).chunk(2, dim=-1)
        torch.manual_seed(2)
        action, log_pi = model.actor.sample(obs)  # env units, unit-box log-density
    assert action.shape == (64, 1) and log_pi.shape == (64,)
    assert bool((action.abs() <= 2.0).all())
    a_unit = action / 2.0
    u = torch.atanh(a_unit.double()).float()
    # SB3: Gaussian log-density of u minus sum log(1 - tanh(u)^2 + 1e-6), in the unit box.
    sb3 = SquashedDiagGaussianDistribution(1).proba_distribution(mu, log_std.clamp(-20, 2))
    ref = sb3.log_prob(a_unit, gaussian_actions=u)
    torch.testing.assert_close(log_pi, ref, atol=2e-3, rtol=1e-4)
    # The core in env units (includes log of the half range 2), shifted back by log 2.
    core = TanhNormal(mu, log_std.clamp(-20, 2).exp(), torch.tensor([-2.0]), torch.tensor([2.0]))
    torch.testing.assert_close(log_pi, core.log_prob(action) + math.log(2.0), atol=2e-3, rtol=1e-4)
    model.close()


# -- the critics -----------------------------------------------------------------------------------
def _member_mlp(critic: CriticEnsemble, j: int, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Critic j as a plain MLP with F.linear (independent of the batched-matmul code)."""
    h = torch.cat([obs, (act - critic.act_mid) / critic.act_half_range], dim=-1)
    n_layers = len(critic.weights)
    for i in range(n_layers):
        h = F.linear(h, critic.weights[i][j].T, critic.biases[i][j, 0])
        if i < n_layers - 1:
            h = F.relu(h)
    return h.squeeze(-1)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_fused_ensemble_equals_independent_mlps(n):
    torch.manual_seed(0)
    low, high = torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 1.0])
    critic = CriticEnsemble(n, 3, 2, (16, 8), low, high)
    obs, act = torch.randn(10, 3), torch.rand(10, 2) * (high - low) + low
    q = critic(obs, act)
    assert q.shape == (n, 10)
    for j in range(n):
        torch.testing.assert_close(q[j], _member_mlp(critic, j, obs, act))
    # Gradients too: the weights' (loss weighted per member and row) and the action's.
    weights = torch.randn(n, 10)
    grads = torch.autograd.grad((critic(obs, act) * weights).sum(), list(critic.parameters()))
    ref = sum((_member_mlp(critic, j, obs, act) * weights[j]).sum() for j in range(n))
    for g, r in zip(grads, torch.autograd.grad(ref, list(critic.parameters())), strict=True):
        torch.testing.assert_close(g, r)
    # Members are initialised independently (not copies).
    if n > 1:
        assert not torch.equal(critic.weights[0][0], critic.weights[0][1])
    # detach_params: same values, no gradient into the weights, gradient into the action.
    act.requires_grad_(True)
    (critic(obs, act, detach_params=True) * weights).sum().backward()
    assert all(p.grad is None for p in critic.parameters()) and act.grad is not None
    act_ref = act.detach().clone().requires_grad_(True)
    sum((_member_mlp(critic, j, obs, act_ref) * weights[j]).sum() for j in range(n)).backward()
    torch.testing.assert_close(act.grad, act_ref.grad)


def test_polyak_update():
    torch.manual_seed(0)
    params = [torch.randn(3, 4), torch.randn(5)]
    targets = [torch.randn(3, 4), torch.randn(5)]
    expected = [0.995 * t + 0.005 * p for p, t in zip(params, targets, strict=True)]
    polyak_update(params, targets, 0.005)
    for t, e in zip(targets, expected, strict=True):
        torch.testing.assert_close(t, e)
    polyak_update(params, targets, 1.0)  # tau = 1: hard copy
    for t, p in zip(targets, params, strict=True):
        torch.testing.assert_close(t, p)


def test_fixed_alpha_is_not_learned():
    model = SAC("Pendulum-v1", seed=0, alpha=0.2, **SMALL)
    model.learn(100)
    assert model.log_alpha.exp().item() == pytest.approx(0.2)
    model.close()


# -- buffer and the rollout's bookkeeping ------------------------------------------------------------
def test_replay_buffer_ring_and_sampling():
    buf = ReplayBuffer(5, 2, 1)
    for i in range(7):
        buf.add(np.full((1, 2), i), np.full((1, 1), -i), np.array([i]), np.full((1, 2), i + 1), np.array([i == 3]))
    assert buf.size == 5 and buf.pos == 2
    obs, act, rew, next_obs, term = buf.sample(200, np.random.default_rng(0), torch.device("cpu"))
    assert obs.shape == (200, 2) and act.shape == (200, 1) and rew.shape == (200,) and term.shape == (200,)
    assert set(rew.tolist()) == {2.0, 3.0, 4.0, 5.0, 6.0}  # 0 and 1 were overwritten
    torch.testing.assert_close(next_obs[:, 0], rew + 1)
    torch.testing.assert_close(act[:, 0], -rew)
    torch.testing.assert_close(term, (rew == 3).float())


def test_truncation_stores_final_obs_and_no_terminal_flag():
    model = SAC("Pendulum-v1", seed=0, **{**SMALL, "learning_starts": 399})
    model.learn(300)  # one full 200-step episode (time-limit truncation) and part of the next
    d, o = model.buffer.data, model.obs_dim
    obs, next_obs, term = d[:300, :o], d[:300, o + 2:2 * o + 2], d[:300, -1]
    assert not term.any()  # Pendulum never terminates: truncation is not a terminal
    np.testing.assert_array_equal(next_obs[:199], obs[1:200])  # within an episode s'_t = s_{t+1}
    assert not np.allclose(next_obs[199], obs[200])  # s' of the last step is the final obs, not the reset obs
    assert model.num_episodes == 1
    model.close()


def test_termination_is_stored_as_terminal():
    model = SAC("SACTestTerminating-v0", seed=0, **{**SMALL, "learning_starts": 399})
    model.learn(12)
    d = model.buffer.data
    term, next_obs = d[:12, -1], d[:12, 3]
    np.testing.assert_array_equal(np.flatnonzero(term), [4, 9])  # the 5th step of each episode
    np.testing.assert_array_equal(next_obs[:6], [1, 2, 3, 4, 5, 1])  # final obs 5 kept, then a new episode
    assert model.num_episodes == 2
    model.close()


# -- API ---------------------------------------------------------------------------------------------
def test_predict_single_and_batched():
    model = SAC("Pendulum-v1", seed=0, **SMALL)
    obs = np.array([1.0, 0.0, 0.3], np.float32)
    a, state = model.predict(obs)
    assert a.shape == (1,) and state is None
    batch, _ = model.predict(np.stack([obs, obs * 0.5]))
    assert batch.shape == (2, 1)
    np.testing.assert_allclose(batch[0], a)
    samples = np.stack([model.predict(obs, deterministic=False)[0] for _ in range(20)])
    assert samples.std() > 0 and np.all(np.abs(samples) <= 2.0)
    with pytest.raises(ValueError, match="observation of shape"):
        model.predict(np.zeros(4))
    model.close()


def test_save_load_round_trip_predicts_exactly(tmp_path):
    model = SAC("Pendulum-v1", seed=3, **SMALL)
    model.learn(200)
    path = tmp_path / "sac.pt"
    model.save(path)
    loaded = SAC.load(path)
    obs = np.random.default_rng(0).normal(size=(8, 3)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict(obs)[0], model.predict(obs)[0])
    assert loaded.num_timesteps == 200 and loaded.buffer.size == 200
    np.testing.assert_array_equal(loaded.buffer.data[:200], model.buffer.data[:200])
    for k, v in model.optimizer.state_dict()["state"].items():
        torch.testing.assert_close(loaded.optimizer.state_dict()["state"][k]["exp_avg"], v["exp_avg"])
    # Without the buffer: smaller, still predicts the same.
    model.save(tmp_path / "small.pt", include_buffer=False)
    small = SAC.load(tmp_path / "small.pt")
    np.testing.assert_array_equal(small.predict(obs)[0], model.predict(obs)[0])
    assert small.buffer.size == 0
    for m in (model, loaded, small):
        m.close()


def test_load_rejects_other_env_and_corrupt_files(tmp_path):
    model = SAC("Pendulum-v1", seed=0, **SMALL)
    path = tmp_path / "sac.pt"
    model.save(path, include_buffer=False)
    with pytest.raises(CheckpointError, match="trained on Pendulum-v1"):
        SAC.load(path, env="MountainCarContinuous-v0")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        SAC.load(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        SAC.load(tmp_path / "missing.pt")
    model.close()


def test_learn_continues_after_load_identically(tmp_path):
    a = SAC("Pendulum-v1", seed=1, **SMALL)
    rows_a = []
    a.learn(300, callback=lambda m, r: rows_a.append(r), log_every=100)
    b = SAC("Pendulum-v1", seed=1, **SMALL)
    rows_b = []
    b.learn(300, callback=[lambda m, r: rows_b.append(r), StopAt(150)], log_every=100)  # stopped mid-window
    assert b.num_timesteps == 150
    b.save(tmp_path / "mid.pt")
    c = SAC.load(tmp_path / "mid.pt")
    c.learn(300, callback=lambda m, r: rows_b.append(r), log_every=100)

    def strip(rows):  # repr: nan == nan; wall-clock keys dropped
        return [repr({k: v for k, v in r.items() if k not in ("steps_per_s", "time_s")}) for r in rows]

    assert len(rows_a) == 3 and strip(rows_a) == strip(rows_b)
    obs = np.zeros((1, 3), np.float32)
    np.testing.assert_array_equal(a.predict(obs)[0], c.predict(obs)[0])
    for m in (a, b, c):
        m.close()


def test_callback_can_stop_and_vector_envs():
    model = SAC("Pendulum-v1", seed=0, num_envs=2, **SMALL)
    model.learn(400, callback=lambda m, r: r["step"] < 200, log_every=100)
    assert model.num_timesteps == 200 and model.buffer.size == 200
    assert StopOnReturn(-100.0)(model, {"episode_return": -50.0}) is False
    assert StopOnReturn(-100.0)(model, {"episode_return": float("nan")}) is True
    model.close()


@pytest.mark.parametrize("bad, match", [
    (dict(learning_rate=-1e-3), "learning_rate must be positive"),
    (dict(learning_rate=float("inf")), "learning_rate must be positive and finite"),
    (dict(critic_lr=float("nan")), "critic_lr must be positive and finite"),
    (dict(actor_lr=0.0), "actor_lr must be positive"),
    (dict(target_entropy=float("nan")), "target_entropy must be a finite number"),
    (dict(batch_size=0), "batch_size must be positive"),
    (dict(total_steps=1000.5), "total_steps must be an integer"),
    (dict(num_envs=0), "num_envs must be positive"),
    (dict(batch_size=512, buffer_size=100), "larger than buffer_size"),
    (dict(tau=1.5), "tau must be in"),
    (dict(gamma=1.2), "gamma must be in"),
    (dict(learning_starts=30_000), "would never take a gradient step"),
    (dict(hidden_sizes=(64, 0)), "hidden_sizes"),
    (dict(hidden_sizes=()), "hidden_sizes"),
    (dict(alpha=0.0), "alpha must be positive"),
    (dict(seed=-1), "seed must be a non-negative integer"),
    (dict(bf16="yes"), "bf16 must be True or False"),
    (dict(lerning_rate=1e-3), "did you mean 'learning_rate'"),
])
def test_bad_hyperparameters(bad, match):
    with pytest.raises(ValueError, match=match):
        config_for("Pendulum-v1", **bad)
    if "lerning_rate" not in bad:  # the same check guards every way a config is made or changed
        with pytest.raises(ValueError, match=match):
            SACConfig.for_env("Pendulum-v1").replace(**bad)


def test_env_table_and_overrides():
    assert config_for("Pendulum-v1").learning_rate == 1e-3 and config_for("Pendulum-v1").total_steps == 20_000
    assert config_for("Pendulum-v1", learning_rate=5e-4).learning_rate == 5e-4
    assert config_for("Pendulum-v1", total_steps=None).total_steps == 20_000  # None: the default
    assert config_for("Hopper-v5").learning_rate == 3e-4 and config_for("Hopper-v5").learning_starts == 10_000
    assert config_for("MountainCarContinuous-v0", gamma=0.5).gamma == 0.5
    assert config_for("Pendulum-v1", hidden_sizes=[8, 4]).hidden_sizes == (8, 4)


def test_a_config_object_and_keywords_build_the_same_model():
    cfg = SACConfig.for_env("Pendulum-v1", seed=4, **SMALL)
    a, b = SAC(cfg), SAC("Pendulum-v1", seed=4, **SMALL)
    assert a.config is cfg and a.config == b.config and cfg.learning_rate == 1e-3  # the env's default
    for p, q in zip(a.actor.parameters(), b.actor.parameters(), strict=True):
        assert torch.equal(p, q)
    c = SAC(cfg, tau=0.1)
    assert c.config.tau == 0.1 and cfg.tau == 0.005  # keywords override a copy
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        SAC(cfg, lerning_rate=1e-3)
    for m in (a, b, c):
        m.close()


# -- the divergence guard ------------------------------------------------------------------------------
class NaNRewardEnv(gym.Env):
    """Reward NaN at step 30, 0 otherwise; records every action it receives."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self):
        self.t, self.actions = 0, []

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.array([self.t / 100], np.float32), {}

    def step(self, action):
        self.actions.append(np.array(action))
        self.t += 1
        return np.array([self.t / 100], np.float32), float("nan") if self.t == 30 else 0.0, False, False, {}


def test_a_nan_reward_stops_training_before_a_nan_action_reaches_the_env():
    env = NaNRewardEnv()
    model = SAC(env, seed=0, **{**SMALL, "learning_starts": 40})
    with pytest.raises(DivergenceError, match=r"training diverged at step \d+: the policy's action is NaN"):
        model.learn(400, log_every=100)
    assert 40 < model.num_timesteps < 400 and len(env.actions) == model.num_timesteps
    assert all(np.isfinite(a).all() for a in env.actions)
    # The logged window's losses are checked too (a NaN that has not reached the policy yet).
    model._window.update(stats=torch.tensor([float("nan"), 1.0, 0.5, 0.1]), updates=2)
    with pytest.raises(DivergenceError, match=rf"diverged at step {model.num_timesteps}: critic_loss is nan"):
        model._flush_window()
    model.close()


# -- library callbacks -----------------------------------------------------------------------------------
class StopAt(Callback):
    def __init__(self, step: int):
        self.step, self.ends = step, []

    def on_step(self, model):
        return model.num_timesteps < self.step

    def on_training_end(self, model, interrupted):
        self.ends.append(interrupted)


def test_eval_and_checkpoint_callbacks(tmp_path):
    model = SAC("Pendulum-v1", seed=0, **{**SMALL, "learning_starts": 399})  # one update: fast
    rows = []
    ev = EvalCallback("Pendulum-v1", eval_every=150, n_eval_episodes=1, best_model_path=tmp_path / "best.pt",
                      on_eval=rows.append)
    ck = CheckpointCallback(150, path=tmp_path / "latest.pt")
    end = StopAt(10**9)
    model.learn(400, callback=[ev, ck, end], log_every=100)
    # First logged window past each multiple of 150 (200, 300), then the end of training (400).
    assert [r["step"] for r in rows] == [200, 300, 400] and end.ends == [False]
    assert rows[-1]["eval_mean"] == pytest.approx(evaluate_policy(model, "Pendulum-v1", 1).mean())
    assert ev.best_mean == max(r["eval_mean"] for r in rows)
    best_step = max(rows, key=lambda r: r["eval_mean"])["step"]
    assert ex.load_checkpoint(tmp_path / "best.pt", "sac")["counters"]["num_timesteps"] == best_step
    assert ex.load_checkpoint(tmp_path / "latest.pt", "sac")["counters"]["num_timesteps"] == 400
    assert ex.load_checkpoint(tmp_path / "latest.previous.pt", "sac")["counters"]["num_timesteps"] == 300
    ev.close()
    # Interrupted (on_step returned False): a checkpoint at that step, no final evaluation.
    model = SAC("Pendulum-v1", seed=0, **{**SMALL, "learning_starts": 399})
    rows.clear()
    ev = EvalCallback("Pendulum-v1", eval_every=150, n_eval_episodes=1, on_eval=rows.append)
    ck = CheckpointCallback(150, path=tmp_path / "cut.pt")
    stop = StopAt(250)
    model.learn(400, callback=[stop, ev, ck], log_every=100)
    assert model.num_timesteps == 250 and stop.ends == [True] and [r["step"] for r in rows] == [200]
    assert SAC.load(tmp_path / "cut.pt").num_timesteps == 250
    ev.close()
    model.close()
