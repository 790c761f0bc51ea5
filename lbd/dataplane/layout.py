"""Constants and enums of xdp/lbd_shared.h, read from the header itself.

The header is the one definition shared by C and Python. Struct layouts come
from bcc's table types once the program is loaded; the #define constants and
enum values are parsed here so that code which never loads the program (unit
tests, `lbd check`, Maglev builds) uses the same numbers.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

XDP_DIR = Path(__file__).resolve().parents[2] / "xdp"
if not (XDP_DIR / "lbd_shared.h").exists():  # installed wheel: sources ship as lbd.xdp
    XDP_DIR = Path(__file__).resolve().parents[1] / "xdp"
SHARED_HEADER = XDP_DIR / "lbd_shared.h"

_DEFINE = re.compile(r"^#define\s+(LBD_[A-Z0-9_]+)\s+([\w\s*<()+]+?)\s*(?:/\*.*)?$", re.M)
_ENUM = re.compile(r"enum\s+(\w+)\s*\{(.*?)\};", re.S)
_ENUM_ITEM = re.compile(r"^\s*(LBD_\w+)\s*(?:=\s*([^,/]+))?,", re.M)


def _eval_int(expr: str, known: dict[str, int]) -> int:
    # Only integer literals, shifts, + and *, names defined earlier: nothing else
    # in the header, and nothing else accepted here.
    expr = re.sub(r"LBD_\w+", lambda m: str(known[m.group(0)]), expr)
    if not re.fullmatch(r"[0-9xXa-fA-F\s*<()+]+", expr):
        raise ValueError(f"{SHARED_HEADER}: cannot evaluate {expr!r}")
    return int(eval(expr, {"__builtins__": {}}))  # noqa: S307 (checked above)


@functools.cache
def constants() -> dict[str, int]:
    """Every LBD_* #define and enum member of the shared header, by name."""
    text = SHARED_HEADER.read_text()
    values: dict[str, int] = {}
    for name, expr in _DEFINE.findall(text):
        values[name] = _eval_int(expr, values)
    for _, body in _ENUM.findall(text):
        body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
        nxt = 0
        for name, expr in _ENUM_ITEM.findall(body + ","):
            value = _eval_int(expr, values) if expr else nxt
            values[name] = value
            nxt = value + 1
    return values


def constant(name: str) -> int:
    return constants()[name]


def enum_names(prefix: str) -> dict[int, str]:
    """Members of one enum by value, lower-cased without prefix and __MAX.

    enum_names("LBD_DROP_") -> {0: "malformed", 1: "fragment", ...}
    """
    return {
        value: name[len(prefix):].lower()
        for name, value in constants().items()
        if name.startswith(prefix) and not name.endswith("__MAX")
    }
