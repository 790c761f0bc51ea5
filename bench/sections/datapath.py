"""The report's data-plane throughput sections (bench.datapath: datapath.json, and
datapath_tcp.json from its --tcp run)."""
from __future__ import annotations

from pathlib import Path

from bench.sections import notes
from bench.sections.text import fmt, save_figure, spread, table, verdict

EXPLAINED = "datapath program"   # in `said` once a run's misses said where lbd's time goes


def tcp(bench) -> bool:
    return "--tcp" in bench.args


def label(bench) -> str:
    return "datapath (tcp)" if tcp(bench) else "datapath"


def summary_rows(dp: dict, bench) -> list[list[str]]:
    name = label(bench)
    rows = [[name, arm, f"{fmt(v['pps'], 0)} pps, hop {fmt(v.get('hop_ns'))} ns", "–", "measured"]
            for arm, v in dp["arms"].items()]
    rows += [[name, arm, why, "–", "n/a"] for arm, why in dp.get("arms_not_run", {}).items()]
    for goal, g in dp.get("goals", {}).items():
        extra = f" (lbd − floor: {fmt(g['excess_ns'])} ns)" if "excess_ns" in g else ""
        rows.append([name, goal.replace("_", " "), f"{fmt(g['value'], 2)}x{extra}",
                     f"{g['goal']}x", verdict(g["met"])])
    return rows


def plot(dp: dict, bench, results: Path, plt) -> tuple[str, str] | None:
    if not dp.get("arms"):
        return None
    arms = list(dp["arms"])
    pps = [dp["arms"][a]["pps"] / 1e3 for a in arms]
    err = [[(dp["arms"][a]["pps"] - dp["arms"][a]["spread_pps"][0]) / 1e3 for a in arms],
           [(dp["arms"][a]["spread_pps"][1] - dp["arms"][a]["pps"]) / 1e3 for a in arms]]
    hop = [dp["arms"][a].get("hop_ns", 0) for a in arms]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(arms, pps, yerr=err, capsize=4, color="#4c72b0")
    ax1.set_ylabel("delivered kpps (median, min–max)")
    ax1.set_title(f"Delivered packets/s, {dp.get('protocol', 'udp')} 64 B, gen on 1 core")
    ax1.tick_params(axis="x", rotation=30)
    ax2.bar(arms, hop, color="#dd8452")
    ax2.set_ylabel("hop cost, ns/packet")
    ax2.set_title("Balancer hop: 1e9/pps(arm) − 1e9/pps(direct)")
    ax2.tick_params(axis="x", rotation=30)
    return save_figure(fig, results / f"{bench.name}.png",
                       "Data-plane throughput" + (", TCP segments" if tcp(bench) else ""))


def program_line(dp: dict) -> str:
    """The balancer programs' own time per packet on the benchmark's traffic."""
    prof = {a: v for a, v in dp.get("program_profile", {}).items()
            if isinstance(v, dict) and v.get("ns_per_packet")}
    if not prof:
        return ""
    return ("BPF run-time statistics on this traffic (a separate pass after the measured runs) "
            "put each program's own time per packet at " +
            ", ".join(f"{a} {fmt(v['ns_per_packet'], 0)} ns" for a, v in prof.items()) + ".")


