"""A throwaway network namespace in which bpf_fib_lookup() has real answers.

BPF_PROG_TEST_RUN runs the balancer with the ingress interface of the
calling thread's namespace. This namespace gives it one interface with
addresses, a resolved next hop toward the ipip backends, a next hop with no
MAC, and forwarding on: what the bpf test tier and the per-packet cost
benchmark run in. Only test ranges (198.18.0.0/15, fd00::/8) are used.
"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
from typing import Iterator

from pyroute2 import netns

from lbd.testing.netns import remove_stale

IFNAME = "lbd0"
MAC = "02:00:00:00:01:01"
V4, V6 = "198.18.1.1", "fd00:1::1"
GW_MAC = "02:00:00:00:01:fe"          # next hop toward the ipip backends
GW_V4, GW_V6 = "198.18.1.254", "fd00:1::fe"
REMOTE_V4, REMOTE_V6 = "198.18.20.0/24", "fd00:20::/64"   # behind the resolved next hop
UNRESOLVED_V4 = "198.18.30.0/24"                          # behind a next hop with no MAC


@contextlib.contextmanager
def fib_namespace(name: str | None = None, enter: bool = True) -> Iterator[int]:
    """Create the namespace and yield the interface's ifindex; delete it on
    exit. With enter, this thread lives in the namespace meanwhile; without,
    use entered() around each use, so that nothing else this thread starts
    (subprocesses in particular) lands in a namespace with no way out."""
    name = name or f"lbdt-fib-{os.getpid()}"

    def ip(*args: str) -> None:
        subprocess.run(["ip", "-n", name, *args], check=True, capture_output=True)

    # a run killed before its cleanup (SIGKILL, a CI timeout) leaves its
    # namespace behind: remove those of runs that are gone
    remove_stale()
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        # bpf_fib_lookup() refuses to route when forwarding is off
        for sysctl in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(["ip", "netns", "exec", name, "sysctl", "-qw", sysctl], check=True)
        ip("link", "add", IFNAME, "address", MAC, "type", "veth", "peer", "name", f"{IFNAME}p")
        for dev in ("lo", IFNAME, f"{IFNAME}p"):
            ip("link", "set", dev, "up")
        ip("addr", "add", f"{V4}/24", "dev", IFNAME)
        ip("addr", "add", f"{V6}/64", "dev", IFNAME, "nodad")
        ip("neigh", "replace", GW_V4, "lladdr", GW_MAC, "dev", IFNAME, "nud", "permanent")
        ip("neigh", "replace", GW_V6, "lladdr", GW_MAC, "dev", IFNAME, "nud", "permanent")
        ip("route", "add", REMOTE_V4, "via", GW_V4)
        ip("-6", "route", "add", REMOTE_V6, "via", GW_V6)
        ip("route", "add", UNRESOLVED_V4, "via", "198.18.1.253")
        with entered(name):
            ifindex = socket.if_nametoindex(IFNAME)
            if enter:
                yield ifindex
        if not enter:
            yield ifindex
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@contextlib.contextmanager
def entered(name: str) -> Iterator[None]:
    """Run this thread in the namespace for the duration."""
    netns.pushns(name)
    try:
        yield
    finally:
        netns.popns()
