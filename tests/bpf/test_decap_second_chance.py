"""Second-chance forwarding, the backend's side (issue #12): xdp/decap.c with
GUE packets, through the real program (BPF_PROG_TEST_RUN).

What a user relies on: a GUE packet of a connection this host has (a SYN, a
local socket, a valid SYN cookie of a local listener), or one forwarded once
already, reaches the kernel as the client's packet byte for byte; any other
TCP packet goes on once to the second choice it names, from this host, with
hops = 1 and correct headers; UDP to the GUE port that is not lbd's, and
everything that is no tunnel, passes untouched; lbd's GUE that does not add
up is dropped and counted. Frames are built here from the wire format
(lbd_shared.h; draft-ietf-intarea-gue variant 0), never by the program's code.

The tests run in a namespace of their own (the program's socket lookups and
FIB lookups answer from the caller's): an interface toward lbd with routes to
the second choices (a resolved next hop, an unresolved one, an unreachable
prefix; a second interface), real TCP sockets on its loopback, and
net.ipv4.tcp_syncookies=2 so that every listener answers with SYN cookies.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import select
import socket
import struct
import subprocess
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import checksum

from lbd.backend import cli as backend_cli, decap as backend_decap, forwardto
from lbd.dataplane import bpfsys, layout, xdplink
from lbd.backend.decap import load_decap, write_forward_to
from lbd.testing import fibns, gue

pytestmark = pytest.mark.bpf

C = layout.constant
GUE_PORT, GUE_MAGIC = C("LBD_GUE_PORT"), C("LBD_GUE_MAGIC")
OVERHEAD = {4: C("LBD_GUE_OVERHEAD_V4"), 6: C("LBD_GUE_OVERHEAD_V6")}
SLOTS = {name: value for value, name in layout.enum_names("LBD_DECAP_").items()}
XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
ip = ipaddress.ip_address

NS = f"lbdt-decap-sc-{os.getpid()}"
THIS_MAC, SENDER_MAC = "02:00:00:00:40:01", "02:00:00:00:40:fe"   # us; the lbd host or router
GW_MAC, OTHER_MAC, OTHER_GW_MAC = "02:00:00:00:40:aa", "02:00:00:00:41:01", "02:00:00:00:41:aa"
THIS = {4: "198.18.40.1", 6: "fd00:40::1"}          # this backend (the outer destination)
LBD = {4: "198.18.1.1", 6: "fd00:1::1"}             # the lbd host (the outer source)
SECOND = {4: "198.18.50.2", 6: "fd00:50::2"}        # via GW_MAC on the ingress interface
SECOND_OTHER_IF = {4: "198.18.51.2", 6: "fd00:51::2"}  # via the second interface
UNRESOLVED = {4: "198.18.60.2", 6: "fd00:60::2"}    # via a next hop with no MAC
UNREACHABLE = {4: "198.18.70.2", 6: "fd00:70::2"}   # an unreachable route
VIP = {4: "198.18.90.1", 6: "fd00:90::1"}           # on lo
CLIENT = {4: "198.18.91.7", 6: "fd00:91::7"}        # on lo too: real local connections
REMOTE_CLIENT = {4: "198.19.3.4", 6: "fd00:19::3:4"}  # no socket has it


# --- the namespace ----------------------------------------------------------------
def _namespace_commands() -> list[list[str]]:
    return [
        ["link", "add", "sc0", "address", THIS_MAC, "type", "veth", "peer", "name", "sc0p"],
        ["link", "add", "sc1", "address", OTHER_MAC, "type", "veth", "peer", "name", "sc1p"],
        *[["link", "set", dev, "up"] for dev in ("lo", "sc0", "sc0p", "sc1", "sc1p")],
        ["addr", "add", f"{THIS[4]}/24", "dev", "sc0"],
        ["addr", "add", f"{THIS[6]}/64", "dev", "sc0", "nodad"],
        ["addr", "add", "198.18.41.1/24", "dev", "sc1"],
        ["addr", "add", "fd00:41::1/64", "dev", "sc1", "nodad"],
        *[["addr", "add", f"{a}/{32 if v == 4 else 128}", "dev", "lo", *(["nodad"] if v == 6 else [])]
          for group in (VIP, CLIENT) for v, a in group.items()],
        ["neigh", "replace", "198.18.40.254", "lladdr", GW_MAC, "dev", "sc0", "nud", "permanent"],
        ["neigh", "replace", "fd00:40::fe", "lladdr", GW_MAC, "dev", "sc0", "nud", "permanent"],
        ["neigh", "replace", "198.18.41.254", "lladdr", OTHER_GW_MAC, "dev", "sc1", "nud", "permanent"],
        ["neigh", "replace", "fd00:41::fe", "lladdr", OTHER_GW_MAC, "dev", "sc1", "nud", "permanent"],
        ["route", "add", "198.18.50.0/24", "via", "198.18.40.254"],
        ["-6", "route", "add", "fd00:50::/64", "via", "fd00:40::fe"],
        ["route", "add", "198.18.51.0/24", "via", "198.18.41.254"],
        ["-6", "route", "add", "fd00:51::/64", "via", "fd00:41::fe"],
        ["route", "add", "198.18.60.0/24", "via", "198.18.40.253"],
        ["-6", "route", "add", "fd00:60::/64", "via", "fd00:40::fd"],
        ["route", "add", "198.19.0.0/16", "via", "198.18.40.254"],   # REMOTE_CLIENT's SYN-ACKs
        ["route", "add", "unreachable", "198.18.70.0/24"],
        ["-6", "route", "add", "unreachable", "fd00:70::/64"],
    ]


def sysctl(setting: str) -> None:
    subprocess.run(["ip", "netns", "exec", NS, "sysctl", "-qw", setting], check=True)


@pytest.fixture(scope="module")
def namespace():
    subprocess.run(["ip", "netns", "del", NS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        # bpf_fib_lookup() routes only with forwarding on (one test turns it off)
        for setting in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                        "net.ipv4.tcp_syncookies=2"):
            sysctl(setting)
        for args in _namespace_commands():
            subprocess.run(["ip", "-n", NS, *args], check=True, capture_output=True)
        with fibns.entered(NS):
            yield {"sc0": socket.if_nametoindex("sc0"), "sc1": socket.if_nametoindex("sc1")}
    finally:
        subprocess.run(["ip", "netns", "del", NS], capture_output=True)


@pytest.fixture(autouse=True)
def _in_namespace(namespace):
    with fibns.entered(NS):
        yield


class Decap:
    """The program, run on frames arriving on sc0, with its counters."""

    def __init__(self, ifindex: int):
        self.bpf, self.fd = load_decap()
        self.stats = self.bpf[b"decap_stats"]
        self.ifindex = ifindex
        self.allow(forwardto.ANY)   # the forward_to tests narrow it, then give it back

    def allow(self, networks) -> None:
        write_forward_to(bpfsys.program_id(self.fd), list(networks))

    def counters(self) -> dict[str, int]:
        return {name: self.stats.sum(self.stats.Key(slot)).value for name, slot in SLOTS.items()}

    def run(self, frame: bytes, ifindex: int | None = None):
        """(result, the counters that moved, by how much)."""
        before = self.counters()
        result = bpfsys.test_run(self.fd, bytes(frame), self.ifindex if ifindex is None else ifindex)
        after = self.counters()
        return result, {k: after[k] - before[k] for k in after if after[k] != before[k]}


@pytest.fixture(scope="module")
def decap(namespace):
    program = Decap(namespace["sc0"])
    yield program
    program.bpf.cleanup()


# --- frames, from the wire format -----------------------------------------------
def version_of(address: str) -> int:
    return ip(address).version


def inner_packet(src: str, dst: str, sport: int = 40000, dport: int = 80, flags="A",
                 seq: int = 1000, ack: int = 0, payload: bytes = b"hello", proto=None):
    l3 = IP(src=src, dst=dst) if version_of(dst) == 4 else IPv6(src=src, dst=dst)
    if proto == "udp":
        return l3 / UDP(sport=sport, dport=dport) / payload
    if proto == "icmp":
        return l3 / ICMP()
    return l3 / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=ack) / payload


def gue_private(version: int, second: str, hops: int = 0, magic: int = GUE_MAGIC) -> bytes:
    return gue.private_data(second, hops, magic)


def gue_frame(inner, second: str, *, hops: int = 0, this: str | None = None, **kw) -> bytes:
    """What lbd's balancer sends to this host, naming `second` (the outer
    family is the second choice's)."""
    version = version_of(second)
    return gue.frame(inner, second=second, outer_src=LBD[version], outer_dst=this or THIS[version],
                     src_mac=SENDER_MAC, dst_mac=THIS_MAC, hops=hops, **kw)


