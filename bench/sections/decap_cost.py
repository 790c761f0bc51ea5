"""The report's backend-program section (bench.decap_cost: decap_cost.json), with the prose
of bench/notes/decap_cost.md: `## method` under the section's first paragraph, the others
as sub-sections."""
from __future__ import annotations

from bench.sections import notes
from bench.sections.text import fmt, spread, table


def summary_rows(dc: dict, bench) -> list[list[str]]:
    """The backend program's cases, each against the floor and plain ipip of its run."""
    return [[bench.name, case, f"{fmt(v['ratio_to_floor'], 2)}x floor, {fmt(v['ratio_to_ipip'], 2)}x "
             f"plain ipip's work ({fmt(v['ns'], 0)} ns, floor {fmt(dc['floor_ns'], 0)} ns)",
             "–", "measured"] for case, v in dc["cases"].items()]


def section(dc: dict, bench, rel: str) -> list[str]:
    return [f"## Backend program cost (`{bench.name}.json`)", "",
            notes.say("decap_cost", "method", dc) + f" Floor (`XDP_PASS`) in this run: "
            f"{fmt(dc['floor_ns'], 0)} ns.", "",
            table(["case", "x floor", "ns", "runs (min–max)", "over floor ns", "x plain ipip's work"],
                  [[c, fmt(v["ratio_to_floor"], 2), fmt(v["ns"], 0), spread(v["spread_ns"], 0),
                    fmt(v["over_floor_ns"], 0), fmt(v["ratio_to_ipip"], 2)]
                   for c, v in dc["cases"].items()]), "",
            *notes.subsections("decap_cost", dc)]
