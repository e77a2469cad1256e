"""The docs (README.md and docs/*.md) stay true: their Python runs, and what they point at exists.

Every ```python block runs on its own, in a fresh namespace, with the 8 simulated CPU devices of
``conftest.py``; a traceback names the page and its line. Every project path they name
(``distmap/...``, ``launch/...``, ``docs/...``, ...) exists, every ``distmap.name`` resolves, and
every link between pages reaches its page and heading.
"""

from __future__ import annotations

import importlib
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
LANGUAGES = {"python", "bash", "text"}

_FENCE = re.compile(r"^```(\S*)[ \t]*$")
# A project path: one of the project's top-level folders and what follows it, not part of a longer
# path or a URL (``haliax/tests/...`` is not ours).
_PATH = re.compile(r"(?<![\w./-])((?:distmap|launch|configs|benchmarks|examples|tests|docs)/[\w./-]*|\.ci/[\w.-]+)")
_DOTTED = re.compile(r"(?<![\w./-])distmap(?:\.[A-Za-z_]\w*)+")
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _rel(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def fenced_blocks(text: str) -> list[tuple[str, int, str]]:
    """``(language, line of the first code line, code)`` of every fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start = i + 1
        end = start
        while end < len(lines) and lines[end] != "```":
            end += 1
        assert end < len(lines), f"a fenced block opened at line {i + 1} is never closed"
        blocks.append((m.group(1), start + 1, "\n".join(lines[start:end]) + "\n"))
        i = end + 1
    return blocks


def prose(text: str) -> str:
    """The page without its fenced blocks (their lines kept blank, so line numbers hold)."""
    out, inside = [], False
    for line in text.splitlines():
        fence = line == "```" if inside else _FENCE.match(line) is not None
        out.append("" if inside or fence else line)
        inside ^= fence
    return "\n".join(out)


def slugs(page: pathlib.Path) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    seen: dict[str, int] = {}
    anchors = set()
    for line in prose(page.read_text()).splitlines():
        m = re.match(r"#{1,6} (.*)", line)
        if m is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        anchors.add(f"{slug}-{n}" if n else slug)
        seen[slug] = n + 1
    return anchors


def resolve(dotted: str) -> object:
    """Import the longest module prefix of ``dotted``, then getattr the rest."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return obj
    raise ImportError(dotted)


@pytest.fixture(params=PAGES, ids=_rel)
def page(request) -> pathlib.Path:
    return request.param


def test_the_docs_exist():
    assert len(PAGES) >= 9, [_rel(p) for p in PAGES]


def test_every_block_names_its_language(page):
    text = page.read_text()
    bad = [(line, lang or "(none)") for lang, line, _ in fenced_blocks(text) if lang not in LANGUAGES]
    assert not bad, f"{_rel(page)}: fenced blocks at lines {bad} need one of {sorted(LANGUAGES)}"


def test_python_blocks_run(page):
    for lang, line, code in fenced_blocks(page.read_text()):
        if lang != "python":
            continue
        # Padded so that a traceback's line number is the page's.
        exec(compile("\n" * (line - 1) + code, _rel(page), "exec"), {"__name__": f"docs:{_rel(page)}:{line}"})


def test_project_paths_exist(page):
    stale = []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        for path in _PATH.findall(line):
            path = path.rstrip(".,")
            if not (ROOT / path).exists():
                stale.append(f"line {n}: {path}")
    assert not stale, f"{_rel(page)} names project files that do not exist: {stale}"


def test_dotted_names_resolve(page):
    stale = []
    for n, line in enumerate(page.read_text().splitlines(), 1):
        for dotted in _DOTTED.findall(line):
            try:
                resolve(dotted)
            except (ImportError, AttributeError) as e:
                stale.append(f"line {n}: {dotted} ({type(e).__name__}: {e})")
    assert not stale, f"{_rel(page)} names what distmap does not have: {stale}"


def test_links_between_pages_resolve(page):
    stale = []
    for n, line in enumerate(prose(page.read_text()).splitlines(), 1):
        for target in _LINK.findall(line):
            if re.match(r"[a-z]+:", target):
                continue  # a URL
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                stale.append(f"line {n}: {target} (no {path})")
            elif anchor and dest.suffix == ".md" and anchor not in slugs(dest):
                stale.append(f"line {n}: {target} (no heading #{anchor} in {_rel(dest)})")
    assert not stale, f"{_rel(page)} has broken links: {stale}"


def test_every_page_is_listed_in_the_index_and_the_readme():
    index, readme = (DOCS / "index.md").read_text(), (ROOT / "README.md").read_text()
    for doc in DOCS.glob("*.md"):
        if doc.name != "index.md":
            assert f"]({doc.name})" in index, f"docs/index.md does not link {doc.name}"
            assert f"](docs/{doc.name})" in readme, f"README.md does not link docs/{doc.name}"


def test_the_architecture_page_names_every_module():
    text = (DOCS / "architecture.md").read_text()
    modules = sorted(_rel(p) for folder in ("distmap", "launch") for p in (ROOT / folder).rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in text]
    assert not missing, f"docs/architecture.md does not describe {missing}"


def test_performance_figures_are_printouts_under_their_command():
    """Every figure on the performance page is a benchmark's printout, pasted under the command that printed it."""
    page = DOCS / "performance.md"
    text = page.read_text()
    assert not [line for line in prose(text).splitlines() if line.startswith("|")], (
        "docs/performance.md has a hand-made table: paste what the benchmark prints, in a ```text block")
    lines = text.splitlines()
    blocks = [(lang, line) for lang, line, _ in fenced_blocks(text)]
    assert blocks and all(lang == "text" for lang, _ in blocks), blocks
    for _, line in blocks:
        before = lines[max(0, line - 5):line - 2]  # the paragraph above the opening fence
        assert any(re.search(r"`python benchmarks/bench_\w+\.py[^`]*`", b) for b in before), (
            f"docs/performance.md:{line - 1}: say above the printout which command printed it")