def l2_length(frame: bytes) -> int:
    length, ethertype = 14, frame[12:14]
    while ethertype in (b"\x81\x00", b"\x88\xa8"):
        ethertype = frame[length + 2:length + 4]
        length += 4
    return length


def assert_kept(result, frame: bytes, inner) -> None:
    """XDP_PASS with the client's packet, byte for byte, behind the L2 header
    the frame arrived with."""
    l2 = l2_length(frame)
    assert result.action == XDP_PASS
    assert result.packet[:l2] == frame[:l2]
    assert result.packet[l2:] == bytes(inner)


def expected_forward(frame: bytes, second: str, dst_mac: str, src_mac: str) -> bytes:
    """The frame as it must leave: outer destination the second choice, source
    this host (the address it was sent to), TTL/hop limit 64, IPv4 checksum,
    UDP checksum 0, hops 1, MACs of the next hop; all else as it came."""
    out = bytearray(frame)
    out[0:6] = bytes.fromhex(dst_mac.replace(":", ""))
    out[6:12] = bytes.fromhex(src_mac.replace(":", ""))
    l2 = l2_length(frame)
    if version_of(second) == 4:
        this = out[l2 + 16:l2 + 20]
        out[l2 + 8] = 64
        out[l2 + 12:l2 + 16] = this
        out[l2 + 16:l2 + 20] = ip(second).packed
        out[l2 + 10:l2 + 12] = b"\0\0"
        out[l2 + 10:l2 + 12] = struct.pack("!H", checksum(bytes(out[l2:l2 + 20])))
        udp = l2 + 20
    else:
        this = out[l2 + 24:l2 + 40]
        out[l2 + 7] = 64
        out[l2 + 8:l2 + 24] = this
        out[l2 + 24:l2 + 40] = ip(second).packed
        udp = l2 + 40
    out[udp + 6:udp + 8] = b"\0\0"
    out[udp + 8 + 4 + 2] = 1      # private data: magic (2 bytes), then hops
    return bytes(out)


