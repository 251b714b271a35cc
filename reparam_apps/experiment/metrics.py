"""Append-only metrics CSV that survives a kill at any byte."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .checkpoint import atomic_write_text

__all__ = ["MetricsCSV"]


class MetricsCSV:
    """Append-only CSV of metric rows. The columns are fixed by the first row; a row with a new column
    rewrites the file (atomically) with the wider header, so no value is ever dropped. A torn last row
    (the process was killed mid-write) is cut off when the file is opened."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.columns: list[str] = []
        if self.path.is_file() and self.path.stat().st_size > 0:
            self._repair()
            with open(self.path, newline="") as fh:
                self.columns = next(csv.reader(fh), [])

    def _repair(self) -> None:
        data = self.path.read_bytes()
        if data.endswith(b"\n"):
            return
        keep = data[: data.rfind(b"\n") + 1]  # the header alone if the first row was torn
        atomic_write_text(self.path, keep.decode("utf-8", "replace"))

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
            csv.DictWriter(fh, fieldnames=self.columns, restval="").writerow({k: _fmt(v) for k, v in row.items()})
            fh.flush()

    def truncate_after(self, key: str, value: float) -> None:
        """Drop rows whose ``key`` exceeds ``value``: on resume, rows logged after the checkpoint would
        otherwise appear twice."""
        if not self.columns:
            return
        rows = [r for r in self.rows() if _number(r.get(key)) is None or _number(r[key]) <= value]
        self._rewrite(self.columns, rows)


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def _fmt(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        v = v.item()
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
