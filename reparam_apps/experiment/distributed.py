"""Data parallelism through torchrun: the process group, global-batch sharding and metric reduction.

``torchrun --nproc-per-node N <entry point> ...`` sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous
address; ``init_distributed`` joins the group (gloo on CPU, NCCL on CUDA, chosen from the device) and the
same command without torchrun runs as one process, unchanged. The training loops shard each *global*
batch (the batch a single process would take) across the ranks, so with ``DistributedDataParallel``
averaging the gradients, N processes take the same steps as one process on the global batch (up to float
reassociation); evaluation sums are reduced so every rank reports what one process computes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import UserError

__all__ = ["DistInfo", "init_distributed", "shard", "check_world_size", "reduce_sums", "broadcast_object",
           "barrier", "single_process"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank 0 of 1 without torchrun."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        """Only the main rank writes the run folder, metrics and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def single_process() -> DistInfo:
    return DistInfo()


def init_distributed(device: torch.device) -> tuple[DistInfo, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (else one process, unchanged).

    Returns the rank information and the device this rank trains on (``cuda:LOCAL_RANK`` for CUDA).
    Raises ``UserError`` for a backend this torch build lacks.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return single_process(), device
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_available() or not dist.is_backend_available(backend):
        raise UserError(f"torchrun asked for {world} processes but this torch build has no {backend} backend "
                        f"(device {device.type}): use --device {'cpu' if backend == 'nccl' else 'cuda'}, or run "
                        "without torchrun")
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local} but only {torch.cuda.device_count()} CUDA devices: lower "
                            "--nproc-per-node")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local, backend), device


def shard(indices: Tensor, info: DistInfo) -> Tensor:
    """This rank's share of one global batch of indices: every world_size-th, from position rank.

    The shares are disjoint and cover the batch; a global batch smaller than the world leaves some ranks
    an empty share (the caller must refuse that up front: see ``check_world_size``).
    """
    if info.world_size == 1:
        return indices
    return indices[info.rank::info.world_size]


def check_world_size(n_items: int, batch_size: int, info: DistInfo, what: str = "training set") -> None:
    """One line, exit 2, for a world larger than the data or than the global batch."""
    if info.world_size > min(n_items, batch_size):
        raise UserError(f"{info.world_size} processes for a {what} of {n_items} items with --batch-size "
                        f"{batch_size}: every process needs at least one item per batch; use fewer processes "
                        "(--nproc-per-node) or a larger --batch-size")


def reduce_sums(sums: Mapping[str, float], info: DistInfo, device: torch.device | None = None) -> dict[str, float]:
    """Sum each value over the ranks (evaluation totals and counts); identity for one process."""
    if not info.distributed:
        return dict(sums)
    keys = sorted(sums)
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) for k, v in zip(keys, t.tolist(), strict=True)}


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