# --- kept ---------------------------------------------------------------------------
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("vlans", [(), (7,), (100, 7)])
def test_a_syn_is_kept(decap, version, vlans):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version], flags="S")
    frame = gue_frame(inner, SECOND[version], vlans=vlans)
    result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"kept_syn": 1}


@pytest.mark.parametrize("version", [4, 6])
def test_a_packet_forwarded_once_is_always_kept(decap, version):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version], flags="A")
    frame = gue_frame(inner, SECOND[version], hops=1)
    result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"kept_forwarded": 1}


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("kind", ["udp", "icmp", "second is this host", "second is none"])
def test_not_tcp_or_no_other_second_is_kept(decap, version, kind):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version],
                         proto=kind if kind in ("udp", "icmp") else None)
    second = {"second is this host": THIS[version],
              "second is none": "0.0.0.0" if version == 4 else "::"}.get(kind, SECOND[version])
    frame = gue_frame(inner, second)
    result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"kept_other": 1}


def test_an_inner_fragment_is_kept(decap):
    """A later fragment has no ports, and the kernel reassembles: fragments stay."""
    inner = IP(src=REMOTE_CLIENT[4], dst=VIP[4], flags="MF", proto=6) / (b"\x00" * 40)
    frame = gue_frame(inner, SECOND[4])
    result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"kept_other": 1}


@contextlib.contextmanager
def listener(version: int, port: int):
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((VIP[version], port))
        server.listen(8)
        yield server


@contextlib.contextmanager
def connection(version: int, port: int):
    """A real TCP connection CLIENT -> VIP on this namespace's loopback;
    yields (client socket, accepted socket)."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    with listener(version, port) as server, socket.socket(family, socket.SOCK_STREAM) as client:
        client.bind((CLIENT[version], 0))
        client.settimeout(5)
        client.connect((VIP[version], port))
        accepted, _ = server.accept()
        with accepted:
            yield client, accepted


@pytest.mark.parametrize("version", [4, 6])
def test_a_packet_of_a_local_connection_is_kept(decap, version):
    with connection(version, 8080) as (client, _accepted):
        cport = client.getsockname()[1]
        inner = inner_packet(CLIENT[version], VIP[version], sport=cport, dport=8080, flags="PA")
        frame = gue_frame(inner, SECOND[version])
        result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"kept_socket": 1}


@pytest.mark.parametrize("version", [4, 6])
def test_a_packet_of_a_time_wait_socket_is_kept(decap, version):
    """The server closes first: its end waits in TIME_WAIT, and a late packet
    of the flow (a retransmitted FIN, say) is this host's to answer."""
    with connection(version, 8081) as (client, accepted):
        cport = client.getsockname()[1]
        accepted.shutdown(socket.SHUT_RDWR)
        assert client.recv(1) == b""
        client.close()
        accepted.close()
        inner = inner_packet(CLIENT[version], VIP[version], sport=cport, dport=8081, flags="FA")
        frame = gue_frame(inner, SECOND[version])
        result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"kept_socket": 1}


def syn_cookie(version: int, port: int, sport: int, isn: int) -> int:
    """Send a SYN from CLIENT:sport to a listener (syncookies=2: it answers
    with a cookie and keeps no state) through a raw socket, and return the
    SYN-ACK's sequence number: the cookie."""
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    syn = TCP(sport=sport, dport=port, flags="S", seq=isn, options=[("MSS", 1400)])
    l3 = IP(src=CLIENT[4], dst=VIP[4]) if version == 4 else IPv6(src=CLIENT[6], dst=VIP[6])
    syn = bytes(l3 / syn)[20 if version == 4 else 40:]   # scapy's TCP checksum over the pseudo-header
    with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_TCP) as raw:
        raw.bind((CLIENT[version], 0))
        raw.sendto(syn, (VIP[version], 0))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if not select.select([raw], [], [], 0.5)[0]:
                continue
            data = raw.recv(65535)
            segment = data[(data[0] & 0xf) * 4:] if version == 4 else data  # v6 raw: no IP header
            got = TCP(segment)
            if got.sport == port and got.dport == sport and got.flags == "SA":
                assert got.ack == isn + 1
                return got.seq
    raise AssertionError("no SYN-ACK from the listener")


