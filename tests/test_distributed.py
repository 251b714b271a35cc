"""The spine's torchrun support on CPU: two gloo processes spawned from the test."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from reparam_apps.experiment import distributed as D


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(fn, world: int, *args) -> None:
    """Run ``fn(rank, world, *args)`` in ``world`` gloo processes (torchrun's environment, set by hand)."""
    port = _free_port()
    mp.start_processes(_entry, args=(fn, world, port, args), nprocs=world, join=True, start_method="spawn")


def _entry(rank: int, fn, world: int, port: int, args) -> None:
    import sys

    sys.path.insert(0, os.path.dirname(__file__))  # the toy domain of test_experiment
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        fn(rank, world, *args)
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_one_process_is_unchanged_and_bad_worlds_are_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = D.init_distributed(torch.device("cpu"))
    assert info == D.DistInfo() and info.is_main and not info.distributed
    assert D.shard(torch.arange(5), info).tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(D.UserError, match="4 processes for a training set of 3 items"):
        D.check_world_size(3, 128, D.DistInfo(rank=0, world_size=4))
    with pytest.raises(D.UserError, match="^4 processes with --batch-size 3: "):
        D.check_world_size(None, 3, D.DistInfo(rank=0, world_size=4))
    D.check_world_size(4, 4, D.DistInfo(rank=3, world_size=4))  # one item each: fine
    with pytest.raises(D.UserError, match="needs the NCCL backend"):
        D.rank_device(torch.device("cuda"), D.DistInfo(rank=0, world_size=2, backend="gloo"))
    # eq. (1): the weights of the shares of a global batch of 5 average to 1 over the ranks
    w = [D.batch_weight(len(D.shard(torch.arange(5), D.DistInfo(r, 2))), 5, D.DistInfo(r, 2)) for r in range(2)]
    assert w == [2 * 3 / 5, 2 * 2 / 5] and sum(w) / 2 == 1.0
    seeds = {D.rank_seed(0, D.DistInfo(r, 4), e) for r in range(4) for e in range(3)}
    assert len(seeds) == 12 and D.rank_seed(0, D.DistInfo(1, 4), 2) == D.rank_seed(0, D.DistInfo(1, 2), 2)
    lin = torch.nn.Linear(2, 3)
    D.zero_loss(lin).backward()  # an empty share: zero gradients on every parameter
    assert all(p.grad is not None and not p.grad.any() for p in lin.parameters())
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(D.dist, "is_backend_available", lambda name: False)
    with pytest.raises(D.UserError, match="no gloo backend"):
        D.init_distributed(torch.device("cpu"))


def test_one_ctrl_c_delivered_twice_under_torchrun_is_one_press():
    """torchrun forwards the terminal's SIGINT to workers that already got it: within the window the second
    delivery is dropped (the first asks for a save); a later press gets through; one process is untouched."""
    import signal
    import time

    calls = []
    before = signal.signal(signal.SIGINT, lambda signum, frame: calls.append(time.monotonic()))
    try:
        with D.one_interrupt_per_press(D.DistInfo(rank=0, world_size=2), window=0.2):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
            assert len(calls) == 1
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGINT)
            assert len(calls) == 2
        with D.one_interrupt_per_press(D.DistInfo()):
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        assert len(calls) == 4
    finally:
        signal.signal(signal.SIGINT, before)


def _open_run(rank: int, world: int, root: str, occupied: str) -> None:
    from test_experiment import ToyConfig

    from reparam_apps import experiment as ex

    info, device = D.init_distributed(torch.device("cpu"))
    assert (info.rank, info.world_size, info.backend) == (rank, world, "gloo") and device.type == "cpu"
    mine = D.shard(torch.arange(10), info)
    result = {"mine": mine, "sums": D.reduce_sums({"loss_sum": float(mine.sum()), "count": mine.numel()}, info),
              "sent": D.broadcast_object(f"from-{rank}", info),
              "gathered": D.gather_rows(D.shard(torch.arange(14.0).reshape(7, 2), info), 7, info),
              "summed": D.all_reduce_sum(torch.tensor([1.0, rank]), info),
              "any": (D.any_rank(rank == 1, info), D.any_rank(False, info))}
    try:  # an occupied --out: every rank gets the main rank's error, none hangs
        ex.start_or_resume("toy", ex.parse_cli(ToyConfig, ["--out", occupied]), name="toy", root=root, quiet=True,
                           dist_info=info)
    except ex.UserError as err:
        result["error"] = str(err)
    run = ex.start_or_resume("toy", ex.parse_cli(ToyConfig, ["--lr", "0.3"]), name="toy", root=root, quiet=True,
                             dist_info=info)
    run.log({"step": 1, "rank": rank})  # only the main rank writes
    run.save_checkpoint({"w": torch.full((1,), float(rank))}, "toy", step=1)
    result.update(path=str(run.path), writable=run.writable, lr=run.config.lr)
    torch.save(result, f"{root}/{rank}.pt")


def test_two_gloo_processes_shard_reduce_broadcast_and_share_one_run_folder(tmp_path):
    """One spawn of two gloo processes (each costs a torch import): the collectives, then the run folder."""
    from reparam_apps import experiment as ex

    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "config.json").write_text('{"domain": "toy", "config": {}}')
    ex.save_checkpoint({}, occupied / "latest.pt", "toy")
    spawn(_open_run, 2, str(tmp_path), str(occupied))
    r0, r1 = torch.load(tmp_path / "0.pt"), torch.load(tmp_path / "1.pt")
    assert sorted(torch.cat([r0["mine"], r1["mine"]]).tolist()) == list(range(10))  # disjoint, complete
    assert r0["sums"] == r1["sums"] == {"count": 10.0, "loss_sum": 45.0}  # what one process computes
    assert r0["sent"] == r1["sent"] == "from-0"
    for r in (r0, r1):  # the inverse of shard, on every rank; sums and a flag one rank raised, on every rank
        assert r["gathered"].tolist() == torch.arange(14.0).reshape(7, 2).tolist()
        assert r["summed"].tolist() == [2.0, 1.0] and r["any"] == (True, False)
    assert "already holds a run" in r0["error"] and r0["error"] == r1["error"]
    assert r0["path"] == r1["path"] and (r0["writable"], r1["writable"]) == (True, False)
    assert r0["lr"] == r1["lr"] == 0.3
    with open(f"{r0['path']}/metrics.csv") as fh:
        assert fh.read().splitlines() == ["step,rank", "1,0"]
    assert ex.load_checkpoint(f"{r0['path']}/latest.pt", "toy")["w"].item() == 0.0  # rank 0's state
