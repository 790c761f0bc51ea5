"""Data-plane throughput: delivered packets per second through each balancer, same run.

Topology (a dedicated line of namespaces, not the lab's router/switch layout,
so no bridge or router hop is added to any arm):

    gen eth0 ── in0 lb out1 ── eth0 be1      198.18.2.0/24
     │                 out2 ── eth0 be2      198.18.3.0/24
     └─ d0 ────────────────── d0 be1        (the `direct` arm only)

trafgen (netsniff-ng) in `gen`, pinned to core 0, sends 64-byte UDP frames
(and, with --tcp, TCP ACK segments) to a VIP from 2,048 flows (source ports
1024..3071). Backends count what arrives with the lbd_count XDP program
(xdp/pass.c) on their interface; the count over a fixed window after a
warm-up gives delivered pps. Every veth has TX checksum offload off and an
XDP program on the receiving peer, so native XDP redirect delivers
(docs/background.md).

Arms (all on the same topology, one after the other in every run):
  direct      gen -> be1 over d0: no balancer hop
  xdp_floor   a trivial native XDP program on lb in0: rewrite the MACs and
              bpf_redirect to out1 (the backends sit behind another port of
              the balancer here, so the floor redirects instead of XDP_TX)
  lbd_dsr     lbd (xdp/balancer.c), native, 40 VIPs / 200 backends, L2 DSR
              with the egress ifindex (redirect to out1/out2)
  lbd_ipip    lbd, IPv4-in-IPv4 to backends found by bpf_fib_lookup
  nftables    no XDP on lb; nftables DNAT with `jhash ... mod 2 map`, conntrack
  userspace   nginx `stream` UDP proxy (2 workers) if its module is installed,
              else a 2-process Python UDP proxy (the report says which); UDP
              only: a proxy terminates TCP, and ACK segments of connections
              it never accepted reach no socket, so --tcp has no such arm

hop_ns = 1e9/pps(arm) - 1e9/pps(direct).

After the measured runs, a profile pass sends traffic once more through each
XDP arm with the kernel's BPF run-time statistics on (BPF_ENABLE_STATS; off
during the measured runs, since it adds two clock reads to every program
run) and records the balancer program's own time per packet on this
traffic, from /proc/self/fdinfo (run_time_ns / run_cnt), and its size.
This machine has no hardware performance counters, so `bpftool prog
profile` (cycles, instructions) cannot run here.

Writes bench/results/datapath.json (datapath_tcp.json from bench.run --tcp):
  {"arms": {"<arm>": {"pps": F, "hop_ns": F, ...}}, "goals": {...},
   "program_profile": {"<arm>": {"ns_per_packet": F, ...}}, "machine": {...}}
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import arguments, loadavg, save
from bench.netline import NamespaceLine, nsx, sh
from lbd.dataplane import bpfsys
from lbd.testing.netns import stop_groups

NGINX_STREAM = "/usr/lib/nginx/modules/ngx_stream_module.so"
ARMS = ["direct", "xdp_floor", "lbd_dsr", "lbd_ipip", "nftables", "userspace"]
USERSPACE_TCP = ("not run with --tcp: a user-space proxy terminates TCP, and ACK segments of "
                 "connections it never accepted reach no socket")
# goals on the hop (issue 5): lbd within 1.1x the floor's hop; nftables' hop
# at least 1.4x lbd's; the user-space proxy's at least 6.5x lbd's
GOALS = {"lbd_vs_floor_max": 1.1, "nftables_vs_lbd_min": 1.4, "userspace_vs_lbd_min": 6.5}

MAC = {"gen": "02:00:c6:12:01:01", "in0": "02:00:c6:12:01:02",
       "out1": "02:00:c6:12:02:01", "be1": "02:00:c6:12:02:02",
       "out2": "02:00:c6:12:03:01", "be2": "02:00:c6:12:03:02",
       "gd0": "02:00:c6:12:09:01", "bd0": "02:00:c6:12:09:02"}
VIP_DSR, VIP_IPIP, PORT = "198.18.100.1", "198.18.101.1", 5300
FLOWS = (1024, 3071)

FLOOR_SRC = r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
int bench_floor(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	const unsigned char dst[ETH_ALEN] = {DST_MAC};
	const unsigned char src[ETH_ALEN] = {SRC_MAC};

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return bpf_redirect(OUT_IFINDEX, 0);
}
"""

