"""Replay buffer: one preallocated float32 array of rows [s | a | r | s' | d], so a batch is one gather. On a CPU
the array is numpy (one gather, one copy to the device); on an accelerator it lives on that device (the batch
is gathered there, and only the batch's row indices cross to it)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reparam_apps import CheckpointError

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', terminated), each transition one row [s | a | r | s' | d].

    Args:
        capacity: rows kept (the oldest is overwritten first).
        obs_dim, act_dim: sizes of s and a.
        device: where the rows live. None or a CPU device: a numpy array in host memory. An accelerator
            (``cuda``, ``mps``): a tensor on it, so sampling copies no batch from the host. The row indices are
            drawn the same way on every device, so a seed samples the same batches on the CPU and on a GPU.
        keep_on_device: None (the default) keeps the rows on ``device`` when it is an accelerator; True keeps
            them in a tensor on ``device`` even on the CPU (the GPU layout, testable without a GPU).
    """

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str | None = None,
                 keep_on_device: bool | None = None):
        self.capacity, self.obs_dim, self.act_dim = int(capacity), obs_dim, act_dim
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.on_device = self.device.type != "cpu" if keep_on_device is None else bool(keep_on_device)
        width = 2 * obs_dim + act_dim + 2
        self.data: np.ndarray | Tensor = (torch.zeros((self.capacity, width), device=self.device) if self.on_device
                                          else np.zeros((self.capacity, width), dtype=np.float32))
        self.pos, self.size = 0, 0

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Add N transitions at once (arrays with a leading N axis)."""
        n = len(obs)
        idx = (self.pos + np.arange(n)) % self.capacity
        o, a = self.obs_dim, self.act_dim
        row = np.empty((n, 2 * o + a + 2), dtype=np.float32)
        row[:, :o] = obs
        row[:, o:o + a] = act
        row[:, o + a] = rew
        row[:, o + a + 1:2 * o + a + 1] = next_obs
        row[:, -1] = terminated
        if self.on_device:  # one small copy per env step (the env runs on the host anyway)
            self.data[torch.from_numpy(idx).to(self.device)] = torch.from_numpy(row).to(self.device)
        else:
            self.data[idx] = row
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def rows(self, idx: np.ndarray, out: np.ndarray | None = None) -> np.ndarray | Tensor:
        """The rows ``idx`` (B, 2O + A + 2): gathered on the buffer's device; into ``out`` for a host buffer."""
        if self.on_device:
            return self.data[torch.from_numpy(idx).to(self.device, non_blocking=True)]
        return np.take(self.data, idx, axis=0, out=out)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> tuple[Tensor, ...]:
        """Uniform batch (with replacement, like SB3): obs (B, O), act (B, A), rew (B,), next_obs (B, O), term (B,)."""
        idx = rng.integers(0, self.size, size=batch_size)
        rows = self.rows(idx)
        batch = rows.to(device) if self.on_device else torch.from_numpy(rows).to(device, non_blocking=True)
        o, a = self.obs_dim, self.act_dim
        return batch[:, :o], batch[:, o:o + a], batch[:, o + a], batch[:, o + a + 1:2 * o + a + 1], batch[:, -1]

    def state_dict(self) -> dict[str, Any]:
        """The rows as a numpy array whatever the device, so a checkpoint resumes on any device."""
        data = self.data[:self.size]
        data = data.cpu().numpy() if self.on_device else data.copy()
        return {"data": data, "pos": self.pos, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        width = self.data.shape[1]
        if state["data"].shape[1] != width:
            raise CheckpointError("replay buffer in the checkpoint has transitions of another shape")
        size, pos = int(state["size"]), int(state["pos"])
        if size > self.capacity:  # a smaller buffer than the checkpoint's: keep the checkpoint's capacity
            self.capacity = int(state["capacity"])
            self.data = (torch.zeros((self.capacity, width), device=self.device) if self.on_device
                         else np.zeros((self.capacity, width), dtype=np.float32))
        self.data[:size] = torch.from_numpy(np.ascontiguousarray(state["data"])).to(self.device) if self.on_device \
            else state["data"]
        # Same capacity: the same ring position. A larger one (longer training): append after the data.
        self.pos, self.size = (pos if self.capacity == state["capacity"] else size % self.capacity), size
