"""The report's health-check section (bench.health_cost: health_cost.json): what checks
through the data path cost the lbd host, with the prose of bench/notes/health_cost.md."""
from __future__ import annotations

from bench.sections import notes
from bench.sections.text import fmt, table


def summary_rows(hc: dict, bench) -> list[list[str]]:
    """The daemon's CPU per 1,000 checks a second, half of them through the VIP's path."""
    return [[bench.name, "CPU per 1,000 checks/s (half through the VIP's path)",
             f"{fmt(hc['cpu_per_1000_checks_per_s'], 3)} CPU s/s ({fmt(hc['us_per_check'], 0)} µs a check, "
             f"{fmt(hc['checks']['checks_per_s'], 0)} checks/s, {hc['backends_down']} backends down)",
             "–", "measured"]]


def section(hc: dict, bench, rel: str) -> list[str]:
    rows = [[what, fmt(hc[key]["seconds"], 1), fmt(hc[key]["checks_per_s"], 1), fmt(hc[key]["cpu_s_per_s"], 4)]
            for key, what in (("idle", "the same VIPs without health sections"),
                              ("checks", "every backend checked twice"))]
    return [f"## Health checks through the data path (`{bench.name}.json`)", "",
            notes.say("health_cost", "method", hc), "",
            table(["daemon", "window s", "checks/s", "CPU s/s"], rows), "",
            *notes.subsections("health_cost", hc)]
