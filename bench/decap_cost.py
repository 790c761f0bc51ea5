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
                            check, the forward_to lookup (one prefix, as the
                            default of a backend on one subnet), the rewrite,
                            a FIB lookup, XDP_TX
  gue_forwarded_no_listener the same where nothing listens: a lookup miss
  gue_kept_forwarded        GUE with hops 1 (at the second choice): kept unread

Every figure is per call (repeat=1, the program strips or rewrites the
packet) and the median of a run's calls, then the median over runs; each is
reported as its ratio to the floor of the same run (bench/notes/xdp_cost.md
says why ratios, not nanoseconds, compare across runs). Before timing, each
case's frame is run once and its counter checked: each does what its name says.
The run happens in a namespace of its own (lbd.testing.fibns: a resolved next
hop toward the second choice) with the sockets on its loopback.

Writes bench/results/decap_cost.json:
  {"floor_ns": N, "cases": {"<case>": {"ns", "over_floor_ns", "ratio_to_floor",
   "ratio_to_ipip", "spread_ns"}}, "runs", "calls_per_run", "checks", "machine"}
"""
from __future__ import annotations

import contextlib
import ipaddress
import socket
import statistics
import subprocess
import sys

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from bench.machine import arguments, loadavg, save
from bench.xdp_cost import Runner
from lbd import bpfsys, layout
from lbd.backend_prep import load_decap, write_forward_to
from lbd.datapath import load_helper
from lbd.testing import fibns, gue

NAMESPACE = "lbdb-decap"
THIS, LBD = fibns.V4, "198.18.1.200"          # this backend (lbd0's address), the lbd host
SENDER_MAC = "02:00:00:00:01:fd"
SECOND = "198.18.20.50"                       # behind fibns's resolved next hop
VIP, CLIENT, REMOTE = "198.18.90.1", "198.18.91.7", "198.19.3.4"
PORT, QUIET_PORT = 8080, 8090                 # a listener's, and no listener's
SLOTS = {name: slot for slot, name in layout.enum_names("LBD_DECAP_").items()}
EXPECTED = {"ipip": "ipip", "gue_kept_syn": "kept_syn", "gue_kept_socket": "kept_socket",
            "gue_forwarded": "forwarded", "gue_forwarded_no_listener": "forwarded",
            "gue_kept_forwarded": "kept_forwarded"}


def gue_frame(inner, hops: int = 0) -> bytes:
    return gue.frame(inner, second=SECOND, outer_src=LBD, outer_dst=THIS, src_mac=SENDER_MAC,
                     dst_mac=fibns.MAC, hops=hops)


def tcp(src: str, sport: int, dport: int, flags: str):
    return IP(src=src, dst=VIP) / TCP(sport=sport, dport=dport, flags=flags, ack=99) / (b"x" * 10)


@contextlib.contextmanager
def connection():
    """An established connection CLIENT -> VIP:PORT on the loopback; yields
    the client's port."""
    with socket.socket() as server, socket.socket() as client:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((VIP, PORT))
        server.listen(8)
        client.bind((CLIENT, 0))
        client.connect((VIP, PORT))
        accepted, _ = server.accept()
        with accepted:
            yield client.getsockname()[1]


def frames(client_port: int) -> dict[str, bytes]:
    ipip = Ether(src=SENDER_MAC, dst=fibns.MAC) / IP(src=LBD, dst=THIS, proto=4) / \
        tcp(REMOTE, 40000, PORT, "A")
    return {"ipip": bytes(ipip),
            "gue_kept_syn": gue_frame(tcp(REMOTE, 40001, PORT, "S")),
            "gue_kept_socket": gue_frame(tcp(CLIENT, client_port, PORT, "A")),
            "gue_forwarded": gue_frame(tcp(REMOTE, 40002, PORT, "A")),
            "gue_forwarded_no_listener": gue_frame(tcp(REMOTE, 40003, QUIET_PORT, "A")),
            "gue_kept_forwarded": gue_frame(tcp(REMOTE, 40004, PORT, "A"), hops=1)}


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


def measure(calls: int, runs: int) -> dict:
    _pass_bpf, floor = load_helper("lbd_pass", "pass.c")
    bpf, fd = load_decap()
    write_forward_to(bpfsys.program_id(fd), [ipaddress.ip_network(f"{SECOND}/24", strict=False)])
    with fibns.fib_namespace(NAMESPACE) as ifindex:
        for address in (VIP, CLIENT):
            subprocess.run(["ip", "-n", NAMESPACE, "addr", "add", f"{address}/32", "dev", "lo"],
                           check=True)
        with connection() as client_port:
            cases = frames(client_port)
            run = Runner(ifindex)
            checks = check_cases(bpf, fd, run, cases)
            per_run = {name: [] for name in ("floor", *cases)}
            order = [("floor", floor.fd, cases["ipip"])] + [(n, fd, f) for n, f in cases.items()]
            for r in range(runs):
                samples = {name: [] for name in per_run}
                rotated = order[r % len(order):] + order[:r % len(order)]
                for _ in range(calls):
                    for name, prog, frame in rotated:
                        samples[name].append(run(prog, frame))
                for name, values in samples.items():
                    per_run[name].append(statistics.median(values))
    floor_ns = statistics.median(per_run["floor"])
    medians = {name: statistics.median(v) for name, v in per_run.items() if name != "floor"}
    ipip_over = max(medians["ipip"] - floor_ns, 1)
    result = {"floor_ns": floor_ns, "runs": runs, "calls_per_run": calls, "checks": checks,
              "cases": {}}
    for name, ns in medians.items():
        result["cases"][name] = {
            "ns": ns, "over_floor_ns": round(ns - floor_ns, 1),
            "ratio_to_floor": round(ns / floor_ns, 2),
            # the program's own work against plain ipip's, the floor taken off both
            "ratio_to_ipip": round((ns - floor_ns) / ipip_over, 2),
            "spread_ns": [min(per_run[name]), max(per_run[name])]}
    return result


def main(argv: list[str] | None = None) -> int:
    args = arguments(__doc__, "decap_cost", "few calls: checks it runs, not how fast").parse_args(argv)
    calls, runs = (300, 2) if args.quick else (20000, 5)
    load_start = loadavg()
    result = measure(calls, runs)
    save(result, args, "test_run", load_start)
    print(f"floor (XDP_PASS): {result['floor_ns']} ns per call")
    for name, case in result["cases"].items():
        print(f"{name:28} {case['ns']:7.1f} ns  {case['ratio_to_floor']:5.2f}x floor  "
              f"+{case['over_floor_ns']:6.1f} ns  {case['ratio_to_ipip']:5.2f}x ipip's work  "
              f"spread {case['spread_ns']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
