"""Write bench/REPORT.md and its PNG plots from bench/results/*.json.

`python -m bench.report [--results DIR] [--out REPORT.md]`. The report opens
with one table of every arm and goal and whether it was met, then the plots,
then the details of each benchmark, then how to reproduce. The benchmarks and
their order are bench.registry's; each one's rows, plot and section come from
its module in bench.sections, and what its figures mean from bench/notes/. A
benchmark whose JSON is missing is reported as missing, not skipped silently.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench.registry import BENCHMARKS, RESULTS, Benchmark
from bench.sections import notes
from bench.sections.text import table

REPORT = RESULTS.parent / "REPORT.md"


def load(results: Path, bench: Benchmark) -> dict | None:
    path = bench.results(results)
    return json.loads(path.read_text()) if path.exists() else None


def plots(results: Path, runs: list[tuple[Benchmark, dict]]) -> list[tuple[str, str]]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    made = []
    for bench, result in runs:
        section = bench.section()
        if hasattr(section, "plot"):
            made.append(section.plot(result, bench, results, plt))
    return [m for m in made if m]


def header(data: dict[str, dict | None]) -> list[str]:
    """The machine, its load during each benchmark, and whether any ran in quick mode."""
    ran = {n: d for n, d in data.items() if d}
    machine = next((d["machine"] for d in ran.values() if "machine" in d), {})
    lines = ["# lbd benchmark report", "",
             f"Machine: {machine.get('cores')} cores ({machine.get('cpu')}), kernel "
             f"{machine.get('kernel')}, Python {machine.get('python')}. XDP mode per benchmark: "
             + ", ".join(f"{n} {d['machine']['xdp_mode']}" for n, d in ran.items() if "machine" in d)
             + "."]
    loads = [f"{n} {d['machine']['loadavg_start'][0]} → {d['machine']['loadavg_end'][0]}"
             for n, d in ran.items()
             if d.get("machine", {}).get("loadavg_start") and d["machine"].get("loadavg_end")]
    lines.append("\n" + notes.say("report", "shared machine",
                                   {"loads": ", ".join(loads) if loads else "not recorded"}))
    quick = [n for n, d in ran.items() if d.get("quick")]
    if quick:
        lines.append(f"\n**Quick-mode results** (not for decisions): {', '.join(quick)}.")
    return lines + ["", notes.say("report", "figures", {})]


def reproduce() -> list[str]:
    return ["## How to reproduce", "", notes.say("report", "how to reproduce", {}), "", "```",
            ".venv/bin/python -m bench.run            # everything, then this report",
            ".venv/bin/python -m bench.run --quick    # quick modes (what the tests run)",
            *(f".venv/bin/python -m bench.run --only {b.name:<13} # "
              f"{' '.join(['bench.' + b.module, *b.args])} into {b.name}.json" for b in BENCHMARKS),
            ".venv/bin/python -m bench.report",
            "```", "", notes.say("report", "after reproducing", {}), ""]


def render(results: Path, out: Path) -> str:
    data = {b.name: load(results, b) for b in BENCHMARKS}
    runs = [(b, data[b.name]) for b in BENCHMARKS if data[b.name]]
    rel = os.path.relpath(results, out.parent)
    rows, miss, said = [], [], set()
    for bench in BENCHMARKS:
        result, section = data[bench.name], bench.section()
        if not result:
            rows.append([bench.name, "–", "no results", "–", "missing"])
            continue
        if hasattr(section, "summary_rows"):
            rows += section.summary_rows(result, bench)
        if hasattr(section, "misses"):
            miss += section.misses(result, bench, said)
    lines = header(data) + ["", "## Summary: every arm and goal", "",
                            table(["benchmark", "arm / goal", "value", "goal", "result"], rows), ""]
    if miss:
        lines += ["### Where goals are missed, by how much, and why", "", *miss, ""]
    lines += ["## Plots", ""]
    for title, name in plots(results, runs):
        lines += [f"### {title}", "", f"![{title}]({rel}/{name})", ""]
    for bench, result in runs:
        lines += bench.section().section(result, bench, rel)
    text = "\n".join(lines + reproduce())
    out.write_text(text)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(RESULTS))
    parser.add_argument("--out", default=str(REPORT))
    args = parser.parse_args(argv)
    render(Path(args.results), Path(args.out))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
