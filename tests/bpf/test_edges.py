"""The edges issue #11 found, each as docs/design.md's packet and flow rules
state it: a SYN never reaches a backend that takes no new flows through an
old entry; nothing is read past the IP packet's own length; IPv6 chains up to
the bound are parsed and longer ones dropped by name; no ICMP error where
RFC 1122 3.2.2 and RFC 4443 2.4(e) forbid one."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop,
                                IPv6ExtHdrRouting)
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from lbd.plan import DRAINING, BackendPlan
from tests.bpf import scenario as sc
from tests.bpf.conftest import LBD_MAC

pytestmark = pytest.mark.bpf

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
AFFINITY_IPIP_V4 = "198.18.100.60"


def drops(lb, reason: str) -> int:
    return lb.dp.global_counters()["drops"][reason]


def backend_of(out: bytes) -> str:
    """Which DSR backend a forwarded frame went to (its MAC names it)."""
    return Ether(out).dst


@pytest.fixture
def standard(lb):
    lb.apply(sc.standard_vips())
    return lb


# --- 1. drain is drain --------------------------------------------------------

def _with_state(members, address, state):
    return tuple(BackendPlan(b.address, b.weight, state if str(b.address) == address else b.state,
                             b.dst_mac, b.src_mac) for b in members)


def test_a_syn_on_an_old_4tuple_never_reaches_a_drained_backend(lb):
    """The issue's reproduction: 60 connections from one client on ports
    40000-40059, then one backend drained. Its established flows stay, but a
    new connection on any of those 4-tuples goes elsewhere, and that
    connection's ACK follows its SYN (not the old entry)."""
    members = sc.backends("198.18.0.", 3)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members)])
    first = {}
    for port in range(40000, 40060):
        syn = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port)))
        ack = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        assert syn.action == ack.action == XDP_TX
        assert backend_of(ack.packet) == backend_of(syn.packet)
        first[port] = backend_of(ack.packet)
    drained = sc.mac(members[0].dst_mac)
    on_drained = [p for p, mac in first.items() if mac == drained]
    assert on_drained, "the scenario must put some flows on the backend it drains"
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=_with_state(members, str(members[0].address), DRAINING))])

    for port in on_drained:  # established flows keep the draining backend
        ack = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        assert backend_of(ack.packet) == drained
    removed_before = lb.dp.global_counters()["ct_removed_by_syn"]
    for port in range(40000, 40060):  # then every port opens a new connection
        syn = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port)))
        ack = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        assert backend_of(syn.packet) != drained, f"port {port}: a new connection reached the drained backend"
        assert backend_of(ack.packet) == backend_of(syn.packet), f"port {port}: the ACK left its SYN"
    assert lb.dp.global_counters()["ct_removed_by_syn"] - removed_before == len(on_drained)


def test_a_syn_makes_no_entry_and_its_ack_makes_one_on_the_syns_backend(lb):
    lb.apply([sc.vip(sc.DSR_V4, 80, 6)])
    syn = sc.client_packet(sc.DSR_V4, 80, sport=45000)
    out = lb.run(bytes(syn))
    assert out.action == XDP_TX
    assert lb.dp.lookup_flow(sc.ip(sc.CLIENT_V4), sc.ip(sc.DSR_V4), 45000, 80, 6) is None
    retransmit = lb.run(bytes(syn))
    assert backend_of(retransmit.packet) == backend_of(out.packet)
    ack = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=45000, flags="A")))
    assert backend_of(ack.packet) == backend_of(out.packet)
    backend_id, _ = lb.dp.lookup_flow(sc.ip(sc.CLIENT_V4), sc.ip(sc.DSR_V4), 45000, 80, 6)
    applied = lb.programmer.applied()[(sc.ip(sc.DSR_V4), 80, 6)]
    address = next(a for a, i in applied.backend_ids.items() if i == backend_id)
    assert sc.mac(sc.backend_mac(address)) == backend_of(out.packet)


