"""The report's flow-count section (bench.flowcount: flowcount.json): the walk that tells
live flows from idle ones, and what their upkeep costs an established packet."""
from __future__ import annotations

from bench.sections import notes
from bench.sections.text import fmt, spread, table

WALKS = {"sample_s": "the daemon's sample (both tables)",
         "sample_tcp_walk_s": "of which the TCP table",
         "backend_flows_s": "one backend's flows (wait-drained)",
         "before_sample_s": "the sample before (counting every entry)",
         "settle_s": "the settle walk (settled slots, after each sample)"}


def _seconds(s: dict) -> str:
    return f"{fmt(s['median'], 3)} s ({fmt(s['min'], 3)}–{fmt(s['max'], 3)})"


def summary_rows(fc: dict, bench) -> list[list[str]]:
    rows = []
    walk = fc.get("walk")
    if walk:
        rows += [[bench.name, f"walk of {fmt(walk['table_entries'])} entries: {what}",
                  _seconds(walk[key]), "–", "measured"] for key, what in WALKS.items() if key in walk]
    est = fc.get("established")
    if est:
        rows += [[bench.name, f"established packet, {case}: now − before",
                  f"{fmt(est['cases'][f'delta_{case}_ns'], 0)} ns per packet", "–", "measured"]
                 for case in ("warm", "cold")]
    return rows


def section(fc: dict, bench, rel: str) -> list[str]:
    lines = [f"## Live and idle flows (`{bench.name}.json`)", "",
             notes.say("flowcount", "method", fc), ""]
    walk = fc.get("walk")
    if walk:
        lines += [f"The walk: {fmt(walk['live'])} live and {fmt(walk['idle'])} idle entries of "
                  f"{fmt(walk['capacity'])}, filled in {fmt(walk['fill_s'], 2)} s; median "
                  "(min–max) of the runs:", "",
                  table(["walk", "seconds"],
                        [[what, _seconds(walk[key])] for key, what in WALKS.items() if key in walk]), ""]
    est = fc.get("established")
    if est:
        cases = est["cases"]
        rows = [[case, fmt(cases[f"after_{case}"]["ns"], 0), fmt(cases[f"before_{case}"]["ns"], 0),
                 fmt(cases[f"delta_{case}_ns"], 0), spread(cases[f"delta_{case}_spread_ns"], 0)]
                for case in ("warm", "cold")]
        lines += [f"The established packet (floor, `XDP_PASS`, {fmt(est['floor_ns'], 0)} ns; "
                  f"{fmt(est['table_entries'])} entries in a table of "
                  f"{fmt(est['table_capacity'])}):", "",
                  table(["case", "now ns", "before ns", "now − before, per packet ns",
                         "runs (min–max)"], rows), ""]
    return lines + notes.subsections("flowcount", fc)
