"""The fused SAC step (agents/update.py) against the eager ``SAC._update``, which test_sac_equations.py checks
against hand-computed equations: on the same batch and the same policy noise, one step of each must give the
same losses, gradients (through Adam's first step, lr * sign(g)), Adam moments, parameters, temperature and
target critics, to float32 tolerance (the two paths sum in different orders). Also: the oneDNN linear layer
against autograd, the compile rule, the optimizer state the two paths share, resume, and the eager fallback.

One test compiles with inductor (the real path; ~5 s from inductor's cache, ~25 s cold); the rest run the same
function op by op or through dynamo + AOTAutograd ("aot_eager", ~2 s), which trace it the same way.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

import agents.sac as sac_module
from agents import SAC, Callback
from agents.linear import linear
from agents.update import StackedUpdate, unsupported_reason

pytestmark = pytest.mark.usefixtures("one_thread")

B = 16
# float32 sums in another order: the largest observed differences are ~1e-7 (10x under these tolerances); the
# mutants of tests/mutants/sac.py move the compared values by 1e-3 or more.
TOL = dict(rtol=1e-5, atol=1e-6)


def make_pair(**overrides) -> tuple[SAC, SAC]:
    """Two identical models (same seed) with a filled buffer and no update yet."""
    cfg = dict(hidden_sizes=(16, 16), batch_size=B, total_steps=400, learning_starts=399, seed=0, device="cpu",
               learning_rate=3e-3, tau=0.3, gamma=0.9)
    cfg.update(overrides)
    models = []
    for _ in range(2):
        m = SAC("Pendulum-v1", **cfg)
        m.learn(60)  # random actions only: fills the buffer, draws no policy noise
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():  # target critics that differ from the online ones
            for p in m.critic_target.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
        models.append(m)
    return models[0], models[1]


def state_of(m: SAC) -> dict[str, torch.Tensor]:
    """Everything a step changes, by name."""
    out = {f"actor.{n}": p for n, p in m.actor.named_parameters()}
    out.update({f"critic.{n}": p for n, p in m.critic.named_parameters()})
    out.update({f"target.{n}": p for n, p in m.critic_target.named_parameters()})
    out["log_alpha"] = m.log_alpha
    params = [p for group in m.optimizer.param_groups for p in group["params"]]
    for i, p in enumerate(params):
        st = m.optimizer.state.get(p, {})
        if not st:  # no step yet
            continue
        out[f"adam.{i}.exp_avg"], out[f"adam.{i}.exp_avg_sq"], out[f"adam.{i}.step"] = (st["exp_avg"], st["exp_avg_sq"],
                                                                                         st["step"])
    return {k: v.detach().clone() for k, v in out.items()}


def compare_steps(eager: SAC, fused: SAC, update: StackedUpdate, steps: int = 3) -> None:
    """``steps`` steps of each on the same batches and noise; everything equal after each."""
    before = state_of(eager)
    batch_rng = np.random.default_rng(3)
    for _ in range(steps):
        obs, act, rew, next_obs, _ = eager.buffer.sample(B, batch_rng, eager.device)
        # Pendulum never terminates: mark every third row terminal so that the (1 - term) factor counts
        batch = (obs, act, rew, next_obs, (torch.arange(B) % 3 == 0).float())
        rng = torch.get_rng_state()
        stats_e = eager._update(*batch)
        torch.set_rng_state(rng)
        stats_f = update.step(tuple(x[None] for x in batch))[0]
        torch.testing.assert_close(stats_f, stats_e, **TOL)
        got, ref = state_of(fused), state_of(eager)
        assert got.keys() == ref.keys()
        for name in ref:
            torch.testing.assert_close(got[name].reshape(ref[name].shape), ref[name], **TOL, msg=name)
    assert fused.num_updates == eager.num_updates == steps
    # The comparison can fail: every trained tensor moved by far more than the tolerance.
    after = state_of(eager)
    for name in after:
        if name.startswith(("actor.", "critic.", "target.")) or (name == "log_alpha" and eager.learn_alpha):
            assert (after[name] - before[name]).abs().max() > 1e-4, name


def with_spec(update: StackedUpdate, **changes) -> StackedUpdate:
    update.spec = dataclasses.replace(update.spec, **changes)
    return update


@pytest.mark.parametrize("batch_rows", [True, False])
@pytest.mark.parametrize("variant", [
    dict(),                                           # the defaults: one learning rate, alpha learned
    dict(alpha=0.37),                                 # fixed temperature: log alpha not in Adam
    dict(actor_lr=1e-2, critic_lr=2e-3, alpha_lr=5e-2, n_critics=3, target_entropy=-0.3),
])
def test_functional_step_equals_eager_update(variant, batch_rows):
    """batch_rows: the actor on [s; s'] and the critics on [(s, a); (s, a~)] in one product each (row-wise
    gradients) or in separate passes (detached weights / no_grad), as the eager update does."""
    eager, fused = make_pair(**variant)
    compare_steps(eager, fused, with_spec(StackedUpdate([fused], compile=False), batch_rows=batch_rows))


@pytest.mark.parametrize("batch_rows", [True, False])
def test_onednn_path_equals_eager_update(batch_rows):
    """The same with every matrix product on oneDNN (the threshold lowered to 0; CPU builds with MKL-DNN)."""
    eager, fused = make_pair()
    update = StackedUpdate([fused], compile=False)
    if update.spec.onednn_min_macs is None:
        pytest.skip("this torch has no oneDNN")
    compare_steps(eager, fused, with_spec(update, onednn_min_macs=0, batch_rows=batch_rows))


def test_inductor_compiled_step_equals_eager_update():
    """The real thing: one graph compiled by inductor (C++ kernels, oneDNN matmuls as opaque calls)."""
    eager, fused = make_pair()
    update = StackedUpdate([fused], compile=True)
    if update.spec.onednn_min_macs is not None:
        with_spec(update, onednn_min_macs=0)
    compare_steps(eager, fused, update, steps=2)


def test_traced_step_and_a_changed_spec_make_another_graph():
    """Through dynamo + AOTAutograd (the trace inductor compiles); a second model with another gamma and tau
    must get its own graph (most guards are dropped, the spec's are kept)."""
    for gamma, tau in ((0.9, 0.3), (0.5, 0.7)):
        eager, fused = make_pair(gamma=gamma, tau=tau)
        compare_steps(eager, fused, StackedUpdate([fused], compile="aot_eager"), steps=2)


@pytest.mark.parametrize("onednn", [0, None, "thin"])
@pytest.mark.parametrize("rows", [(None, None), (4, None), (4, 4), (None, 2)])
@pytest.mark.parametrize("stored_t", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_linear_layer_against_autograd(stored_t, relu, rows, onednn):
    """agents.linear.linear against F.linear in float64: values, and gradients where only the first w_rows rows
    teach (W, b) (the others: as through detached weights) and only the first x_rows rows reach x; on oneDNN
    (threshold 0), ATen (None) or as multiply-and-sum ("thin")."""
    thin = 8 if onednn == "thin" else 0
    if onednn == "thin":
        if rows == (None, 2):
            pytest.skip("x_rows without w_rows: not a use of the thin path")
        onednn = None
    if onednn == 0 and not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    w_rows, x_rows = rows
    torch.manual_seed(0)
    x = torch.randn(7, 5, requires_grad=True)
    w = torch.randn(5, 3) if stored_t else torch.randn(3, 5)
    w.requires_grad_(True)
    b = torch.randn(3, requires_grad=True)
    y = linear(x, w, b, relu, onednn_min_macs=onednn, stored_t=stored_t, w_rows=w_rows, x_rows=x_rows, thin=thin)

    def ref_layer(xx, ww, bb):
        out = torch.nn.functional.linear(xx.double(), (ww.t() if stored_t else ww).double(), bb.double())
        return out.relu() if relu else out

    ref = ref_layer(x, w, b)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)
    if relu:
        assert (ref == 0).any() and (ref > 0).any()  # the mask matters
    g = torch.randn(7, 3, dtype=torch.float64)
    wr, xr = w_rows or 7, x_rows or 7
    # Reference: rows below wr through detached weights; rows below xr through a detached input.
    teach = ref_layer(x, w, b)[:wr]
    frozen = ref_layer(x, w.detach(), b.detach())[wr:]
    want_wb = torch.autograd.grad(torch.cat([teach, frozen]), (w, b), g)
    to_x = torch.cat([ref_layer(x[:xr], w.detach(), b.detach()), ref_layer(x[xr:].detach(), w.detach(), b.detach())])
    (want_x,) = torch.autograd.grad(to_x, (x,), g)
    got = torch.autograd.grad(y, (x, w, b), g.float())
    for a, r in zip(got, (want_x, *want_wb), strict=True):
        assert a.shape == r.shape
        torch.testing.assert_close(a.double(), r.double(), rtol=1e-5, atol=1e-5)
    if wr < 7 or xr < 7:  # the rows make a difference, so the test can fail
        full = torch.autograd.grad(ref, (x, w, b), g)
        assert any(not torch.allclose(a.double(), f.double()) for a, f in zip(got, full, strict=True))


def test_the_compile_rule():
    long = dict(total_steps=10_100, learning_starts=100, device="cpu")
    assert SAC("Pendulum-v1", **long).uses_compiled_update()  # 10000 gradient steps
    assert not SAC("Pendulum-v1", **{**long, "total_steps": 10_099}).uses_compiled_update()
    assert not SAC("Pendulum-v1", **{**long, "compile": False}).uses_compiled_update()
    assert not SAC("Pendulum-v1", **{**long, "train_freq": 2}).uses_compiled_update()  # 5000 steps
    assert SAC("Pendulum-v1", **{**long, "train_freq": 2, "gradient_steps": 2}).uses_compiled_update()
    bf16 = SAC("Pendulum-v1", **{**long, "bf16": True})
    assert not bf16.uses_compiled_update() and "bf16" in unsupported_reason(bf16)
    flow = SAC("Pendulum-v1", **{**long, "policy": "flow"})
    assert not flow.uses_compiled_update() and "tanh-normal" in unsupported_reason(flow)


@pytest.fixture
def traced(monkeypatch):
    """``learn`` builds its StackedUpdate with the aot_eager backend (the inductor test above covers inductor)."""
    monkeypatch.setattr(sac_module, "StackedUpdate", lambda models, compile: StackedUpdate(models, "aot_eager"))


class StopAt(Callback):
    def __init__(self, step: int):
        self.step = step

    def on_step(self, model):
        return model.num_timesteps < self.step


LONG = dict(hidden_sizes=(16, 16), batch_size=B, total_steps=10_200, learning_starts=100, device="cpu")


def test_learn_with_the_fused_step_resumes_identically(traced, tmp_path):
    a = SAC("Pendulum-v1", seed=2, **LONG)
    rows_a = []
    a.learn(260, callback=lambda m, r: rows_a.append(r), log_every=80)
    assert a._fused_state == "running" and a.num_updates == 160
    b = SAC("Pendulum-v1", seed=2, **LONG)
    rows_b = []
    b.learn(260, callback=[lambda m, r: rows_b.append(r), StopAt(170)], log_every=80)
    assert b.num_timesteps == 170
    b.save(tmp_path / "b.pt")  # mid-window; the optimizer state is the fused step's (shared tensors)
    assert (tmp_path / "b.pt").stat().st_size < 3 * 10**6  # views saved as their own values
    c = SAC.load(tmp_path / "b.pt")
    c.learn(260, callback=lambda m, r: rows_b.append(r), log_every=80)

    def strip(rows):
        return [repr({k: v for k, v in r.items() if k not in ("steps_per_s", "time_s")}) for r in rows]

    assert len(rows_a) == 4 and strip(rows_a) == strip(rows_b)
    obs = np.zeros((1, 3), np.float32)
    np.testing.assert_array_equal(a.predict(obs)[0], c.predict(obs)[0])
    for m in (a, b, c):
        m.close()


def test_fused_then_eager_steps_continue_the_same_adam(traced):
    """The fused step writes torch's Adam state in place: eager steps after fused ones continue it (same result
    as eager steps throughout, to float tolerance), and ``load_state_dict`` of the optimizer is picked up."""
    eager, fused = make_pair()
    update = StackedUpdate([fused], compile=False)
    batch_rng = np.random.default_rng(5)
    for i in range(4):
        batch = eager.buffer.sample(B, batch_rng, eager.device)
        rng = torch.get_rng_state()
        eager._update(*batch)
        torch.set_rng_state(rng)
        if i < 2:
            update.step(tuple(x[None] for x in batch))
        else:
            fused._update(*batch)  # torch's fused Adam on the tensors the fused step wrote
    got, ref = state_of(fused), state_of(eager)
    for name in ref:
        torch.testing.assert_close(got[name].reshape(ref[name].shape), ref[name], **TOL, msg=name)
    # A replaced optimizer state (a checkpoint loaded into it) is rebound before the next fused step.
    fused.optimizer.load_state_dict(copy.deepcopy(eager.optimizer.state_dict()))  # as from a file: new tensors
    batch = eager.buffer.sample(B, batch_rng, eager.device)
    rng = torch.get_rng_state()
    eager._update(*batch)
    torch.set_rng_state(rng)
    update.step(tuple(x[None] for x in batch))
    got, ref = state_of(fused), state_of(eager)
    for name in ref:
        torch.testing.assert_close(got[name].reshape(ref[name].shape), ref[name], **TOL, msg=name)


def test_a_failed_compile_falls_back_to_the_eager_step(monkeypatch, capsys):
    def broken(models, compile):
        update = StackedUpdate(models, compile=False)
        update.fn = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("no C++ compiler\nmore"))
        return update

    monkeypatch.setattr(sac_module, "StackedUpdate", broken)
    model = SAC("Pendulum-v1", seed=0, **LONG)
    model.learn(150)
    assert model._fused_state == "failed" and model.num_updates == 50
    assert "torch.compile failed (RuntimeError: no C++ compiler); continuing with the eager update" in \
        capsys.readouterr().err
    model.close()
