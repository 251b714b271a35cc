"""Atomic files and checksummed checkpoints: no crash, kill or bit flip can cost more than one interval.

A checkpoint file is a short header (magic, kind, SHA-256 of the payload) followed by a ``torch.save``
payload. Loading verifies the checksum before unpickling, so a truncated or bit-flipped file is refused
with the file's name instead of training on corrupted state. ``save_checkpoint(..., keep_previous=True)``
moves the last good file to ``previous.pt`` beside it before the new one lands, so one bad file never
leaves a run without a checkpoint to resume from.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["atomic_write_bytes", "atomic_write_text", "save_checkpoint", "load_checkpoint", "previous_path",
           "MAGIC"]

MAGIC = b"reparam-apps-ckpt-v2"


def _file_mode() -> int:
    umask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``: a crash at any
    moment leaves either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _file_mode())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def previous_path(path: str | os.PathLike) -> Path:
    """Where ``save_checkpoint(path, keep_previous=True)`` keeps the last good file: ``latest.pt`` ->
    ``latest.previous.pt``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.previous{path.suffix}")


def save_checkpoint(obj: Mapping[str, Any], path: str | os.PathLike, kind: str, keep_previous: bool = False) -> None:
    """Write ``obj`` (tensors, numpy arrays, plain python) atomically, tagged with ``kind`` (e.g. 'sac') and
    the SHA-256 of its payload. ``keep_previous`` first moves an existing good file to ``previous_path``."""
    buf = io.BytesIO()
    torch.save({"format": "reparam-apps", "kind": kind, **obj}, buf)
    payload = buf.getvalue()
    header = b"%s %s %s\n" % (MAGIC, kind.encode("ascii"), hashlib.sha256(payload).hexdigest().encode("ascii"))
    path = Path(path)
    if keep_previous and path.is_file():
        try:
            _verified_payload(path, kind)  # only a good file is worth keeping
            os.replace(path, previous_path(path))
        except CheckpointError:
            pass
    atomic_write_bytes(path, header + payload)


def _verified_payload(path: Path, kind: str) -> bytes:
    data = path.read_bytes()
    head, sep, payload = data.partition(b"\n")
    parts = head.split(b" ")
    if not sep or len(parts) != 3 or parts[0] != MAGIC:
        if data[:2] == b"PK":  # a bare torch.save zip: written by reparam-apps before checksums
            raise CheckpointError(f"{path} is not a reparam-apps checkpoint with a checksum (a bare torch.save "
                                  "file, or one written by an older reparam-apps): load it with torch.load")
        raise CheckpointError(f"{path} is not a reparam-apps checkpoint (or its header is damaged)")
    if parts[1].decode("ascii", "replace") != kind:
        raise CheckpointError(f"{path} is a {parts[1].decode('ascii', 'replace')!r} checkpoint, expected {kind!r}")
    if hashlib.sha256(payload).hexdigest().encode("ascii") != parts[2]:
        keep = previous_path(path)
        hint = f"; the previous good checkpoint {keep} is kept" if keep.is_file() else ""
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated (checksum mismatch){hint}: move the "
                              "damaged file aside and resume from the previous one, or start a new run")
    return payload


def load_checkpoint(path: str | os.PathLike, kind: str, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint written by ``save_checkpoint`` after verifying its checksum and kind; a
    ``CheckpointError`` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    payload = _verified_payload(path, kind)
    try:
        # Our checkpoints hold numpy arrays and plain python objects next to tensors.
        obj = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as err:  # the checksum matched, so this is a version mismatch, not damage
        raise CheckpointError(f"checkpoint {path} could not be read ({type(err).__name__}: {err})") from None
    if not isinstance(obj, dict) or obj.get("format") != "reparam-apps":
        raise CheckpointError(f"{path} is not a reparam-apps checkpoint")
    return obj
