"""The report's capture section (bench.capture_cost: capture_cost.json): what `lbctl capture`
costs a packet when off (today's program beside the one before it) and when on, with the
prose of bench/notes/capture_cost.md."""
from __future__ import annotations

from bench.sections import notes
from bench.sections.text import fmt, spread, table


def summary_rows(cc: dict, bench) -> list[list[str]]:
    off = cc["off_over_before_ns"]
    return [[bench.name, f"capture off, over {cc['before']}'s program",
             f"no VIP {fmt(off['nonvip']['median'], 0)} ns, established {fmt(off['established']['median'], 0)} ns "
             f"(median; timer steps ~10 ns)", "within the timer's resolution", "measured"],
            [bench.name, "capture on, per packet kept", f"{fmt(cc['kept_over_off_ns'], 0)} ns", "–", "measured"]]


def section(cc: dict, bench, rel: str) -> list[str]:
    return [f"## Capture cost (`{bench.name}.json`)", "",
            notes.say("capture_cost", "method", cc) + f" Floor (`XDP_PASS`) in this run: "
            f"{fmt(cc['floor_ns'], 0)} ns.", "",
            table(["case", "ns (median)", "mean ns", "runs (min–max)", "over floor ns"],
                  [[c, fmt(v["ns"], 0), fmt(v["mean_ns"], 1), spread([min(v["runs_ns"]), max(v["runs_ns"])], 0), fmt(v["over_floor_ns"], 0)]
                   for c, v in cc["cases"].items()]), "",
            *notes.subsections("capture_cost", cc)]