def test_an_rst_makes_no_entry(lb):
    lb.apply([sc.vip(sc.DSR_V4, 80, 6)])
    out = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=45001, flags="R")))
    assert out.action == XDP_TX
    assert lb.dp.lookup_flow(sc.ip(sc.CLIENT_V4), sc.ip(sc.DSR_V4), 45001, 80, 6) is None


def test_a_retransmitted_syn_after_the_ack_stays_with_its_connection(lb):
    """A SYN whose entry's backend still takes new flows follows the entry,
    so a late duplicate SYN cannot move the live connection it belongs to."""
    members = sc.backends("198.18.0.", 3)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members)])
    ports = range(46000, 46100)
    placed = {}
    for port in ports:
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port)))
        placed[port] = backend_of(lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A"))).packet)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=sc.backends("198.18.0.", 6))])  # slots move
    for port in ports:
        dup = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port)))
        assert backend_of(dup.packet) == placed[port]
        ack = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        assert backend_of(ack.packet) == placed[port]


def test_udp_entries_live_apart_from_tcp_connections(lb):
    """A UDP flood can only evict UDP entries: UDP flows go to their own table."""
    lb.apply([sc.vip(sc.DSR_V4, 80, 6), sc.vip(sc.DSR_V4, 53, 17)])
    lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=47000, flags="A")))
    for port in range(1000, 1100):
        assert lb.run(bytes(sc.client_packet(sc.DSR_V4, 53, 17, sport=port))).action == XDP_TX
    assert len(lb.dp.conntrack) == 1 and len(lb.dp.conntrack_udp) == 100


# --- 4. nothing past the IP packet --------------------------------------------

@pytest.mark.parametrize("frame", [
    # the example: IPv4 total length 20, a TCP header in the padding
    Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IP(src=sc.CLIENT_V4, dst=sc.IPIP_V4, len=20) /
    TCP(dport=80, flags="S") / (b"x" * 12),
    Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IP(src=sc.CLIENT_V4, dst=sc.DSR_V4, len=39) /
    TCP(dport=80, flags="A"),
    Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IP(src=sc.CLIENT_V4, dst=sc.DSR_V4, len=27) /
    UDP(dport=53) / b"payload",
    Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IPv6(src=sc.CLIENT_V6, dst=sc.IPIP_V6, plen=0) /
    TCP(dport=80, flags="S"),
    Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IPv6(src=sc.CLIENT_V6, dst=sc.DSR_V6, plen=12) /
    TCP(dport=80, flags="A"),
    Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IPv6(src=sc.CLIENT_V6, dst=sc.DSR_V6, plen=8) /
    IPv6ExtHdrDestOpt(options=[]) / TCP(dport=80),
], ids=["v4-len20-tcp", "v4-len39-tcp", "v4-len27-udp", "v6-plen0-tcp", "v6-plen12-tcp",
        "v6-ext-ends-the-packet"])
def test_an_l4_header_beyond_the_ip_length_is_malformed(standard, frame):
    before = drops(standard, "malformed")
    result = standard.run(bytes(frame))
    assert result.action == XDP_DROP
    assert drops(standard, "malformed") == before + 1


def test_ethernet_padding_is_carried_not_read(standard):
    """A short packet padded to the Ethernet minimum: the balancer forwards
    the IP packet; in ipip the outer length covers the IP packet only."""
    inner = IP(src=sc.CLIENT_V4, dst=sc.IPIP_V4) / UDP(sport=5000, dport=53)
    frame = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC, type=0x0800) / (bytes(inner) + b"\0" * 18)
    result = standard.run(bytes(frame))
    assert result.action == XDP_TX
    out = Ether(result.packet)
    assert out[IP].proto == 4 and out[IP].len == 20 + len(inner)
    assert bytes(out[IP].payload)[:len(inner)] == bytes(inner)


# --- 5. the IPv6 extension-header bound ---------------------------------------

