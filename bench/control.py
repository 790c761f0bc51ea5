"""Control-plane scale: what the daemon's apply path costs at 10..1,000 VIPs.

Measured on the layer the daemon calls (lbd.dataplane.programmer.Programmer over a real
loaded lbd.dataplane.maps.Datapath, Maglev tables from lbd.dataplane.maglev), not through the
daemon process itself (which was being written when this was):

  cold_start_s     compile + load the program (bcc), first apply of a 10x10
                   config, native/auto XDP attach to an interface in a
                   throwaway namespace. This approximates "cold start to
                   first packet forwarded": the packet itself is not sent.
  cold_apply_s     first apply of <vips>x<backends> into empty maps
                   (ids, Maglev tables, backend/VIP/address entries, ring swaps)
  reload_s         apply of the same plans again (diff finds nothing) and of
                   plans with one VIP's backend set changed
  health_to_map_ms one backend's state goes ACTIVE -> DOWN: Programmer.apply
                   with the whole plan list (1,000 x 100), timed until its
                   write_ring returned (the new table is live)
  rss_mb           resident memory of this process after the 1,000 x 100
                   apply (includes bcc/LLVM, as the daemon would)

Writes bench/results/control.json:
  {"cold_apply_s": {"<vips>x<backends>": F}, "health_to_map_ms": F, "rss_mb": F, ...}
"""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import statistics
import sys
import time

from bench.machine import arguments, loadavg, save

GOALS = {"cold_apply_1000x100_s": 5.0, "health_to_map_ms": 50.0}
SIZES_FULL = [(10, 10), (10, 100), (100, 10), (100, 100), (1000, 10), (1000, 100)]
SIZES_QUICK = [(10, 10), (100, 10)]


def plans(vips: int, backends: int, changed_vip: int | None = None):
    """vips VIPs (half dsr, half ipip), each with its own `backends` backends."""
    from lbd.plan import BackendPlan, VipPlan

    out = []
    src_mac = bytes.fromhex("0200c6120002")
    for i in range(vips):
        ipip = i % 2 == 1
        address = ipaddress.ip_address(f"198.18.{100 + i // 250}.{i % 250 + 1}")
        members = []
        for j in range(backends):
            # backend j of VIP i: 198.19.<i % 250>.<j + 1> (+ one new address on a change)
            host = j + 1 + (200 if changed_vip == i and j == 0 else 0)
            b_addr = ipaddress.ip_address(f"198.19.{i % 250}.{host}")
            if ipip:
                members.append(BackendPlan(b_addr, 100))
            else:
                members.append(BackendPlan(b_addr, 100, dst_mac=bytes([2, 0xbe, 0, i % 250, j, 0]),
                                           src_mac=src_mac, ifindex=0))
        out.append(VipPlan(address, 80 if not ipip else 443, 6, ipip=ipip,
                           backends=tuple(members), name=f"v{i}"))
    return out


def rss_mb() -> tuple[float, float]:
    rss = hwm = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    return round(rss, 1), round(hwm, 1)


def cold_start(runs: int) -> dict:
    """Compile + load + first apply + attach, each run a fresh Datapath."""
    from lbd.testing import fibns
    from lbd.dataplane import xdplink
    from lbd.dataplane.maps import Datapath
    from lbd.dataplane.programmer import Programmer

    totals, parts = [], []
    with fibns.fib_namespace(f"lbdb-ctl-{os.getpid()}"):
        for _ in range(runs):
            t0 = time.perf_counter()
            dp = Datapath()
            t1 = time.perf_counter()
            Programmer(dp).apply(plans(10, 10))
            t2 = time.perf_counter()
            mode = dp.attach(fibns.IFNAME, "auto")
            t3 = time.perf_counter()
            xdplink.detach(fibns.IFNAME)
            dp.bpf.cleanup()
            totals.append(t3 - t0)
            parts.append({"compile_load_s": t1 - t0, "apply_s": t2 - t1, "attach_s": t3 - t2})
    return {"s": round(statistics.median(totals), 3),
            "spread_s": [round(min(totals), 3), round(max(totals), 3)],
            "parts_median_s": {k: round(statistics.median(p[k] for p in parts), 4) for k in parts[0]},
            "xdp_mode": mode,
            "what": "Datapath compile+load, first apply (10x10), XDP attach; no packet sent"}


