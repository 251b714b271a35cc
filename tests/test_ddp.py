"""Data-parallel training of the VAE and BNN entry points (torchrun's DDP) on CPU: two gloo processes,
spawned once for both domains (each spawned process costs a torch import), run the real ``main`` of each
entry point; the single-process references run here.

Noise-free (the BNN's mean network, the VAE's latent at its mean), the two ranks on their shares of each
global batch must give what one process gives on the global batch: the same metrics rows and parameters
(float reassociation apart). With noise, the 2-rank BNN loss curve must stay inside the prediction band of
single-process runs that differ only in their noise; the ranks must draw different, reproducible native
noise keys; and the KL term must be KL / N with N the whole training set on every rank.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import pytest
import torch
from scipy import stats
from test_distributed import spawn

from reparam_apps import experiment as ex
from reparam_apps.experiment.distributed import DistInfo, rank_seed

pytestmark = pytest.mark.usefixtures("one_thread")

N_TRAIN = 1438  # the embedded digits' training split (reparam_apps.data, split seed 0)
# --batch-size 95: every global batch splits unevenly over 2 ranks (48/47; the last, 13 = 7/6)
CLASSIFY = ["classify", "--epochs", "2", "--hidden", "16", "--batch-size", "95", "--test-samples", "2", "--log-every",
            "1", "--threads", "1", "--no-progress"]
# --batch-size 479: 1438 = 3 x 479 + 1, so rank 1's share of each epoch's last global batch is empty
VAE_ARGS = ["--epochs", "2", "--hidden", "16", "--latent-dim", "3", "--batch-size", "479", "--iwae-k", "3",
            "--iwae-n", "40", "--log-every", "1", "--threads", "1", "--no-progress"]


@contextlib.contextmanager
def noise_free():
    """The BNN trains its mean network (classify's make_mlp patched) and the VAE's latent is its mean (the
    core's Gaussian noise patched to 0): every loss, gradient and metric is then deterministic."""
    import bnn
    import bnn.tasks.classify as classify
    from reparam_apps.distributions import loc_scale

    make_mlp, sample_noise = classify.make_mlp, loc_scale._Gaussian.sample_noise
    classify.make_mlp = lambda *a, **k: bnn.set_noise(make_mlp(*a, **k), "mean")
    loc_scale._Gaussian.sample_noise = lambda self, shape=(): self.loc.new_zeros(self._noise_shape(shape))
    try:
        yield
    finally:
        classify.make_mlp, loc_scale._Gaussian.sample_noise = make_mlp, sample_noise


def _two_ranks(rank: int, world: int, root: str) -> None:
    """In each spawned process: the noise-free BNN and VAE runs, then a noisy BNN run recording its native
    noise keys and every elbo_loss call's (n_data, batch)."""
    import bnn.cli
    import bnn.train
    import vae.cli
    from reparam_apps import native

    torch.distributed.init_process_group("gloo")  # here, so each main() finds it made (and leaves it up)
    out = Path(root)
    with noise_free():
        codes = [bnn.cli.main([*CLASSIFY, "--out", str(out / "bnn_mean")]),
                 vae.cli.main([*VAE_ARGS, "--out", str(out / "vae_mean")])]
    keys: list[tuple[int, int]] = []
    calls: list[tuple[int, int]] = []
    new_key, elbo_loss, epoch = native.new_key, bnn.train.elbo_loss, bnn.train.Trainer.epoch

    def recorded_epoch(self):  # the keys drawn in training (evaluations draw on their own seeded streams)
        native.new_key = lambda: keys.append(new_key()) or keys[-1]
        try:
            return epoch(self)
        finally:
            native.new_key = new_key

    def recorded_elbo_loss(model, likelihood, x, y, n_data, **kw):
        calls.append((n_data, len(x)))
        return elbo_loss(model, likelihood, x, y, n_data, **kw)

    bnn.train.Trainer.epoch, bnn.train.elbo_loss = recorded_epoch, recorded_elbo_loss
    codes.append(bnn.cli.main([*CLASSIFY, "--out", str(out / "bnn_noisy")]))
    torch.save({"codes": codes, "keys": keys, "calls": calls}, out / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("ddp")
    spawn(_two_ranks, 2, str(root))
    return root, [torch.load(root / f"rank{r}.pt") for r in range(2)]


def _rows(folder: Path) -> list[dict[str, float]]:
    return [{k: float(v) for k, v in row.items()} for row in ex.MetricsCSV(folder / "metrics.csv").rows()]


def _close(a: float, b: float, rel: float = 2e-5, abs_: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# float tolerance: the ranks' gradients are averaged in another order than one process sums them (relative
# rounding ~1e-7 per step, on parameters of size ~0.1-1); over these 32 (BNN) and 8 (VAE) Adam steps the
# parameters were seen to agree to 3e-8. A wrong share weight (48/47 examples weighted equally) or KL scale
# moves them by O(lr) = 1e-3 per step, a thousand times this tolerance.
PARAM_ATOL = 1e-6


def test_bnn_two_ranks_take_the_global_batch_steps_of_one_process(ranks, tmp_path):
    import bnn.cli

    root, records = ranks
    assert [r["codes"] for r in records] == [[0, 0, 0], [0, 0, 0]]
    with noise_free():
        assert bnn.cli.main([*CLASSIFY, "--out", str(tmp_path / "one")]) == 0
    two, one = _rows(root / "bnn_mean"), _rows(tmp_path / "one")
    assert [r["epoch"] for r in two] == [1.0, 2.0]
    for a, b in zip(two, one, strict=True):  # training means reduced over ranks, test metrics on gathered rows
        assert a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a), (a, b)
    p2 = ex.load_checkpoint(root / "bnn_mean" / "latest.pt", "bnn")["model"]
    p1 = ex.load_checkpoint(tmp_path / "one" / "latest.pt", "bnn")["model"]
    for name in p1:
        torch.testing.assert_close(p2[name], p1[name], atol=PARAM_ATOL, rtol=0, msg=name)
    s2, s1 = (json.loads((f / "summary.json").read_text()) for f in (root / "bnn_mean", tmp_path / "one"))
    assert s2.keys() == s1.keys() and all(_close(s2[k], s1[k], abs_=1e-5) for k in s1)  # rank 0's final evaluation


def test_bnn_kl_term_is_scaled_by_the_global_training_set(ranks):
    """Every elbo_loss call on either rank got n_data = N (the training set), never N / 2 or 2 N; the shares
    of each global batch add up to it; and (noise-free, where loss = nll + KL / N holds exactly per batch
    and so per epoch) the logged loss carries KL / N once."""
    root, records = ranks
    (n0, b0), (n1, b1) = zip(*records[0]["calls"], strict=True), zip(*records[1]["calls"], strict=True)
    assert set(n0) == set(n1) == {N_TRAIN}
    assert [x + y for x, y in zip(b0, b1, strict=True)] == ([95] * 15 + [13]) * 2
    for row in _rows(root / "bnn_mean"):
        assert row["loss"] == pytest.approx(row["nll"] + row["kl"] / N_TRAIN, rel=1e-5)


def test_bnn_ranks_draw_different_reproducible_noise(ranks):
    """Rank r's keys in epoch e come from torch's generator seeded with rank_seed(seed, r, e): different per
    rank, the same for a given seed and world size (so the averaged gradient averages independent draws)."""
    _, records = ranks
    k0, k1 = records[0]["keys"], records[1]["keys"]
    assert len(k0) == len(k1) > 0 and not set(k0) & set(k1)
    for rank, keys in enumerate((k0, k1)):
        g = torch.Generator().manual_seed(rank_seed(0, DistInfo(rank=rank, world_size=2), 0))
        assert tuple(torch.empty(2, dtype=torch.int64).random_(0, 2**32, generator=g).tolist()) == keys[0]


def _noisy_reference_losses(noise_seed: int, epochs: int = 2) -> list[float]:
    """One process, the classify run's init and data order, noise from ``noise_seed``: its epoch losses."""
    import bnn
    from bnn.config import BNNConfig
    from reparam_apps.data import load_images
    from reparam_apps.utils import seed_everything

    cfg = ex.build_config(BNNConfig, ex.parse_cli(BNNConfig, CLASSIFY).given)
    seed_everything(cfg.seed)
    data = load_images("digits", None, seed=cfg.seed)
    x = data.x_train.reshape(len(data.x_train), -1)
    model = bnn.make_mlp(x.shape[1], data.n_classes, cfg.hidden, cfg.layers, **cfg.layer_kwargs())
    trainer = bnn.Trainer(model, bnn.CategoricalLikelihood(), x, data.y_train, batch_size=cfg.batch_size, lr=cfg.lr,
                          seed=cfg.seed)
    torch.manual_seed(noise_seed)  # the same init and order, other weight noise
    return [trainer.epoch()["loss"] for _ in range(epochs)]


def test_noisy_bnn_loss_curve_stays_in_the_single_process_band(ranks):
    """Band: K = 8 one-process runs differing only in their noise give, per epoch, mean m and std s of the
    loss; a new draw from the same law lies in m +- t_{K-1, 0.9995} s sqrt(1 + 1/K) (a 99.9% prediction
    interval, t = 5.41). The 2-rank run (local reparameterization: per-example noise, so the same law) must
    lie inside at both epochs. A KL scaled by the world size moves the loss by ~KL/N ~ 4.6, ~100 s away."""
    root, _ = ranks
    runs = torch.tensor([_noisy_reference_losses(1000 + k) for k in range(8)], dtype=torch.float64)  # (K, E)
    k = runs.shape[0]
    half = stats.t.ppf(0.9995, k - 1) * runs.std(0) * math.sqrt(1 + 1 / k)
    two = torch.tensor([r["loss"] for r in _rows(root / "bnn_noisy")], dtype=torch.float64)
    assert bool(((two - runs.mean(0)).abs() <= half).all()), (two, runs.mean(0), half)


def test_vae_two_ranks_take_the_global_batch_steps_and_reduce_the_evaluation(ranks):
    """Latent at its mean: one process on the same global batches (vae.train.epoch_order) gives the same rows,
    parameters, final test ELBO and IWAE bound (their sums reduced over the ranks' rows); rank 1's empty share
    of each epoch's last batch (one example) still joined the all-reduce."""
    from reparam_apps.utils import seed_everything
    from vae.config import VAEConfig
    from vae.train import build_model, epoch_order, evaluate_elbo, evaluate_iwae, load_data, train_epoch

    root, _ = ranks
    cfg = ex.build_config(VAEConfig, ex.parse_cli(VAEConfig, VAE_ARGS).given)
    with noise_free():
        seed_everything(cfg.seed)
        data = load_data(cfg, torch.device("cpu"))
        model = build_model(cfg, data.image_shape)
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        rows, step = [], 0
        for epoch in range(cfg.epochs):
            train, step = train_epoch(model, optimizer, data.train(epoch), cfg.batch_size, step,
                                      perm=epoch_order(cfg.seed, epoch, data.n_train))
            rows.append({"epoch": epoch + 1, "step": step, **{f"train_{k}": v for k, v in train.items()},
                         **{f"test_{k}": v for k, v in evaluate_elbo(model, data.test).items()}})
        final = evaluate_elbo(model, data.test)["elbo"]
        iwae = evaluate_iwae(model, data.test[:cfg.iwae_n], cfg.iwae_k)
    two = _rows(root / "vae_mean")
    assert [r["step"] for r in two] == [4.0, 8.0]  # ceil(1438 / 479) = 4 global steps per epoch
    for a, b in zip(two, rows, strict=True):
        assert a.keys() == b.keys() and all(_close(a[k], b[k], abs_=1e-5) for k in a), (a, b)
    state = ex.load_checkpoint(root / "vae_mean" / "latest.pt", "vae")["model_state"]
    for name, p in model.state_dict().items():
        torch.testing.assert_close(state[name], p, atol=PARAM_ATOL, rtol=0, msg=name)
    s = json.loads((root / "vae_mean" / "summary.json").read_text())
    assert _close(s["test_elbo"], final, abs_=1e-5) and _close(s["iwae"], iwae, abs_=1e-5)
    assert (root / "vae_mean" / "samples.png").is_file()  # rank 0 wrote the figures


# -- bad input under torchrun: one line (exit 2 from the console command), before a folder is made ---------------
def test_torchrun_refuses_uci_and_worlds_larger_than_the_batch_or_the_data(tmp_path, monkeypatch):
    """As rank 0 of a larger world (init_distributed patched: no group is needed to refuse)."""
    import bnn.cli
    import vae.cli
    from reparam_apps.experiment import distributed as D

    def world(n: int) -> None:
        monkeypatch.setattr(D, "init_distributed", lambda device=None: (DistInfo(0, n), device))

    world(2)
    with pytest.raises(ex.UserError, match=r"uci under torchrun \(2 processes\).*--workers N instead"):
        bnn.cli.main(["uci", "--dataset", "yacht", "--data-dir", str(tmp_path), "--out", str(tmp_path / "a")])
    with pytest.raises(ex.UserError, match="^2 processes with --batch-size 1: every process needs at least one item"):
        bnn.cli.main(["classify", "--batch-size", "1", "--out", str(tmp_path / "b")])
    world(3)
    with pytest.raises(ex.UserError, match="^3 processes for a training set of 2 items with --batch-size 64"):
        bnn.cli.main(["toy", "--n-train", "2", "--out", str(tmp_path / "c")])
    world(2000)
    with pytest.raises(ex.UserError, match=f"^2000 processes for a training set of {N_TRAIN} items"):
        vae.cli.main(["--batch-size", "4000", "--out", str(tmp_path / "d")])
    assert not any(tmp_path.iterdir())


# -- CUDA (marked gpu; skipped without a device) ----------------------------------------------------------------
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_both_entry_points_train_on_cuda(tmp_path):
    import bnn.cli
    import vae.cli

    assert vae.cli.main([*VAE_ARGS, "--device", "cuda", "--out", str(tmp_path / "vae")]) == 0
    assert bnn.cli.main([*CLASSIFY, "--device", "cuda", "--out", str(tmp_path / "bnn")]) == 0
    for folder in ("vae", "bnn"):
        rows = _rows(tmp_path / folder)
        assert len(rows) == 2 and all(math.isfinite(v) for r in rows for v in r.values())
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["config"]["device"] == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_cpu_and_cuda_give_the_same_noise_free_losses():
    """The same init, order and (noise-free) steps on both devices: float32 kernels that sum in other orders
    (relative ~1e-6 per reduction) keep the epoch losses within 1e-4 relative and parameters within 1e-4 after
    the 16 (VAE) and 32 (BNN) Adam steps of two epochs; a device-specific path (a CPU-only tensor, a lost
    weight) moves them by O(1)."""
    import bnn
    from bnn.config import BNNConfig
    from reparam_apps.data import load_images
    from vae.config import VAEConfig
    from vae.train import build_model, epoch_order, load_data, train_epoch

    cfg = ex.build_config(VAEConfig, ex.parse_cli(VAEConfig, VAE_ARGS).given)
    bcfg = ex.build_config(BNNConfig, ex.parse_cli(BNNConfig, CLASSIFY).given)
    digits = load_images("digits", None, seed=0)
    x = digits.x_train.reshape(len(digits.x_train), -1)
    losses, params = {}, {}
    with noise_free():
        for device in ("cpu", "cuda"):
            torch.manual_seed(0)
            data = load_data(cfg, torch.device(device))
            model = build_model(cfg, data.image_shape).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
            step, curve = 0, []
            for epoch in range(cfg.epochs):
                train, step = train_epoch(model, optimizer, data.train(epoch), cfg.batch_size, step,
                                          perm=epoch_order(0, epoch, data.n_train))
                curve.append(train["elbo"])
            torch.manual_seed(0)
            net = bnn.set_noise(bnn.make_mlp(x.shape[1], 10, bcfg.hidden, bcfg.layers, **bcfg.layer_kwargs()), "mean")
            trainer = bnn.Trainer(net.to(device), bnn.CategoricalLikelihood(), x.to(device), digits.y_train.to(device),
                                  batch_size=bcfg.batch_size, lr=bcfg.lr, seed=0)
            curve += [trainer.epoch()["loss"] for _ in range(2)]
            losses[device] = curve
            params[device] = [p.detach().cpu() for p in [*model.parameters(), *net.parameters()]]
    assert losses["cpu"] == pytest.approx(losses["cuda"], rel=1e-4)
    for a, b in zip(params["cpu"], params["cuda"], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