def _chain(length: int):
    kinds = [IPv6ExtHdrHopByHop, IPv6ExtHdrDestOpt, IPv6ExtHdrRouting, IPv6ExtHdrDestOpt,
             IPv6ExtHdrDestOpt, IPv6ExtHdrDestOpt, IPv6ExtHdrDestOpt, IPv6ExtHdrDestOpt]
    layers = IPv6(src=sc.CLIENT_V6, dst=sc.DSR_V6)
    for kind in kinds[:length]:
        layers = layers / kind()
    return Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / layers / TCP(sport=48000, dport=80, flags="S")


@pytest.mark.parametrize("length", [0, 1, 4, 5, 6])
def test_chains_up_to_the_bound_are_balanced(standard, length):
    frame = _chain(length)
    result = standard.run(bytes(frame))
    assert result.action == XDP_TX
    assert bytes(Ether(result.packet).payload) == bytes(frame.payload)


@pytest.mark.parametrize("length", [7, 8])
def test_longer_chains_are_dropped_by_name(standard, length):
    before = drops(standard, "ipv6_ext_chain")
    assert standard.run(bytes(_chain(length))).action == XDP_DROP
    assert drops(standard, "ipv6_ext_chain") == before + 1


# --- VLAN tags ----------------------------------------------------------------

@pytest.mark.parametrize("address,port", [(sc.DSR_V4, 80), (sc.IPIP_V4, 80), (sc.IPIP_V6, 80)])
def test_two_vlan_tags_are_kept(standard, address, port):
    l3 = IP(src=sc.CLIENT_V4, dst=address) if ":" not in address else IPv6(src=sc.CLIENT_V6, dst=address)
    frame = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=7) / l3 / \
        TCP(sport=48100, dport=port, flags="S") / b"data"
    result = standard.run(bytes(frame))
    assert result.action == XDP_TX
    out = Ether(result.packet)
    assert out[Dot1AD].vlan == 100 and out[Dot1Q].vlan == 7
    inner = out[Dot1Q].payload
    if standard.programmer.applied()[(sc.ip(address), port, 6)].plan.ipip:
        outer = inner
        assert (outer.proto if outer.version == 4 else outer.nh) in (4, 41)
        assert bytes(outer.payload) == bytes(l3 / TCP(sport=48100, dport=port, flags="S") / b"data")
    else:
        assert bytes(inner) == bytes(frame[Dot1Q].payload)


def test_a_third_tag_passes_untouched(standard):
    frame = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / Dot1AD(vlan=1) / Dot1Q(vlan=2) / Dot1Q(vlan=3) / \
        IP(src=sc.CLIENT_V4, dst=sc.DSR_V4) / TCP(dport=80)
    result = standard.run(bytes(frame))
    assert result.action == XDP_PASS and result.packet == bytes(frame)


# --- 6. no ICMP error where the RFCs forbid one -------------------------------

def _too_big(address, **ip_fields):
    """A DF packet that cannot take the outer header on the 1500-byte link."""
    l3 = IP(src=sc.CLIENT_V4, dst=address, flags="DF", **ip_fields) if ":" not in address else \
        IPv6(src=sc.CLIENT_V6, dst=address, **ip_fields)
    frame = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / l3 / TCP(sport=49000, dport=80, flags="A")
    return frame / (b"p" * (1514 - len(frame)))


@pytest.fixture
def with_affinity_ipip(lb):
    lb.apply([*sc.standard_vips(), sc.vip(AFFINITY_IPIP_V4, 80, 6, ipip=True, client=True)])
    return lb


def test_the_reference_case_is_answered(standard):
    sent = standard.dp.global_counters()["icmp_too_big_sent"]
    assert standard.run(bytes(_too_big(sc.IPIP_V4))).action == XDP_TX
    assert standard.dp.global_counters()["icmp_too_big_sent"] == sent + 1


@pytest.mark.parametrize("case", ["multicast-mac", "broadcast-mac", "src-zero", "src-loopback",
                                  "src-multicast", "src-broadcast", "v6-src-unspecified",
                                  "v6-src-multicast"])
