"""Per-packet cost of the backend program (xdp/decap.c) through BPF_PROG_TEST_RUN,
beside a trivial XDP_PASS program measured the same way in the same run.

Cases, side by side (calls interleaved, so machine noise hits all alike):
  ipip                      plain IP-in-IP: strip the outer header, XDP_PASS
  gue_kept_syn              GUE, a SYN: kept without a socket lookup
  gue_kept_socket           GUE, a packet of a real established connection on
                            this namespace's loopback: one socket lookup, kept
  gue_forwarded             GUE, a packet of a flow no socket has while the
                            service listens on the port (every backend's case):
                            a lookup that finds the listener, the SYN cookie
                            check, the forward_to lookup (one prefix a family,
                            as the default of a backend on one subnet of
                            each; two since the IPv6 cases came), the rewrite,
                            a FIB lookup, XDP_TX
  gue_forwarded_no_listener the same where nothing listens: a lookup miss
  gue_kept_forwarded        GUE with hops 1 (at the second choice): kept unread
  gue6_kept_socket          gue_kept_socket in IPv6 (outer and inner)
  gue6_forwarded            gue_forwarded in IPv6

Every figure is per call (repeat=1, the program strips or rewrites the
packet) and the median of a run's calls, then the median over runs; each is
reported as its ratio to the floor of the same run (bench/notes/xdp_cost.md
says why ratios, not nanoseconds, compare across runs). Before timing, each
case's frame is run once and its counter checked: each does what its name says.
The run happens in a namespace of its own (lbd.testing.fibns: a resolved next
hop toward the second choice) with the sockets on its loopback.

Comparisons, as bench/xdp_cost.py makes them (its helpers build the sources):
--before REV also times the backend program of git revision REV (its xdp/
from git), each case call by call beside today's on the same frame (which of
the two runs first alternates, so neither always finds the other's warm
cache); --program REV builds today's program from REV's xdp/ instead of the
working tree's.

Writes bench/results/decap_cost.json:
  {"floor_ns": N, "cases": {"<case>": {"ns", "over_floor_ns", "ratio_to_floor",
   "ratio_to_ipip", "spread_ns", "mean_ns"}}, "runs", "calls_per_run", "checks", "program",
   "before": {"rev", "commit", "cases": {"<case>": {"ns", "over_floor_ns", "spread_ns", "mean_ns",
   "now_over_before", "now_over_before_over_floor", "runs_now_over_before",
   "now_over_before_mean"}}}, "machine"}
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import statistics
import subprocess
import sys
import tempfile

from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from bench.machine import arguments, loadavg, save
from bench.xdp_cost import Runner, building_from, program_source, trimmed_mean, xdp_tree
from lbd.dataplane import bpfsys, layout
from lbd.backend.decap import load_decap, write_forward_to
from lbd.dataplane.maps import load_helper
from lbd.testing import fibns, gue

NAMESPACE = "lbdb-decap"
THIS, LBD = fibns.V4, "198.18.1.200"          # this backend (lbd0's address), the lbd host
SENDER_MAC = "02:00:00:00:01:fd"
SECOND = "198.18.20.50"                       # behind fibns's resolved next hop
VIP, CLIENT, REMOTE = "198.18.90.1", "198.18.91.7", "198.19.3.4"
THIS6, LBD6, SECOND6 = fibns.V6, "fd00:1::c8", "fd00:20::50"   # the same in IPv6
VIP6, CLIENT6, REMOTE6 = "fd00:90::1", "fd00:91::7", "fd00:93::4"
PORT, QUIET_PORT = 8080, 8090                 # a listener's, and no listener's
SLOTS = {name: slot for slot, name in layout.enum_names("LBD_DECAP_").items()}
EXPECTED = {"ipip": "ipip", "gue_kept_syn": "kept_syn", "gue_kept_socket": "kept_socket",
            "gue_forwarded": "forwarded", "gue_forwarded_no_listener": "forwarded",
            "gue_kept_forwarded": "kept_forwarded", "gue6_kept_socket": "kept_socket",
            "gue6_forwarded": "forwarded"}


def gue_frame(inner, hops: int = 0) -> bytes:
    v6 = isinstance(inner, IPv6)
    return gue.frame(inner, second=SECOND6 if v6 else SECOND, outer_src=LBD6 if v6 else LBD,
                     outer_dst=THIS6 if v6 else THIS, src_mac=SENDER_MAC, dst_mac=fibns.MAC,
                     hops=hops)


def tcp(src: str, sport: int, dport: int, flags: str):
    l3 = IPv6(src=src, dst=VIP6) if ":" in src else IP(src=src, dst=VIP)
    return l3 / TCP(sport=sport, dport=dport, flags=flags, ack=99) / (b"x" * 10)


@contextlib.contextmanager
def connection(vip: str, client_address: str):
    """An established connection client_address -> vip:PORT on the loopback;
    yields the client's port."""
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    with socket.socket(family) as server, socket.socket(family) as client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((vip, PORT))
        server.listen(8)
        client.bind((client_address, 0))
        client.connect((vip, PORT))
        accepted, _ = server.accept()
        with accepted:
            yield client.getsockname()[1]


