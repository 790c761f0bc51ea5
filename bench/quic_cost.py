"""What routing QUIC by connection ID costs per packet (issue 22), beside today's UDP path.

    python -m bench.quic_cost [--quick] [--out bench/results/quic_cost.json]

Method as bench/notes/xdp_cost.md's: BPF_PROG_TEST_RUN, one run per call (a
DSR program rewrites the MACs, so repeat mode would time its own output),
cases interleaved call by call, the median of each case per run, then the
median over runs; the floor is `lbd_pass` (XDP_PASS) timed in the same loop.
Two pairs, each on frames of one size:

* `quic_cid` (a 1-RTT short-header packet to a QUIC VIP, placed by the
  server ID in its CID, no entry) against `udp_established` (today's UDP
  datagram of a flow with an entry, to the same VIP without `quic:`); 100-octet
  payloads. Goal: at most 1.1x.
* `quic_initial` (a v1 Initial of 1200 octets from a 4-tuple never seen,
  placed by the table, no entry) against `udp_new` (today's first datagram
  of a new flow, same size: the table, then an entry made). Goal: at most 1.1x.

In a namespace of its own (lbd.testing.fibns), DSR VIPs with three backends.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import statistics
import struct
import sys

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from bench.machine import arguments, loadavg, save
from bench.xdp_cost import Runner
from lbd.dataplane.maps import Datapath, load_helper
from lbd.dataplane.programmer import Programmer
from lbd.dataplane.quiclb import CidFormat
from lbd.plan import BackendPlan, QuicPlan, VipPlan
from lbd.testing import fibns

ip = ipaddress.ip_address
NAMESPACE = "lbdbench-quic"
QUIC_VIP, UDP_VIP, PORT = "198.18.100.70", "198.18.100.71", 443
FMT = CidFormat(0, 3, 4)
SIDS = [bytes.fromhex(s) for s in ("c4605e", "0a0b0c", "111111")]
XDP_TX = 3
CLIENT_MAC = "02:00:00:00:0c:01"


def plans() -> list[VipPlan]:
    our_mac = bytes.fromhex(fibns.MAC.replace(":", ""))
    members = tuple(BackendPlan(ip(f"198.18.0.{11 + i}"), 100, dst_mac=bytes([2, 0xbe, 0, 0, 0, i]),
                                src_mac=our_mac, server_id=sid) for i, sid in enumerate(SIDS))
    quic = VipPlan(ip(QUIC_VIP), PORT, 17, backends=members, name="h3",
                   quic=QuicPlan(FMT.config_id, FMT.server_id_length, FMT.cid_length))
    plain = VipPlan(ip(UDP_VIP), PORT, 17, name="udp",
                    backends=tuple(dataclasses.replace(b, server_id=None) for b in members))
    return [quic, plain]


def frame(dst: str, src: str, sport: int, payload: bytes) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=fibns.MAC) / IP(src=src, dst=dst) / UDP(sport=sport, dport=PORT)
                 / payload)


def short_header(size: int) -> bytes:
    return bytes([0x41]) + FMT.encode(SIDS[1]) + bytes(size - 1 - FMT.cid_length)


def initial(size: int) -> bytes:
    dcid, scid = bytes(range(8)), bytes(range(8, 16))
    head = bytes([0xC3]) + struct.pack("!I", 1) + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    return head + bytes(size - len(head))


class Sources:
    """A 4-tuple never seen before on every call: 198.19.x.y, port from 1024."""

    def __init__(self):
        self.n = 0

    def next(self) -> tuple[str, int]:
        self.n += 1
        return f"198.19.{(self.n >> 8) & 255}.{self.n & 255}", 1024 + (self.n >> 16)


def measure(calls: int, runs: int) -> dict:
    _pass_bpf, floor = load_helper("lbd_pass", "pass.c")
    with fibns.fib_namespace(NAMESPACE) as ifindex:
        dp = Datapath()
        Programmer(dp).apply(plans())
        run = Runner(ifindex, size=2048)  # room for the 1200-octet datagrams
        sources = Sources()
        established = frame(UDP_VIP, "198.18.40.1", 40000, bytes(100))
        cid_packet = frame(QUIC_VIP, "198.18.40.2", 40000, short_header(100))
        for f in (established, cid_packet):  # checked: each goes out to a backend
            run(dp.prog_fd, f)
            assert run.action == XDP_TX
        # templates patched per call with a fresh source (the program reads no checksum)
        new_udp = bytearray(frame(UDP_VIP, "198.19.0.0", 1024, bytes(1200)))
        new_initial = bytearray(frame(QUIC_VIP, "198.19.0.0", 1024, initial(1200)))
        before = dp.quic_counters()

        def fresh(template: bytearray) -> bytes:
            src, sport = sources.next()
            template[26:30] = ip(src).packed
            template[34:36] = sport.to_bytes(2, "big")
            return bytes(template)

        cases = {"floor": lambda: run(floor.fd, established),
                 "udp_established": lambda: run(dp.prog_fd, established),
                 "quic_cid": lambda: run(dp.prog_fd, cid_packet),
                 "udp_new": lambda: run(dp.prog_fd, fresh(new_udp)),
                 "quic_initial": lambda: run(dp.prog_fd, fresh(new_initial))}
        per_run: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(runs):
            samples: dict[str, list[int]] = {name: [] for name in cases}
            for _ in range(calls):
                for name, call in cases.items():
                    samples[name].append(call())
            for name, values in samples.items():
                per_run[name].append(statistics.median(values))
            dp.clear_flows()  # udp_new's entries: every run starts from the same table
            run(dp.prog_fd, established)
        after = dp.quic_counters()
    routed = after["routed_short"] - before["routed_short"]
    fallback = after["fb_client_cid"] - before["fb_client_cid"]
    assert routed == calls * runs and fallback == calls * runs, (routed, fallback)
    floor_ns = statistics.median(per_run["floor"])
    result = {"calls_per_run": calls, "runs": runs, "floor_ns": floor_ns, "cases": {}, "pairs": {}}
    for name, values in per_run.items():
        if name != "floor":
            ns = statistics.median(values)
            result["cases"][name] = {"ns": ns, "spread_ns": [min(values), max(values)],
                                     "over_floor_ns": ns - floor_ns}
    for case, base in (("quic_cid", "udp_established"), ("quic_initial", "udp_new")):
        ratios = [a / b for a, b in zip(per_run[case], per_run[base])]
        over = [(a - f) / (b - f) for a, b, f in zip(per_run[case], per_run[base], per_run["floor"])]
        result["pairs"][f"{case}_vs_{base}"] = {"ratio": statistics.median(ratios), "runs": ratios,
                                             "ratio_over_floor": statistics.median(over), "goal": 1.1}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "quic_cost", "few calls: checks it runs, not how fast")
    args = parser.parse_args(argv)
    calls, runs = (300, 2) if args.quick else (20000, 5)
    load_start = loadavg()
    result = measure(calls, runs)
    save(result, args, "test_run", load_start)
    print(f"floor (XDP_PASS): {result['floor_ns']} ns per call")
    for name, case in result["cases"].items():
        print(f"{name:18} {case['ns']:7.1f} ns  +{case['over_floor_ns']:6.1f} ns over the floor  "
              f"runs {case['spread_ns']}")
    for pair, r in result["pairs"].items():
        print(f"{pair:32} {r['ratio']:.3f}x (over the floor {r['ratio_over_floor']:.3f}x; goal {r['goal']}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
