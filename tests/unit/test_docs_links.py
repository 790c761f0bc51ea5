"""Every relative link in README.md and docs/*.md leads somewhere.

The README is short and points into docs/; a renamed heading or a moved file
would leave an operator at a dead link. Each relative link must name a file or
folder of the repository, and a `#anchor` must name a heading of its target as
GitHub renders it (lowercase; punctuation but '-' and '_' removed; spaces to
'-'; a repeated heading gets -1, -2, ...). Links are read with markdown-it (a
CommonMark parser), so text in code spans and code blocks is not mistaken for
a link. Every file in docs/ is reachable from the README's documentation list,
and the README's minimal config is one lbd accepts.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt

from tests.unit.test_packaging import ROOT

pytestmark = pytest.mark.unit

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PARSER = MarkdownIt("commonmark").enable("table")


def _inline_text(token) -> str:
    return "".join(child.content for child in token.children or () if child.type in ("text", "code_inline"))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    tokens = PARSER.parse(path.read_text())
    seen: dict[str, int] = {}
    result = set()
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type != "heading_open":
            continue
        base = slug(_inline_text(inline))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def links(path: Path) -> list[str]:
    return [child.attrs["href"] for token in PARSER.parse(path.read_text()) if token.type == "inline"
            for child in token.children or () if child.type == "link_open"]


def broken_links(path: Path) -> list[str]:
    """The relative links of one Markdown file that lead nowhere, each with why."""
    broken = []
    for href in links(path):
        parts = urlsplit(href)
        if parts.scheme or parts.netloc:
            continue   # http(s), mailto: not this test's to fetch
        target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
        if not target.exists():
            broken.append(f"{href}: no file {target}")
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in anchors(target):
            broken.append(f"{href}: no heading #{parts.fragment} in {target}")
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(doc):
    assert broken_links(doc) == []


def test_every_doc_is_listed_in_the_readme():
    listed = {(ROOT / urlsplit(href).path).resolve() for href in links(ROOT / "README.md")}
    assert [doc.name for doc in DOCS[1:] if doc.resolve() not in listed] == []


def test_the_checker_finds_broken_links(tmp_path):
    """Not vacuous: a missing file, a missing heading and a link to a heading
    that exists only inside a code block are each reported; code text is no link."""
    (tmp_path / "other.md").write_text("# Other page\n\n## `lbctl` and friends: ok?\n\n"
                                       "```\n# not a heading\n```\n")
    page = tmp_path / "page.md"
    page.write_text("# Page\n\n## Twice\n\n## Twice\n\n"
                    "[a](other.md#lbctl-and-friends-ok) [b](#twice-1) [c](other.md) [d](https://x.invalid/)\n"
                    "[e](missing.md) [f](other.md#nothing) [g](#not-a-heading) [h](other.md#not-a-heading)\n"
                    "`[i](missing-in-code.md)`\n")
    assert [entry.split(":")[0] for entry in broken_links(page)] == [
        "missing.md", "other.md#nothing", "#not-a-heading", "other.md#not-a-heading"]


def test_the_readme_minimal_config_is_valid():
    """The README's minimal config is one an operator may copy: lbd accepts it."""
    from lbd.config import parse_config
    blocks = [token.content for token in PARSER.parse((ROOT / "README.md").read_text())
              if token.type == "fence" and token.info.strip() == "yaml"]
    assert len(blocks) == 1
    config = parse_config(blocks[0], "README.md")
    assert [vip.name for vip in config.vips] == ["web"]
