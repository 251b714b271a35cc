"""Data parallelism through torchrun: the process group, global-batch sharding and metric reduction.

``torchrun --nproc-per-node N <entry point> ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; ``init_distributed`` joins the group (gloo for CPU tensors, plus NCCL for CUDA tensors where this
torch has CUDA) and the same command without torchrun runs as one process, unchanged. The training loops
shard each *global* batch B (the batch a single process would take) across the ranks and weight rank r's
mean loss over its b_r examples by

    w_r = N_ranks b_r / B                                                                   (1)

so that ``DistributedDataParallel``'s gradient average (1/N_ranks) sum_r w_r grad(mean_r) is the gradient
of the global batch's mean loss, uneven or empty shares included: N processes take the same steps as one
process on the global batch (up to float reassociation). Evaluation sums are reduced (or rows gathered) so
every rank reports what one process computes. Each rank draws its own noise (``rank_seed``), so averaging
the ranks' gradients also averages independent Monte Carlo draws.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import UserError

__all__ = ["DistInfo", "init_distributed", "rank_device", "shard", "check_world_size", "batch_weight", "rank_seed",
           "reduce_sums", "all_reduce_sum", "any_rank", "gather_rows", "broadcast_object", "barrier", "data_parallel",
           "zero_loss", "one_interrupt_per_press", "shutdown", "single_process"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False  # init_distributed made the group (so ``shutdown`` tears it down)

    @property
    def is_main(self) -> bool:
        """Only the main rank writes the run folder, metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def single_process() -> DistInfo:
    return DistInfo()


def _backend(device: torch.device | None) -> str:
    """gloo for CPU tensors; with CUDA, NCCL for CUDA tensors beside it (one group serves both)."""
    if device is not None and device.type == "cpu":
        return "gloo"
    if torch.cuda.is_available() and dist.is_available() and dist.is_backend_available("nccl"):
        return "cpu:gloo,cuda:nccl"
    if device is not None and device.type == "cuda":
        return "nccl"  # refused below: this build has no NCCL
    return "gloo"


def init_distributed(device: torch.device | None = None) -> tuple[DistInfo, torch.device | None]:
    """Join the torchrun process group when WORLD_SIZE > 1 (else one process, unchanged).

    Args:
        device: the training device, if known (else None: pick it later with ``rank_device``; the group
            then serves CPU and, where this torch has CUDA, CUDA tensors).
    Returns:
        The rank information and this rank's device (``cuda:LOCAL_RANK`` for CUDA; None if ``device`` is).
    Raises:
        UserError: a backend this torch build lacks, or more ranks on this node than CUDA devices.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return single_process(), device
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = _backend(device)
    for name in backend.replace("cpu:", "").replace("cuda:", "").split(","):
        if not dist.is_available() or not dist.is_backend_available(name):
            kind = "cpu" if name == "gloo" else "cuda"
            raise UserError(f"torchrun asked for {world} processes but this torch build has no {name} backend "
                            f"(device {kind}): use --device {'cpu' if kind == 'cuda' else 'cuda'}, or run "
                            "without torchrun")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend, rank=rank, world_size=world)
    info = DistInfo(rank, world, local, backend, owns)
    return info, (None if device is None else rank_device(device, info))


def rank_device(device: torch.device, info: DistInfo) -> torch.device:
    """This rank's device: under torchrun, CUDA means ``cuda:LOCAL_RANK`` (one GPU per process)."""
    if not info.distributed or device.type != "cuda":
        return device
    if info.backend is not None and "nccl" not in info.backend:
        raise UserError("--device cuda under torchrun needs the NCCL backend, which this torch build lacks: use "
                        "--device cpu")
    if info.local_rank >= torch.cuda.device_count():
        raise UserError(f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} CUDA devices: lower "
                        "--nproc-per-node")
    device = torch.device("cuda", info.local_rank)
    torch.cuda.set_device(device)
    return device


def shard(indices: Tensor, info: DistInfo) -> Tensor:
    """This rank's share of one global batch of indices: every world_size-th, from position rank.

    The shares are disjoint and cover the batch; a global batch smaller than the world (the last one of an
    epoch) leaves some ranks an empty share: ``zero_loss`` keeps them in step. ``check_world_size`` refuses a
    world larger than the data or the batch size up front.
    """
    if info.world_size == 1:
        return indices
    return indices[info.rank::info.world_size]