PY_PROXY = r"""
import os, socket, sys, zlib
listen, port, backends = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(",")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
s.bind((listen, port))
outs = []
for b in backends:
    o = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    o.connect((b, port))
    outs.append(o)
n = len(outs)
buf = bytearray(2048)
recv, flows = s.recvfrom_into, {}
while True:
    size, peer = recv(buf)
    o = flows.get(peer)
    if o is None:
        o = flows[peer] = outs[zlib.crc32(repr(peer).encode()) % n]
    try:
        o.send(buf[:size])
    except OSError:
        pass
"""


class Line(NamespaceLine):
    """The namespaces above; removed on close (also on failure)."""
    ROLES = ("gen", "lb", "be1", "be2")

    def __init__(self):
        super().__init__(0)

    def _build(self) -> None:
        n = self.names
        links = [("gen", "eth0", MAC["gen"], "lb", "in0", MAC["in0"]),
                 ("lb", "out1", MAC["out1"], "be1", "eth0", MAC["be1"]),
                 ("lb", "out2", MAC["out2"], "be2", "eth0", MAC["be2"]),
                 ("gen", "d0", MAC["gd0"], "be1", "d0", MAC["bd0"])]
        for a, a_if, a_mac, b, b_if, b_mac in links:
            sh(["ip", "-n", n[a], "link", "add", a_if, "address", a_mac, "type", "veth",
                "peer", "name", b_if, "address", b_mac, "netns", n[b]])
            for ns, dev in ((n[a], a_if), (n[b], b_if)):
                sh(["ip", "-n", ns, "link", "set", dev, "up"])
                sh(nsx(ns, "ethtool", "-K", dev, "tx", "off"))
        addrs = [("gen", "eth0", "198.18.1.1/24"), ("lb", "in0", "198.18.1.2/24"),
                 ("lb", "out1", "198.18.2.1/24"), ("be1", "eth0", "198.18.2.2/24"),
                 ("lb", "out2", "198.18.3.1/24"), ("be2", "eth0", "198.18.3.2/24"),
                 ("gen", "d0", "198.18.9.1/24"), ("be1", "d0", "198.18.9.2/24")]
        for node, dev, cidr in addrs:
            sh(["ip", "-n", n[node], "addr", "add", cidr, "dev", dev])
        # no ARP anywhere on the measured path: permanent neighbours
        sh(["ip", "-n", n["lb"], "neigh", "replace", "198.18.2.2", "lladdr", MAC["be1"],
            "dev", "out1", "nud", "permanent"])
        sh(["ip", "-n", n["lb"], "neigh", "replace", "198.18.3.2", "lladdr", MAC["be2"],
            "dev", "out2", "nud", "permanent"])
        sh(["ip", "-n", n["lb"], "neigh", "replace", "198.18.1.1", "lladdr", MAC["gen"],
            "dev", "in0", "nud", "permanent"])
        for k in range(10, 30):  # ipip backends, resolved for bpf_fib_lookup
            for net, dev, mac in ((2, "out1", MAC["be1"]), (3, "out2", MAC["be2"])):
                sh(["ip", "-n", n["lb"], "neigh", "replace", f"198.18.{net}.{k}", "lladdr", mac,
                    "dev", dev, "nud", "permanent"])
        for node in ("be1", "be2"):
            sh(["ip", "-n", n[node], "route", "add", "default", "via",
                "198.18.2.1" if node == "be1" else "198.18.3.1"])
        sh(["ip", "-n", n["gen"], "route", "add", "198.18.100.0/23", "via", "198.18.1.2"])
        self._lookup_ifindexes("lb", ("in0", "out1", "out2"))


