"""Seeding, random-state capture and device selection shared by every domain."""

from __future__ import annotations

import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "derived_seed", "rng_state", "set_rng_state", "select_device", "set_threads"]


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed python, numpy and torch (all devices). ``deterministic`` also asks torch for
    deterministic kernels (slower on GPU; CPU runs are already repeatable for a fixed seed)."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def select_device(name: str = "auto") -> torch.device:
    """'auto' picks CUDA when available, else CPU; 'cpu' and 'cuda[:N]' are taken as given."""
    name = str(name).lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r} requested but CUDA is not available: use --device cpu or auto")
        return torch.device(name)
    raise ValueError(f"unknown device {name!r}: use 'auto', 'cpu' or 'cuda'")


def set_threads(n: int | None) -> None:
    """Set torch's intra-op thread count (None or 0 keeps torch's default)."""
    if n is None or n == 0:
        return
    if n < 0:
        raise ValueError(f"thread count must be positive, got {n}")
    torch.set_num_threads(n)


def derived_seed(seed: int, *words: int) -> int:
    """A 63-bit seed for a sub-stream (data order, split k, evaluation at epoch e) of the run seed ``seed``:
    numpy's SeedSequence hashing, so sub-streams do not overlap the way seed + k would."""
    return int(np.random.SeedSequence([seed, *words]).generate_state(1, np.uint64)[0]) >> 1


def rng_state() -> dict[str, Any]:
    """Every global random state a training step may touch: python, numpy, torch CPU (which also keys the
    native weight noise, ``reparam_apps.native.new_key``) and CUDA when it is in use. Checkpoints carry it
    so that a resumed run continues the same streams."""
    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what ``rng_state`` captured."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
