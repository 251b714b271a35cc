"""Replay buffer: one preallocated float32 array, so a batch is one numpy gather and one host-to-device copy."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reparam_apps import CheckpointError

__all__ = ["ReplayBuffer"]


class ReplayBuffer:
    """Ring buffer of (s, a, r, s', terminated). Each row is [s | a | r | s' | d] in one float32 array,
    so a batch is a single numpy gather and a single host-to-device copy."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int):
        self.capacity, self.obs_dim, self.act_dim = int(capacity), obs_dim, act_dim
        self.data = np.zeros((self.capacity, 2 * obs_dim + act_dim + 2), dtype=np.float32)
        self.pos, self.size = 0, 0

    def add(self, obs: np.ndarray, act: np.ndarray, rew: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Add N transitions at once (arrays with a leading N axis)."""
        n = len(obs)
        idx = (self.pos + np.arange(n)) % self.capacity
        o, a = self.obs_dim, self.act_dim
        row = self.data[idx]
        row[:, :o] = obs
        row[:, o:o + a] = act
        row[:, o + a] = rew
        row[:, o + a + 1:2 * o + a + 1] = next_obs
        row[:, -1] = terminated
        self.data[idx] = row
        self.pos = int((self.pos + n) % self.capacity)
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int, rng: np.random.Generator, device: torch.device) -> tuple[Tensor, ...]:
        """Uniform batch (with replacement, like SB3): obs (B, O), act (B, A), rew (B,), next_obs (B, O), term (B,)."""
        idx = rng.integers(0, self.size, size=batch_size)
        batch = torch.from_numpy(self.data[idx]).to(device, non_blocking=True)  # (B, 2O + A + 2)
        o, a = self.obs_dim, self.act_dim
        return batch[:, :o], batch[:, o:o + a], batch[:, o + a], batch[:, o + a + 1:2 * o + a + 1], batch[:, -1]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.data[:self.size].copy(), "pos": self.pos, "size": self.size, "capacity": self.capacity}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state["data"].shape[1] != self.data.shape[1]:
            raise CheckpointError("replay buffer in the checkpoint has transitions of another shape")
        size, pos = int(state["size"]), int(state["pos"])
        if size > self.capacity:  # a smaller buffer than the checkpoint's: keep the checkpoint's capacity
            self.capacity = int(state["capacity"])
            self.data = np.zeros((self.capacity, self.data.shape[1]), dtype=np.float32)
        self.data[:size] = state["data"]
        # Same capacity: the same ring position. A larger one (longer training): append after the data.
        self.pos, self.size = (pos if self.capacity == state["capacity"] else size % self.capacity), size