def frames(client_port: int, client6_port: int) -> dict[str, bytes]:
    ipip = Ether(src=SENDER_MAC, dst=fibns.MAC) / IP(src=LBD, dst=THIS, proto=4) / \
        tcp(REMOTE, 40000, PORT, "A")
    return {"ipip": bytes(ipip),
            "gue_kept_syn": gue_frame(tcp(REMOTE, 40001, PORT, "S")),
            "gue_kept_socket": gue_frame(tcp(CLIENT, client_port, PORT, "A")),
            "gue_forwarded": gue_frame(tcp(REMOTE, 40002, PORT, "A")),
            "gue_forwarded_no_listener": gue_frame(tcp(REMOTE, 40003, QUIET_PORT, "A")),
            "gue_kept_forwarded": gue_frame(tcp(REMOTE, 40004, PORT, "A"), hops=1),
            "gue6_kept_socket": gue_frame(tcp(CLIENT6, client6_port, PORT, "A")),
            "gue6_forwarded": gue_frame(tcp(REMOTE6, 40002, PORT, "A"))}


def check_cases(bpf, fd: int, run: Runner, cases: dict[str, bytes]) -> dict:
    """Run each frame once: the counter its name promises must move, alone."""
    stats = bpf[b"decap_stats"]

    def counters():
        return {n: stats.sum(stats.Key(s)).value for n, s in SLOTS.items()}

    checks = {}
    for name, frame in cases.items():
        before = counters()
        run(fd, frame)
        moved = {k: v - before[k] for k, v in counters().items() if v != before[k]}
        if moved != {EXPECTED[name]: 1}:
            raise RuntimeError(f"{name}: counters moved {moved}, expected {EXPECTED[name]} (action "
                               f"{run.action})")
        checks[name] = {"counter": EXPECTED[name], "action": run.action}
    return checks


def load_program(xdp_dir) -> tuple:
    """The backend program built from `xdp_dir`, its forward_to holding the
    second choice's prefix; (bpf, fd)."""
    with building_from(xdp_dir):
        bpf, fd = load_decap()
    write_forward_to(bpfsys.program_id(fd), [ipaddress.ip_network(f"{SECOND}/24", strict=False),
                                             ipaddress.ip_network(f"{SECOND6}/64", strict=False)])
    return bpf, fd


