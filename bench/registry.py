"""Every benchmark, once: what `bench.run` runs and `bench.report` reports, in this order.

A benchmark is a module that measures (`python -m bench.<module> [--quick] [--out FILE]`,
see bench.machine.arguments) and a module of bench.sections of the same name that turns
its results into the report's rows, plots and section. Add a benchmark here and it is
run by `make bench`, given a row (or "missing") in the report's summary, and its section.
"""
from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from bench.machine import RESULTS

REPO = RESULTS.parent.parent


@dataclass(frozen=True)
class Benchmark:
    name: str                    # its results: <results>/<name>.json, its plot <name>.png
    module: str                  # measures: bench.<module>; renders: bench.sections.<module>
    args: tuple[str, ...] = ()   # beside --quick and --out, in quick and full runs alike

    def results(self, directory: Path) -> Path:
        return directory / f"{self.name}.json"

    def command(self, out: Path, quick: bool) -> list[str]:
        """The command line of a full run, or with `quick` one that only checks it works."""
        return [sys.executable, "-m", f"bench.{self.module}", *self.args, "--out", str(out),
                *(["--quick"] if quick else [])]

    def section(self) -> ModuleType:
        return importlib.import_module(f"bench.sections.{self.module}")


BENCHMARKS = (
    Benchmark("datapath", "datapath"),
    # the same benchmark with TCP segments of established flows
    Benchmark("datapath_tcp", "datapath", ("--tcp",)),
    Benchmark("sharedmem", "sharedmem"),
    # beside today's daemon, main before issue #23's control-plane work (6fecec1);
    # the comparison is skipped when that revision no longer loads
    Benchmark("control", "control", ("--before", "6fecec1")),
    # beside today's program, the one before issue #23 (6fecec1: before settled slots and
    # the leaner encapsulation), and today's with encapsulation cut to its helper call
    # alone (what an ipip packet cannot do without); each skipped once it no longer loads
    # or applies
    Benchmark("xdp_cost", "xdp_cost", ("--before", "6fecec1",
                                       "--patch", "bench/notes/ipip_adjust_head_only.patch")),
    Benchmark("decap_cost", "decap_cost"),
    Benchmark("flowcount", "flowcount"),
    Benchmark("quic_cost", "quic_cost"),
    # `lbctl capture`: off beside the program before it (main), on per packet kept
    Benchmark("capture_cost", "capture_cost"),
    # health checks through the data path (issue 21): the daemon's CPU per 1,000 checks a second
    Benchmark("health_cost", "health_cost"),
)
BY_NAME = {b.name: b for b in BENCHMARKS}
