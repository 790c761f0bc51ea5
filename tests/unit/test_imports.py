"""How lbd's modules may depend on each other, checked on the source.

  * no import cycle, counting imports inside functions too (a cycle hidden
    in a function is still a cycle; only `if TYPE_CHECKING:` blocks, which
    never run, are left out);
  * the layers are the folders: lbd/dataplane/ (the program, its maps and
    what computes what goes into them) imports nothing outside itself, so it
    can be driven, tested and benchmarked without the control plane;
    lbd/backend/ (the lbd-backend agent) imports the data plane and itself,
    never the daemon's control plane; the control plane (lbd/ itself) never
    imports the backend agent;
  * the product never imports the test lab (lbd.testing), and the installed
    package leaves the lab out.
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "lbd"


def layer(module: str) -> str:
    """The folder a module lives in: dataplane, backend, testing, or control (lbd/ itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) >= 2 and parts[1] in {"dataplane", "backend", "testing"} else "control"


# which layers each layer may import (besides itself); the lab may use anything
MAY_IMPORT = {"dataplane": set(), "backend": {"dataplane"}, "control": {"dataplane"},
              "testing": {"dataplane", "backend", "control"}}


def modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(("lbd", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        found[name] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The lbd modules a module imports when it runs, anywhere in it."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if _type_checking_only(node):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(alias.name for alias in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)

    Visitor().visit(ast.parse(path.read_text(), str(path)))
    # a bare package import ("from lbd.dataplane import maps" also records "lbd.dataplane") is the
    # package's __init__, which counts like any module of its folder
    return {name for name in found if name in known and name != "lbd"}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, set(known)) for name, path in known.items()}


def test_no_import_cycle(graph):
    cycles, state = [], {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph[module]):
            if state.get(dep) == "open":
                cycles.append(trail[trail.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, trail + [dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_each_layer_imports_only_the_layers_below_it(graph):
    assert {layer(m) for m in graph} == set(MAY_IMPORT), "a layer folder was added or removed: update MAY_IMPORT"
    crossing = {m: sorted(d for d in deps if layer(d) != layer(m) and layer(d) not in MAY_IMPORT[layer(m)])
                for m, deps in graph.items()}
    assert not {m: d for m, d in crossing.items() if d}


def test_the_layer_check_sees_a_crossing():
    """A data-plane module importing the daemon is a crossing; the reverse is allowed."""
    assert layer("lbd.dataplane.maps") == "dataplane" and layer("lbd.daemon") == "control"
    assert "control" not in MAY_IMPORT["dataplane"] and "dataplane" in MAY_IMPORT["control"]
    assert layer("lbd.backend.cli") == "backend" and "control" not in MAY_IMPORT["backend"]


def test_the_product_never_imports_the_test_lab(graph):
    product = {m for m in graph if not m.startswith("lbd.testing")}
    leaks = {m: sorted(d for d in graph[m] if d.startswith("lbd.testing")) for m in product}
    assert not {m: d for m, d in leaks.items() if d}


def test_the_installed_package_leaves_the_lab_out():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = setuptools["packages"]
    assert "lbd" in packages and not any(p.startswith("lbd.testing") for p in packages)
    assert (PACKAGE / "testing" / "lab.py").exists(), "the lab lives in lbd/testing"


def test_the_check_finds_what_it_looks_for(tmp_path):
    """The import scan sees imports inside functions and skips TYPE_CHECKING
    blocks: a scan that missed them would pass a cycle."""
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from lbd import daemon\n"
                      "def f():\n    from lbd import config\n    import lbd.plan\n")
    assert imports_of(source, {"lbd.daemon", "lbd.config", "lbd.plan"}) == {"lbd.config", "lbd.plan"}
