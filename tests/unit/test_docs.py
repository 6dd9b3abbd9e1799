"""The docs match the code: every relative link in README.md and docs/*.md resolves (file and anchor),
and docs/design.md names every module in pipeline/ (and no module that is gone)."""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path

import pytest
from support import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DESIGN = ROOT / "docs" / "design.md"

_FENCE = re.compile(r"^\s*(```|~~~)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target ends at whitespace (an optional "title" follows) or ')'
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s.*)?$")
_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.IGNORECASE)


def _prose(text: str) -> list[str]:
    """The lines of a Markdown file outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, Markdown marks and punctuation dropped, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"<[^>]+>", "", text).lower()
    kept = []
    for char in text:
        if char in " -_" or unicodedata.category(char)[0] in "LNM":
            kept.append(char)
    return "".join(kept).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a link into `path` may use: its headings' slugs (a repeated one gets -1, -2, ...)."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for line in _prose(path.read_text()):
        found.update(_HTML_ANCHOR.findall(line))
        match = _HEADING.match(line)
        if not match:
            continue
        base = slug(match.group(2))
        n = counts.get(base, 0)
        counts[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file (inline and reference-style), outside code."""
    targets = []
    for line in _prose(path.read_text()):
        line = _INLINE_CODE.sub("", line)
        targets.extend(_LINK.findall(line))
        match = _REFERENCE.match(line)
        if match:
            targets.append(match.group(1))
    return targets


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
            continue  # http(s)://, mailto: ...: not a file of this repository
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no such file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc: Path):
    assert broken_links(doc) == []


def test_the_link_checker_finds_what_breaks(tmp_path: Path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other\n\n## 1. The tutorial's protocol (`params.yaml`)\n")
    doc = tmp_path / "docs" / "page.md"
    doc.write_text(
        "# Page\n\n## Same heading\n\n## Same heading\n\n"
        "[ok](other.md) [ok](other.md#1-the-tutorials-protocol-paramsyaml) [ok](#same-heading-1)\n"
        "[bad file](docs/other.md) [bad anchor](other.md#gone) [bad here](#nowhere)\n"
        "`[in code](missing.md)` [web](https://example.com/x.md)\n"
        "```\n[fenced](missing.md)\n```\n"
    )
    problems = broken_links(doc)
    assert [p.split(":", 1)[0] for p in problems] == ["docs/other.md", "other.md#gone", "#nowhere"]


def modules() -> list[str]:
    """Every module of the package, read from the tree now: pipeline/**/*.py except __init__.py."""
    package = ROOT / "pipeline"
    return sorted(str(path.relative_to(ROOT)) for path in package.rglob("*.py") if path.name != "__init__.py")


def test_design_names_every_module():
    text = DESIGN.read_text()
    assert modules(), "no modules found under pipeline/"
    missing = [module for module in modules() if f"`{module}`" not in text]
    assert missing == [], f"docs/design.md does not name {missing}: add each to its table of modules"


def test_design_names_no_module_that_is_gone():
    named = set(re.findall(r"`(pipeline/[\w/]+\.py)`", DESIGN.read_text()))
    gone = sorted(name for name in named if not (ROOT / name).exists())
    assert gone == [], f"docs/design.md names modules that no longer exist: {gone}"


def test_the_readme_is_one_screenful_of_essentials():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150, f"README.md has {len(lines)} lines: move details to docs/ (at most 150)"
    for section in ("## Two commands", "## Results, in short", "## Changing a variant", "## When something goes wrong"):
        assert section in lines, section
