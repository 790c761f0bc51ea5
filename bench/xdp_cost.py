"""Per-packet cost of the balancer through BPF_PROG_TEST_RUN, beside a trivial
XDP_PASS program measured the same way in the same run.

Every figure is per call (repeat=1) and the median over many calls: repeat
mode re-runs the program on the packet the previous run left behind, which
is wrong for every case that rewrites or encapsulates (TESTBED.md). Calls to
the floor and to the case are interleaved so machine noise hits both alike.

Cases (a realistic config: 40 VIPs, 100 backends in all, a warm connection table):
  nonvip          a packet to no VIP: one prefilter bit, XDP_PASS
  dsr_new         a SYN of a new flow: Maglev pick, connection-table insert, XDP_TX
  dsr_established a packet of a known flow: connection-table hit, XDP_TX
  ipip_new, ipip_established   the same with IPv4-in-IPv4 (next hop cached per CPU)

Every new-flow packet is a flow the table has never held (checked: the
program's connection-table miss counter grows by exactly one per such
packet), so its insert takes a cold element: a figure measured by sending
one SYN again and again would see warm memory instead.

The kernel times only the program run (not the syscall); the floor is that
timer's own cost. The peer's figures were taken when the floor measured
PEER_FLOOR_NS, so `over_floor_ns` (case minus floor) is the like-for-like
comparison beside the absolute one.

Writes bench/results/xdp_cost.json:
  {"floor_ns": N, "cases": {"<case>": {"ns": N, "ratio_to_floor": R, "over_floor_ns": N,
   "peer_ns": N, "peer_over_floor_ns": N, ...}}, "machine": {...}}
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import statistics
import sys
from pathlib import Path

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.machine import loadavg, machine_info
from lbd import bpfsys, fibns
from lbd.datapath import Datapath, load_helper
from lbd.programmer import BackendPlan, Programmer, VipPlan

RESULTS = Path(__file__).resolve().parent / "results"
ip = ipaddress.ip_address
CLIENT_MAC, OUR_MAC = "02:00:00:00:0c:01", fibns.MAC
# The production balancer measured the same way on this machine (TESTBED.md).
PEER_NS = {"established": 300, "new": 531, "nonvip": 171}
PEER_FLOOR_NS = 110  # the XDP_PASS floor measured the same way then (TESTBED.md)
GOALS = {"dsr_established": 2.0, "ipip_established": 2.5, "dsr_new": 4.0, "ipip_new": 4.0,
         "nonvip": 1.3}


def realistic_config() -> list[VipPlan]:
    """40 VIPs (20 dsr, 20 ipip), 100 backends in all."""
    plans = []
    our_mac = bytes.fromhex(OUR_MAC.replace(":", ""))
    for i in range(20):
        members = tuple(BackendPlan(ip(f"198.18.0.{10 + (i * 5 + j) % 200}"), 100, dst_mac=bytes([2, 0xbe, 0, 0, i, j]),
                                    src_mac=our_mac) for j in range(3 if i % 2 else 2))
        plans.append(VipPlan(ip(f"198.18.100.{i + 1}"), 80, 6, backends=members, name=f"dsr{i}"))
        remote = tuple(BackendPlan(ip(f"198.18.20.{10 + (i * 3 + j) % 200}"), 100) for j in range(3 if i % 2 else 2))
        plans.append(VipPlan(ip(f"198.18.101.{i + 1}"), 443, 6, ipip=True, backends=remote,
                             name=f"ipip{i}"))
    return plans


def packet(dst: str, src: str, sport: int, dport: int, flags="A") -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=OUR_MAC) / IP(src=src, dst=dst) /
                 TCP(sport=sport, dport=dport, flags=flags) / (b"x" * 10))


def distinct_flows(dst: str, dport: int, count: int, salt: int) -> list[bytes]:
    """SYNs of `count` flows, distinct from each other and from any other salt's
    (source address from i, source port from i and salt). Built from one scapy
    packet by patching the source address and port: the program reads no L4
    checksum, and scapy per packet took most of the benchmark's run time."""
    template = packet(dst, "198.19.0.0", 1024, dport, "S")
    src_at, sport_at = 14 + 12, 14 + 20
    frames = []
    for i in range(count):
        frame = bytearray(template)
        frame[src_at:src_at + 4] = bytes([198, 19 - salt % 2, (i >> 8) & 0xff, i & 0xff])
        frame[sport_at:sport_at + 2] = (1024 + (i * 7 + salt) % 60000).to_bytes(2, "big")
        frames.append(bytes(frame))
    return frames


