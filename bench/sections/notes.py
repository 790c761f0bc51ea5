"""The benchmarks' prose: bench/notes/<module>.md, one `## title` section per thing said.

`{{a.b.c}}` in a note is the figure at that path of the figures given (a benchmark's
results, and what its section module works out from them); `{{a.b|2}}` with two decimals.
A paragraph naming a figure the results lack (a diagnostic that was not run) is left out.
What stands before the first `##` is for the reader of the file, not the report.
"""
from __future__ import annotations

import re
from pathlib import Path

from bench.sections.text import fmt

NOTES = Path(__file__).resolve().parent.parent / "notes"


def read(name: str) -> dict[str, str]:
    """The sections of bench/notes/<name>.md by title, paragraphs unwrapped to one line
    each (a table row or a list item stays a line of its own), blank lines between them."""
    path = NOTES / f"{name}.md"
    if not path.exists():
        return {}
    sections, title = {}, None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            sections[title] = []
        elif title is not None:
            sections[title].append(line)
    return {t: "\n\n".join(_unwrap(p) for p in "\n".join(lines).strip().split("\n\n"))
            for t, lines in sections.items()}


def _unwrap(paragraph: str) -> str:
    out: list[str] = []
    for line in paragraph.splitlines():
        line = " ".join(line.split())
        if not line:
            continue
        if out and not line.startswith(("|", "- ")) and not out[-1].startswith("|"):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


class _Missing(Exception):
    pass


def fill(text: str, figures: dict) -> str:
    """Put the figures in; leave out a paragraph naming one that `figures` lacks."""
    def value(match):
        path, _, digits = match.group(1).partition("|")
        v = figures
        for part in path.split("."):
            if not isinstance(v, dict) or part not in v:
                raise _Missing(path)
            v = v[part]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            d = int(digits) if digits else (0 if abs(v) >= 10 else 2)
            return fmt(float(v), d)
        return str(v)

    kept = []
    for paragraph in text.split("\n\n"):
        try:
            kept.append(re.sub(r"\{\{([^}]+)\}\}", value, paragraph))
        except _Missing:
            continue
    return "\n\n".join(kept)


def say(name: str, title: str, figures: dict) -> str:
    """Section `title` of bench/notes/<name>.md with the figures in ("" if it has none)."""
    return fill(read(name).get(title, ""), figures)


def subsections(name: str, figures: dict) -> list[str]:
    """Every section of bench/notes/<name>.md but `method` and the `why <case>` ones (which
    the section module places itself), as `### Title` sub-sections of the report's section."""
    lines = []
    for title, text in read(name).items():
        if title.startswith("why ") or title == "method":
            continue
        lines += [f"### {title[0].upper()}{title[1:]}", "", fill(text, figures), ""]
    return lines
