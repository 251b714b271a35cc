"""VAE data: the core's image loaders plus binarisation for the Bernoulli decoder.

Binarisation draws each pixel x_ij ~ Bernoulli(intensity_ij):
  'dynamic' (default) resamples the training images every epoch (a regulariser, Salakhutdinov &
            Murray 2008 / Burda et al. 2016) from a generator seeded by (seed, epoch), so a resumed
            run sees exactly the epochs it would have seen;
  'static'  samples them once (seeded) and keeps them;
  'none'    keeps the grey levels (for the Gaussian decoder).
The test images are binarised once with a fixed seed (independent of the run's seed) in both
binarised modes, and the train/test split uses a fixed seed too, so test ELBOs of different runs
are measured on the same data.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from reparam_apps.data import ImageDataset, load_images

__all__ = ["BINARIZE_MODES", "binarize", "VAEData", "load_vae_data"]

BINARIZE_MODES = ("dynamic", "static", "none")
TEST_BINARIZE_SEED = 7_919  # the test binarisation's generator seed, the same for every run
SPLIT_SEED = 0  # the digits / MNIST-10k train/test split, the same for every run


def binarize(x: Tensor, seed: int) -> Tensor:
    """x in [0, 1] -> a {0, 1} sample with P(1) = x, from a generator seeded with ``seed``."""
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.bernoulli(x.cpu(), generator=g).to(x.device)


@dataclass
class VAEData:
    """Flat train/test pixels (N, D) in [0, 1] with a binarisation mode; ``train(epoch)`` gives that
    epoch's training images, ``test`` the fixed test images."""

    raw_train: Tensor  # (N_train, D) intensities
    raw_test: Tensor  # (N_test, D)
    image_shape: tuple[int, int]
    mode: str
    seed: int
    name: str
    y_train: Tensor | None = None
    y_test: Tensor | None = None

    def __post_init__(self) -> None:
        if self.mode not in BINARIZE_MODES:
            raise ValueError(f"unknown binarisation {self.mode!r}: use one of {', '.join(BINARIZE_MODES)}")
        self._static = binarize(self.raw_train, self.seed) if self.mode == "static" else None
        self.test = (self.raw_test if self.mode == "none"
                     else binarize(self.raw_test, TEST_BINARIZE_SEED))

    @classmethod
    def from_dataset(cls, ds: ImageDataset, mode: str = "dynamic", seed: int = 0) -> VAEData:
        flat = lambda t: t.reshape(t.shape[0], -1).contiguous()  # noqa: E731
        return cls(flat(ds.x_train), flat(ds.x_test), tuple(ds.image_shape), mode, seed, ds.name,
                   ds.y_train, ds.y_test)

    @property
    def n_train(self) -> int:
        return self.raw_train.shape[0]

    def train(self, epoch: int) -> Tensor:
        """The training images for ``epoch`` (0-based), (N_train, D)."""
        if self.mode == "dynamic":
            return binarize(self.raw_train, self.seed * 1_000_003 + epoch + 1)
        return self._static if self.mode == "static" else self.raw_train

    def to(self, device: torch.device) -> VAEData:
        self.raw_train, self.raw_test, self.test = (t.to(device) for t in (self.raw_train, self.raw_test, self.test))
        if self._static is not None:
            self._static = self._static.to(device)
        return self


def load_vae_data(dataset: str, data_dir: str | os.PathLike | None = None, mode: str = "dynamic",
                  seed: int = 0, split_seed: int = SPLIT_SEED) -> VAEData:
    """'digits' (embedded 8x8) or 'mnist' (IDX files in ``data_dir``), binarised as ``mode`` says
    (training binarisation seeded by ``seed``; the split by ``split_seed``).
    Raises the core's DataError (naming the missing files) when the MNIST folder is incomplete."""
    if mode not in BINARIZE_MODES:
        raise ValueError(f"unknown binarisation {mode!r}: use one of {', '.join(BINARIZE_MODES)}")
    return VAEData.from_dataset(load_images(dataset, data_dir, seed=split_seed), mode, seed)
