"""The bpf tier: one compiled balancer shared by the tests, run inside a
throwaway network namespace whose routes and neighbours give the program's
bpf_fib_lookup() real answers (ipip next hops, MTU, unresolved neighbours)."""
from __future__ import annotations

import ipaddress
import os
import socket
import subprocess

import pytest
from pyroute2 import netns

from lbd.datapath import Datapath
from lbd.programmer import Programmer
from tests.conftest import require_root

NS = f"lbdt-bpf-{os.getpid()}"
# Addresses of the namespace (test ranges only).
LBD_IF = "lbd0"
LBD_MAC = "02:00:00:00:01:01"
LBD_V4, LBD_V6 = "198.18.1.1", "fd00:1::1"
GW_MAC = "02:00:00:00:01:fe"       # the next hop toward the ipip backends
GW_V4, GW_V6 = "198.18.1.254", "fd00:1::fe"
REMOTE_V4, REMOTE_V6 = "198.18.20.0/24", "fd00:20::/64"        # ipip backends, resolvable
UNRESOLVED_V4 = "198.18.30.0/24"                                # next hop with no MAC
IPIP_SRC_V4, IPIP_SRC_V6 = "198.18.1.1", "fd00:1::1"


def _ip(*args: str) -> None:
    subprocess.run(["ip", "-n", NS, *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def fib_namespace():
    require_root("the bpf tier loads XDP programs and")
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        _ip("link", "add", LBD_IF, "address", LBD_MAC, "type", "veth", "peer", "name", "lbd0p")
        # bpf_fib_lookup() refuses to route when forwarding is off (lbd turns
        # it on for the interfaces it serves ipip VIPs on)
        for sysctl in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", sysctl], check=True)
        _ip("link", "set", "lo", "up")
        _ip("link", "set", LBD_IF, "up")
        _ip("link", "set", "lbd0p", "up")
        _ip("addr", "add", f"{LBD_V4}/24", "dev", LBD_IF)
        _ip("addr", "add", f"{LBD_V6}/64", "dev", LBD_IF, "nodad")
        _ip("neigh", "replace", GW_V4, "lladdr", GW_MAC, "dev", LBD_IF, "nud", "permanent")
        _ip("neigh", "replace", GW_V6, "lladdr", GW_MAC, "dev", LBD_IF, "nud", "permanent")
        _ip("route", "add", REMOTE_V4, "via", GW_V4)
        _ip("-6", "route", "add", REMOTE_V6, "via", GW_V6)
        _ip("route", "add", UNRESOLVED_V4, "via", "198.18.1.253")
        netns.pushns(NS)  # BPF_PROG_TEST_RUN resolves ingress_ifindex in our netns
        try:
            yield socket.if_nametoindex(LBD_IF)
        finally:
            netns.popns()
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


@pytest.fixture(scope="session")
def datapath(fib_namespace):
    return Datapath()


class Harness:
    """A clean balancer for one test: programmer, ifindex, packet runner."""

    def __init__(self, dp: Datapath, ifindex: int):
        self.dp = dp
        self.ifindex = ifindex
        self.programmer = Programmer(dp)
        dp.set_settings(ipaddress.ip_address(IPIP_SRC_V4), ipaddress.ip_address(IPIP_SRC_V6))

    def apply(self, plans):
        return self.programmer.apply(list(plans))

    def run(self, packet: bytes):
        return self.dp.test_run(bytes(packet), self.ifindex)

    def reset(self):
        self.programmer.apply([])
        self.dp.conntrack.clear()


@pytest.fixture
def lb(datapath, fib_namespace):
    harness = Harness(datapath, fib_namespace)
    harness.reset()
    yield harness
    harness.reset()
