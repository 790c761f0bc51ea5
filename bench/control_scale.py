"""The daemon's control plane at scale with second chance on, in a process of its own.

bench/control.py runs this file as a script, once with this tree's `lbd` and
once (--before REV) with a git revision's, alternating, so that both
programs meet the same machine in the same run and each process's resident
memory is its own. It imports only `lbd` (found on PYTHONPATH: the tree
being measured), never the rest of bench/, so it runs against any revision
whose Programmer and Datapath have today's interface.

What it measures, as the daemon meets it (the measured tree's lbd.daemon: an
apply spends at most SECOND_BUDGET_S on second tables, the background builds
the rest in chunks of SECOND_CHUNK_S), for <vips> ipip VIPs with second chance of <backends>
backends each:

  first_tables_s   the cold apply: ids, every first table, backend, VIP and
                   address entries (and the second tables its budget allows)
  all_s            from the cold apply's start until every second table is built
  rss_mb           resident memory of the process then (VmRSS; bcc and LLVM included)
  health_ms        one backend ACTIVE -> DOWN: the apply of the whole plan list
                   (its second table left to the background as the daemon does)
  reload_one_ms    an apply whose only change is one VIP's backend set

Prints one JSON object on stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import statistics
import sys
import time


def daemon_budgets() -> tuple[float | None, float]:
    """(SECOND_BUDGET_S, SECOND_CHUNK_S) of the lbd being measured: how long
    its daemon lets an apply spend on second tables, and the background's chunk."""
    from lbd import daemon

    return daemon.SECOND_BUDGET_S, daemon.SECOND_CHUNK_S


def plans(vips: int, backends: int, changed_vip: int | None = None):
    """ipip VIPs with second chance, each with its own `backends` backends
    (addresses shared by VIPs 250 apart, as bench/control.py's plans)."""
    from lbd.plan import BackendPlan, VipPlan

    out = []
    for i in range(vips):
        address = ipaddress.ip_address(f"198.18.{100 + i // 250}.{i % 250 + 1}")
        members = tuple(
            BackendPlan(ipaddress.ip_address(f"198.19.{i % 250}.{j + 1 + (200 if changed_vip == i and j == 0 else 0)}"), 100)
            for j in range(backends))
        out.append(VipPlan(address, 443, 6, ipip=True, second_chance=True, backends=members, name=f"v{i}"))
    return out


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def build_all_second(prog) -> None:
    while prog.build_second(daemon_budgets()[1]):
        pass


def measure(vips: int, backends: int, health_runs: int) -> dict:
    from lbd.dataplane.maps import Datapath, Limits
    from lbd.dataplane.programmer import Programmer
    from lbd.plan import DOWN

    dp = Datapath(Limits(max_vips=1024, max_backends=131072))
    rss_loaded = rss_mb()
    prog = Programmer(dp, second_budget_s=daemon_budgets()[0])
    wanted = plans(vips, backends)
    t0 = time.perf_counter()
    prog.apply(wanted)
    first_s = time.perf_counter() - t0
    build_all_second(prog)
    all_s = time.perf_counter() - t0
    rss = rss_mb()

    health = []
    index = vips // 2
    for r in range(health_runs):
        plan = wanted[index]
        members = list(plan.backends)
        members[r % len(members)] = dataclasses.replace(members[r % len(members)], state=DOWN)
        down = list(wanted)
        down[index] = dataclasses.replace(plan, backends=tuple(members))
        t = time.perf_counter()
        prog.apply(down)
        health.append((time.perf_counter() - t) * 1000)
        build_all_second(prog)       # untimed: the background's work
        prog.apply(wanted)
        build_all_second(prog)
    changed = plans(vips, backends, changed_vip=0)
    reload_one = []
    for r in range(max(1, health_runs // 2)):
        t = time.perf_counter()
        prog.apply(changed if r % 2 == 0 else wanted)
        reload_one.append((time.perf_counter() - t) * 1000)
        build_all_second(prog)
    dp.bpf.cleanup()
    return {"config": f"{vips}x{backends}", "first_tables_s": round(first_s, 3), "all_s": round(all_s, 2),
            "rss_mb": rss, "rss_loaded_mb": rss_loaded,
            "health_ms": round(statistics.median(health), 2),
            "health_spread_ms": [round(min(health), 2), round(max(health), 2)],
            "reload_one_ms": round(statistics.median(reload_one), 2),
            "reload_one_spread_ms": [round(min(reload_one), 2), round(max(reload_one), 2)]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vips", type=int, default=1000)
    parser.add_argument("--backends", type=int, default=100)
    parser.add_argument("--health-runs", type=int, default=5)
    args = parser.parse_args()
    print(json.dumps(measure(args.vips, args.backends, args.health_runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