def trafgen_config(path: str, dst_mac: str, src_mac: str, vip: str, tcp: bool) -> None:
    lo, hi = FLOWS
    l4 = (f"tcp(sp=dinc({lo}, {hi}), dp={PORT}, seq=1000, ackseq=1, ack, win=512)" if tcp
          else f"udp(sp=dinc({lo}, {hi}), dp={PORT})")
    pad = 6 if tcp else 18   # 60-byte frames (64 with the FCS)
    Path(path).write_text(f"{{ eth(da={dst_mac}, sa={src_mac}), "
                          f"ipv4(saddr=198.18.1.1, daddr={vip}, ttl=64), {l4}, "
                          f"fill(0x41, {pad}) }}\n")


def lbd_plans(line: Line, tcp: bool):
    """40 VIPs (20 dsr, 20 ipip) x 5 backends: 200 backends, alternating be1/be2."""
    from lbd.plan import BackendPlan, VipPlan

    ip = ipaddress.ip_address
    proto = 6 if tcp else 17
    plans = []
    for i in range(20):
        dsr = []
        for j in range(5):
            which = 1 + (i + j) % 2
            dsr.append(BackendPlan(ip(f"198.18.{1 + which}.{100 + i * 5 + j}"), 100,
                                   dst_mac=bytes.fromhex(MAC[f"be{which}"].replace(":", "")),
                                   src_mac=bytes.fromhex(MAC[f"out{which}"].replace(":", "")),
                                   ifindex=line.ifindex[f"out{which}"]))
        plans.append(VipPlan(ip(f"198.18.100.{i + 1}"), PORT, proto, backends=tuple(dsr),
                             name=f"dsr{i}"))
        ipip = tuple(BackendPlan(ip(f"198.18.{2 + (i + j) % 2}.{10 + (i + j) % 20}"), 100)
                     for j in range(5))
        plans.append(VipPlan(ip(f"198.18.101.{i + 1}"), PORT, proto, ipip=True, backends=ipip,
                             name=f"ipip{i}"))
    return plans


def _run_stats(prog_fd: int) -> dict:
    """run_time_ns, run_cnt (and size fields) of a loaded program, from fdinfo."""
    stats = {}
    with open(f"/proc/self/fdinfo/{prog_fd}", encoding="ascii") as info:
        for line in info:
            key, _, value = line.partition(":")
            if value.strip().isdigit():
                stats[key.strip()] = int(value)
    bpftool = subprocess.run(["bpftool", "prog", "show", "id", str(stats.get("prog_id", 0)), "--json"],
                             capture_output=True, text=True, check=False)
    if bpftool.returncode == 0:
        shown = json.loads(bpftool.stdout)
        stats.update(jited_bytes=shown.get("bytes_jited"), xlated_bytes=shown.get("bytes_xlated"))
    return stats


