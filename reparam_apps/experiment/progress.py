"""Progress for a person at a terminal, status lines for a log file.

On a terminal: a tqdm bar. When stderr is not a terminal (a server, a cluster job, ``nohup``): one status
line per ``status`` call (the entry points call it every ``--log-every`` steps or epochs) with the step,
the recent values, the speed and the ETA. The run folder's ``log.txt`` gets the same lines either way.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

__all__ = ["Progress", "format_duration"]


def format_duration(seconds: float) -> str:
    if not seconds == seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """A bar on a terminal and status lines elsewhere; ``update(n)`` moves it, ``status(**values)`` reports.

    Args:
        total: steps (or epochs) the run is to reach.
        desc: what is running, e.g. ``"SAC Pendulum-v1"``.
        unit: ``"step"`` or ``"epoch"``.
        initial: where a resumed run starts.
        disable: hide the bar (``--no-progress``); status lines still go to ``log_file``.
        log_file: the run folder's ``log.txt`` (appended).
        stream: where the bar or the status lines go (default stderr).
        quiet: print nothing (torchrun's non-main ranks).
    """

    def __init__(self, total: int, desc: str, unit: str = "step", initial: int = 0, disable: bool = False,
                 log_file: str | os.PathLike | None = None, stream: TextIO | None = None, quiet: bool = False):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.n = int(initial)
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.bar = (tqdm(total=total, desc=desc, unit=unit, initial=initial, dynamic_ncols=True, file=self.stream,
                         smoothing=0.1) if self.tty and not disable else None)
        self.log_path = Path(log_file) if log_file is not None else None
        self.quiet = quiet
        self._t0, self._n0 = time.perf_counter(), self.n

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, values: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix({k: _value(v) for k, v in values.items()}, refresh=False)

    def line(self, values: Mapping[str, Any] | None = None) -> str:
        """``desc: step 4000/20000 (20%) | return -812.3 | 110 step/s | ETA 2m25s``."""
        elapsed = time.perf_counter() - self._t0
        rate = (self.n - self._n0) / elapsed if elapsed > 0 else float("nan")
        eta = (self.total - self.n) / rate if rate and rate == rate and rate > 0 else float("nan")
        pct = 100.0 * self.n / self.total if self.total else 100.0
        parts = [f"{self.desc}: {self.unit} {self.n}/{self.total} ({pct:.0f}%)"]
        parts += [f"{k} {_value(v)}" for k, v in (values or {}).items()]
        parts += [f"{rate:.3g} {self.unit}/s", f"ETA {format_duration(eta)}"]
        return " | ".join(parts)

    def status(self, **values: Any) -> str:
        """Report the recent ``values``: the bar's postfix on a terminal, a status line otherwise, and the
        same line (timestamped) in the log file. Returns the line."""
        text = self.line(values)
        self.set_postfix(values)
        if self.bar is None and not self.tty and not self.quiet:
            print(text, file=self.stream, flush=True)
        self.log(text)
        return text

    def log(self, text: str) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as fh:
                fh.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