@pytest.mark.parametrize("version", [4, 6])
def test_an_ack_completing_a_valid_syn_cookie_is_kept(decap, version):
    port, sport, isn = 8082, 41000 + version, 7000
    with listener(version, port):
        cookie = syn_cookie(version, port, sport, isn)
        ack = inner_packet(CLIENT[version], VIP[version], sport=sport, dport=port, flags="A",
                           seq=isn + 1, ack=cookie + 1, payload=b"")
        frame = gue_frame(ack, SECOND[version])
        result, moved = decap.run(frame)
        assert_kept(result, frame, ack)
        assert moved == {"kept_syncookie": 1}
        # the same ACK with another acknowledgment number is no cookie of ours
        wrong = inner_packet(CLIENT[version], VIP[version], sport=sport, dport=port, flags="A",
                             seq=isn + 1, ack=cookie + 1 + (1 << 24), payload=b"")
        result, moved = decap.run(gue_frame(wrong, SECOND[version]))
        assert result.action == XDP_TX and moved == {"forwarded": 1}


def test_a_packet_of_a_half_open_connection_is_kept(decap):
    """Without cookies (syncookies=1 and a queue with room) a SYN makes a
    request socket: the handshake's ACK, and data right behind it, belong
    here. The SYN comes from a client behind the gateway, so the SYN-ACK
    leaves by sc0 and nothing answers it with a reset."""
    port, sport = 8084, 42042
    sysctl("net.ipv4.tcp_syncookies=1")
    try:
        with listener(4, port), socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
            raw.sendto(bytes(IP(src=REMOTE_CLIENT[4], dst=VIP[4]) /
                             TCP(sport=sport, dport=port, flags="S", seq=5000)), (VIP[4], 0))
            deadline = time.monotonic() + 5
            while not _has_request_socket(sport) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _has_request_socket(sport), "the SYN made no request socket"
            ack = inner_packet(REMOTE_CLIENT[4], VIP[4], sport=sport, dport=port, flags="PA",
                               seq=5001, ack=1)
            frame = gue_frame(ack, SECOND[4])
            result, moved = decap.run(frame)
    finally:
        sysctl("net.ipv4.tcp_syncookies=2")
    assert_kept(result, frame, ack)
    assert moved == {"kept_socket": 1}


def _has_request_socket(sport: int) -> bool:
    """A SYN_RECV (03) entry with that remote port in /proc/net/tcp."""
    with open("/proc/net/tcp") as f:
        return any(line.split()[2].endswith(f":{sport:04X}") and line.split()[3] == "03"
                   for line in f.readlines()[1:])


@pytest.mark.parametrize("version", [4, 6])
def test_a_listener_alone_does_not_keep_a_packet(decap, version):
    """A service listens on the VIP port, but this flow's socket is elsewhere."""
    with listener(version, 8083):
        inner = inner_packet(REMOTE_CLIENT[version], VIP[version], dport=8083, flags="PA",
                             ack=12345)
        result, moved = decap.run(gue_frame(inner, SECOND[version]))
    assert result.action == XDP_TX and moved == {"forwarded": 1}


# --- forwarded --------------------------------------------------------------------
@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("flags", ["A", "PA", "R", "FA"])
def test_the_rest_is_forwarded_once_with_correct_headers(decap, version, flags):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version], flags=flags, ack=99)
    frame = gue_frame(inner, SECOND[version])
    result, moved = decap.run(frame)
    assert result.action == XDP_TX and moved == {"forwarded": 1}
    assert result.packet == expected_forward(frame, SECOND[version], GW_MAC, THIS_MAC)
    out = Ether(result.packet)
    if version == 4:
        assert out[IP].src == THIS[4] and out[IP].dst == SECOND[4] and out[IP].ttl == 64
        assert out[IP].flags == "DF", "DF stays as the balancer set it"
        assert checksum(bytes(out[IP])[:20]) == 0, "a valid IPv4 header checksum"
    else:
        assert out[IPv6].src == THIS[6] and out[IPv6].dst == SECOND[6]
        assert out[IPv6].hlim == 64 and out[IPv6].fl == 0x12345, "the flow label stays"
    assert out[UDP].sport == 51000 and out[UDP].dport == GUE_PORT and out[UDP].chksum == 0
    # at the second choice: kept, whatever it has (hops 1), the client's packet intact
    again, moved = decap.run(result.packet)
    assert moved == {"kept_forwarded": 1}
    assert_kept(again, result.packet, inner)


