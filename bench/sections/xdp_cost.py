"""The report's per-packet cost section (bench.xdp_cost: xdp_cost.json), with the prose
of bench/notes/xdp_cost.md: its `## why <case>` sections beside a case that misses its
goal, `## method` under the section's first paragraph, the others as sub-sections."""
from __future__ import annotations

from pathlib import Path

from bench.sections import notes
from bench.sections.text import fmt, save_figure, spread, table, verdict

XC_KINDS = ("nonvip", "syn", "first_ack", "established", "syn_flood_established")
REF_KIND = {"nonvip": "nonvip", "syn": "new_flow", "first_ack": "new_flow",
            "established": "established"}


def xc_case(xc: dict, mode: str, kind: str) -> dict | None:
    return xc["cases"].get(kind if kind == "nonvip" else f"{mode}_{kind}")


def xc_reference_ratios(xc: dict) -> dict[str, dict[str, list[float]]]:
    """The side-by-side run's ns as ratios to that run's own floor."""
    ref = xc.get("reference") or {}
    floor = ref.get("floor_ns")
    return {who: {k: [v[0] / floor, v[1] / floor] for k, v in cases.items()}
            for who, cases in ref.get("ns", {}).items()} if floor else {}


def plot(xc: dict, bench, results: Path, plt) -> tuple[str, str] | None:
    """Left: this run's ratios to its own floor, the side-by-side run's ratios as
    reference lines. Right: one core against both, ns of the same run."""
    import numpy as np

    if not xc.get("cases"):
        return None
    cores = xc.get("cores")
    fig, axes = plt.subplots(1, 2 if cores else 1, figsize=(15 if cores else 9, 6.5),
                             gridspec_kw={"width_ratios": [3, 2]} if cores else None)
    ax = axes[0] if cores else axes
    floor = xc["floor_ns"]
    colors = {"dsr": "#4c72b0", "ipip": "#55a868"}
    # bar positions: nonvip one bar (either mode), the others dsr left, ipip right
    slots = {("nonvip", "dsr"): (0.0, 0.5)}
    for i, kind in enumerate(XC_KINDS[1:], start=1):
        slots[(kind, "dsr")] = (i - 0.2, 0.38)
        slots[(kind, "ipip")] = (i + 0.2, 0.38)
    for mode in ("dsr", "ipip"):
        xs, vals, errs = [], [], [[], []]
        for kind in XC_KINDS:
            c = xc_case(xc, mode, kind)
            if (kind, mode) not in slots or not c:
                continue
            r = c["ratio_to_floor"]
            xs.append(slots[(kind, mode)][0])
            vals.append(r)
            errs[0].append(max(0.0, r - c["spread_ns"][0] / floor))
            errs[1].append(max(0.0, c["spread_ns"][1] / floor - r))
        ax.bar(xs, vals, 0.38, yerr=errs, capsize=3, color=colors[mode],
               label=f"lbd {mode}, this run: median of runs, bar = min–max of runs"
                     + (" (nonvip: either mode)" if mode == "dsr" else ""))
    refs = xc_reference_ratios(xc)
    labels = {"peer": "production peer (ipip), side-by-side run 2026-12-01: ratio to its 80 ns "
                      "floor; new flow = a distinct SYN, which it inserts",
              "lbd_ipip": "lbd ipip in that run (then a SYN inserted)",
              "lbd_dsr": "lbd dsr in that run (then a SYN inserted)"}
    done = set()
    for who, cases in refs.items():
        for i, kind in enumerate(XC_KINDS):
            ref = cases.get(REF_KIND.get(kind, ""))
            if not ref:
                continue
            label = labels.get(who, who) if who not in done else None
            done.add(who)
            if who == "peer":
                ax.fill_between([i - 0.45, i + 0.45], ref[0], ref[1], color="#c44e52", alpha=0.3,
                                label=label, zorder=1)
                continue
            mode = who.split("_", 1)[1]
            x0, w = slots.get((kind, mode), slots.get((kind, "dsr")))
            ax.hlines([(ref[0] + ref[1]) / 2], x0 - w / 2, x0 + w / 2, colors="black",
                      linestyles=":" if mode == "dsr" else "-.", linewidth=2, label=label, zorder=4)
    first_goal = True
    for i, kind in enumerate(XC_KINDS):
        c = xc_case(xc, "dsr", kind)
        if not c or not c.get("goal"):
            continue
        bounds = c["goal"].replace("<=", "").replace("x", "").split("–")
        for bound in bounds:
            ax.hlines([float(bound)], i - 0.45, i + 0.45, colors="#c44e52", linestyles="--",
                      linewidth=1.2, label="goal" if first_goal else None, zorder=5)
            first_goal = False
    ax.set_xticks(np.arange(len(XC_KINDS)), [k.replace("_", "\n") for k in XC_KINDS])
    ax.set_ylabel(f"x the XDP_PASS floor of the same run ({floor:g} ns)")
    ax.set_title("Per-packet cost as a ratio to the floor (BPF_PROG_TEST_RUN, per call)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.45)    # room for the legend above the bars
    ax.legend(fontsize=7, loc="upper left")
    if cores:
        ax2 = axes[1]
        kinds = [k for k in ("floor", "established", "first_ack", "first_ack_full_table")
                 if k in cores["kinds"]]
        xs = np.arange(len(kinds))
        one = [cores["kinds"][k]["one_ns"] for k in kinds]
        both = [cores["kinds"][k]["both_ns"] for k in kinds]
        ax2.bar(xs - 0.2, one, 0.38, color="#8172b3", label="one core alone (CPU 0 or CPU 1)")
        ax2.bar(xs + 0.2, both, 0.38, color="#dd8452", label="both cores at once")
        for i, k in enumerate(kinds):
            ax2.text(xs[i] + 0.2, both[i], f"x{cores['kinds'][k]['ratio']:.2f}", ha="center",
                     va="bottom", fontsize=8)
        ax2.set_xticks(xs, [k.replace("_", "\n") for k in kinds])
        ax2.set_ylabel("ns per call (median of rounds), same run")
        ax2.set_title("The same maps from CPU 0 and CPU 1 at once")
        ax2.set_ylim(0, ax2.get_ylim()[1] * 1.2)
        ax2.legend(fontsize=8, loc="upper left")
    return save_figure(fig, results / f"{bench.name}.png", "Per-packet cost")


def summary_rows(xc: dict, bench) -> list[list[str]]:
    rows = []
    for case, v in xc["cases"].items():
        rows.append([bench.name, case, f"{fmt(v['ratio_to_floor'], 2)}x floor ({fmt(v['ns'], 0)} ns, "
                     f"floor {fmt(xc['floor_ns'], 0)} ns, same run)",
                     f"{v['goal']} floor" if v.get("goal") else "–",
                     verdict(v["goal_met"]) if v.get("goal") else "measured"])
    cores = xc.get("cores")
    if cores:
        fa = cores["kinds"]["first_ack"]
        rows.append([bench.name, "new-flow insert (first_ack), both cores vs one",
                     f"{fmt(fa['ratio'], 2)}x ({fmt(fa['one_ns'], 0)} → {fmt(fa['both_ns'], 0)} ns "
                     f"median; mean {fmt(fa['ratio_mean'], 2)}x)", "<= 1.25x",
                     verdict(cores["goal_met"])])
    sc = xc.get("second_chance")
    if sc:
        rows.append([bench.name, "second chance: established ipip packet in GUE vs plain",
                     f"{fmt(sc['ratio'], 3)}x (runs {', '.join(fmt(r, 3) for r in sc['runs_ratio'])})",
                     sc["goal"], verdict(sc["goal_met"])])
    return rows


def misses(xc: dict, bench, said: set[str]) -> list[str]:
    prose = notes.read("xdp_cost")
    out = []
    for case, v in xc["cases"].items():
        if v.get("goal") and not v["goal_met"]:
            why = notes.fill(prose.get(f"why {case}", ""), xc).replace("\n\n", " ")
            out.append(f"- xdp_cost `{case}`: {fmt(v['ratio_to_floor'], 2)}x the floor against "
                       f"{v['goal']} ({fmt(v['ns'], 0)} ns, {fmt(v['over_floor_ns'], 0)} ns over "
                       f"this run's {fmt(xc['floor_ns'], 0)} ns floor). {why}".rstrip())
    cores = xc.get("cores")
    if cores and not cores["goal_met"]:
        out.append("- xdp_cost both cores: "
                   + notes.fill(prose.get("why cores", ""), xc).replace("\n\n", " "))
    return out


def xc_program_line(xc: dict) -> str:
    prog = xc.get("program")
    if not prog:
        return ""
    line = f" lbd's program built from {prog['xdp_from']}"
    if prog.get("commit"):
        line += f" (commit {prog['commit'][:10]}"
        if prog.get("xdp_uncommitted_changes"):
            line += ", with uncommitted changes in xdp/"
        line += ")"
    return line + "."


def section(xc: dict, bench, rel: str) -> list[str]:
    prose = notes.read("xdp_cost")
    m = xc.get("machine", {})
    load = (f" Load average (1 min) {m['loadavg_start'][0]} at the start, {m['loadavg_end'][0]} "
            "at the end" if m.get("loadavg_start") and m.get("loadavg_end") else "")
    lines = ["## Per-packet cost (`xdp_cost.json`)", "",
             f"{xc['method']}. Floor (XDP_PASS, same run) {fmt(xc['floor_ns'])} ns (runs "
             f"{spread(xc.get('floor_spread_ns'))}); {xc['runs']} runs of {xc['calls_per_run']:,} "
             f"calls per case.{load}." + xc_program_line(xc), ""]
    if prose.get("method"):
        lines += [notes.fill(prose["method"], xc), ""]
    lines += [table(["case", "x floor", "ns", "runs (min–max)", "over floor ns", "mean ns",
                     "goal", "result"],
                    [[c, fmt(v["ratio_to_floor"], 2), fmt(v["ns"], 0), spread(v["spread_ns"], 0),
                      fmt(v["over_floor_ns"], 0), fmt(v.get("mean_ns"), 0), v.get("goal") or "–",
                      verdict(v["goal_met"]) if v.get("goal") else "measured"]
                     for c, v in xc["cases"].items()]), ""]
    before = xc.get("before")
    if before:
        rows = []
        for name, old in before["ratio_to_floor"].items():
            now_name = name.replace("_new", "_first_ack")
            now = xc["cases"].get(now_name, {})
            rows.append([f"{name} → {now_name}" if now_name != name else name, fmt(old, 2),
                         fmt(before.get("over_floor_ns", {}).get(name), 0),
                         fmt(now.get("ratio_to_floor"), 2), fmt(now.get("over_floor_ns"), 0)])
        lines += [f"Before the SYN rule changed ({before['source']}; a SYN then made the entry, "
                  "so `*_new` then is the call that inserts, today's `first_ack`). Ratios move "
                  "with the floor (the same ns over it read as a higher ratio when the floor "
                  "reads lower), so the ns over each run's own floor are beside them:", "",
                  table(["case", "x floor before", "over floor ns before", "x floor now",
                         "over floor ns now"], rows), ""]
    refs = xc_reference_ratios(xc)
    if refs:
        rows = []
        for kind in ("nonvip", "established", "new_flow"):
            row = [kind.replace("_", " ")]
            for who in ("peer", "lbd_ipip", "lbd_dsr"):
                r = refs.get(who, {}).get(kind)
                row.append(f"{fmt(r[0], 2)}–{fmt(r[1], 2)}" if r else "–")
            now = {"nonvip": ["nonvip"], "established": ["ipip_established", "dsr_established"],
                   "new_flow": ["ipip_syn", "ipip_first_ack", "dsr_syn", "dsr_first_ack"]}[kind]
            row.append(", ".join(f"{n} {fmt(xc['cases'][n]['ratio_to_floor'], 2)}" for n in now
                                 if n in xc["cases"]))
            rows.append(row)
        lines += ["Reference, not this run: " + xc["reference"]["how"] + ". Its figures as "
                  f"ratios to that run's own {xc['reference']['floor_ns']} ns floor, beside this "
                  "run's ratios (nanoseconds from two runs are never put side by side here):", "",
                  table(["case", "peer", "lbd ipip then", "lbd dsr then", "lbd now (x this run's floor)"],
                        rows), ""]
    diag = xc.get("diagnostics", {})
    if diag:
        what = xc.get("diagnostics_what", {})
        lines += ["Diagnostics (no goal), interleaved in the same runs:", "",
                  table(["diagnostic", "x floor", "ns", "mean ns", "slowest 1/128 ns", "what"],
                        [[n, fmt(v["ratio_to_floor"], 2), fmt(v["ns"], 0), fmt(v.get("mean_ns"), 0),
                          fmt(v.get("slowest_1_128_ns"), 0), what.get(n, "")]
                         for n, v in diag.items()]), ""]
    bd = xc.get("breakdown", {})
    if bd:
        lines += ["Where the time goes, as differences between figures of the same run (ns):", "",
                  table(["difference", "ns"], [[k.replace("_", " "), fmt(v, 0)] for k, v in bd.items()]),
                  ""]
    cores = xc.get("cores")
    if cores:
        rows = [[k, fmt(v["one_ns"], 0), fmt(v["both_ns"], 0), fmt(v["ratio"], 3),
                 f"{fmt(v['one_mean_ns'], 0)} / {fmt(v['both_mean_ns'], 0)}", fmt(v["ratio_mean"], 3),
                 f"{fmt(v['one_slowest_1_128_ns'], 0)} / {fmt(v['both_slowest_1_128_ns'], 0)}",
                 fmt(v["overlap"], 2), fmt(v["program_duty"], 2)]
                for k, v in cores["kinds"].items()]
        lines += ["### Both cores at once", "", cores["method"], "",
                  table(["kind", "one core ns", "both ns", "both / one", "mean one / both",
                         "mean both / one", "slowest 1/128 one / both", "calls overlapped",
                         "program's share of wall time"], rows), ""]
        stress = [(k, v) for k, v in cores["kinds"].items() if "one_per_insert_ns" in v]
        if stress:
            lines += [f"The `lru_*_x{cores['stress_ops_per_call']}` kinds are bench/bpf/mapcost.c "
                      f"making {cores['stress_ops_per_call']} inserts per call into a full "
                      "1M-entry LRU table (no other work), so the two cores insert most of the "
                      "time: per insert " + "; ".join(
                          f"{k}: one core {fmt(v['one_per_insert_ns'], 0)} ns, both "
                          f"{fmt(v['both_per_insert_ns'], 0)} ns (x{fmt(v['ratio_per_insert'], 2)})"
                          for k, v in stress) + ".", ""]
        model = xc.get("lru_global_lock")
        if model:
            rows = []
            for state, v in model.items():
                if not isinstance(v, dict):
                    continue
                for n, c in v["cores"].items():
                    rows.append([state.replace("_", " "), n, fmt(v["lock_ns_per_insert"], 0),
                                 fmt(c["saturates_at_per_core_per_s"], 0),
                                 fmt(c["per_insert_ns_all_inserting"], 0)])
            lines += [notes.fill(model["what"], xc), "",
                      table(["table", "cores", "global-lock ns per insert",
                             "inserts/s per core that saturate the lock",
                             "ns per insert, every core inserting flat out"], rows), ""]
    return lines + notes.subsections("xdp_cost", xc)
