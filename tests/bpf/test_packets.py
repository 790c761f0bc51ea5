"""Packet by packet through the real program (BPF_PROG_TEST_RUN): a table of
scapy-built inputs with the expected XDP verdict and output bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
from scapy.layers.inet import ICMP, IP, IPerror, TCP, TCPerror, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import ARP, Ether

from tests.bpf import scenario as sc
from tests.bpf.conftest import LBD_MAC

pytestmark = pytest.mark.bpf

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3


def plan_for(address: str, port: int, proto: int):
    for plan in sc.standard_vips():
        if str(plan.address) == str(sc.ip(address)) and plan.port == port and plan.proto == proto:
            return plan
    raise KeyError((address, port, proto))


@dataclass
class Case:
    name: str
    packet: object
    action: int
    # expected output: a function of (lb, packet) or None for "unchanged"
    expect: Callable | None = None


def dsr(address, port, proto):
    plan = plan_for(address, port, proto)
    return lambda lb, pkt: sc.expected_dsr(pkt, sc.predicted_backend(lb, plan, pkt))


def ipip(address, port, proto):
    plan = plan_for(address, port, proto)
    return lambda lb, pkt: sc.expected_ipip(pkt, sc.predicted_backend(lb, plan, pkt), plan)


CASES = [
    # v4/v6 x tcp/udp x dsr/ipip
    Case("dsr v4 tcp", sc.client_packet(sc.DSR_V4, 80), XDP_TX, dsr(sc.DSR_V4, 80, 6)),
    Case("dsr v4 udp", sc.client_packet(sc.DSR_V4, 53, 17), XDP_TX, dsr(sc.DSR_V4, 53, 17)),
    Case("dsr v6 tcp", sc.client_packet(sc.DSR_V6, 80), XDP_TX, dsr(sc.DSR_V6, 80, 6)),
    Case("dsr v6 udp", sc.client_packet(sc.DSR_V6, 53, 17), XDP_TX, dsr(sc.DSR_V6, 53, 17)),
    Case("ipip v4 tcp", sc.client_packet(sc.IPIP_V4, 80), XDP_TX, ipip(sc.IPIP_V4, 80, 6)),
    Case("ipip v4 udp", sc.client_packet(sc.IPIP_V4, 53, 17), XDP_TX, ipip(sc.IPIP_V4, 53, 17)),
    Case("ipip v6 tcp", sc.client_packet(sc.IPIP_V6, 80), XDP_TX, ipip(sc.IPIP_V6, 80, 6)),
    Case("ipip v6 udp", sc.client_packet(sc.IPIP_V6, 53, 17), XDP_TX, ipip(sc.IPIP_V6, 53, 17)),
    Case("ipip v4 keeps DF and TOS", sc.client_packet(sc.IPIP_V4, 80, tos=0x28, df=True), XDP_TX,
         ipip(sc.IPIP_V4, 80, 6)),
    Case("ipip v6 keeps traffic class", sc.client_packet(sc.IPIP_V6, 80, tos=0xb8), XDP_TX,
         ipip(sc.IPIP_V6, 80, 6)),
    # not ours: untouched
    Case("other v4 address", sc.client_packet("198.18.100.99", 80), XDP_PASS),
    Case("other v6 address", sc.client_packet("fd00:100::99", 80), XDP_PASS),
    Case("wrong port", sc.client_packet(sc.DSR_V4, 81), XDP_PASS),
    Case("wrong protocol (udp to a tcp-only port)", sc.client_packet(sc.IPIP_V6, 80, 17), XDP_PASS),
    Case("ARP", Ether(src=sc.CLIENT_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=sc.DSR_V4), XDP_PASS),
    Case("ICMP echo to a VIP", Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IP(src=sc.CLIENT_V4, dst=sc.DSR_V4) / ICMP(),
         XDP_PASS),
    Case("unknown ethertype", Ether(src=sc.CLIENT_MAC, dst=LBD_MAC, type=0x88b5) / (b"x" * 40), XDP_PASS),
    Case("runt frame", Ether(src=sc.CLIENT_MAC, dst=LBD_MAC, type=0x0800) / b"\x45", XDP_PASS),
    # port 0: every port of the address
    Case("port-0 VIP, port 443", sc.client_packet(sc.WILDCARD_V4, 443), XDP_TX, dsr(sc.WILDCARD_V4, 0, 6)),
    Case("port-0 VIP, port 1", sc.client_packet(sc.WILDCARD_V4, 1, sport=65535), XDP_TX,
         dsr(sc.WILDCARD_V4, 0, 6)),
    # 802.1Q
    Case("vlan dsr v4", sc.client_packet(sc.DSR_V4, 80, vlan=42), XDP_TX, dsr(sc.DSR_V4, 80, 6)),
    Case("vlan dsr v6", sc.client_packet(sc.DSR_V6, 53, 17, vlan=7), XDP_TX, dsr(sc.DSR_V6, 53, 17)),
    Case("vlan ipip v4", sc.client_packet(sc.IPIP_V4, 80, vlan=42), XDP_TX, ipip(sc.IPIP_V4, 80, 6)),
    Case("vlan, not a VIP", sc.client_packet("198.18.100.99", 80, vlan=42), XDP_PASS),
    # IPv4 options
    Case("v4 options dsr", sc.client_packet(sc.DSR_V4, 80, ip_options=b"\x01" * 3 + b"\x00" * 5), XDP_TX,
         dsr(sc.DSR_V4, 80, 6)),
    Case("v4 options ipip", sc.client_packet(sc.IPIP_V4, 53, 17, ip_options=b"\x94\x04\x00\x00"), XDP_TX,
         ipip(sc.IPIP_V4, 53, 17)),
    # client affinity, v6
    Case("client affinity v6", sc.client_packet(sc.AFFINITY_V6, 80, sport=1234), XDP_TX,
         dsr(sc.AFFINITY_V6, 80, 6)),
    # ipip toward a next hop whose MAC is unknown: dropped and counted
    Case("ipip unresolved next hop", sc.client_packet(sc.UNRESOLVED_IPIP_V4, 80), XDP_DROP),
]


@pytest.fixture
def standard(lb):
    lb.apply(sc.standard_vips())
    return lb


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_packet_table(standard, case):
    packet = bytes(case.packet)
    result = standard.run(packet)
    assert result.action == case.action, f"{case.name}: action {result.action}"
    if case.action == XDP_PASS:
        assert result.packet == packet, "a packet that is not ours must leave untouched"
    if case.expect is not None:
        expected = case.expect(standard, case.packet)
        assert result.packet.hex() == expected.hex()
        # scapy agrees on every checksum and length the program wrote
        rebuilt = Ether(result.packet)
        for layer in (IP, IPv6, TCP, UDP):
            for inner in rebuilt.getlayer(layer, nb=1), rebuilt.getlayer(layer, nb=2):
                if inner is not None:
                    for field in ("chksum", "len", "plen"):
                        if field in inner.fields:
                            del inner.fields[field]
        assert bytes(rebuilt) == result.packet


def test_non_vip_counts_as_pass(standard):
    before = standard.dp.global_counters()["actions"]["pass"]
    standard.run(bytes(sc.client_packet("198.18.100.99", 80)))
    assert standard.dp.global_counters()["actions"]["pass"] == before + 1


def test_unresolved_next_hop_is_counted(standard):
    before = standard.dp.global_counters()["drops"]["no_neighbour"]
    assert standard.run(bytes(sc.client_packet(sc.UNRESOLVED_IPIP_V4, 80))).action == XDP_DROP
    assert standard.dp.global_counters()["drops"]["no_neighbour"] == before + 1


ETH_HLEN = 14  # BPF_PROG_TEST_RUN (like every driver) refuses shorter frames


def _truncations(packet: bytes, headers_end: int):
    return [packet[:n] for n in range(ETH_HLEN, headers_end)]


@pytest.mark.parametrize("address,port,proto", [
    (sc.DSR_V4, 80, 6), (sc.DSR_V6, 53, 17), (sc.IPIP_V4, 80, 6), (sc.IPIP_V6, 80, 6)])
@pytest.mark.parametrize("vlan", [None, 5])
def test_truncated_at_every_header_byte_is_never_forwarded(standard, address, port, proto, vlan):
    """Cut a VIP packet at every length up to the end of its L4 header: it is
    passed untouched (not recognisably ours) or dropped as malformed, never
    forwarded."""
    full = sc.client_packet(address, port, proto, vlan=vlan, payload=b"")
    raw = bytes(full)
    malformed_before = standard.dp.global_counters()["drops"]["malformed"]
    drops = 0
    for cut in _truncations(raw, len(raw)):
        result = standard.run(cut)
        assert result.action in (XDP_PASS, XDP_DROP), f"cut at {len(cut)} forwarded"
        if result.action == XDP_PASS:
            assert result.packet == cut
        else:
            drops += 1
    # once the IP header is complete the VIP is known: those cuts are counted drops
    assert drops > 0
    assert standard.dp.global_counters()["drops"]["malformed"] == malformed_before + drops


def test_ip_total_length_beyond_frame_is_dropped(standard):
    packet = sc.client_packet(sc.DSR_V4, 80)
    packet[IP].len = len(packet[IP]) + 100
    assert standard.run(bytes(packet)).action == XDP_DROP


def fragments(dst: str, dport: int, src=sc.CLIENT_V4):
    """A UDP datagram to a VIP cut into three IPv4 fragments."""
    whole = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IP(src=src, dst=dst, id=77) / UDP(
        sport=5000, dport=dport) / (b"f" * 120)
    from scapy.all import fragment
    return [Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / f for f in fragment(whole[IP], fragsize=48)]


def test_fragments_to_client_affinity_vip_all_reach_one_backend(standard):
    plan = plan_for(sc.AFFINITY_V4, 53, 17)
    frags = fragments(sc.AFFINITY_V4, 53)
    assert len(frags) == 3
    expected_backend = sc.predicted_backend(standard, plan, sc.client_packet(sc.AFFINITY_V4, 53, 17))
    for frag in frags:
        result = standard.run(bytes(frag))
        assert result.action == XDP_TX
        assert Ether(result.packet).dst == sc.mac(expected_backend.dst_mac)
    assert standard.dp.global_counters()["fragments_forwarded"] >= 3


def test_fragments_to_flow_hashed_vip_are_dropped_and_counted(standard):
    before = standard.dp.global_counters()["drops"]["fragment"]
    for frag in fragments(sc.DSR_V4, 53):
        assert standard.run(bytes(frag)).action == XDP_DROP
    assert standard.dp.global_counters()["drops"]["fragment"] == before + 3


def test_fragments_to_a_non_vip_address_pass(standard):
    for frag in fragments("198.18.100.99", 53):
        raw = bytes(frag)
        result = standard.run(raw)
        assert result.action == XDP_PASS and result.packet == raw


def test_v6_fragment_to_flow_vip_is_dropped(standard):
    from scapy.layers.inet6 import IPv6ExtHdrFragment
    frag = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IPv6(src=sc.CLIENT_V6, dst=sc.DSR_V6) / \
        IPv6ExtHdrFragment(offset=0, m=1, id=5) / UDP(sport=1, dport=53) / (b"x" * 16)
    assert standard.run(bytes(frag)).action == XDP_DROP


@pytest.mark.parametrize("address,port,version", [(sc.DSR_V4, 80, 4), (sc.DSR_V6, 80, 6),
                                                  (sc.IPIP_V4, 80, 4)])
def test_icmp_too_big_reaches_the_backend_that_owns_the_flow(standard, address, port, version):
    """A router's too-big error about a VIP->client packet goes to the backend
    serving that flow, so path MTU discovery works through DSR and ipip."""
    plan = plan_for(address, port, 6)
    syn = sc.client_packet(address, port, sport=41000)
    first = standard.run(bytes(syn))
    assert first.action == XDP_TX
    owner = sc.predicted_backend(standard, plan, syn)
    # the backend's reply (VIP -> client), as quoted by a router
    if version == 4:
        quoted = IP(src=address, dst=sc.CLIENT_V4) / TCP(sport=port, dport=41000, flags="SA")
        error = Ether(src="02:00:00:00:99:01", dst=LBD_MAC) / IP(src="198.18.10.1", dst=address) / \
            ICMP(type=3, code=4, nexthopmtu=1400) / bytes(quoted)[:28]
    else:
        quoted = IPv6(src=address, dst=sc.CLIENT_V6) / TCP(sport=port, dport=41000, flags="SA")
        error = Ether(src="02:00:00:00:99:01", dst=LBD_MAC) / IPv6(src="fd00:10::1", dst=address) / \
            ICMPv6PacketTooBig(mtu=1400) / bytes(quoted)
    before = standard.dp.global_counters()["icmp_to_backend"]
    result = standard.run(bytes(error))
    assert result.action == XDP_TX
    out = Ether(result.packet)
    if plan.ipip:
        assert out[IP].dst == str(owner.address) and out[IP].proto == 4
        assert bytes(out[IP].payload) == bytes(error[IP])
    else:
        assert out.dst == sc.mac(owner.dst_mac)
        assert bytes(out.payload) == bytes(error.payload)
    assert standard.dp.global_counters()["icmp_to_backend"] == before + 1


def test_icmp_too_big_about_someone_else_passes(standard):
    quoted = IP(src="198.18.100.99", dst=sc.CLIENT_V4) / TCP(sport=80, dport=41000)
    error = Ether(src="02:00:00:00:99:01", dst=LBD_MAC) / IP(src="198.18.10.1", dst="198.18.100.99") / \
        ICMP(type=3, code=4, nexthopmtu=1400) / bytes(quoted)[:28]
    raw = bytes(error)
    result = standard.run(raw)
    assert result.action == XDP_PASS and result.packet == raw


@pytest.mark.parametrize("version", [4, 6])
def test_ipip_packet_too_big_for_mtu_is_answered_with_icmp(standard, version):
    """lbd0's MTU is 1500: a full-size packet cannot take a 20/40-byte outer
    header, so the client gets 'fragmentation needed'/'packet too big' with the
    MTU it must use, never a silent drop."""
    address = sc.IPIP_V4 if version == 4 else sc.IPIP_V6
    overhead = 20 if version == 4 else 40
    big = sc.client_packet(address, 80, sport=42000, payload=b"p" * 1500, df=True)
    l3 = big[IP] if version == 4 else big[IPv6]
    pad = 1500 - len(l3)
    big = sc.client_packet(address, 80, sport=42000, payload=b"p" * (1500 + pad), df=True)
    assert len(big) - 14 == 1500
    before = standard.dp.global_counters()["icmp_too_big_sent"]
    result = standard.run(bytes(big))
    assert result.action == XDP_TX
    reply = Ether(result.packet)
    assert reply.dst == sc.CLIENT_MAC and reply.src == LBD_MAC
    if version == 4:
        assert reply[IP].src == address and reply[IP].dst == sc.CLIENT_V4
        assert reply[ICMP].type == 3 and reply[ICMP].code == 4
        assert reply[ICMP].nexthopmtu == 1500 - overhead
        assert reply[IPerror].dst == address and reply[TCPerror].sport == 42000
        icmp_check, ip_check = reply[ICMP].chksum, reply[IP].chksum
        del reply[ICMP].chksum, reply[IP].chksum, reply[IP].len
        rebuilt = Ether(bytes(reply))
        assert (rebuilt[ICMP].chksum, rebuilt[IP].chksum) == (icmp_check, ip_check)
    else:
        assert reply[IPv6].src == address and reply[IPv6].dst == sc.CLIENT_V6
        assert reply[ICMPv6PacketTooBig].mtu == 1500 - overhead
        inner = IPv6(bytes(reply[ICMPv6PacketTooBig].payload))
        assert inner.dst == address and inner[TCP].sport == 42000
        check = reply[ICMPv6PacketTooBig].cksum
        del reply[ICMPv6PacketTooBig].cksum, reply[IPv6].plen
        assert Ether(bytes(reply))[ICMPv6PacketTooBig].cksum == check
    assert standard.dp.global_counters()["icmp_too_big_sent"] == before + 1


def test_client_affinity_many_ports_one_backend(standard):
    plan = plan_for(sc.AFFINITY_V4, 80, 6)
    macs = {Ether(standard.run(bytes(sc.client_packet(sc.AFFINITY_V4, 80, sport=port))).packet).dst
            for port in range(20000, 20200)}
    assert len(macs) == 1
    # and it is the backend the reference picks by client address alone
    assert macs == {sc.mac(sc.predicted_backend(standard, plan, sc.client_packet(sc.AFFINITY_V4, 80)).dst_mac)}


def test_flow_affinity_many_ports_spread(standard):
    macs = {Ether(standard.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port))).packet).dst
            for port in range(20000, 20200)}
    assert len(macs) == 3