@pytest.mark.parametrize("version", [4, 6])
def test_a_route_by_another_interface_is_redirected_there(decap, namespace, version):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version])
    frame = gue_frame(inner, SECOND_OTHER_IF[version])
    result, moved = decap.run(frame)
    assert result.action == XDP_REDIRECT and moved == {"forwarded": 1}
    assert result.packet == expected_forward(frame, SECOND_OTHER_IF[version], OTHER_GW_MAC, OTHER_MAC)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("why", ["unresolved next hop", "tagged frame, other interface"])
def test_no_usable_next_hop_sends_it_back_to_the_neighbour_it_came_from(decap, version, why):
    """XDP cannot resolve a neighbour, and a tagged frame's VLAN is no other
    interface's: the packet goes back to the L2 neighbour that sent it
    (swapped MACs, XDP_TX), which routes it on."""
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version])
    if why == "unresolved next hop":
        second, vlans = UNRESOLVED[version], ()
    else:
        second, vlans = SECOND_OTHER_IF[version], (7,)
    frame = gue_frame(inner, second, vlans=vlans)
    result, moved = decap.run(frame)
    assert result.action == XDP_TX and moved == {"forwarded": 1}
    assert result.packet == expected_forward(frame, second, SENDER_MAC, THIS_MAC)


def test_forwarding_off_on_the_backend_sends_it_back_to_the_neighbour(decap):
    """A backend is no router: with forwarding off the FIB will not answer,
    and the neighbour that delivered the packet routes it instead."""
    inner = inner_packet(REMOTE_CLIENT[4], VIP[4])
    frame = gue_frame(inner, SECOND[4])
    sysctl("net.ipv4.conf.sc0.forwarding=0")
    try:
        result, moved = decap.run(frame)
    finally:
        sysctl("net.ipv4.conf.sc0.forwarding=1")
    assert result.action == XDP_TX and moved == {"forwarded": 1}
    assert result.packet == expected_forward(frame, SECOND[4], SENDER_MAC, THIS_MAC)


@pytest.mark.parametrize("version", [4, 6])
def test_no_route_to_the_second_choice_drops(decap, version):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version])
    result, moved = decap.run(gue_frame(inner, UNREACHABLE[version]))
    assert result.action == XDP_DROP and moved == {"forward_failed": 1}


# --- not ours, not a tunnel, plain ipip ------------------------------------------
@pytest.mark.parametrize("frame", [
    pytest.param(bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / IP(src=LBD[4], dst=THIS[4]) /
                       UDP(sport=5000, dport=GUE_PORT) / (b"\x00" * 40)), id="a service's UDP 6080"),
    pytest.param(gue_frame(inner_packet(REMOTE_CLIENT[4], VIP[4]), SECOND[4],
                           private=gue_private(4, SECOND[4], magic=0x1234)), id="GUE, not our magic"),
    pytest.param(gue_frame(inner_packet(REMOTE_CLIENT[6], VIP[6]), SECOND[6],
                           header=bytes([0x40 | 5, 41, 0, 0])), id="GUE version 1"),
    pytest.param(gue_frame(inner_packet(REMOTE_CLIENT[4], VIP[4]), SECOND[4],
                           header=bytes([0x20 | 2, 4, 0, 0])), id="GUE control message"),
    pytest.param(bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / IP(src=LBD[4], dst=THIS[4]) /
                       UDP(sport=5000, dport=GUE_PORT) / b"\x02\x04\x00\x00\x6c"), id="too short for a magic"),
    pytest.param(bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / IP(src=LBD[4], dst=THIS[4], frag=20) /
                       (b"\x00" * 40)), id="a later fragment"),
    pytest.param(bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / IP(src=LBD[4], dst=THIS[4]) /
                       UDP(sport=5000, dport=6081) / b"\x02\x04\x00\x00\x6c\x62\x00\x00"), id="another port"),
    pytest.param(bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / IP(src=REMOTE_CLIENT[4], dst=VIP[4]) /
                       TCP(dport=80, flags="A")), id="no tunnel"),
    pytest.param(bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / IPv6(src=REMOTE_CLIENT[6], dst=VIP[6]) /
                       UDP(dport=GUE_PORT) / b"x"), id="no tunnel, v6 UDP 6080"),
])
def test_what_is_not_lbds_passes_untouched(decap, frame):
    result, moved = decap.run(frame)
    assert result.action == XDP_PASS and result.packet == frame
    assert moved == {}


@pytest.mark.parametrize("version", [4, 6])
def test_plain_ipip_is_decapsulated_and_counted(decap, version):
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version])
    outer = IP(src=LBD[4], dst=THIS[4], proto=4) if version == 4 else IPv6(src=LBD[6], dst=THIS[6], nh=41)
    frame = bytes(Ether(src=SENDER_MAC, dst=THIS_MAC) / outer / inner)
    result, moved = decap.run(frame)
    assert_kept(result, frame, inner)
    assert moved == {"ipip": 1}


