"""Image data shared by the BNN and VAE domains: scikit-learn's bundled digits (the embedded,
offline default) and MNIST from IDX files in a user-given folder (no download, ever)."""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["ImageDataset", "load_digits", "load_mnist", "load_images", "read_idx", "MNIST_FILES",
           "DataError", "check_finite_images"]

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_MNIST_HINT = ("get the IDX files from the MNIST distribution (Yann LeCun's page or any mirror) and "
               "put them, gzipped or not, in this folder")


class DataError(FileNotFoundError):
    """A data folder lacks the expected files or holds a broken one."""


@dataclass
class ImageDataset:
    """Train/test images in [0, 1] as float32 tensors of shape (N, H, W), labels int64 (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    name: str

    @property
    def image_shape(self) -> tuple[int, int]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_classes(self) -> int:
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _seeded_split(x: np.ndarray, y: np.ndarray, n_test: int, seed: int):
    perm = np.random.default_rng(seed).permutation(len(x))
    test, train = perm[:n_test], perm[n_test:]
    return x[train], y[train], x[test], y[test]


def check_finite_images(images: np.ndarray, source: str) -> None:
    """DataError naming ``source`` (the file) and the first image (row) holding a NaN or inf pixel."""
    if np.issubdtype(images.dtype, np.floating):
        bad = ~np.isfinite(images.reshape(len(images), -1)).all(1)  # (N,)
        if bad.any():
            raise DataError(f"{source}: image {int(np.argmax(bad))} holds NaN or inf pixels ({int(bad.sum())} such "
                            "images): replace the file with a clean copy")


def _to_dataset(x_tr, y_tr, x_te, y_te, name: str) -> ImageDataset:
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    g = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.int64))  # noqa: E731
    return ImageDataset(f(x_tr), g(y_tr), f(x_te), g(y_te), name)


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> ImageDataset:
    """scikit-learn's bundled 8x8 digits (1,797 images, shipped with the package), scaled to [0, 1],
    with a seeded train/test split."""
    from sklearn.datasets import load_digits as _sk_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    d = _sk_digits()
    x = d.images.astype(np.float32) / 16.0
    n_test = int(round(test_fraction * len(x)))
    return _to_dataset(*_seeded_split(x, d.target, n_test, seed), name="digits")


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (gzipped or not) into a numpy array; DataError if it is damaged."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08:
            raise ValueError("bad magic number")
        dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
        arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if arr.size != int(np.prod(dims)):
            raise ValueError(f"expected {int(np.prod(dims))} values, found {arr.size}")
        return arr.reshape(dims)
    except (OSError, EOFError, ValueError, struct.error) as err:
        raise DataError(f"{path} is not a readable IDX file ({err}); replace it with a fresh copy") from None


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(data_dir: str | os.PathLike, n_test: int = 2000, seed: int = 0) -> ImageDataset:
    """MNIST from IDX files in ``data_dir``: the four standard files (60k/10k), or only the two
    10k test files, split with a fixed seed into (10000 - n_test) train and n_test test images."""
    folder = Path(data_dir)
    if not folder.is_dir():
        raise DataError(f"MNIST folder {folder} does not exist; {_MNIST_HINT}")
    found = {k: _find(folder, v) for k, v in MNIST_FILES.items()}
    if found["test_images"] is None or found["test_labels"] is None:
        missing = [MNIST_FILES[k] + "[.gz]" for k in ("test_images", "test_labels") if found[k] is None]
        raise DataError(f"MNIST folder {folder} lacks {', '.join(missing)}; {_MNIST_HINT}")
    x_te, y_te = read_idx(found["test_images"]), read_idx(found["test_labels"])
    check_finite_images(x_te, str(found["test_images"]))
    if len(x_te) != len(y_te):
        raise DataError(f"{folder}: {len(x_te)} test images but {len(y_te)} labels")
    scale = lambda a: a.astype(np.float32) / 255.0  # noqa: E731
    if found["train_images"] is not None and found["train_labels"] is not None:
        x_tr, y_tr = read_idx(found["train_images"]), read_idx(found["train_labels"])
        check_finite_images(x_tr, str(found["train_images"]))
        return _to_dataset(scale(x_tr), y_tr, scale(x_te), y_te, name="mnist")
    if not 0 < n_test < len(x_te):
        raise ValueError(f"n_test must be in (0, {len(x_te)}), got {n_test}")
    return _to_dataset(*_seeded_split(scale(x_te), y_te, n_test, seed), name="mnist-10k-split")


def load_images(dataset: str, data_dir: str | os.PathLike | None = None, seed: int = 0) -> ImageDataset:
    """'digits' (embedded) or 'mnist' (needs ``data_dir``)."""
    if dataset == "digits":
        return load_digits(seed=seed)
    if dataset == "mnist":
        if data_dir is None:
            raise DataError("--dataset mnist needs --data-dir pointing at a folder of MNIST IDX files")
        return load_mnist(data_dir, seed=seed)
    raise ValueError(f"unknown dataset {dataset!r}: use 'digits' (embedded) or 'mnist' (with --data-dir)")
