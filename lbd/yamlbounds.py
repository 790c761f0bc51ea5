"""YAML that cannot cost more than its size: PyYAML's SafeLoader with bounds.

An alias (`*name`) names a node written once; everything that walks the
loaded data (pydantic, error messages, json) walks it once per alias. Nine
levels of nine aliases ("billion laughs") are 12 lines that expand to 9**9
values, and a file nested thousands of levels deep exhausts Python's stack.
This loader counts while it composes, before anything is built or walked:

- the text: at most MAX_BYTES (a config of 1,000 VIPs x 100 backends is
  about 5 MiB, flow or block style);
- nesting: at most MAX_DEPTH levels (a config uses 6: the file's mapping,
  vips, a VIP, its backends, a backend, a value);
- aliases: everything the aliases in a file stand for, counted node by node
  as if written out, may add at most ALIAS_FACTOR times the nodes the file
  writes itself, plus ALIAS_ALLOWANCE: a health check or `<<: *defaults`
  shared by every VIP or backend stays far below, a bomb stops at once;
- an alias inside the node it names (`&a [*a]`) would be endless: refused.

Each refusal is a yaml.MarkedYAMLError at the line where the bound was
crossed, so the config loader reports it like any other YAML mistake.
"""
from __future__ import annotations

from typing import Any

import yaml
from yaml.events import AliasEvent

MAX_BYTES = 32 << 20
MAX_DEPTH = 64
ALIAS_FACTOR = 10
ALIAS_ALLOWANCE = 10_000


class YamlTooBig(yaml.MarkedYAMLError):
    """A bound above was crossed: problem_mark says where, loc the keys and
    indexes down to there (("vips", 0, "name"); () outside any)."""

    def __init__(self, problem: str, problem_mark: yaml.Mark, loc: tuple = ()):
        super().__init__(problem=problem, problem_mark=problem_mark)
        self.loc = loc


class BoundedLoader(yaml.SafeLoader):
    def __init__(self, stream: str):
        if len(stream) > MAX_BYTES:  # characters; its UTF-8 bytes are at least as many
            raise _too_long(stream)
        super().__init__(stream)
        self._written = 0   # nodes composed from the text
        self._aliased = 0   # nodes the aliases stand for, as if written out
        self._sizes: dict[int, int] = {}  # id(node) -> its size written out, once complete
        self._loc: list[str | int] = []   # keys and indexes down to the node being composed: its depth

    def compose_node(self, parent: Any, index: Any) -> yaml.Node:
        # index: a sequence item's position, a mapping value's key node, None for a key
        part = index.value if isinstance(index, yaml.ScalarNode) else index
        self._loc.append(part if isinstance(part, (int, str)) else "?")
        if self.check_event(AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)  # the named node, or ComposerError if undefined
            size = self._sizes.get(id(node))
            if size is None:  # named, not complete: the alias is inside it
                raise YamlTooBig(f"the alias *{event.anchor} is inside the node it names "
                                 "(it would repeat without end)", event.start_mark, self._where())
            self._aliased += size
            allowed = ALIAS_FACTOR * self._written + ALIAS_ALLOWANCE
            if self._aliased > allowed:
                raise YamlTooBig(
                    f"aliases up to here stand for {self._aliased} values, more than the {allowed} "
                    f"allowed ({ALIAS_FACTOR} times the {self._written} the file writes itself, plus "
                    f"{ALIAS_ALLOWANCE}); *{event.anchor} alone for {size}",
                    event.start_mark, self._where())
        else:
            if len(self._loc) > MAX_DEPTH:
                raise YamlTooBig(f"nested more than {MAX_DEPTH} levels deep (a config needs 6)",
                                 self.peek_event().start_mark, self._where()[:6])
            node = super().compose_node(parent, index)
            self._written += 1
            size = 1
            if isinstance(node, yaml.SequenceNode):
                size += sum(self._sizes[id(child)] for child in node.value)
            elif isinstance(node, yaml.MappingNode):
                size += sum(self._sizes[id(key)] + self._sizes[id(value)] for key, value in node.value)
            self._sizes[id(node)] = size
        self._loc.pop()  # not on an error: YamlTooBig has taken its copy, and loading stops
        return node

    def _where(self) -> tuple:
        return tuple(self._loc[1:])  # the document's root has no name


def _too_long(text: str | bytes) -> YamlTooBig:
    newline = "\n" if isinstance(text, str) else b"\n"
    line = text.count(newline, 0, MAX_BYTES)
    column = MAX_BYTES - (text.rfind(newline, 0, MAX_BYTES) + 1)
    return YamlTooBig(f"the file goes on past {MAX_BYTES >> 20} MiB, more than a config needs "
                      "(1,000 VIPs x 100 backends take about 5 MiB)",
                      yaml.Mark("<text>", MAX_BYTES, line, column, None, None))


def read_bounded(path: Any) -> str:
    """The text of the file at path (UTF-8), or YamlTooBig if it is longer
    than MAX_BYTES: read only that far, not gigabytes first."""
    with open(path, "rb") as file:
        data = file.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise _too_long(data)
    return data.decode("utf-8")


def safe_load(text: str) -> Any:
    """yaml.safe_load within the bounds above."""
    loader = BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