def measure(calls: int, runs: int, before_rev: str | None = None,
            program_rev: str | None = None) -> dict:
    _pass_bpf, floor = load_helper("lbd_pass", "pass.c")
    with tempfile.TemporaryDirectory(prefix="lbd-decap-") as work:
        today = xdp_tree(program_rev, os.path.join(work, "today"))
        if today is None:
            raise SystemExit(f"--program {program_rev}: git cannot give its xdp/")
        bpf, fd = load_program(today)
        before = None
        if before_rev:
            tree = xdp_tree(before_rev, os.path.join(work, "before"))
            if tree is None:
                raise SystemExit(f"--before {before_rev}: git cannot give its xdp/")
            before = load_program(tree)
    with fibns.fib_namespace(NAMESPACE) as ifindex:
        for address in (VIP, CLIENT, VIP6, CLIENT6):
            prefix = 128 if ":" in address else 32
            subprocess.run(["ip", "-n", NAMESPACE, "addr", "add", f"{address}/{prefix}", "dev", "lo"],
                           check=True)
        with connection(VIP, CLIENT) as client_port, connection(VIP6, CLIENT6) as client6_port:
            cases = frames(client_port, client6_port)
            run = Runner(ifindex)
            checks = check_cases(bpf, fd, run, cases)
            if before:
                check_cases(*before, run, cases)
            per_run = {name: [] for name in ("floor", *cases)}
            means = {name: [] for name in ("floor", *cases)}
            # (today's name, before's name or None, frame) per case; the floor as a case of its own
            order = [("floor", None, cases["ipip"])] + [(n, f"before_{n}" if before else None, f)
                                                       for n, f in cases.items()]
            if before:
                per_run.update({f"before_{n}": [] for n in cases})
                means.update({f"before_{n}": [] for n in cases})
            fds = {"floor": floor.fd, **{n: fd for n in cases},
                   **({f"before_{n}": before[1] for n in cases} if before else {})}
            for r in range(runs):
                samples = {name: [] for name in per_run}
                rotated = order[r % len(order):] + order[:r % len(order)]
                for i in range(calls):
                    for name, other, frame in rotated:
                        pair = (name, other) if not other or i % 2 else (other, name)
                        for each in pair:
                            if each:
                                samples[each].append(run(fds[each], frame))
                for name, values in samples.items():
                    per_run[name].append(statistics.median(values))
                    means[name].append(trimmed_mean(values))
    floor_ns = statistics.median(per_run["floor"])
    medians = {name: statistics.median(v) for name, v in per_run.items() if name != "floor"}
    ipip_over = max(medians["ipip"] - floor_ns, 1)
    result = {"floor_ns": floor_ns, "runs": runs, "calls_per_run": calls, "checks": checks,
              "program": program_source(program_rev), "cases": {}}
    for name in cases:
        ns = medians[name]
        result["cases"][name] = {
            "ns": ns, "over_floor_ns": round(ns - floor_ns, 1),
            "ratio_to_floor": round(ns / floor_ns, 2),
            # the program's own work against plain ipip's, the floor taken off both
            "ratio_to_ipip": round((ns - floor_ns) / ipip_over, 2),
            "spread_ns": [min(per_run[name]), max(per_run[name])],
            # the timer counts in steps of about 10 ns here: a mean resolves less
            "mean_ns": round(statistics.median(means[name]), 1)}
    if before:
        result["before"] = {**program_source(before_rev), "rev": before_rev,
                            "cases": before_ratios(per_run, means, medians, floor_ns, cases)}
    return result


def before_ratios(per_run: dict, means: dict, medians: dict, floor_ns: float, cases) -> dict:
    """Today's figure over --before's, per case: of the medians, of the
    program's own share (the floor taken off both), run by run, and of the
    (trimmed) means, which the timer's 10 ns steps blur less."""
    out = {}
    for name in cases:
        now, then = medians[name], medians[f"before_{name}"]
        mean_now, mean_then = (statistics.median(means[n]) for n in (name, f"before_{name}"))
        out[name] = {
            "ns": then, "over_floor_ns": round(then - floor_ns, 1),
            "mean_ns": round(mean_then, 1), "now_over_before_mean": round(mean_now / mean_then, 3),
            "spread_ns": [min(per_run[f"before_{name}"]), max(per_run[f"before_{name}"])],
            "now_over_before": round(now / then, 3),
            "now_over_before_over_floor": round((now - floor_ns) / max(then - floor_ns, 1), 3),
            "runs_now_over_before": [round(a / b, 3) for a, b in
                                     zip(per_run[name], per_run[f"before_{name}"])]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "decap_cost", "few calls: checks it runs, not how fast")
    parser.add_argument("--before", metavar="REV",
                        help="also time the backend program of git revision REV beside today's")
    parser.add_argument("--program", metavar="REV",
                        help="build today's program from git revision REV's xdp/ (e.g. HEAD) "
                             "instead of the working tree's")
    args = parser.parse_args(argv)
    calls, runs = (300, 2) if args.quick else (20000, 5)
    load_start = loadavg()
    result = measure(calls, runs, args.before, args.program)
    save(result, args, "test_run", load_start)
    print(f"floor (XDP_PASS): {result['floor_ns']} ns per call")
    for name, case in result["cases"].items():
        print(f"{name:28} {case['ns']:7.1f} ns  {case['ratio_to_floor']:5.2f}x floor  "
              f"+{case['over_floor_ns']:6.1f} ns  {case['ratio_to_ipip']:5.2f}x ipip's work  "
              f"spread {case['spread_ns']}")
    for name, case in result.get("before", {}).get("cases", {}).items():
        print(f"{name:28} --before {result['before']['rev']}: {case['ns']:7.1f} ns; now/before "
              f"{case['now_over_before']:.3f} (over the floor {case['now_over_before_over_floor']:.3f}; "
              f"runs {case['runs_now_over_before']}; of the means {case['now_over_before_mean']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
