"""The report's QUIC section (bench.quic_cost: quic_cost.json): a packet routed by its
connection ID against today's UDP packets, with the prose of bench/notes/quic_cost.md."""
from __future__ import annotations

from bench.sections import notes
from bench.sections.text import fmt, spread, table


def summary_rows(qc: dict, bench) -> list[list[str]]:
    return [[bench.name, pair, f"{fmt(r['ratio'], 2)}x ({fmt(r['ratio_over_floor'], 2)}x over the floor)",
             f"≤ {fmt(r['goal'], 1)}x", "met" if r["ratio"] <= r["goal"] else "missed"]
            for pair, r in qc["pairs"].items()]


def section(qc: dict, bench, rel: str) -> list[str]:
    return [f"## QUIC by connection ID (`{bench.name}.json`)", "",
            notes.say("quic_cost", "method", qc) + f" Floor (`XDP_PASS`) in this run: "
            f"{fmt(qc['floor_ns'], 0)} ns.", "",
            table(["case", "ns", "runs (min–max)", "over floor ns"],
                  [[c, fmt(v["ns"], 0), spread(v["spread_ns"], 0), fmt(v["over_floor_ns"], 0)]
                   for c, v in qc["cases"].items()]), "",
            table(["pair", "ratio", "over the floor", "goal"],
                  [[p, fmt(r["ratio"], 3), fmt(r["ratio_over_floor"], 3), f"≤ {fmt(r['goal'], 1)}x"]
                   for p, r in qc["pairs"].items()]), "",
            *notes.subsections("quic_cost", qc)]