# --- malformed ---------------------------------------------------------------------
def _malformed_cases():
    v4 = inner_packet(REMOTE_CLIENT[4], VIP[4])
    v6 = inner_packet(REMOTE_CLIENT[6], VIP[6])
    cases = {
        "Hlen 3 in IPv4": gue_frame(v4, SECOND[4], header=bytes([3, 4, 0, 0])),
        "Hlen 2 in IPv6": gue_frame(v6, SECOND[6], header=bytes([2, 41, 0, 0])),
        "proto 41 in IPv4": gue_frame(v4, SECOND[4], header=bytes([2, 41, 0, 0])),
        "proto 4 in IPv6": gue_frame(v6, SECOND[6], header=bytes([5, 4, 0, 0])),
        "GUE flags set": gue_frame(v4, SECOND[4], header=bytes([2, 4, 0x80, 0])),
        "UDP length short": gue_frame(v4, SECOND[4], udp_len=8 + 12 + len(v4) - 1),
        "UDP length long (v6)": gue_frame(v6, SECOND[6], udp_len=8 + 24 + len(v6) + 1),
        "an IPv6 inner in IPv4": gue_frame(v6, SECOND[4], header=bytes([2, 4, 0, 0])),
        "first fragment": gue_frame(v4, SECOND[4], outer_kw={"flags": "MF"}),
        "inner TCP header cut": gue_frame(IP(src=REMOTE_CLIENT[4], dst=VIP[4], proto=6) / (b"\0" * 10),
                                          SECOND[4]),
        "inner TCP header cut (v6)": gue_frame(IPv6(src=REMOTE_CLIENT[6], dst=VIP[6], nh=6) / (b"\0" * 10),
                                               SECOND[6]),
    }
    whole = gue_frame(v4, SECOND[4])
    cases["frame cut short"] = whole[:-3]                # the outer length says more
    whole6 = gue_frame(v6, SECOND[6])
    cases["frame cut short (v6)"] = whole6[:-3]
    inner_len = bytearray(whole)                          # inner total length one too many
    at = 14 + 40 + 2
    inner_len[at:at + 2] = struct.pack("!H", len(v4) + 1)
    cases["inner length wrong"] = bytes(inner_len)
    return cases


@pytest.mark.parametrize("name,frame", list(_malformed_cases().items()), ids=list(_malformed_cases()))
def test_lbds_gue_that_does_not_add_up_is_dropped_and_counted(decap, name, frame):
    result, moved = decap.run(frame)
    assert result.action == XDP_DROP, name
    assert moved == {"malformed": 1}


# --- any shape (Hypothesis), against an oracle from the wire format ----------------
FLAGS = st.sampled_from(["S", "SA", "A", "PA", "R", "RA", "FA", "SE", "U"])


@st.composite
def gue_cases(draw):
    version = draw(st.sampled_from([4, 6]))
    kind = draw(st.sampled_from(["tcp", "tcp", "tcp", "udp", "icmp"]))
    flags = draw(FLAGS)
    hops = draw(st.sampled_from([0, 0, 1, 2, 255]))
    second = draw(st.sampled_from([SECOND[version], SECOND[version], THIS[version]]))
    vlans = draw(st.sampled_from([(), (), (5,), (100, 5)]))
    payload = draw(st.binary(max_size=300))
    sport = draw(st.integers(1024, 65535))
    ipopts = version == 4 and kind == "tcp" and draw(st.booleans())
    l3 = (IP(src=REMOTE_CLIENT[4], dst=VIP[4], **({"options": b"\x01" * 4} if ipopts else {}))
          if version == 4 else IPv6(src=REMOTE_CLIENT[6], dst=VIP[6]))
    if kind == "tcp":
        inner = l3 / TCP(sport=sport, dport=80, flags=flags, ack=5) / payload
    elif kind == "udp":
        inner = l3 / UDP(sport=sport, dport=53) / payload
    else:
        inner = l3 / ICMP() / payload
    return version, kind, flags, hops, second, vlans, inner


def oracle(version, kind, flags, hops, second):
    """The design's decision, in order: forwarded before -> kept; not TCP or
    the second is this host -> kept; a SYN without ACK -> kept; no socket has
    these flows -> forwarded."""
    if hops >= 1:
        return "kept_forwarded"
    if kind != "tcp" or second == THIS[version]:
        return "kept_other"
    if "S" in flags and "A" not in flags:
        return "kept_syn"
    return "forwarded"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=gue_cases())
def test_any_gue_packet_is_kept_or_forwarded_as_the_design_says(decap, case):
    version, kind, flags, hops, second, vlans, inner = case
    frame = gue_frame(inner, second, hops=hops, vlans=vlans)
    result, moved = decap.run(frame)
    want = oracle(version, kind, flags, hops, second)
    assert moved == {want: 1}
    if want == "forwarded":
        # a tagged frame comes back on its VLAN: the route leaves by the ingress interface
        assert result.action == XDP_TX
        assert result.packet == expected_forward(frame, second, GW_MAC, THIS_MAC)
    else:
        assert_kept(result, frame, inner)