class Bench:
    def __init__(self, line: Line, tcp: bool, window: float, warmup: float):
        from lbd.dataplane.maps import load_helper

        self.line, self.tcp, self.window, self.warmup = line, tcp, window, warmup
        self.count_bpf, count_fn = load_helper("lbd_count")
        self.arrivals = self.count_bpf[b"arrivals"]
        self.modes = {}
        for node, dev in (("be1", "eth0"), ("be2", "eth0"), ("be1", "d0"), ("gen", "eth0")):
            self.modes[f"{node}/{dev}"] = line.attach(node, dev, count_fn.fd)
        self.tmp = tempfile.mkdtemp(prefix="lbdb-")
        self.dp = None
        self.floor = None
        self.proxy_kind = "nginx stream" if os.path.exists(NGINX_STREAM) else "python udp proxy"

    def profile(self, arms: list[str], window: float) -> dict:
        """Each XDP arm's program: its own ns per packet on this traffic."""
        out = {}
        try:
            stats_fd = bpfsys.enable_run_time_stats()  # on while the fd is open
        except OSError as err:
            return {"error": str(err)}
        try:
            for arm in arms:
                fd = {"xdp_floor": lambda: self.floor_fn.fd,
                      "lbd_dsr": lambda: self._lbd().prog_fd,
                      "lbd_ipip": lambda: self._lbd().prog_fd}[arm]()
                before = _run_stats(fd)
                saved, self.window = self.window, window
                try:
                    pps = self.arm(arm)
                finally:
                    self.window = saved
                after = _run_stats(fd)
                runs = after["run_cnt"] - before["run_cnt"]
                out[arm] = {"ns_per_packet": round((after["run_time_ns"] - before["run_time_ns"])
                                                   / runs, 1) if runs else None,
                            "packets": runs, "pps_while_profiled": round(pps, 1),
                            "jited_bytes": after.get("jited_bytes"),
                            "xlated_bytes": after.get("xlated_bytes"),
                            "verified_insns": after.get("verified_insns")}
        finally:
            os.close(stats_fd)
        return out

    def count(self) -> int:
        return sum(self.arrivals[ctypes.c_int(0)])

    def blast(self, dev: str, dst_mac: str, src_mac: str, vip: str) -> float:
        """trafgen on core 0 for warmup+window seconds; delivered pps over the window."""
        cfg = os.path.join(self.tmp, "trafgen.cfg")
        trafgen_config(cfg, dst_mac, src_mac, vip, self.tcp)
        bound = self.warmup + self.window + 10
        proc = subprocess.Popen(nsx(self.line.names["gen"], "timeout", "-s", "INT", str(int(bound)),
                                    "taskset", "-c", "0", "trafgen", "-o", dev, "-i", cfg,
                                    "-P", "1", "-Q"),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            time.sleep(self.warmup)
            c0, t0 = self.count(), time.perf_counter()
            time.sleep(self.window)
            c1, t1 = self.count(), time.perf_counter()
        finally:
            stop_groups([proc], signal.SIGINT, timeout=10)
        return (c1 - c0) / (t1 - t0)

    # --- arms -------------------------------------------------------------------
    def arm(self, name: str) -> float:
        return getattr(self, f"arm_{name}")()

    def arm_direct(self) -> float:
        return self.blast("d0", MAC["bd0"], MAC["gd0"], VIP_DSR)

    def arm_xdp_floor(self) -> float:
        from bcc import BPF

        if self.floor is None:
            macs = {k: ", ".join(f"0x{b}" for b in MAC[k].split(":")) for k in ("be1", "out1")}
            src = (FLOOR_SRC.replace("DST_MAC", macs["be1"]).replace("SRC_MAC", macs["out1"])
                   .replace("OUT_IFINDEX", str(self.line.ifindex["out1"])))
            self.floor = BPF(text=src.encode())
            self.floor_fn = self.floor.load_func(b"bench_floor", BPF.XDP)
        self.modes["lb/in0 xdp_floor"] = self.line.attach("lb", "in0", self.floor_fn.fd)
        try:
            return self.blast("eth0", MAC["in0"], MAC["gen"], VIP_DSR)
        finally:
            self.line.attach("lb", "in0", -1)

    def _lbd(self):
        if self.dp is None:
            from lbd.dataplane.maps import Datapath
            from lbd.dataplane.programmer import Programmer

            self.dp = Datapath()
            self.dp.set_settings(ipaddress.ip_address("198.18.2.1"), None)
            Programmer(self.dp).apply(lbd_plans(self.line, self.tcp))
        return self.dp

    def _lbd_arm(self, vip: str, tag: str) -> float:
        dp = self._lbd()
        self.modes[f"lb/in0 {tag}"] = self.line.attach("lb", "in0", dp.prog_fd)
        try:
            return self.blast("eth0", MAC["in0"], MAC["gen"], vip)
        finally:
            self.line.attach("lb", "in0", -1)

    def arm_lbd_dsr(self) -> float:
        return self._lbd_arm(VIP_DSR, "lbd_dsr")

    def arm_lbd_ipip(self) -> float:
        return self._lbd_arm(VIP_IPIP, "lbd_ipip")

    def arm_nftables(self) -> float:
        proto = "tcp" if self.tcp else "udp"
        ruleset = f"""table ip lbdbench {{
  chain pre {{
    type nat hook prerouting priority dstnat; policy accept;
    ip daddr {VIP_DSR} {proto} dport {PORT} dnat to jhash ip saddr . {proto} sport mod 2 map {{ 0 : 198.18.2.2, 1 : 198.18.3.2 }}
  }}
}}
"""
        path = os.path.join(self.tmp, "nft.conf")
        Path(path).write_text(ruleset)
        lb = self.line.names["lb"]
        sh(nsx(lb, "nft", "-f", path))
        try:
            return self.blast("eth0", MAC["in0"], MAC["gen"], VIP_DSR)
        finally:
            sh(nsx(lb, "nft", "delete", "table", "ip", "lbdbench"), check=False)
            sh(nsx(lb, "conntrack", "-F"), check=False)

    def arm_userspace(self) -> float:
        if self.tcp:
            return float("nan")   # see USERSPACE_TCP: no like-for-like arm
        lb = self.line.names["lb"]
        sh(["ip", "-n", lb, "addr", "add", f"{VIP_DSR}/32", "dev", "lo"])
        procs = []
        try:
            if self.proxy_kind == "nginx stream":
                conf = os.path.join(self.tmp, "nginx.conf")
                Path(conf).write_text(f"""load_module {NGINX_STREAM};
worker_processes 2; pid {self.tmp}/nginx.pid; error_log stderr crit; daemon off;
events {{ worker_connections 65536; }}
stream {{
  upstream be {{ hash $remote_addr$remote_port consistent; server 198.18.2.2:{PORT}; server 198.18.3.2:{PORT}; }}
  server {{ listen {VIP_DSR}:{PORT} udp reuseport; proxy_pass be; proxy_responses 0; proxy_timeout 5s; }}
}}
""")
                procs.append(subprocess.Popen(nsx(lb, "nginx", "-c", conf, "-p", self.tmp),
                                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                              start_new_session=True))
            else:
                for _ in range(os.cpu_count() or 1):
                    procs.append(subprocess.Popen(nsx(lb, sys.executable, "-c", PY_PROXY, VIP_DSR,
                                                      str(PORT), "198.18.2.2,198.18.3.2"),
                                                  stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL,
                                                  start_new_session=True))
            time.sleep(1.0)
            return self.blast("eth0", MAC["in0"], MAC["gen"], VIP_DSR)
        finally:
            stop_groups(procs)
            sh(["ip", "-n", lb, "addr", "del", f"{VIP_DSR}/32", "dev", "lo"], check=False)

    def close(self) -> None:
        import shutil

        for bpf in (self.floor, self.count_bpf, self.dp.bpf if self.dp else None):
            if bpf is not None:
                with contextlib.suppress(Exception):
                    bpf.cleanup()
        shutil.rmtree(self.tmp, ignore_errors=True)


def measure(runs: int, window: float, warmup: float, tcp: bool, arms: list[str]) -> dict:
    per_arm: dict[str, list[float]] = {a: [] for a in arms}
    with Line() as line:
        bench = Bench(line, tcp, window, warmup)
        try:
            for r in range(runs):
                for arm in arms:
                    pps = bench.arm(arm)
                    per_arm[arm].append(pps)
                    print(f"run {r + 1}/{runs} {arm:10} {pps:12,.0f} pps", flush=True)
            profiled = [a for a in ("xdp_floor", "lbd_dsr", "lbd_ipip") if a in arms]
            program_profile = bench.profile(profiled, max(window, 1.0)) if profiled else {}
            lbd_counters = bench.dp.global_counters() if bench.dp else {}
            modes, proxy_kind = dict(bench.modes), bench.proxy_kind
        finally:
            bench.close()
    result: dict = {"arms": {}, "runs": runs, "window_s": window, "warmup_s": warmup,
                    "protocol": "tcp-ack" if tcp else "udp", "frame_bytes": 64,
                    "flows": FLOWS[1] - FLOWS[0] + 1, "generator": "trafgen -P 1, taskset -c 0",
                    "topology": "line: gen -> lb -> be1/be2 (+ gen -> be1 direct link); "
                                "own namespaces, no bridge/router",
                    "userspace_proxy": proxy_kind, "xdp_modes": modes,
                    "lbd_config": "40 VIPs (20 dsr, 20 ipip) x 5 backends = 200 backends",
                    "lbd_actions": lbd_counters.get("actions", {}),
                    "lbd_drops": {k: v for k, v in lbd_counters.get("drops", {}).items() if v}}
    result["program_profile"] = program_profile
    if tcp and "userspace" in arms:
        result["arms_not_run"] = {"userspace": USERSPACE_TCP}
    direct = statistics.median(per_arm["direct"]) if per_arm.get("direct") else None
    for arm, values in per_arm.items():
        good = [v for v in values if v == v]
        if not good:
            continue
        pps = statistics.median(good)
        entry = {"pps": round(pps, 1), "spread_pps": [round(min(good), 1), round(max(good), 1)],
                 "runs_pps": [round(v, 1) for v in good]}
        if direct and pps > 0:
            entry["hop_ns"] = round(1e9 / pps - 1e9 / direct, 1)
            entry["ratio_to_direct"] = round(pps / direct, 3)
        result["arms"][arm] = entry
    result["goals"] = goals(result["arms"])
    return result


def goals(arms: dict) -> dict:
    hop = {a: v.get("hop_ns") for a, v in arms.items()}
    out = {}
    floor = hop.get("xdp_floor")
    for lbd in ("lbd_dsr", "lbd_ipip"):
        if hop.get(lbd) is None:
            continue
        if floor is not None and floor > 0:
            r = hop[lbd] / floor
            out[f"{lbd}_hop_vs_floor"] = {"value": round(r, 3), "goal": f"<= {GOALS['lbd_vs_floor_max']}",
                                          "met": r <= GOALS["lbd_vs_floor_max"],
                                          "excess_ns": round(hop[lbd] - floor, 1)}
        elif floor is not None:
            # the floor's hop is within noise of zero: a ratio means nothing
            out[f"{lbd}_hop_vs_floor"] = {"value": None, "goal": f"<= {GOALS['lbd_vs_floor_max']}",
                                          "met": None, "excess_ns": round(hop[lbd] - floor, 1),
                                          "note": f"floor hop {floor} ns (not above noise): "
                                                  "ratio undefined, excess over the floor given"}
        for other, key in (("nftables", "nftables_vs_lbd_min"), ("userspace", "userspace_vs_lbd_min")):
            if hop.get(other) is not None and hop[lbd] > 0:
                r = hop[other] / hop[lbd]
                out[f"{other}_hop_vs_{lbd}"] = {"value": round(r, 3), "goal": f">= {GOALS[key]}",
                                                "met": r >= GOALS[key]}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "datapath", "short windows, one run")
    parser.add_argument("--tcp", action="store_true", help="TCP ACK segments instead of UDP")
    parser.add_argument("--arms", default=",".join(ARMS))
    args = parser.parse_args(argv)
    load_start = loadavg()
    arms = args.arms.split(",")
    if "direct" not in arms:
        arms.insert(0, "direct")
    runs, window, warmup = (1, 0.5, 0.5) if args.quick else (3, 5.0, 1.5)
    result = measure(runs, window, warmup, args.tcp, arms)
    save(result, args, "native", load_start)
    for arm, v in result["arms"].items():
        print(f"{arm:10} {v['pps']:12,.0f} pps  hop {v.get('hop_ns', 0):8.1f} ns")
    for name, g in result["goals"].items():
        verdict = {True: "met", False: "MISSED", None: "n/a"}[g["met"]]
        print(f"{name}: {g['value']} (goal {g['goal']}: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
