"""The user docs (README.md, docs/*.md) stay true: every ```python block runs as written, every relative
link and anchor resolves, and nothing machine-local or commit-dependent (paths, test counts) creeps in."""

from __future__ import annotations

import ast
import re
import unicodedata
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOC_PAGES = ("core", "sac", "bnn", "vae", "compare", "benchmarks", "design")
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# Absolute paths of one machine (a checkout, a scratch folder, a home directory), not URLs or ~/.cache.
LOCAL_PATH = re.compile(r"(?<![\w.~/-])/(?:tmp|work|root|home|Users|mnt|scratch)\b")
# Figures that change with every commit: "296 tests", "12 passed", "3 skipped" (not "100 test samples").
TEST_COUNT = re.compile(r"\b\d[\d,]*\s+(?:tests|passed|failed|skipped|errors|deselected|selected)\b", re.I)

# The two fresh-machine commands, byte for byte (.ci/run installs the same way).
FRESH_MACHINE = ('python3 -m venv .venv && . .venv/bin/activate && pip install torch==2.13.0 && '
                 'pip install -e ".[dev]" && python scripts/train_sac.py --env Pendulum-v1\npytest\n')


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def fences(path: Path) -> list[tuple[str, str, int]]:
    """(language, body, line number of the opening fence) of every fenced block in a markdown file."""
    text = path.read_text()
    return [(m.group(1).strip(), m.group(2), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def prose(path: Path) -> str:
    """The file without its fenced blocks (links inside code are not links)."""
    return FENCE.sub("", path.read_text())


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped (letters, digits, spaces, - and _ kept),
    spaces to hyphens. Markdown emphasis and code marks are punctuation, so they go too."""
    text = unicodedata.normalize("NFKC", heading.strip()).lower()
    kept = "".join(c for c in text if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose(path).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = github_slug(m.group(1))
            n = seen.get(slug, 0)
            seen[slug] = n + 1
            out.add(slug if n == 0 else f"{slug}-{n}")  # GitHub numbers repeated headings
    return out


PY_BLOCKS = [pytest.param(body, id=f"{_rel(p)}:{line}")
             for p in DOCS for lang, body, line in fences(p) if lang == "python"]


def test_docs_exist_and_every_domain_page_has_a_runnable_example():
    for name in DOC_PAGES:
        assert (ROOT / "docs" / f"{name}.md").is_file(), f"docs/{name}.md is missing"
    with_python = {_rel(p) for p in DOCS if any(lang == "python" for lang, _, _ in fences(p))}
    expected = {"README.md"} | {f"docs/{n}.md" for n in ("core", "sac", "bnn", "vae", "compare")}
    assert expected <= with_python, f"no ```python example in {sorted(expected - with_python)}"


def test_code_fences_use_known_languages():
    # A block tagged "py" or "python3" would silently escape the execution test below.
    for path in DOCS:
        for lang, _, line in fences(path):
            assert lang in {"python", "bash", "text"}, f"{_rel(path)}:{line}: fence language {lang!r}"


@pytest.mark.parametrize("code", PY_BLOCKS)
def test_python_example_runs_as_written(code, tmp_path, monkeypatch):
    """Each block in a fresh namespace, from an empty folder (whatever it saves lands there, not in the repo)."""
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny networks: a second OpenMP thread only adds spin-waits on a shared 2-core box
    torch.manual_seed(0)
    try:
        exec(compile(code, "<doc example>", "exec"), {"__name__": "__doc_example__"})
    finally:
        torch.set_num_threads(threads)  # an example may pass threads=...; leave the rest of the suite as it was


def test_readme_starts_with_the_fresh_machine_commands():
    lang, body, _ = fences(README)[0]
    assert (lang, body) == ("bash", FRESH_MACHINE)
    assert len(README.read_text().splitlines()) <= 220, "README.md should stay a short entry page (~200 lines)"


def test_readme_links_every_docs_page():
    targets = {m.group(1).split("#")[0] for m in LINK.finditer(prose(README))}
    missing = {f"docs/{n}.md" for n in DOC_PAGES} - targets
    assert not missing, f"README.md does not link {sorted(missing)}"


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_relative_links_and_anchors_resolve(path):
    for m in LINK.finditer(prose(path)):
        target = m.group(1)
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        assert dest.exists(), f"{_rel(path)}: broken link {target}"
        if anchor and dest.suffix == ".md":
            assert anchor in anchors(dest), f"{_rel(path)}: no heading for #{anchor} in {_rel(dest)}"


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_named_source_paths_exist(path):
    # "Where each equation lives" and the like must not point at files that were moved or split.
    for m in re.finditer(r"`((?:reparam_apps|agents|bnn|vae|scripts|tests)/[\w./-]*)`", path.read_text()):
        assert (ROOT / m.group(1)).exists(), f"{_rel(path)}: `{m.group(1)}` does not exist"


@pytest.mark.parametrize("path", DOCS, ids=_rel)
def test_no_machine_local_paths_or_test_counts(path):
    for i, line in enumerate(path.read_text().splitlines(), 1):
        assert not LOCAL_PATH.search(line), f"{_rel(path)}:{i}: machine-local path: {line.strip()}"
        assert not TEST_COUNT.search(line), f"{_rel(path)}:{i}: test count (changes with every commit): {line.strip()}"


def test_the_checks_themselves_catch_what_they_claim():
    # The patterns must fire on the kind of text they exist to keep out, and not on ordinary doc text.
    assert LOCAL_PATH.search("flock /tmp/reparam_bench.lock") and LOCAL_PATH.search("see /work/main/runs")
    assert not LOCAL_PATH.search("../shared/data or ~/.cache/reparam_apps or https://x.org/home")
    assert TEST_COUNT.search("296 tests in about 2.5 minutes") and TEST_COUNT.search("= 12 passed in 3s")
    assert not TEST_COUNT.search("20 splits x 400 epochs, 5 seeds")
    assert github_slug("Core: sample + log-prob + backward against torch.distributions") == \
        "core-sample--log-prob--backward-against-torchdistributions"
    assert github_slug("The core (`reparam_apps`)") == "the-core-reparam_apps"


def test_layers_as_design_md_states_them():
    """docs/design.md: reparam_apps imports no domain, and no domain imports another (imports read, not run)."""
    packages = {"reparam_apps", "agents", "bnn", "vae"}
    for pkg in packages:
        allowed = {pkg} if pkg == "reparam_apps" else {pkg, "reparam_apps"}
        for file in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(file.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    assert top not in packages - allowed, f"{_rel(file)} imports {name}, against design.md's layers"
