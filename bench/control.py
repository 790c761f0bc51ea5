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

Second chance at scale (issue 23): bench/control_scale.py, each run a process
of its own, for 1,000 ipip VIPs with second chance x 100 backends: the cold
apply (first tables), until every second table is built, resident memory,
a health change and a reload changing one VIP, as the daemon meets them.
--before REV runs the same beside git revision REV's lbd (its lbd/ and xdp/
from git), the two alternating run by run, so both meet the same machine.

Writes bench/results/control.json:
  {"cold_apply_s": {"<vips>x<backends>": F}, "health_to_map_ms": F, "rss_mb": F, ...,
   "second_chance_scale": {"now": {...}, "before": {...}, "goals": {...}}}
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
# issue 23, at 1,000 ipip VIPs with second chance x 100 backends: (figure, at most)
SCALE_GOALS = {"first_tables_s": 2.0, "all_s": 20.0, "rss_mb": 250.0, "health_ms": 50.0,
               "reload_one_ms": 100.0}
SCALE_SIZE, SCALE_SIZE_QUICK = (1000, 100), (20, 10)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


def tree_of(rev: str, workdir: str) -> str | None:
    """git revision `rev`'s lbd/ and xdp/ written to `workdir`, with this
    tree's compiled Maglev extension (only if the revision's C source is this
    tree's); None if git cannot give them or the extension differs."""
    import glob
    import shutil
    import subprocess

    archive = subprocess.run(["git", "archive", rev, "lbd", "xdp"], cwd=REPO, capture_output=True)
    if archive.returncode != 0:
        return None
    subprocess.run(["tar", "-x", "-C", workdir], input=archive.stdout, check=True)
    source = "lbd/dataplane/_maglev.c"
    with open(os.path.join(REPO, source), "rb") as ours, open(os.path.join(workdir, source), "rb") as theirs:
        if ours.read() != theirs.read():
            return None
    for built in glob.glob(os.path.join(REPO, "lbd/dataplane/_maglev*.so")):
        shutil.copy(built, os.path.join(workdir, "lbd/dataplane"))
    return workdir


def scale_once(tree: str, vips: int, backends: int, health_runs: int) -> dict:
    """bench/control_scale.py in a process of its own, importing `tree`'s lbd."""
    import json
    import subprocess

    script = os.path.join(REPO, "bench", "control_scale.py")
    done = subprocess.run([sys.executable, script, "--vips", str(vips), "--backends", str(backends),
                           "--health-runs", str(health_runs)], cwd=tree, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": tree}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"control_scale.py in {tree} failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def scale(before_rev: str | None, runs: int, quick: bool) -> dict:
    """Issue 23's control-plane goals, today's lbd beside `before_rev`'s,
    alternating run by run (the first program alternates too)."""
    import tempfile

    vips, backends = SCALE_SIZE_QUICK if quick else SCALE_SIZE
    health_runs = 2 if quick else 5
    with tempfile.TemporaryDirectory(prefix="lbd-ctl-") as work:
        trees = {"now": REPO}
        if before_rev:
            before = tree_of(before_rev, work)
            if before is not None:
                trees["before"] = before
        got: dict[str, list[dict]] = {name: [] for name in trees}
        for r in range(runs):
            order = list(trees) if r % 2 == 0 else list(reversed(trees))
            for name in order:
                got[name].append(scale_once(trees[name], vips, backends, health_runs))
                print(f"scale {name} run {r}: {got[name][-1]}", flush=True)
    out: dict = {"config": f"{vips}x{backends} ipip, second chance", "runs": runs,
                 "what": "bench/control_scale.py: one process per program and run, alternating"}
    for name, results in got.items():
        medians = {k: round(statistics.median(r[k] for r in results), 3) for k in SCALE_GOALS}
        medians["spread"] = {k: [min(r[k] for r in results), max(r[k] for r in results)] for k in SCALE_GOALS}
        medians["rss_loaded_mb"] = statistics.median(r["rss_loaded_mb"] for r in results)
        medians["runs"] = results
        out[name] = medians
    if before_rev:
        out["before_rev"] = before_rev
        out["before_loaded"] = "before" in got
    out["goals"] = {k: {"goal": g, "value": out["now"][k], "met": out["now"][k] <= g}
                    for k, g in SCALE_GOALS.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "control", "small sizes, one run: checks it runs")
    parser.add_argument("--before", metavar="REV",
                        help="also measure git revision REV's lbd at scale with second chance, "
                             "beside today's (e.g. 1503dc4, main before issue 23)")
    parser.add_argument("--scale-only", action="store_true",
                        help="only the second-chance scale measurement (merged into --out's JSON)")
    parser.add_argument("--scale-runs", type=int, default=None,
                        help="runs of the second-chance scale measurement per program (default 3, quick 1)")
    args = parser.parse_args(argv)
    load_start = loadavg()
    scale_runs = args.scale_runs if args.scale_runs is not None else (1 if args.quick else 3)
    if args.scale_only:
        import json

        result = json.loads(open(args.out).read()) if os.path.exists(args.out) else {}
        result["second_chance_scale"] = scale(args.before, scale_runs, args.quick)
        save(result, args, result.get("cold_start", {}).get("xdp_mode", "n/a"), load_start)
        return 0
    if args.quick:
        result = measure(SIZES_QUICK, runs=1, health_runs=3)
    else:
        result = measure(SIZES_FULL, runs=3, health_runs=15)
    if scale_runs:  # --scale-runs 0: the rest only
        result["second_chance_scale"] = scale(args.before, scale_runs, args.quick)
    result["breakdown"] = breakdown(20 if args.quick else 100, 10)
    result["method"] = ("lbd.dataplane.programmer.Programmer on a loaded lbd.dataplane.maps.Datapath, "
                        "median of runs; the daemon calls this layer")
    save(result, args, result["cold_start"]["xdp_mode"], load_start)
    print(f"cold start {result['cold_start']['s']}s; health->map {result['health_to_map_ms']} ms; "
          f"rss {result['rss_mb']} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