def misses(dp: dict, bench, said: set[str]) -> list[str]:
    name, out = label(bench), []
    missed = [(n, g) for n, g in dp.get("goals", {}).items() if g["met"] is not True]
    for goal, g in missed:
        if g["met"] is False:
            out.append(f"- {name} `{goal}`: {fmt(g['value'], 2)}x against {g['goal']}x"
                       + (f" (lbd's hop {fmt(g['excess_ns'], 0)} ns over the floor's)."
                          if "excess_ns" in g else "."))
        else:
            out.append(f"- {name} `{goal}`: {g.get('note', 'not measurable')}; lbd's hop exceeds "
                       f"the floor's by {fmt(g.get('excess_ns'))} ns per packet.")
    d = dp["arms"].get("direct", {})
    swing = None
    if d.get("spread_pps") and d["spread_pps"][0] > 0:
        swing = 1e9 / d["spread_pps"][0] - 1e9 / d["spread_pps"][1]
    if missed:
        why = program_line(dp)
        prof = dp.get("program_profile", {})
        floor_ns = (prof.get("xdp_floor") or {}).get("ns_per_packet")
        lbd_ns = [(prof.get(a) or {}).get("ns_per_packet") for a in ("lbd_dsr", "lbd_ipip")]
        if floor_ns and all(lbd_ns):
            extra = [n - floor_ns for n in lbd_ns]
            why += (f" So lbd's program costs {fmt(min(extra), 0)}–{fmt(max(extra), 0)} ns per "
                    "packet more than the floor's.")
            excess = [g.get("excess_ns") for _, g in missed if g.get("excess_ns") is not None]
            if excess and max(excess) > max(extra):
                why += (" Hop differences larger than that are not the program's work but the "
                        "run (veth, scheduling, other work on the machine).")
            else:
                why += " That accounts for the hop difference."
            if EXPLAINED in said:
                why += " Where that time goes: as for the UDP run above."
            else:
                why += " " + notes.say("datapath", "why the program costs more", dp)
                said.add(EXPLAINED)
        if swing:
            why += (f" Between runs the direct arm alone swung {fmt(swing, 0)} ns per packet "
                    "(a shared 2-core VM).")
        if why:
            out.append(f"- {name}, why: {why.strip()}")
    if dp.get("userspace_proxy", "").startswith("python") and "userspace" in dp["arms"]:
        out.append(f"- {name} `userspace`: " + notes.say("datapath", "userspace python proxy", dp))
    for arm, reason in dp.get("arms_not_run", {}).items():
        out.append(f"- {name} `{arm}`: {reason}, so its goal is not evaluated for TCP.")
    return out


def noise_line(dp: dict) -> str:
    """How much the direct arm moved between runs: the yardstick for every hop."""
    d = dp["arms"].get("direct")
    if not d or not d.get("spread_pps"):
        return ""
    lo, hi = d["spread_pps"]
    return notes.say("datapath", "noise", {
        "direct_pps_low": lo, "direct_pps_high": hi, "direct_ns_low": 1e9 / hi,
        "direct_ns_high": 1e9 / lo, "direct_swing_ns": 1e9 / lo - 1e9 / hi}) + "\n"


def section(dp: dict, bench, rel: str) -> list[str]:
    title = ("Data-plane throughput, TCP segments of established flows" if tcp(bench)
             else "Data-plane throughput")
    not_run = "".join(f"The `{a}` arm was {why}.\n" for a, why in dp.get("arms_not_run", {}).items())
    prof_rows = [[a, fmt(v.get("ns_per_packet"), 0), fmt(v.get("packets"), 0),
                  fmt(v.get("jited_bytes")), fmt(v.get("verified_insns"))]
                 for a, v in dp.get("program_profile", {}).items()
                 if isinstance(v, dict) and "ns_per_packet" in v]
    lines = [f"## {title} (`{bench.name}.json`)", "",
             f"Topology: {dp['topology']}. Generator: {dp['generator']}, {dp['flows']} flows, "
             f"{dp['protocol']} {dp['frame_bytes']}-byte frames; {dp['runs']} runs of "
             f"{dp['window_s']} s after {dp['warmup_s']} s warm-up. lbd config: "
             f"{dp['lbd_config']}. User-space arm: "
             f"{'none' if 'userspace' in dp.get('arms_not_run', {}) else dp['userspace_proxy']}. XDP modes: "
             + ", ".join(f"{k} {v}" for k, v in dp.get("xdp_modes", {}).items()) + ".", "",
             table(["arm", "pps (median)", "spread", "hop ns", "vs direct"],
                   [[a, fmt(v["pps"], 0), spread(v["spread_pps"], 0), fmt(v.get("hop_ns")),
                     fmt(v.get("ratio_to_direct"), 3)] for a, v in dp["arms"].items()]), "",
             noise_line(dp) + not_run, notes.say("datapath", "veth", dp), ""]
    if prof_rows:
        lines += [notes.say("datapath", "program profile", dp), "",
                  table(["program (arm)", "ns per packet", "packets", "JIT bytes",
                         "verified insns"], prof_rows), ""]
    return lines