def measure(calls: int, runs: int) -> dict:
    load_start = loadavg()
    with fibns.fib_namespace(f"lbdt-cost-{__import__('os').getpid()}") as ifindex:
        floor_bpf, floor_fn = load_helper("lbd_pass")
        dp = Datapath()
        dp.set_settings(ip(fibns.V4), ip(fibns.V6))
        Programmer(dp).apply(realistic_config())

        def run(fd: int, frame: bytes) -> int:
            return bpfsys.test_run(fd, frame, ifindex).duration_ns

        established_dsr = packet("198.18.100.7", "198.18.40.1", 40000, 80)
        established_ipip = packet("198.18.101.7", "198.18.40.1", 40000, 443)
        for warm in (established_dsr, established_ipip):  # place the flows once
            assert bpfsys.test_run(dp.prog_fd, warm, ifindex).action == 3
        # warm connection table: many other flows already in it
        for frame in distinct_flows("198.18.100.3", 80, 5000, salt=99):
            bpfsys.test_run(dp.prog_fd, frame, ifindex)

        cases = {
            "nonvip": lambda i: packet("198.18.200.1", "198.18.40.1", 40000, 80),
            "dsr_established": lambda i: established_dsr,
            "ipip_established": lambda i: established_ipip,
        }
        per_run: dict[str, list[float]] = {name: [] for name in
                                           ("floor", "nonvip", "dsr_new", "dsr_established",
                                            "ipip_new", "ipip_established")}
        # Diagnostic, no goal: one SYN again and again, its entry deleted from
        # user space (outside the timed run) before each call, so every call
        # misses and inserts, but into warm memory: the element just freed and
        # the same Maglev slot. What a new flow costs when nothing is cold.
        syn_again = packet("198.18.100.5", "198.18.50.1", 50000, 80, "S")
        syn_key = dp.flow_key(ip("198.18.50.1"), ip("198.18.100.5"), 50000, 80, 6)
        diagnostic_runs: list[float] = []
        for r in range(runs):
            fresh = {"dsr_new": distinct_flows("198.18.100.5", 80, calls, salt=2 * r),
                     "ipip_new": distinct_flows("198.18.101.5", 443, calls, salt=2 * r + 1)}
            samples: dict[str, list[int]] = {name: [] for name in per_run}
            nonvip = cases["nonvip"](0)
            misses_before = dp.global_counters()["ct_misses"]
            for i in range(calls):
                # interleave: the floor beside every case
                samples["floor"].append(run(floor_fn.fd, nonvip))
                samples["nonvip"].append(run(dp.prog_fd, nonvip))
                samples["dsr_new"].append(run(dp.prog_fd, fresh["dsr_new"][i]))
                samples["dsr_established"].append(run(dp.prog_fd, established_dsr))
                samples["ipip_new"].append(run(dp.prog_fd, fresh["ipip_new"][i]))
                samples["ipip_established"].append(run(dp.prog_fd, established_ipip))
            for name, values in samples.items():
                per_run[name].append(statistics.median(values))
            warm_insert = []
            for i in range(min(calls, 5000)):
                dp.conntrack.pop(syn_key, None)
                warm_insert.append(run(dp.prog_fd, syn_again))
            diagnostic_runs.append(statistics.median(warm_insert))
            misses_before += min(calls, 5000)
            # every new-flow packet of this run was a flow the table did not hold
            # (salts differ per run, so no run repeats another's flows)
            misses = dp.global_counters()["ct_misses"] - misses_before
            if misses != 2 * calls:
                raise RuntimeError(f"{misses} connection-table misses for {2 * calls} new flows")
        counters = dp.global_counters()
        floor_bpf.cleanup()

    floor = statistics.median(per_run["floor"])
    result = {"floor_ns": round(floor, 1), "cases": {}, "runs": runs, "calls_per_run": calls,
              "method": "BPF_PROG_TEST_RUN per call (repeat=1), median per run, median of runs",
              "new_flows_verified": True, "peer_floor_ns": PEER_FLOOR_NS,
              "machine": machine_info(xdp_mode="test_run", load_start=load_start)}
    for name, medians in per_run.items():
        if name == "floor":
            continue
        ns = statistics.median(medians)
        kind = "established" if "established" in name else "new" if "new" in name else "nonvip"
        result["cases"][name] = {
            "ns": round(ns, 1), "ratio_to_floor": round(ns / floor, 3),
            "over_floor_ns": round(ns - floor, 1),
            "peer_over_floor_ns": PEER_NS[kind] - PEER_FLOOR_NS,
            "spread_ns": [round(min(medians), 1), round(max(medians), 1)],
            "goal_ratio": GOALS[name], "goal_met": ns / floor <= GOALS[name],
            "peer_ns": PEER_NS[kind], "faster_than_peer": ns < PEER_NS[kind],
        }
    warm = statistics.median(diagnostic_runs)
    result["diagnostics"] = {"dsr_new_warm_insert": {
        "ns": round(warm, 1), "over_floor_ns": round(warm - floor, 1),
        "spread_ns": [round(min(diagnostic_runs), 1), round(max(diagnostic_runs), 1)],
        "what": "one SYN sent again and again, its connection-table entry deleted before "
                "each call: a new flow's insert into warm memory"}}
    result["floor_spread_ns"] = [round(min(per_run["floor"]), 1), round(max(per_run["floor"]), 1)]
    result["program_counters"] = {"drops": counters["drops"], "actions": counters["actions"]}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few calls: checks it runs, not how fast")
    parser.add_argument("--out", default=str(RESULTS / "xdp_cost.json"))
    args = parser.parse_args(argv)
    calls, runs = (300, 2) if args.quick else (20000, 5)
    result = measure(calls, runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"floor (XDP_PASS): {result['floor_ns']} ns per call")
    warm = result["diagnostics"]["dsr_new_warm_insert"]
    print(f"{'dsr_new, warm':18} {warm['ns']:8.1f} ns  (+{warm['over_floor_ns']:.0f} ns; diagnostic, no goal)")
    for name, case in result["cases"].items():
        print(f"{name:18} {case['ns']:8.1f} ns  {case['ratio_to_floor']:5.2f}x floor "
              f"(+{case['over_floor_ns']:.0f} ns; peer +{case['peer_over_floor_ns']}) "
              f"(goal {case['goal_ratio']}x: {'met' if case['goal_met'] else 'MISSED'}; "
              f"peer {case['peer_ns']} ns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