# --- lbd-backend check, prepare and metrics on the attached program -----------------
@contextlib.contextmanager
def attached(fd: int, ifname: str = "sc0"):
    xdplink.attach(fd, ifname, "generic")
    try:
        yield
    finally:
        xdplink.detach(ifname)


def test_check_and_metrics_read_the_attached_programs_counters(decap, capsys):
    """Found through the attached program's map ids (nothing else is pinned)."""
    with attached(decap.fd):
        decap.run(gue_frame(inner_packet(REMOTE_CLIENT[4], VIP[4], flags="S"), SECOND[4]))
        decap.run(gue_frame(inner_packet(REMOTE_CLIENT[6], VIP[6]), SECOND[6]))
        want = decap.counters()
        state = backend_decap.decap_state("sc0")
        assert state.counters == want and state.current and state.mode == "generic"
        findings = [f for f in backend_cli.check("ipip", [ip(VIP[4])], "sc0") if "lbd_decap" in f.what]
        assert [f.ok for f in findings] == [True, True, True]
        assert findings[1].what.endswith("sends second-chance packets on to any address")
        kept = sum(v for k, v in want.items() if k.startswith("kept_") or k == "forward_refused")
        assert f"kept {kept} (" in findings[2].what
        assert backend_cli.main(["metrics", "--interface", "sc0"]) == 0
    samples = {(s.name, s.labels.get("result")): s.value
               for family in text_string_to_metric_families(capsys.readouterr().out)
               for s in family.samples if s.labels.get("interface") == "sc0"}
    assert samples[("lbd_backend_decap_attached", None)] == 1
    assert samples[("lbd_backend_decap_build_current", None)] == 1
    for result, value in want.items():
        assert samples[("lbd_backend_decap_packets_total", result)] == value


def test_an_old_build_is_reported_by_check_and_replaced_by_prepare(decap):
    """A decap program of an lbd before second chance (no build id, no
    counters): check says so and prepare replaces it in its attach mode."""
    from bcc import BPF

    old = BPF(text=b"int lbd_decap(struct xdp_md *ctx) { return XDP_PASS; }")
    try:
        xdplink.attach(old.load_func(b"lbd_decap", BPF.XDP).fd, "sc0", "generic")
        state = backend_decap.decap_state("sc0")
        assert state.build is None and state.counters is None and not state.current
        findings = [f for f in backend_cli.check("ipip", [ip(VIP[4])], "sc0") if "lbd_decap" in f.what]
        assert [f.ok for f in findings] == [False] and "old build" in findings[0].what
        assert "lbd-backend prepare" in findings[0].fix
        changes = backend_cli.prepare("ipip", [ip(VIP[4])], "sc0", "auto")
        assert [c for c in changes if "lbd_decap" in c] == [
            f"replaced lbd_decap on sc0 (an old build (before second chance)) with build "
            f"{backend_decap.decap_source_hash()} (xdp mode generic, compiled); it sends "
            f"second-chance packets on to {THIS[4].rsplit('.', 1)[0]}.0/24, fd00:40::/64"]
        state = backend_decap.decap_state("sc0")
        assert state.current and state.mode == "generic"
        assert state.counters == {name: 0 for name in SLOTS}
        assert all(f.ok for f in backend_cli.check("ipip", [ip(VIP[4])], "sc0") if "lbd_decap" in f.what)
        assert not [c for c in backend_cli.prepare("ipip", [ip(VIP[4])], "sc0") if "lbd_decap" in c]
    finally:
        xdplink.detach("sc0")
        old.cleanup()


@pytest.mark.parametrize("version", [4, 6])
def test_a_second_choice_outside_forward_to_is_kept_and_counted(decap, version):
    """A forged GUE packet cannot make this host send anywhere: a second
    choice outside forward_to is refused, and the packet kept, as if it
    named none (its kernel has no socket: it answers with a reset)."""
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version])
    frame = gue_frame(inner, SECOND[version])
    other = [ipaddress.ip_network("198.18.51.0/24"), ipaddress.ip_network("fd00:51::/64")]
    decap.allow(other)
    try:
        result, moved = decap.run(frame)
        assert_kept(result, frame, inner)
        assert moved == {"forward_refused": 1}
        # the same packet to a second choice inside goes on
        result, moved = decap.run(gue_frame(inner, SECOND_OTHER_IF[version]))
        assert moved == {"forwarded": 1} and result.action == XDP_REDIRECT
    finally:
        decap.allow(forwardto.ANY)


