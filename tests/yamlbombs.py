"""Config files that cost far more to load than their size, built from a
valid config: what `lbd check`, `lbctl check` and a daemon's reload must
refuse quickly, with the file, the line and (where there is one) the field.

Each shape is a Bomb: the text, the lines the error may name (where the
bound is crossed: any line of the bomb's own block), the start of the field
path it names, and a word the message must hold."""
from __future__ import annotations

from dataclasses import dataclass

from lbd.yamlbounds import MAX_BYTES


@dataclass(frozen=True)
class Bomb:
    text: str
    lines: range      # 1-based lines the error may name
    path: str         # what the message's field path starts with
    word: str         # a word of the message


def _append(valid: str, block: str, path: str, word: str) -> Bomb:
    """valid with block added at its end (a top-level key, or one more VIP
    when valid ends with its block-style vips list)."""
    valid = valid if valid.endswith("\n") else valid + "\n"
    first = valid.count("\n") + 1
    return Bomb(valid + block, range(first, first + block.count("\n") + 1), path, word)


def _laughs(anchor: str, indent: str, levels: int = 9, width: int = 9) -> str:
    """Nine levels of nine aliases: 9**9 values in 10 lines (billion laughs)."""
    lines = [f"{indent}- &{anchor}0 [{', '.join(['lol'] * width)}]"]
    lines += [f"{indent}- &{anchor}{i} [{', '.join([f'*{anchor}{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def shapes(valid: str) -> dict[str, Bomb]:
    """name -> Bomb. valid must end with its `vips:` list in block style
    (`  - ...` items), as the tests' configs do."""
    merge = ["x-merge:", "  - &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8, i: 9}"]
    merge += [f"  - &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}], z: {i}}}" for i in range(1, 9)]
    wide = ", ".join(["0"] * 10_000)
    padding = "# padding to make the file longer than lbd reads\n"
    huge = valid + padding * (MAX_BYTES // len(padding) + 2)
    huge_line = huge.encode().count(b"\n", 0, MAX_BYTES) + 1
    return {
        # the 12-line file of issue 19: anchors nested nine aliases deep, under an unknown key
        "laughs": _append(valid, "x-laughs:\n" + _laughs("l", "  "), "x-laughs[", "alias"),
        # one list of 10,000 values, named 10,000 times on one line
        "wide": _append(valid, f"x-wide:\n  - &w [{wide}]\n  - [{', '.join(['*w'] * 10_000)}]\n",
                        "x-wide[", "alias"),
        # merge keys (<<) that each merge the level below nine times
        "merge": _append(valid, "\n".join(merge) + "\n", "x-merge[", "alias"),
        # an alias inside the node it names: endless
        "recursive": _append(valid, "x-self: &s [1, *s]\n", "x-self[", "alias"),
        # 10,000 levels of lists, no alias at all
        "deep": _append(valid, "x-deep: " + "[" * 10_000 + "]" * 10_000 + "\n", "x-deep[0]", "nested"),
        # a bomb in a field of a VIP that looks valid otherwise
        "vip_field": _append(valid, "  - name:\n" + _laughs("n", "      ") +
                             "    address: 198.18.100.99\n    port: 8080\n    protocol: tcp\n"
                             "    mode: dsr\n    backends: []\n", "vips[", "alias"),
        # more text than a config needs (comments: valid YAML all the way)
        "huge": Bomb(huge, range(huge_line, huge_line + 1), "", "MiB"),
    }
