#!/usr/bin/env python
"""Mutation check: put each classic bug into a copy of the tree and make sure a test catches it.

    python scripts/mutation_check.py               # every mutant in tests/mutants/*.py, 2 at a time
    python scripts/mutation_check.py --only sac    # the mutants whose name contains "sac"
    python scripts/mutation_check.py --list

Each mutant (see tests/mutants/) names a file, an exact piece of its source (found exactly once), the bug
that replaces it, and the tests that must fail with it. The check copies the tree once per worker, applies
one mutant at a time, runs its tests there (the copy's packages are imported, not the installed ones), and
restores the file. The tests run in a child forked from this process after it has imported the heavy
third-party modules (torch, scipy, gymnasium, ...) but none of the project's, so each mutant pays for its
own test run only, not for a fresh interpreter. A mutant is killed when its tests fail (pytest exit 1) or cannot even be
collected (exit 2); it survives when they pass (exit 0). A mutant whose source text is gone or whose tests
select nothing is stale, and fails the check too, so a refactor cannot quietly retire a guard.
Exit code 0 when every mutant is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Mutant:
    name: str
    path: str
    find: str
    replace: str
    tests: list[str]


@dataclass
class Outcome:
    mutant: Mutant
    status: str  # killed, SURVIVED, STALE
    seconds: float
    detail: str = ""


def load_mutants(folder: Path) -> list[Mutant]:
    mutants: list[Mutant] = []
    for file in sorted(folder.glob("*.py")):
        if file.name == "__init__.py":
            continue
        for entry in runpy.run_path(str(file)).get("MUTANTS", []):
            mutants.append(Mutant(entry["name"], entry["path"], entry["find"], entry["replace"], list(entry["tests"])))
    names = [m.name for m in mutants]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"error: duplicate mutant names: {', '.join(duplicates)}")
    return mutants


def copy_tree(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


PRELOAD = ("torch", "numpy", "scipy.stats", "scipy.special", "gymnasium", "stable_baselines3", "hypothesis",
           "matplotlib.figure", "matplotlib.backends.backend_agg", "tqdm", "sklearn.datasets", "optuna", "pytest")


def preload() -> None:
    """Import the heavy third-party modules once, before forking (never the project's own packages: the
    children must import those from their mutated copy)."""
    import importlib

    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # an optional package: the tests that need it skip or import it themselves
            pass


def check_source(m: Mutant, tree: Path) -> str | None:
    """Why the mutant cannot be applied (None when it can)."""
    target = tree / m.path
    if not target.is_file():
        return f"{m.path} does not exist"
    count = target.read_text().count(m.find)
    if count != 1:
        return f"the source text occurs {count} times in {m.path} (needs exactly 1)"
    return None


def child(m: Mutant, tree: Path, log: Path) -> None:
    """In the forked child: put the mutant in, run its tests from the copy, exit with pytest's code."""
    code = 3
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        target = tree / m.path
        target.write_text(target.read_text().replace(m.find, m.replace))
        os.chdir(tree)
        sys.path.insert(0, str(tree))
        # Subprocesses the tests start must import the copy too; mutated kernels build into the copy's cache.
        os.environ.update(PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1",
                          REPARAM_APPS_CACHE=str(tree / ".native-cache"))
        sys.dont_write_bytecode = True
        import pytest

        code = int(pytest.main(["-x", "-q", "-p", "no:cacheprovider", *m.tests]))
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001 - report anything as a failure to collect
        import traceback

        traceback.print_exc()
        code = 2
    os._exit(code)


def outcome(m: Mutant, code: int, seconds: float, log: Path) -> Outcome:
    lines = log.read_text(errors="replace").strip().splitlines() if log.is_file() else []
    detail = lines[-1] if lines else ""
    if code in (1, 2):
        return Outcome(m, "killed", seconds, detail)
    if code == 0:
        return Outcome(m, "SURVIVED", seconds, detail)
    if code < 0:
        return Outcome(m, "killed", seconds, f"the tests died with signal {-code} (counted as killed)")
    return Outcome(m, "STALE", seconds, f"pytest exit {code}: {detail}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="run the mutants whose name contains this text (default: all)")
    p.add_argument("--workers", type=int, default=2, help="mutants tested at once, each in its own copy (default: 2)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per mutant (default: 300)")
    p.add_argument("--list", action="store_true", help="list the mutants and exit")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error("--workers must be at least 1")
    mutants = [m for m in load_mutants(ROOT / "tests" / "mutants") if args.only in m.name]
    if args.list:
        for m in mutants:
            print(f"{m.name:45s} {m.path:40s} {' '.join(m.tests)}")
        return 0
    if not mutants:
        print("error: no mutants selected", file=sys.stderr)
        return 1
    preload()
    outcomes: list[Outcome] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        free = []
        for i in range(min(args.workers, len(mutants))):
            tree = Path(tmp) / f"tree{i}"
            copy_tree(tree)
            free.append(tree)
        running: dict[int, tuple[Mutant, Path, float, str]] = {}  # pid -> mutant, tree, start, original source
        todo = list(reversed(mutants))

        def finish(pid: int, status: int) -> None:
            m, tree, start, original = running.pop(pid)
            (tree / m.path).write_text(original)
            seconds = time.perf_counter() - start
            code = os.waitstatus_to_exitcode(status)
            out = outcome(m, code, seconds, tree / ".mutant.log")
            outcomes.append(out)
            free.append(tree)
            print(f"{out.status:9s} {m.name:45s} {out.seconds:6.1f}s  {out.detail}", flush=True)

        while todo or running:
            while todo and free:
                m = todo.pop()
                tree = free.pop()
                reason = check_source(m, tree)
                if reason is not None:
                    outcomes.append(Outcome(m, "STALE", 0.0, reason))
                    print(f"{'STALE':9s} {m.name:45s} {0.0:6.1f}s  {reason}", flush=True)
                    free.append(tree)
                    continue
                original = (tree / m.path).read_text()
                pid = os.fork()
                if pid == 0:
                    child(m, tree, tree / ".mutant.log")
                running[pid] = (m, tree, time.perf_counter(), original)
            if running:
                deadline = {pid: start + args.timeout for pid, (_, _, start, _) in running.items()}
                pid, status = os.waitpid(-1, os.WNOHANG)
                while pid == 0:
                    now = time.perf_counter()
                    for p, limit in deadline.items():
                        if now > limit:  # a mutant that hangs the tests: kill it, count it as killed
                            os.kill(p, signal.SIGKILL)
                    time.sleep(0.05)
                    pid, status = os.waitpid(-1, os.WNOHANG)
                finish(pid, status)
    bad = [o for o in outcomes if o.status != "killed"]
    print(f"mutation check: {len(outcomes) - len(bad)} of {len(outcomes)} mutants killed "
          f"in {time.perf_counter() - t0:.0f} s")
    for o in bad:
        print(f"  {o.status}: {o.mutant.name} ({o.mutant.path}): {o.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
