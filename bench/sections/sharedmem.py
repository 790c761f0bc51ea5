"""The report's shared-memory section (bench.sharedmem: sharedmem.json)."""
from __future__ import annotations

from pathlib import Path

from bench.sections import notes
from bench.sections.text import fmt, save_figure, spread, table, verdict

# what the shared-memory arms must show (docs/background.md, "Why it exists"): an
# exact limit within 20% for shared memory and for lbd, a broken one (>1.2x) for
# per-worker state behind the kernel hash
LIMIT_EXACT = (0.8, 1.2)


def summary_rows(sm: dict, bench) -> list[list[str]]:
    rows = []
    for arm, v in sm["arms"].items():
        value = (f"{fmt(v['rps'], 0)} req/s, p50 {fmt(v['p50_ms'], 2)} ms, p99 "
                 f"{fmt(v['p99_ms'], 2)} ms, {fmt(v['cpu_us_per_req'], 0)} µs CPU/req, "
                 f"limit x{fmt(v['limit_ratio'], 2)}")
        if arm == "local_kernel_hash":
            goal, met = "limit ratio > 1.2 (the flaw shown)", v["limit_ratio"] > LIMIT_EXACT[1]
        else:
            goal = f"limit ratio in {LIMIT_EXACT[0]}–{LIMIT_EXACT[1]}"
            met = LIMIT_EXACT[0] <= v["limit_ratio"] <= LIMIT_EXACT[1]
        rows.append([bench.name, arm, value, goal, verdict(met)])
    lbd, shm = sm["arms"].get("lbd_client_affinity"), sm["arms"].get("shared_memory", {})
    if lbd and shm:
        r = lbd["rps"] / shm["rps"] if shm["rps"] else float("nan")
        rows.append([bench.name, "lbd rps / shared_memory rps", f"{fmt(r, 2)}x", ">= 1.0x",
                     verdict(r >= 1.0)])
        c = lbd["cpu_us_per_req"] / shm["cpu_us_per_req"] if shm["cpu_us_per_req"] else float("nan")
        rows.append([bench.name, "lbd CPU/req / shared_memory CPU/req", f"{fmt(c, 2)}x",
                     "<= 1.0x", verdict(c <= 1.0)])
    return rows


def misses(sm: dict, bench, said: set[str]) -> list[str]:
    out = []
    for arm, v in sm["arms"].items():
        if arm != "local_kernel_hash" and not (LIMIT_EXACT[0] <= v["limit_ratio"] <= LIMIT_EXACT[1]):
            out.append(f"- sharedmem `{arm}`: limit ratio {fmt(v['limit_ratio'], 2)} outside "
                       f"{LIMIT_EXACT}.")
    lbd, shm = sm["arms"].get("lbd_client_affinity"), sm["arms"].get("shared_memory")
    load = sm.get("machine", {})
    load_note = (f" The load average rose from {load['loadavg_start'][0]} to "
                 f"{load['loadavg_end'][0]} during this benchmark (other work on the machine)."
                 if load.get("loadavg_start") and load.get("loadavg_end") else "")
    if lbd and shm and lbd["cpu_us_per_req"] > shm["cpu_us_per_req"]:
        a, b = lbd.get("cpu_us_per_req_spread", [None, None]), shm.get("cpu_us_per_req_spread",
                                                                       [None, None])
        overlap = a[0] is not None and b[0] is not None and a[0] <= b[1] and b[0] <= a[1]
        out.append(f"- sharedmem: lbd_client_affinity used "
                   f"{fmt(lbd['cpu_us_per_req'] / shm['cpu_us_per_req'], 2)}x shared_memory's "
                   f"nginx CPU per request (medians {fmt(lbd['cpu_us_per_req'], 0)} vs "
                   f"{fmt(shm['cpu_us_per_req'], 0)} µs; runs {spread(a, 0)} vs {spread(b, 0)} µs)"
                   + (": the runs overlap, so the difference is within run-to-run noise."
                      if overlap else ".") + load_note)
    if lbd and shm and lbd["rps"] < shm["rps"]:
        out.append(f"- sharedmem: lbd_client_affinity served {fmt(lbd['rps'] / shm['rps'], 2)}x "
                   "shared_memory's requests/s. " + notes.say("sharedmem", "why rps", sm))
    return out


def plot(sm: dict, bench, results: Path, plt) -> tuple[str, str] | None:
    if not sm.get("arms"):
        return None
    arms = list(sm["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, key, label in ((axes[0], "rps", "requests/s"),
                           (axes[1], "limit_ratio", "let through / limit (1.0 exact)"),
                           (axes[2], "cpu_us_per_req", "nginx CPU µs per request")):
        vals = [sm["arms"][a][key] for a in arms]
        sp = [sm["arms"][a].get(f"{key}_spread", [v, v]) for a, v in zip(arms, vals)]
        err = [[v - s[0] for v, s in zip(vals, sp)], [s[1] - v for v, s in zip(vals, sp)]]
        ax.bar(arms, vals, yerr=err, capsize=4, color=["#4c72b0", "#c44e52", "#55a868"])
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=20)
        if key == "limit_ratio":
            ax.axhline(1.0, color="black", linestyle="--", linewidth=1)
    return save_figure(fig, results / f"{bench.name}.png", "Shared memory vs local state")


def section(sm: dict, bench, rel: str) -> list[str]:
    return ["## Shared memory vs local state (`sharedmem.json`)", "",
            f"nginx-light `limit_req` at {sm['rate_limit_rps_per_client']} r/s per client "
            f"address, {sm['workers']} workers in every arm, {sm['client_addresses']} client "
            f"addresses x {sm['connections_per_address']} connections, {sm['client']}; "
            f"{sm['runs']} runs of {sm['duration_s']} s ({sm['warmup_s']} s warm-up). "
            f"Topology: {sm['topology']}.", "",
            table(["arm", "req/s", "p50 ms", "p99 ms", "nginx CPU µs/req",
                   "machine CPU µs/req", "limit ratio (min–max over clients)"],
                  [[a, f"{fmt(v['rps'], 0)} ({spread(v['rps_spread'], 0)})", fmt(v["p50_ms"], 2),
                    fmt(v["p99_ms"], 2), fmt(v["cpu_us_per_req"], 0),
                    fmt(v["cpu_total_us_per_req"], 0),
                    f"{fmt(v['limit_ratio'], 2)} ({fmt(v['limit_ratio_min'], 2)}–"
                    f"{fmt(v['limit_ratio_max'], 2)})"] for a, v in sm["arms"].items()]), "",
            notes.say("sharedmem", "limit ratio", sm), ""]
