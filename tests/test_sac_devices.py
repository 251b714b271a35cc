"""SAC's device-ready paths: the replay buffer kept on the training device (tested on the CPU through its
device layout, and on CUDA where there is one), ``--vector-env async``, and CPU against CUDA (marked gpu)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from agents import SAC, ReplayBuffer
from agents.update import StackedUpdate

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(hidden_sizes=(32, 32), batch_size=32, learning_starts=50, total_steps=400)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def fill(buf: ReplayBuffer, n: int, seed: int = 0) -> None:
    """n random transitions of obs dim 3, act dim 2, added 1 to 3 at a time (the ring wraps for n > capacity)."""
    g = np.random.default_rng(seed)
    added = 0
    while added < n:
        k = min(int(g.integers(1, 4)), n - added)
        buf.add(g.normal(size=(k, 3)), g.normal(size=(k, 2)), g.normal(size=k), g.normal(size=(k, 3)),
                g.random(k) < 0.2)
        added += k


@pytest.mark.parametrize("n", [40, 130])  # part full, and wrapped around the 100-row ring
def test_device_layout_samples_and_saves_what_the_host_buffer_does(n):
    host, dev = ReplayBuffer(100, 3, 2), ReplayBuffer(100, 3, 2, device="cpu", keep_on_device=True)
    assert not host.on_device and isinstance(host.data, np.ndarray)
    assert dev.on_device and isinstance(dev.data, torch.Tensor)
    fill(host, n)
    fill(dev, n)
    assert (host.pos, host.size) == (dev.pos, dev.size) == (n % 100, min(n, 100))
    for a, b in zip(host.sample(64, np.random.default_rng(5), torch.device("cpu")),
                    dev.sample(64, np.random.default_rng(5), torch.device("cpu")), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    s_host, s_dev = host.state_dict(), dev.state_dict()
    assert isinstance(s_dev["data"], np.ndarray)  # portable: a GPU run's checkpoint resumes on a CPU
    np.testing.assert_array_equal(s_host["data"], s_dev["data"])
    # Across layouts, into a smaller buffer (takes the checkpoint's capacity) and into a larger one (appends).
    for capacity in (50, 100, 300):
        for keep in (False, True):
            other = ReplayBuffer(capacity, 3, 2, device="cpu", keep_on_device=keep)
            other.load_state_dict(s_dev)
            assert other.size == min(n, 100)
            np.testing.assert_array_equal(other.state_dict()["data"], s_host["data"])


def test_async_vector_env_collects_what_sync_does():
    """The same seed with the envs in subprocesses (AsyncVectorEnv) fills the same buffer and trains to the same
    weights as with the envs in this process."""
    models = []
    for kind in ("sync", "async"):  # one after the other: each seeds torch's global generator when built
        models.append(SAC("Pendulum-v1", seed=3, num_envs=2, vector_env=kind, device="cpu", **SMALL))
        models[-1].learn(120)
    sync, asyn = models
    assert type(asyn.envs).__name__ == "AsyncVectorEnv"
    np.testing.assert_array_equal(sync.buffer.data[:120], asyn.buffer.data[:120])
    for p, q in zip(sync.actor.parameters(), asyn.actor.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    for m in models:
        m.close()


def test_resume_with_async_envs_replaces_the_saved_sync_envs():
    """--vector-env may change on resume: a checkpoint of sync envs resumed as async steps async envs (the saved
    episodes are not kept), and the buffer and step count carry over."""
    model = SAC("Pendulum-v1", seed=0, num_envs=2, device="cpu", **SMALL)
    model.learn(60)
    state = model.checkpoint_state()
    cfg = dataclasses.replace(model.config, vector_env="async")
    again = SAC.from_checkpoint(state, cfg)
    assert type(again.envs).__name__ == "AsyncVectorEnv"
    assert again.num_timesteps == 60 and again.buffer.size == 60
    again.learn(100)
    assert again.num_timesteps == 100
    for m in (model, again):
        m.close()


def test_bad_vector_env_kind_is_refused():
    with pytest.raises(ValueError, match="vector_env must be one of sync, async"):
        SAC("Pendulum-v1", vector_env="threads", **SMALL)


# -- CUDA (marked gpu; skipped without a device) ----------------------------------------------------------------
@pytest.mark.gpu
@needs_cuda
def test_sac_trains_on_cuda_with_its_buffer_there(tmp_path):
    model = SAC("Pendulum-v1", seed=0, device="cuda", **SMALL)
    assert model.buffer.on_device and model.buffer.data.device.type == "cuda"
    model.learn(200)
    assert model.num_updates == 150 and all(torch.isfinite(p).all() for p in model.actor.parameters())
    model.save(tmp_path / "sac.pt")
    again = SAC.load(tmp_path / "sac.pt", device="cpu")  # a GPU checkpoint resumes on the CPU
    assert not again.buffer.on_device and again.buffer.size == 200
    np.testing.assert_array_equal(again.buffer.data[:200], model.buffer.data[:200].cpu().numpy())
    model.close()
    again.close()


@pytest.mark.gpu
@needs_cuda
def test_cpu_and_cuda_give_the_same_update():
    """The same init, buffer, batches and noise on both devices: 3 fused (uncompiled) steps agree to 1e-4
    (float32 kernels summing in other orders); a device-specific bug (a lost term, a CPU-only tensor) moves
    them by O(1)."""
    cfg = dict(hidden_sizes=(64, 64), batch_size=64, learning_starts=399, total_steps=400, seed=0)
    models = {dev: SAC("Pendulum-v1", device=dev, **cfg) for dev in ("cpu", "cuda")}
    for m in models.values():
        m.learn(100)  # random actions: the same buffer on both
    g = torch.Generator().manual_seed(1)
    noise = [(torch.randn(1, 64, 1, generator=g), torch.randn(1, 64, 1, generator=g)) for _ in range(3)]
    stats, params = {}, {}
    for dev, m in models.items():
        update = StackedUpdate([m], compile=False)
        rows = []
        for eps_next, eps in noise:
            update.noise = lambda a=eps_next, b=eps, d=dev: (a.to(d), b.to(d))
            rows.append(update.step()[0].cpu())
        stats[dev] = torch.stack(rows)
        params[dev] = [p.detach().cpu() for p in [*m.actor.parameters(), *m.critic.parameters(), m.log_alpha]]
    torch.testing.assert_close(stats["cpu"], stats["cuda"], rtol=1e-4, atol=1e-4)
    for a, b in zip(params["cpu"], params["cuda"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    for m in models.values():
        m.close()