def _networks():
    """Prefixes near the addresses below, so that some hold them and some do not."""
    v4 = st.builds(lambda b, c, n: ipaddress.ip_network(f"198.{b}.{c}.0/{n}", strict=False),
                   st.integers(18, 19), st.integers(0, 3), st.integers(8, 32))
    v6 = st.builds(lambda b, n: ipaddress.ip_network(f"fd00:{b:x}::/{n}", strict=False),
                   st.integers(0, 3), st.integers(8, 128))
    return st.lists(st.one_of(v4, v6), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(networks=_networks(), version=st.sampled_from([4, 6]), a=st.integers(0, 3), b=st.integers(1, 254))
def test_forward_to_admits_exactly_the_addresses_inside_its_prefixes(decap, networks, version, a, b):
    """The oracle: Python's `address in network` over the prefixes (an IPv4
    prefix never holds an IPv6 address, nor the reverse)."""
    second = f"198.18.{a}.{b}" if version == 4 else f"fd00:{a:x}::{b:x}"
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version])
    decap.allow(networks)
    try:
        _, moved = decap.run(gue_frame(inner, second))
    finally:
        decap.allow(forwardto.ANY)
    inside = any(ip(second) in n for n in networks if n.version == version)
    if inside:
        assert set(moved) <= {"forwarded", "forward_failed"} and sum(moved.values()) == 1, moved
    else:
        assert moved == {"forward_refused": 1}, (networks, second)


def test_prepare_writes_forward_to_and_check_reports_it(decap):
    """The default is the interface's own prefixes; --forward-to replaces
    them on the running program (no reattach), and check shows the list."""
    with attached(decap.fd), contextlib.ExitStack() as restore:
        restore.callback(decap.allow, forwardto.ANY)
        changes = backend_cli.prepare("ipip", [ip(VIP[4])], "sc0", "auto")
        assert [c for c in changes if "lbd_decap" in c] == [
            "lbd_decap on sc0 now sends second-chance packets on to 198.18.40.0/24, fd00:40::/64 "
            "(was any address)"]
        assert backend_decap.decap_state("sc0").prog_id == bpfsys.program_id(decap.fd)
        wanted = forwardto.parse(["10.0.0.0/8", "fd00:50::/48"])
        backend_cli.prepare("ipip", [ip(VIP[4])], "sc0", "auto", forward_to=wanted)
        assert backend_decap.decap_state("sc0").forward_to == wanted
        [finding] = [f for f in backend_cli.check("ipip", [ip(VIP[4])], "sc0") if "sends" in f.what]
        assert finding.ok and finding.what.endswith("on to 10.0.0.0/8, fd00:50::/48")
        backend_cli.prepare("ipip", [ip(VIP[4])], "sc0", "auto", forward_to=[])
        [finding] = [f for f in backend_cli.check("ipip", [ip(VIP[4])], "sc0") if "sends" in f.what]
        assert not finding.ok and "--forward-to" in finding.fix
        assert not [c for c in backend_cli.prepare("ipip", [ip(VIP[4])], "sc0", "auto", forward_to=[])
                    if "lbd_decap" in c], "an unchanged list changes nothing"


def test_a_pinned_program_keeps_its_build_id_and_counters(tmp_path):
    """prepare --pin-dir: a later prepare attaches the pinned program (no
    compile), which still names its build and counts."""
    bpffs = tmp_path / "bpffs"
    bpffs.mkdir()
    subprocess.run(["mount", "-t", "bpf", "bpf", str(bpffs)], check=True)
    try:
        pins = str(bpffs / "decap")
        first = backend_decap.attach_decap("sc0", "generic", list(forwardto.ANY), pins)
        xdplink.detach("sc0")
        again = backend_decap.attach_decap("sc0", "generic", list(forwardto.ANY), pins)
        assert "compiled, pinned" in first and "compiled" not in again and "pinned" in again
        state = backend_decap.decap_state("sc0")
        assert state.current and state.counters == {name: 0 for name in SLOTS}
    finally:
        xdplink.detach("sc0")
        subprocess.run(["umount", str(bpffs)], check=False)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(version=st.sampled_from([4, 6]), vlans=st.sampled_from([(), (5,), (100, 5)]),
       flags=FLAGS, cut=st.integers(1, 200), payload=st.binary(max_size=64))
def test_a_cut_gue_frame_passes_untouched_or_is_dropped_as_malformed(decap, version, vlans, flags,
                                                                     cut, payload):
    """Cut anywhere: before the magic it cannot be told from anyone's UDP and
    passes untouched; from there on it is lbd's, and its lengths no longer
    add up: dropped and counted. Never anything else."""
    inner = inner_packet(REMOTE_CLIENT[version], VIP[version], flags=flags, payload=payload)
    whole = gue_frame(inner, SECOND[version], vlans=vlans)
    frame = whole[:max(14, len(whole) - cut)]   # the test run takes no less than a MAC header
    magic_end = l2_length(whole) + (20 if version == 4 else 40) + 8 + 4 + 2
    result, moved = decap.run(frame)
    if len(frame) < magic_end:
        assert result.action == XDP_PASS and result.packet == frame and moved == {}
    else:
        assert result.action == XDP_DROP and moved == {"malformed": 1}
