"""bench.registry lists every benchmark once, and the report covers each of them.

`make bench` runs what the registry lists and bench/REPORT.md reports it: a
benchmark module left out of the registry would never run, and one without a
section would never be read.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from bench import report
from bench.registry import BENCHMARKS

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"


def measuring_modules() -> set[str]:
    """bench modules that parse a benchmark's options (bench.machine.arguments)."""
    found = set()
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "arguments":
                found.add(path.stem)
    return found


def test_every_benchmark_module_is_registered_once():
    names = [b.name for b in BENCHMARKS]
    assert len(names) == len(set(names))
    assert {b.module for b in BENCHMARKS} == measuring_modules()
    assert "flowcount" in names


def test_a_missing_result_is_reported_missing(tmp_path):
    text = report.render(tmp_path, tmp_path / "REPORT.md")
    for bench in BENCHMARKS:
        assert f"| {bench.name} | – | no results | – | missing |" in text
        assert f"`{bench.name}.json`" not in text   # no section without results


def test_the_committed_report_is_what_the_committed_results_render(tmp_path):
    pytest.importorskip("matplotlib")
    shutil.copytree(BENCH / "results", tmp_path / "results")
    text = report.render(tmp_path / "results", tmp_path / "REPORT.md")
    assert text == (BENCH / "REPORT.md").read_text(), \
        "bench/REPORT.md is stale: python -m bench.report"
    for bench in BENCHMARKS:   # every benchmark with results has its section
        if bench.results(BENCH / "results").exists():
            assert f"(`{bench.name}.json`)" in text
