"""Floods against a small connection table (limits.conntrack_size 4096), as
docs/design.md's "Under a flood" promises: 100,000 spoofed SYNs leave every
established flow's entry in place and make none of their own, and a UDP
flood fills only the UDP table. The program is the real one, compiled with
the small tables, through BPF_PROG_TEST_RUN."""
from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.l2 import Ether

from lbd.dataplane.maps import Datapath, Limits
from lbd.dataplane.programmer import Programmer
from tests.bpf import scenario as sc
from tests.bpf.conftest import IPIP_SRC_V4, IPIP_SRC_V6

pytestmark = pytest.mark.bpf

TABLE = 4096
FLOOD = 100_000
ESTABLISHED = 200


@pytest.fixture(scope="module")
def small(fib_namespace):
    dp = Datapath(Limits(max_vips=64, max_backends=1024, conntrack_size=TABLE, conntrack_udp_size=TABLE))
    dp.set_settings(ipaddress.ip_address(IPIP_SRC_V4), ipaddress.ip_address(IPIP_SRC_V6))
    programmer = Programmer(dp)
    programmer.apply([sc.vip(sc.DSR_V4, 80, 6), sc.vip(sc.DSR_V4, 53, 17)])
    yield dp, programmer
    dp.bpf.cleanup()


def spoofed(template: bytes, i: int) -> bytes:
    """The template frame from source 198.19.x.y (i-th address), port i: the
    IPv4 source and L4 source port patched in place (checksums are not
    the program's business; it reads no checksum)."""
    frame = bytearray(template)
    frame[26:30] = ipaddress.IPv4Address(int(ipaddress.IPv4Address("198.19.0.0")) + i).packed
    struct.pack_into("!H", frame, 34, 1024 + i % 60000)
    return bytes(frame)


def established(dp) -> dict[int, str]:
    """200 connections through their handshake: source port -> backend MAC."""
    placed = {}
    for port in range(30000, 30000 + ESTABLISHED):
        dp.test_run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port)))
        out = dp.test_run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        placed[port] = Ether(out.packet).dst
    return placed


def test_a_syn_flood_evicts_no_established_flow_and_leaves_no_state(small):
    dp, _ = small
    dp.clear_flows()
    placed = established(dp)
    assert len(dp.conntrack) == ESTABLISHED
    syn = bytes(sc.client_packet(sc.DSR_V4, 80))
    before = dp.global_counters()["stateless_forwards"]
    for i in range(FLOOD):  # each SYN retransmitted soon after, as flood tools do
        dp.test_run(spoofed(syn, i))
        if i >= 64:
            dp.test_run(spoofed(syn, i - 64))
    assert dp.global_counters()["stateless_forwards"] - before == 2 * FLOOD - 64
    assert len(dp.conntrack) == ESTABLISHED, "the flood made no entry"
    for port, mac in placed.items():
        assert dp.lookup_flow(sc.ip(sc.CLIENT_V4), sc.ip(sc.DSR_V4), port, 80, 6) is not None
        out = dp.test_run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        assert Ether(out.packet).dst == mac


def test_a_udp_flood_fills_only_the_udp_table(small):
    dp, _ = small
    dp.clear_flows()
    established(dp)
    datagram = bytes(sc.client_packet(sc.DSR_V4, 53, 17))
    for i in range(FLOOD):
        dp.test_run(spoofed(datagram, i))
    assert len(dp.conntrack) == ESTABLISHED, "no TCP entry evicted by UDP"
    assert TABLE // 2 <= len(dp.conntrack_udp) <= TABLE, "the UDP table took the flood, up to its size"
