"""The README and docs/ as a reader meets them: the command reference matches the CLI, every page is
reachable from the README, every relative link and anchor resolves, and every fenced block is
either run by tests/test_cli.py (```bash) or says why it is not."""

from __future__ import annotations

import re
import shlex
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.test_cli import DOC_PAGES, _readme_commands

# ```bash is run by tests/test_cli.py; ```sh is for another machine or too slow, and says so beside
# it; the others are data or output. Any other info string (a typo such as ```bsh) would be skipped
# in silence, so it is refused.
ALLOWED_INFO = {"bash", "sh", "yaml", "ini", "text", "json", ""}
_FENCE = re.compile(r"^ {0,3}(```+)(.*)$")


def _page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def _blocks(page: Path) -> list[tuple[str, int, int]]:
    """(info string, first line, closing line) of each fenced block, line numbers from 0."""
    lines = page.read_text().splitlines()
    blocks, opening = [], None
    for i, line in enumerate(lines):
        fence = _FENCE.match(line)
        if not fence:
            continue
        if opening is None:
            opening = (fence.group(2).strip(), i, len(fence.group(1)))
        elif len(fence.group(1)) >= opening[2] and not fence.group(2).strip():
            blocks.append((opening[0], opening[1], i))
            opening = None
    assert opening is None, f"{_page_id(page)}:{opening[1] + 1}: a fenced block is never closed"
    return blocks


def _prose(page: Path) -> list[str]:
    """The page's lines outside fenced blocks ('' in their place, so line numbers still hold)."""
    lines = page.read_text().splitlines()
    for _, start, end in _blocks(page):
        lines[start : end + 1] = [""] * (end + 1 - start)
    return lines


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: a link's text, lower case, punctuation dropped, spaces as -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    seen: Counter[str] = Counter()
    anchors = set()
    for line in _prose(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            slug = _slug(heading.group(1))
            anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")  # GitHub numbers repeats
            seen[slug] += 1
    return anchors


def _links(page: Path) -> list[tuple[int, str]]:
    """(line number, target) of each Markdown link and image outside code."""
    found = []
    for i, line in enumerate(_prose(page)):
        line = re.sub(r"(`+)(.+?)\1", "", line)  # inline code spans are not links
        found += [(i, m.group(1)) for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line)]
    return found


def test_reference_is_generated_from_the_cli():
    from tuner.cli.reference import REFERENCE, render

    assert REFERENCE == REPO / "docs" / "reference.md"
    assert REFERENCE.is_file() and REFERENCE.read_text() == render(), (
        "docs/reference.md differs from the CLI: run `python -m tuner.cli.reference --write`"
    )


def test_reference_lists_every_command_with_its_options():
    from tuner.cli.reference import render

    page = render()
    for heading in ("## tuner study run", "## tuner space create", "## tuner launch k8s", "## tuner worker"):
        assert f"\n{heading}\n" in page
    run = page.split("\n## tuner study run\n", 1)[1].split("\n## ", 1)[0]
    assert "Usage: tuner study run [OPTIONS] [NAME]" in run
    assert re.search(r"^\| `--trials` \| `N` \| +\| Finished trials .*\[default: 30.*At least 1\. \|$", run, flags=re.M)
    assert "| `--quiet`, `-q` | flag |" in run and "\x1b" not in page and "\\[" not in page


def test_every_docs_page_is_linked_from_the_readme():
    readme = REPO / "README.md"
    linked = {(readme.parent / target.split("#", 1)[0]).resolve() for _, target in _links(readme)}
    pages = sorted((REPO / "docs").glob("*.md"))
    assert pages, "no pages in docs/"
    assert [p for p in pages if p.resolve() not in linked] == []


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_relative_links_point_to_files_and_headings_that_exist(page):
    anchors = {page: _anchors(page)}
    broken = []
    for i, target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{_page_id(page)}:{i + 1}: {target} (no such file)")
        elif anchor:
            if linked.suffix != ".md":
                broken.append(f"{_page_id(page)}:{i + 1}: {target} (an anchor into a file that is not Markdown)")
                continue
            if linked not in anchors:
                anchors[linked] = _anchors(linked)
            if anchor not in anchors[linked]:
                broken.append(f"{_page_id(page)}:{i + 1}: {target} (no heading #{anchor} there)")
    assert broken == []


@pytest.mark.parametrize("page", DOC_PAGES, ids=_page_id)
def test_every_fenced_block_is_run_or_says_why_not(page):
    lines = page.read_text().splitlines()
    assert not [i for i, line in enumerate(lines) if line.lstrip().startswith("~~~")], "fence with ``` only"
    prose = _prose(page)
    for info, start, end in _blocks(page):
        assert info in ALLOWED_INFO, f"{_page_id(page)}:{start + 1}: ```{info} is neither run nor allowed ({sorted(ALLOWED_INFO)})"
        if info == "sh":  # not run here: the lines just before or after the block say why
            near = [line for line in prose[max(0, start - 4) : start] + prose[end + 1 : end + 5] if line]
            assert "not run" in " ".join(near).lower(), f"{_page_id(page)}:{start + 1}: say beside this ```sh block why it is not run"


def test_the_commands_test_cli_runs_are_every_bash_line_of_every_page():
    """tests/test_cli.py reads the ```bash blocks its own way: it must find each one found here."""
    total = 0
    for page in DOC_PAGES:
        lines = page.read_text().splitlines()
        ours = [shlex.split(line) for info, start, end in _blocks(page) if info == "bash" for line in lines[start + 1 : end] if line.strip()]
        assert _readme_commands(page) == ours, _page_id(page)
        total += len(ours)
    assert total >= 30 and _readme_commands(REPO / "README.md")
