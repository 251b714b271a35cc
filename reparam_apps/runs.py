"""Run folders: config JSON, a metrics CSV appended safely, atomic checkpoints."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "MetricsCSV", "RunDir"]


_UMASK = os.umask(0)
os.umask(_UMASK)


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt or belongs to something else."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``:
    a crash at any moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike, kind: str) -> None:
    """torch.save ``obj`` atomically, tagged with ``kind`` (e.g. 'sac') so loading checks it."""
    buf = io.BytesIO()
    torch.save({"format": "reparam-apps", "kind": kind, **obj}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint``; a clear CheckpointError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        # Our checkpoints hold numpy arrays and plain python objects next to tensors.
        obj = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for a damaged zip/pickle
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}); "
            "delete it or point to another checkpoint"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != "reparam-apps":
        raise CheckpointError(f"{path} is not a reparam-apps checkpoint")
    if obj.get("kind") != kind:
        raise CheckpointError(f"{path} is a {obj.get('kind')!r} checkpoint, expected {kind!r}")
    return obj


class MetricsCSV:
    """Append-only CSV of metric rows. Columns are fixed by the first row; a row with a new
    column rewrites the file (atomically) with the wider header, so no value is ever dropped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.columns: list[str] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            with open(self.path, newline="") as fh:
                self.columns = next(csv.reader(fh), [])

    def rows(self) -> list[dict[str, str]]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as fh:
            return list(csv.DictReader(fh))

    def _rewrite(self, columns: list[str], rows: list[Mapping[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
        self.columns = columns

    def append(self, row: Mapping[str, Any]) -> None:
        new = [k for k in row if k not in self.columns]
        if new:
            self._rewrite(self.columns + new, self.rows())
        with open(self.path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.columns, restval="").writerow(
                {k: _fmt(v) for k, v in row.items()})
            fh.flush()

    def truncate_after(self, key: str, value: float) -> None:
        """Drop rows whose ``key`` exceeds ``value`` (used on resume: rows logged after the
        checkpoint would otherwise appear twice)."""
        rows = [r for r in self.rows() if r.get(key, "") == "" or float(r[key]) <= value]
        if self.columns:
            self._rewrite(self.columns, rows)


def _fmt(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


class RunDir:
    """A run folder: ``config.json``, ``metrics.csv`` (and any other CSVs), checkpoints, plots."""

    def __init__(self, path: str | os.PathLike, config: Any | None = None, resume: bool = False):
        self.path = Path(path)
        if resume and not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"cannot resume: {self.path} holds no config.json (not a run folder)")
        self.path.mkdir(parents=True, exist_ok=True)
        if config is not None and not resume:
            self.write_json("config.json", config)
        self._csvs: dict[str, MetricsCSV] = {}

    def file(self, name: str) -> Path:
        return self.path / name

    def write_json(self, name: str, obj: Any) -> None:
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            obj = dataclasses.asdict(obj)
        atomic_write_text(self.path / name, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text())

    def metrics(self, name: str = "metrics.csv") -> MetricsCSV:
        if name not in self._csvs:
            self._csvs[name] = MetricsCSV(self.path / name)
        return self._csvs[name]

    def log(self, row: Mapping[str, Any], name: str = "metrics.csv") -> None:
        self.metrics(name).append(row)