def measure(sizes, runs: int, health_runs: int) -> dict:
    from lbd.dataplane.maps import Datapath, Limits
    from lbd.plan import DOWN
    from lbd.dataplane.programmer import Programmer

    limits = Limits(max_vips=1024, max_backends=131072)
    result: dict = {"limits": dataclasses.asdict(limits), "runs": runs}
    result["cold_start"] = cold_start(max(2, runs // 2 + 1))

    dp = Datapath(limits)
    cold, cold_spread, reload_same, reload_one = {}, {}, {}, {}
    health_ms: list[float] = []
    health_size = max(sizes)
    rss_after = None
    for vips, backends in sizes:
        name = f"{vips}x{backends}"
        wanted = plans(vips, backends)
        changed = plans(vips, backends, changed_vip=0)
        t_cold, t_same, t_one = [], [], []
        for r in range(runs):
            prog = Programmer(dp)     # no state: the maps are empty (cleared below)
            t0 = time.perf_counter()
            prog.apply(wanted)
            t_cold.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            prog.apply(wanted)
            t_same.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            prog.apply(changed)
            t_one.append(time.perf_counter() - t0)
            if (vips, backends) == health_size and r == runs - 1:
                rss_after = rss_mb()
                health_ms = health_change(dp, prog, changed, health_runs, DOWN)
            prog.apply([])            # empty the maps for the next cold apply
        cold[name] = round(statistics.median(t_cold), 4)
        cold_spread[name] = [round(min(t_cold), 4), round(max(t_cold), 4)]
        reload_same[name] = round(statistics.median(t_same), 4)
        reload_one[name] = round(statistics.median(t_one), 4)
        print(f"{name:10} cold {cold[name]:.3f}s  reload(no change) {reload_same[name]:.4f}s  "
              f"reload(1 VIP changed) {reload_one[name]:.4f}s", flush=True)
    dp.bpf.cleanup()
    result.update({
        "cold_apply_s": cold, "cold_apply_spread_s": cold_spread,
        "reload_unchanged_s": reload_same, "reload_one_vip_changed_s": reload_one,
        "health_to_map_ms": round(statistics.median(health_ms), 2),
        "health_to_map_spread_ms": [round(min(health_ms), 2), round(max(health_ms), 2)],
        "health_config": f"{health_size[0]}x{health_size[1]}",
        "rss_mb": rss_after[0], "rss_peak_mb": rss_after[1],
        "rss_config": f"{health_size[0]}x{health_size[1]}",
    })
    key = "1000x100"
    result["goals"] = {
        "cold_apply_1000x100_s": {"goal": GOALS["cold_apply_1000x100_s"],
                                  "value": cold.get(key),
                                  "met": None if key not in cold else cold[key] <= 5.0},
        "health_to_map_ms": {"goal": GOALS["health_to_map_ms"],
                             "value": result["health_to_map_ms"],
                             "met": result["health_to_map_ms"] <= 50.0},
    }
    return result


def health_change(dp, prog, base_plans, runs: int, down_state: int) -> list[float]:
    """Flip one backend DOWN and back, timing each apply of the whole plan list."""
    times = []
    vip_index = len(base_plans) // 2
    for r in range(runs):
        plan = base_plans[vip_index]
        victim = r % len(plan.backends)
        down = list(base_plans)
        members = list(plan.backends)
        members[victim] = dataclasses.replace(members[victim], state=down_state)
        down[vip_index] = dataclasses.replace(plan, backends=tuple(members))
        t0 = time.perf_counter()
        prog.apply(down)
        times.append((time.perf_counter() - t0) * 1000)
        prog.apply(base_plans)  # recovery (not timed)
    key = base_plans[vip_index].key
    ring = dp.read_ring(prog.vip_id(key))
    assert ring is not None and len(ring) == dp.limits.ring_size
    return times


def breakdown(vips: int = 100, backends: int = 10) -> dict:
    """Where a cold apply's time goes: cProfile of one apply, seconds per VIP by step."""
    import cProfile
    import pstats

    from lbd.dataplane.maps import Datapath
    from lbd.dataplane.programmer import Programmer

    dp = Datapath()
    prog = Programmer(dp)
    wanted = plans(vips, backends)
    profiler = cProfile.Profile()
    profiler.enable()
    prog.apply(wanted)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    steps = {"update_batch": "ring fill: BPF_MAP_UPDATE_BATCH of 65,537 slots",
             "update_u32": "ring swap: outer map-in-map update (waits for RCU)",
             "create_array": "ring map creation",
             "build": "Maglev table build (C)",
             "set_backend": "backend entries",
             "canonical_fingerprint": "table fingerprint"}
    total = sum(v[3] for k, v in stats.items() if k[2] == "apply")
    out = {"config": f"{vips}x{backends}", "total_s": round(total, 4), "per_vip_ms": {}}
    for (_file, _line, func), (_cc, _nc, _tt, cum, _callers) in stats.items():
        name = func.rsplit(".", 1)[-1].rstrip(">")   # "<built-in method lbd.dataplane._maglev.build>"
        if name in steps:
            out["per_vip_ms"][steps[name]] = round(1000 * cum / vips, 3)
    dp.bpf.cleanup()
    return out


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "control", "small sizes, one run: checks it runs").parse_args(argv)
    load_start = loadavg()
    if args.quick:
        result = measure(SIZES_QUICK, runs=1, health_runs=3)
    else:
        result = measure(SIZES_FULL, runs=3, health_runs=15)
    result["breakdown"] = breakdown(20 if args.quick else 100, 10)
    result["method"] = ("lbd.dataplane.programmer.Programmer on a loaded lbd.dataplane.maps.Datapath, "
                        "median of runs; the daemon calls this layer")
    save(result, args, result["cold_start"]["xdp_mode"], load_start)
    print(f"cold start {result['cold_start']['s']}s; health->map {result['health_to_map_ms']} ms; "
          f"rss {result['rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
