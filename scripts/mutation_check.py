#!/usr/bin/env python
"""Mutation check: put each classic bug into a copy of the tree and make sure a test catches it.

    python scripts/mutation_check.py               # every mutant in tests/mutants/*.py, 2 at a time
    python scripts/mutation_check.py --only sac    # the mutants whose name contains "sac"
    python scripts/mutation_check.py --list

Each mutant (see tests/mutants/) names a file, an exact piece of its source (found exactly once), the bug
that replaces it, and the tests that must fail with it. The check copies the tree once per worker, applies
one mutant at a time, runs its tests there (PYTHONPATH points at the copy, so the copy's packages are
imported), and restores the file. A mutant is killed when its tests fail (pytest exit 1) or cannot even be
collected (exit 2); it survives when they pass (exit 0). A mutant whose source text is gone or whose tests
select nothing is stale, and fails the check too, so a refactor cannot quietly retire a guard.
Exit code 0 when every mutant is killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import queue
import runpy
import shutil
import subprocess
import sys
import tempfile
import threading
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


def run_mutant(m: Mutant, tree: Path, timeout: float) -> Outcome:
    t0 = time.perf_counter()
    target = tree / m.path
    if not target.is_file():
        return Outcome(m, "STALE", 0.0, f"{m.path} does not exist")
    source = target.read_text()
    count = source.count(m.find)
    if count != 1:
        return Outcome(m, "STALE", 0.0, f"the source text occurs {count} times in {m.path} (needs exactly 1)")
    target.write_text(source.replace(m.find, m.replace))
    # The copy's packages win over the editable install; mutated native kernels build into the copy's cache.
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1",
           "REPARAM_APPS_CACHE": str(tree / ".native-cache")}
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *m.tests],
                              cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
        code, tail = proc.returncode, (proc.stdout + proc.stderr).strip().splitlines()[-1:]
    except subprocess.TimeoutExpired:
        code, tail = 1, [f"timed out after {timeout:.0f} s (counted as killed)"]
    finally:
        target.write_text(source)
    seconds = time.perf_counter() - t0
    detail = tail[0] if tail else ""
    if code in (1, 2):
        return Outcome(m, "killed", seconds, detail)
    if code == 0:
        return Outcome(m, "SURVIVED", seconds, detail)
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
    todo: queue.Queue[Mutant] = queue.Queue()
    for m in mutants:
        todo.put(m)
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def worker(tree: Path) -> None:
        while True:
            try:
                m = todo.get_nowait()
            except queue.Empty:
                return
            out = run_mutant(m, tree, args.timeout)
            with lock:
                outcomes.append(out)
                print(f"{out.status:9s} {m.name:45s} {out.seconds:6.1f}s  {out.detail}", flush=True)

    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        trees = []
        for i in range(min(args.workers, len(mutants))):
            tree = Path(tmp) / f"tree{i}"
            copy_tree(tree)
            trees.append(tree)
        threads = [threading.Thread(target=worker, args=(t,)) for t in trees]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    bad = [o for o in outcomes if o.status != "killed"]
    print(f"mutation check: {len(outcomes) - len(bad)} of {len(outcomes)} mutants killed "
          f"in {time.perf_counter() - t0:.0f} s")
    for o in bad:
        print(f"  {o.status}: {o.mutant.name} ({o.mutant.path}): {o.detail}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