def check_world_size(n_items: int | None, batch_size: int, info: DistInfo, what: str = "training set") -> None:
    """One line, exit 2, for a world larger than the data (``n_items``, None: not known yet) or than the
    global batch."""
    if info.world_size > min(batch_size if n_items is None else n_items, batch_size):
        data = "" if n_items is None else f" for a {what} of {n_items} items"
        raise UserError(f"{info.world_size} processes{data} with --batch-size {batch_size}: every process needs "
                        "at least one item per batch; use fewer processes (--nproc-per-node) or a larger "
                        "--batch-size")


def batch_weight(n_local: int, n_global: int, info: DistInfo) -> float:
    """w_r of eq. (1): the factor on this rank's mean loss that makes DDP's average the global batch mean."""
    return info.world_size * n_local / n_global


def rank_seed(seed: int, info: DistInfo, *words: int) -> int:
    """A 63-bit seed for this rank's own noise stream (e.g. per epoch: ``words = (epoch,)``): numpy's
    SeedSequence hashing of (seed, rank, words), so the ranks' streams do not overlap the way seed + rank
    would, and are reproducible for a given seed and rank (hence world size)."""
    state = np.random.SeedSequence([seed, 0x0D15C0, info.rank, *words]).generate_state(1, np.uint64)[0]
    return int(state) >> 1


def all_reduce_sum(t: Tensor, info: DistInfo) -> Tensor:
    """``t`` summed over the ranks (in place); ``t`` itself for one process."""
    if info.distributed:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def reduce_sums(sums: Mapping[str, float], info: DistInfo, device: torch.device | None = None) -> dict[str, float]:
    """Sum each value over the ranks (evaluation totals and counts); identity for one process."""
    if not info.distributed:
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank if ``flag`` is on any (a Ctrl-C one rank saw): the ranks stop at the same step."""
    if not info.distributed:
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gather_rows(part: Tensor, n: int, info: DistInfo) -> Tensor:
    """The inverse of ``shard`` over rows: every rank's ``part`` (its rows rank, rank + N_ranks, ... of an
    (n, ...) tensor) put back in order, on every rank."""
    if not info.distributed:
        return part
    w = info.world_size
    size = -(-n // w)  # ceil(n / w): the padded share
    padded = part.new_zeros((size, *part.shape[1:]))
    padded[: len(part)] = part
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = part.new_empty((n, *part.shape[1:]))
    for r, p in enumerate(parts):
        k = len(range(r, n, w))
        out[r::w] = p[:k]
    return out


def broadcast_object(obj: object, info: DistInfo) -> object:
    """The main rank's ``obj`` on every rank (e.g. the run folder it opened)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def data_parallel(module: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``module`` under DistributedDataParallel (its forward must compute the loss, so the gradient
    all-reduce is armed); ``module`` itself for one process. Buffers follow rank 0's."""
    if not info.distributed:
        return module
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids, output_device=None if ids is None else ids[0])


def zero_loss(module: nn.Module) -> Tensor:
    """0 with a (zero) gradient path to every parameter: the loss of a rank whose share of a global batch is
    empty, which must still join the gradient all-reduce."""
    return sum(p.sum() for p in module.parameters() if p.requires_grad) * 0.0


@contextlib.contextmanager
def one_interrupt_per_press(info: DistInfo, window: float = 2.0) -> Iterator[None]:
    """Under torchrun one Ctrl-C reaches each worker twice: from the terminal, and forwarded by torchrun
    (which kills the workers 30 s later). Inside ``Run.interruptible()``, this makes SIGINTs within ``window``
    seconds of the first count as one, so a single press asks for the save instead of stopping unsaved; a
    press after the window still stops at once. Nothing changes for one process or outside the main thread."""
    if not info.distributed or threading.current_thread() is not threading.main_thread():
        yield
        return
    inner = signal.getsignal(signal.SIGINT)
    first = [-float("inf")]

    def on_sigint(signum: int, frame: object) -> None:
        now = time.monotonic()
        if now - first[0] < window:
            return  # the same press, delivered again
        first[0] = now
        if callable(inner):
            inner(signum, frame)
        elif inner != signal.SIG_IGN:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, inner)


def shutdown(info: DistInfo, wait: bool = True) -> None:
    """Leave the process group if ``init_distributed`` made it; ``wait``: after a barrier, so no rank leaves
    while another still works (False on an error path, where a barrier could wait for a rank that died)."""
    if info.owns_group and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()
