"""How lbd's modules may depend on each other, checked on the source.

  * no import cycle, counting imports inside functions too (a cycle hidden
    in a function is still a cycle; only `if TYPE_CHECKING:` blocks, which
    never run, are left out);
  * the data-plane layer (the program, its maps and what computes what goes
    into them) imports nothing of the control plane (config, health, BGP,
    the daemon and its endpoints), so it can be driven, tested and
    benchmarked without them;
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
DATA_PLANE = {"lbd.layout", "lbd.bpfsys", "lbd.xdplink", "lbd.mounts", "lbd.datapath", "lbd.flowhash",
              "lbd.maglev", "lbd.secondchoice", "lbd.programmer", "lbd.flowtable"}


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


def test_the_data_plane_layer_imports_no_control_plane(graph):
    assert DATA_PLANE <= set(graph), "a data-plane module was renamed: update DATA_PLANE"
    crossing = {m: sorted(graph[m] - DATA_PLANE) for m in DATA_PLANE if graph[m] - DATA_PLANE}
    assert not crossing, crossing


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