def test_no_icmp_about_a_packet_from_no_single_host(standard, case):
    if case.startswith("v6"):
        frame = _too_big(sc.IPIP_V6)
        frame[IPv6].src = {"v6-src-unspecified": "::", "v6-src-multicast": "ff02::1"}[case]
    else:
        frame = _too_big(sc.IPIP_V4)
        if case == "multicast-mac":
            frame[Ether].dst = "01:00:5e:00:00:01"
        elif case == "broadcast-mac":
            frame[Ether].dst = "ff:ff:ff:ff:ff:ff"
        else:
            frame[IP].src = {"src-zero": "0.0.0.0", "src-loopback": "127.0.0.1",
                             "src-multicast": "224.0.0.5", "src-broadcast": "255.255.255.255"}[case]
    sent = standard.dp.global_counters()["icmp_too_big_sent"]
    before = drops(standard, "too_big")
    assert standard.run(bytes(frame)).action == XDP_DROP
    assert drops(standard, "too_big") == before + 1
    assert standard.dp.global_counters()["icmp_too_big_sent"] == sent


@pytest.mark.parametrize("version", [4, 6])
def test_no_icmp_error_about_an_icmp_error(standard, version):
    """An oversized frag-needed / packet-too-big about a VIP flow, headed for
    an ipip backend, is dropped: an ICMP error is never answered with one."""
    if version == 4:
        quoted = IP(src=sc.IPIP_V4, dst=sc.CLIENT_V4) / TCP(sport=80, dport=49100, flags="A")
        error = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IP(src="198.18.10.1", dst=sc.IPIP_V4, flags="DF") / \
            ICMP(type=3, code=4, nexthopmtu=1400) / bytes(quoted)
    else:
        quoted = IPv6(src=sc.IPIP_V6, dst=sc.CLIENT_V6) / TCP(sport=80, dport=49100, flags="A")
        from scapy.layers.inet6 import ICMPv6PacketTooBig
        error = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IPv6(src="fd00:10::1", dst=sc.IPIP_V6) / \
            ICMPv6PacketTooBig(mtu=1280) / bytes(quoted)
    error = error / (b"q" * (1514 - len(error)))
    sent = standard.dp.global_counters()["icmp_too_big_sent"]
    before = drops(standard, "too_big")
    assert standard.run(bytes(error)).action == XDP_DROP
    assert drops(standard, "too_big") == before + 1
    assert standard.dp.global_counters()["icmp_too_big_sent"] == sent


def test_no_icmp_error_about_a_non_first_fragment(with_affinity_ipip):
    lb = with_affinity_ipip
    first = _too_big(AFFINITY_IPIP_V4)
    first[IP].flags = "MF+DF"
    middle = _too_big(AFFINITY_IPIP_V4)
    middle[IP].flags, middle[IP].frag = "MF+DF", 185
    sent = lb.dp.global_counters()["icmp_too_big_sent"]
    assert lb.run(bytes(first)).action == XDP_TX  # the first fragment may be answered
    assert lb.dp.global_counters()["icmp_too_big_sent"] == sent + 1
    before = drops(lb, "too_big")
    assert lb.run(bytes(middle)).action == XDP_DROP
    assert drops(lb, "too_big") == before + 1
    assert lb.dp.global_counters()["icmp_too_big_sent"] == sent + 1


def test_no_icmp_error_about_a_non_first_v6_fragment(lb):
    lb.apply([*sc.standard_vips(), sc.vip("fd00:100::60", 80, 6, ipip=True, client=True)])
    frame = Ether(src=sc.CLIENT_MAC, dst=LBD_MAC) / IPv6(src=sc.CLIENT_V6, dst="fd00:100::60") / \
        IPv6ExtHdrFragment(offset=100, m=1, id=9, nh=6)
    frame = frame / (b"f" * (1514 - len(frame)))
    before = drops(lb, "too_big")
    assert lb.run(bytes(frame)).action == XDP_DROP
    assert drops(lb, "too_big") == before + 1
