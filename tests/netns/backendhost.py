"""One backend host in two namespaces, for `lbd-backend`'s own tests: the
backend, whose eth0 is one end of a veth, and its neighbour, which holds the
other end (p0) and stands for the router, or for the host side of a
container's veth. Frames are sent and watched from the neighbour with scapy.

    backend ns: lo (VIPs), eth0 198.18.77.1/24 ---- p0 198.18.77.254/24 :neighbour ns
                default route via 198.18.77.254

Namespaces are named like the lab's (lbdt<pid>-<n>-...), so a run killed
before its cleanup is removed by the next one (lbd.testing.netns.remove_stale).
"""
from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

from lbd.testing.netns import NETNS_DIR, remove_netns

BACKEND_IP, NEIGHBOUR_IP = "198.18.77.1", "198.18.77.254"
BACKEND_MAC, NEIGHBOUR_MAC = "02:00:00:00:77:01", "02:00:00:00:77:fe"
CLIENT = "198.19.77.7"        # no namespace has it: answers to it leave by the default route
SECOND_CHOICE = "198.18.77.3"  # in eth0's prefix (the default forward list), on no host

_SEQUENCE = itertools.count(900)   # the lab's own count from 0

_PROBE = r"""
import json, sys, threading, time
from scapy.all import AsyncSniffer, Ether, IP, TCP, conf, sendp
from lbd.testing import gue
conf.verb = 0
a = json.loads(sys.argv[1])
ready = threading.Event()
sniffer = AsyncSniffer(iface="p0", store=True, started_callback=ready.set,
                       lfilter=lambda p: Ether in p and p[Ether].src == a["backend_mac"])
sniffer.start()
ready.wait(10)
frames = []
for i in range(a["count"] * a["batches"]):
    inner = IP(src=a["client"], dst=a["vip"]) / TCP(sport=a["sport"] + i, dport=a["port"],
                                                   flags=a["flags"], seq=1000, ack=1)
    if a["gue_second"]:
        frames.append(gue.frame(inner, second=a["gue_second"], outer_src=a["neighbour"],
                                outer_dst=a["backend"], src_mac=a["neighbour_mac"],
                                dst_mac=a["backend_mac"]))
    else:
        frames.append(bytes(Ether(src=a["neighbour_mac"], dst=a["backend_mac"])
                            / IP(src=a["neighbour"], dst=a["backend"]) / inner))
for b in range(a["batches"]):
    if b:
        time.sleep(a["gap"])
    sendp(frames[b * a["count"]:(b + 1) * a["count"]], iface="p0")
sniffer.join(a["wait"])
if sniffer.running:
    sniffer.stop()
seen = []
for p in sniffer.results or []:
    if IP in p and TCP in p:
        seen.append([p[IP].src, p[IP].dst, p[IP].proto, p[TCP].sport, p[TCP].dport, str(p[TCP].flags)])
    elif IP in p:
        seen.append([p[IP].src, p[IP].dst, p[IP].proto, None, None, None])
print(json.dumps(seen))
"""


class BackendHost:
    """The two namespaces and their veth; close() removes them (the veth goes with them)."""

    def __init__(self, tag: str):
        prefix = f"lbdt{os.getpid()}-{next(_SEQUENCE)}-{tag}"
        self.backend_ns, self.neighbour_ns = f"{prefix}-be", f"{prefix}-nb"
        self.close()
        try:
            for ns in (self.backend_ns, self.neighbour_ns):
                subprocess.run(["ip", "netns", "add", ns], check=True)
            for args in (
                ["-n", self.backend_ns, "link", "add", "eth0", "address", BACKEND_MAC, "type", "veth",
                 "peer", "name", "p0", "address", NEIGHBOUR_MAC, "netns", self.neighbour_ns],
                ["-n", self.backend_ns, "link", "set", "lo", "up"],
                ["-n", self.backend_ns, "link", "set", "eth0", "up"],
                ["-n", self.neighbour_ns, "link", "set", "lo", "up"],
                ["-n", self.neighbour_ns, "link", "set", "p0", "up"],
                ["-n", self.backend_ns, "addr", "add", f"{BACKEND_IP}/24", "dev", "eth0"],
                ["-n", self.neighbour_ns, "addr", "add", f"{NEIGHBOUR_IP}/24", "dev", "p0"],
                ["-n", self.backend_ns, "route", "add", "default", "via", NEIGHBOUR_IP],
            ):
                subprocess.run(["ip", *args], check=True, capture_output=True)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for ns in (self.backend_ns, self.neighbour_ns):
            remove_netns(ns)

    def lbd_backend(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`lbd-backend ARGS` in the backend namespace, with the host's mounts
        (its bpffs, for --pin-dir): this worktree's lbd, as tests run it."""
        argv = ["nsenter", f"--net={NETNS_DIR}/{self.backend_ns}", "--",
                sys.executable, "-m", "lbd.backend.cli", *args]
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)

    def send(self, vip: str, *, count: int = 1, port: int = 80, flags: str = "S",
             sport: int = 41000, gue_second: str | None = None, wait: float = 2.0,
             batches: int = 1, gap: float = 0.0) -> list[list]:
        """Send `count` TCP segments from CLIENT to vip:port (`batches` times,
        `gap` seconds apart, each of new ports), in IP-in-IP (or GUE naming
        gue_second) from the neighbour to the backend, on p0; returns
        what the backend sent back out of eth0 meanwhile, one
        [src, dst, proto, sport, dport, flags] per IP frame."""
        args = {"vip": vip, "port": port, "flags": flags, "sport": sport, "count": count,
                "client": CLIENT, "backend": BACKEND_IP, "neighbour": NEIGHBOUR_IP,
                "backend_mac": BACKEND_MAC, "neighbour_mac": NEIGHBOUR_MAC,
                "gue_second": gue_second, "wait": wait, "batches": batches, "gap": gap}
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        result = subprocess.run(["ip", "netns", "exec", self.neighbour_ns, sys.executable, "-c", _PROBE,
                                 json.dumps(args)], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout.strip().splitlines()[-1])
