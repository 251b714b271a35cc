"""Deprecated location: the run-folder plumbing lives in ``reparam_apps.experiment``."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .experiment.checkpoint import atomic_write_bytes, atomic_write_text, load_checkpoint, save_checkpoint
from .experiment.errors import CheckpointError
from .experiment.metrics import MetricsCSV

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint",
           "CheckpointError", "MetricsCSV", "RunDir"]


class RunDir:
    """A run folder (kept until every entry point uses ``experiment.start_or_resume``)."""

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
