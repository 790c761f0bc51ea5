"""A packet grammar for the bpf tier: Hypothesis strategies that build
Ethernet frames byte by byte (issue #11).

    frame    = ethernet [tag [tag [tag]]] ethertype l3 [padding]
    tag      = 802.1Q (0x8100) | 802.1ad (0x88a8), any VID/PCP/DEI
    l3       = ipv4 [options 0..40 bytes, IHL 5..15] l4
             | ipv6 [extension header]* l4          (0..9 of hop-by-hop, routing,
                                                     destination options, fragment)
    l4       = tcp (any SYN/ACK/RST/FIN/PSH/URG mix, options) | udp
             | icmp / icmpv6 (echo, frag-needed / packet-too-big quoting a VIP
               flow, other errors) | esp, ah, gre, sctp, no-next-header
    fragment = none | first | middle | last | atomic (IPv4 DF, IPv6 offset 0 M 0)

and lengths that agree or disagree with the frame: IPv4 total length and
IPv6 payload length shorter than the L4 header, than the IP header, longer
than the frame, or exact with Ethernet padding after the packet; IPv4
version/IHL lies; frames cut anywhere. Addresses are VIP addresses of
`plans()` (DSR and ipip, v4 and v6, client affinity, port 0, a VIP with no
backend in its table) and addresses that are not VIPs; sources include the
ones RFC 1122 / 4443 forbid ICMP errors to.

The strategies know nothing of what the balancer does with a frame: that is
tests/bpf/rfc_oracle.py's job. Each strategy yields a `Frame` (bytes and a
note of how it was made), whose repr is what Hypothesis prints for the
smallest failing example.
"""
from __future__ import annotations

import functools
import ipaddress
import struct

from hypothesis import strategies as st
from scapy.utils import checksum

from lbd.plan import DRAINING
from tests.bpf import scenario as sc
from tests.bpf.conftest import LBD_MAC

TCP, UDP, ICMP4, ICMP6 = 6, 17, 1, 58
HOPOPTS, ROUTING, FRAGMENT, DSTOPTS, NONXT, ESP, AH, GRE, SCTP = 0, 43, 44, 60, 59, 50, 51, 47, 132
TPID_Q, TPID_AD = 0x8100, 0x88a8
ETH_V4, ETH_V6 = 0x0800, 0x86DD

# --- the VIPs the grammar aims at --------------------------------------------------
IPIP_AFFINITY_V4, IPIP_AFFINITY_V6 = "198.18.100.60", "fd00:100::60"
WILDCARD_V6 = "fd00:100::30"
NO_BACKEND_V4 = "198.18.100.70"
NOT_VIP_V4 = ["198.18.100.99", "198.18.100.11", "198.18.20.11", "198.18.1.1", "203.0.113.10"]
NOT_VIP_V6 = ["fd00:100::99", "fd00:100::11", "fd00:20::11", "fd00:1::1", "2001:db8::10"]


def plans():
    """scenario's standard VIPs (without the unresolved-next-hop one, whose
    answer depends on the neighbour table, not on the packet) plus: ipip
    client-affinity VIPs (fragments and their path MTU), an IPv6 port-0 ipip
    VIP, and a VIP whose only backends drain (its table is empty). Every
    (address, protocol) has at most one VIP, so a non-first fragment (no
    ports) belongs to exactly one."""
    drained = tuple(sc.BackendPlan(b.address, b.weight, DRAINING, b.dst_mac, b.src_mac)
                    for b in sc.backends("198.18.0.", 2))
    return [p for p in sc.standard_vips() if str(p.address) != sc.UNRESOLVED_IPIP_V4] + [
        sc.vip(IPIP_AFFINITY_V4, 53, UDP, ipip=True, client=True),
        sc.vip(IPIP_AFFINITY_V4, 80, TCP, ipip=True, client=True),
        sc.vip(IPIP_AFFINITY_V6, 53, UDP, ipip=True, client=True),
        sc.vip(IPIP_AFFINITY_V6, 80, TCP, ipip=True, client=True),
        sc.vip(WILDCARD_V6, 0, UDP, ipip=True),
        sc.vip(NO_BACKEND_V4, 80, TCP, members=drained),
    ]


def _vip_index():
    by_addr: dict[str, dict[int, list]] = {}
    for p in plans():
        by_addr.setdefault(str(p.address), {}).setdefault(p.proto, []).append(p)
    return by_addr


VIP_INDEX = _vip_index()
VIP_V4 = sorted(a for a in VIP_INDEX if ":" not in a)
VIP_V6 = sorted(a for a in VIP_INDEX if ":" in a)
IPIP_VIPS = {4: sorted({str(p.address) for p in plans() if p.ipip and p.address.version == 4}),
             6: sorted({str(p.address) for p in plans() if p.ipip and p.address.version == 6})}
AFFINITY_IPIP = {4: IPIP_AFFINITY_V4, 6: IPIP_AFFINITY_V6}


class Egress:
    """The encapsulated-size limits the path-MTU strategy aims around: set by
    the test from the namespace's routes (default: lbd0's MTU of 1500)."""
    mtus = {4: [1500], 6: [1500]}


# --- bytes ------------------------------------------------------------------------
def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


csum = checksum  # scapy's RFC 1071 Internet checksum


def packed(address: str) -> bytes:
    return ipaddress.ip_address(address).packed


def ethernet(dst: bytes, src: bytes, tags, ethertype: int) -> bytes:
    out = dst + src
    for tpid, tci in tags:
        out += struct.pack("!HH", tpid, tci)
    return out + struct.pack("!H", ethertype)


def ipv4(src, dst, proto, payload: bytes, *, options=b"", tos=0, ident=0, df=False, mf=False,
         offset=0, ttl=64, version=4, ihl=None, total=None, reserved=False) -> bytes:
    """An IPv4 packet; ihl/total/version may lie (the checksum is always
    right for the header as written: lbd checks none, backends do)."""
    hlen = 20 + len(options)
    ihl = hlen // 4 if ihl is None else ihl
    total = hlen + len(payload) if total is None else total
    frag = (0x8000 if reserved else 0) | (0x4000 if df else 0) | (0x2000 if mf else 0) | offset
    head = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, tos, total & 0xFFFF, ident, frag, ttl,
                       proto, 0, packed(src), packed(dst)) + options
    head = head[:10] + struct.pack("!H", csum(head)) + head[12:]
    return head + payload


def ipv6(src, dst, nh, payload: bytes, *, tc=0, flow=0, hlim=64, version=6, plen=None) -> bytes:
    plen = len(payload) if plen is None else plen
    word = (version << 28) | (tc << 20) | flow
    return struct.pack("!IHBB16s16s", word, plen & 0xFFFF, nh, hlim, packed(src), packed(dst)) + payload


def ext_header(kind: int, nh: int, units: int = 0) -> bytes:
    """Hop-by-hop / destination options (PadN) or routing (type 253, no
    segments left), 8 * (units + 1) bytes."""
    size = 8 * (units + 1)
    if kind == ROUTING:
        return struct.pack("!BBBB", nh, units, 253, 0) + bytes(size - 4)
    return struct.pack("!BBBB", nh, units, 1, size - 4) + bytes(size - 4)


def frag_header(nh: int, offset: int, more: bool, ident: int) -> bytes:
    return struct.pack("!BBHI", nh, 0, (offset << 3) | int(more), ident)


def pseudo(src, dst, proto, length) -> bytes:
    s, d = packed(src), packed(dst)
    if len(s) == 4:
        return s + d + struct.pack("!BBH", 0, proto, length)
    return s + d + struct.pack("!IxxxB", length, proto)


def tcp(src, dst, sport, dport, flags, payload=b"", *, seq=1, ack=0, options=b"", doff=None) -> bytes:
    hlen = 20 + len(options)
    doff = hlen // 4 if doff is None else doff
    head = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, doff << 4, flags, 65535, 0, 0) + options
    check = csum(pseudo(src, dst, TCP, len(head) + len(payload)) + head + payload)
    return head[:16] + struct.pack("!H", check) + head[18:] + payload


def udp(src, dst, sport, dport, payload=b"", *, length=None) -> bytes:
    length = 8 + len(payload) if length is None else length
    head = struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0)
    check = csum(pseudo(src, dst, UDP, 8 + len(payload)) + head + payload) or 0xFFFF
    return head[:6] + struct.pack("!H", check) + payload


def icmp4(typ, code, rest: bytes, data: bytes) -> bytes:
    body = struct.pack("!BBH", typ, code, 0) + rest + data
    return body[:2] + struct.pack("!H", csum(body)) + body[4:]


def icmp6(src, dst, typ, code, rest: bytes, data: bytes) -> bytes:
    body = struct.pack("!BBH", typ, code, 0) + rest + data
    check = csum(pseudo(src, dst, ICMP6, len(body)) + body)
    return body[:2] + struct.pack("!H", check) + body[4:]


class Frame:
    """A generated frame: its bytes and how the grammar made it."""
    __slots__ = ("data", "note")

    def __init__(self, data: bytes, note: str):
        self.data, self.note = data, note

    def __repr__(self) -> str:
        return f"Frame({self.note!r}, len={len(self.data)}, hex={self.data.hex()!r})"


TCP_FLAG_BITS = {"F": 0x01, "S": 0x02, "R": 0x04, "P": 0x08, "A": 0x10, "U": 0x20, "E": 0x40, "C": 0x80}


def flag_text(flags: int) -> str:
    return "".join(k for k, v in TCP_FLAG_BITS.items() if flags & v) or "-"


# --- strategies: pieces -----------------------------------------------------------
UNICAST_MAC = mac(LBD_MAC)
GROUP_MACS = [mac("ff:ff:ff:ff:ff:ff"), mac("01:00:5e:00:00:fb"), mac("33:33:00:00:00:01"),
              mac("03:00:00:00:00:01")]


def choose(items):
    """st.sampled_from, made once per distinct tuple of items: building
    strategy objects inside every draw is what costs most here."""
    return _sampled(tuple(items))


@functools.lru_cache(maxsize=None)
def _sampled(items: tuple):
    return st.sampled_from(items)


@functools.lru_cache(maxsize=None)
def one_in(n: int):
    """True about once in n draws (Hypothesis weights integer bounds, so
    `integers(0, n) == 0` would be far likelier); shrinks to False."""
    return choose([False] * (n - 1) + [True])


TCI = st.integers(0, 0xFFFF)


def l2(draw, ethertype: int, group_dst: bool = False):
    """(header bytes, note): 0, 1 or 2 tags in the shapes docs/design.md parses,
    and shapes it does not (a third tag, 802.1ad inside 802.1Q)."""
    if draw(one_in(8)):   # shapes docs/design.md does not parse: the frame passes
        shape = draw(choose(["q+q+q", "ad+q+q", "q+ad", "ad+ad"]))
    else:
        shape = draw(choose(["none", "none", "none", "q", "q", "ad", "q+q", "ad+q", "ad+q"]))
    tags = [] if shape == "none" else [(TPID_AD if t == "ad" else TPID_Q, draw(TCI))
                                       for t in shape.split("+")]
    dst = draw(choose(GROUP_MACS)) if group_dst else UNICAST_MAC
    return ethernet(dst, mac(sc.CLIENT_MAC), tags, ethertype), shape


@functools.lru_cache(maxsize=None)
def src_address(version: int, weird=False):
    """Client sources; with `weird`, also the sources that are not a single
    host (RFC 1122 3.2.2 / RFC 4443 2.4(e)) and their neighbours that are."""
    if version == 4:
        hosts = st.builds(lambda b: f"198.18.{10 + b // 256 % 40}.{b % 254 + 1}", st.integers(0, 20000))
        odd = choose(["0.0.0.0", "0.1.2.3", "127.0.0.1", "127.255.255.254", "224.0.0.5",
                               "239.255.255.250", "240.0.0.1", "255.255.255.255", "1.0.0.1",
                               "126.255.255.255", "128.0.0.1", "223.255.255.255"])
    else:
        hosts = st.builds(lambda b: f"fd00:10::{b:x}", st.integers(1, 0xFFFF))
        odd = choose(["::", "::1", "ff02::1", "ff0e::5", "ff00::", "::2", "fe80::1",
                               "feff::1", "::ffff:198.18.10.2"])
    return st.one_of(hosts, odd) if weird else st.one_of(hosts, st.just(sc.CLIENT_V4 if version == 4
                                                                       else sc.CLIENT_V6))


@functools.lru_cache(maxsize=None)
def dst_address(version: int):
    vips, others = (VIP_V4, NOT_VIP_V4) if version == 4 else (VIP_V6, NOT_VIP_V6)
    return st.one_of(choose(vips), choose(vips), choose(vips),
                     choose(vips), choose(others))


@functools.lru_cache(maxsize=None)
def vip_or_other(version: int):
    return st.one_of(choose(VIP_V4 if version == 4 else VIP_V6), dst_address(version))


@functools.lru_cache(maxsize=None)
def router_or_host(version: int):
    """Where ICMP errors come from: routers on the path, or any host."""
    routers = ["198.18.10.1", "198.18.1.254"] if version == 4 else ["fd00:10::1", "fd00:1::fe"]
    return choose(routers) | src_address(version)


@functools.lru_cache(maxsize=None)
def dport_for(address: str, proto: int):
    served = [p.port for p in VIP_INDEX.get(address, {}).get(proto, [])]
    others = choose([81, 443, 8080, 1, 65535, 0, 54])
    if served and 0 not in served:
        return st.one_of(choose(served), choose(served), others)
    return st.one_of(others, st.integers(0, 65535))


@functools.lru_cache(maxsize=None)
def v4_options():
    """0..40 bytes of options (IHL 5..15): NOP/EOL runs, router alert,
    timestamps, or bytes nobody parses."""
    words = st.integers(0, 10)

    @st.composite
    def build(draw):
        n = draw(words) * 4
        kind = draw(choose(["nop", "ra", "raw"]))
        if n == 0:
            return b""
        if kind == "nop":
            return b"\x01" * (n - 1) + b"\x00"
        if kind == "ra" and n >= 4:
            return b"\x94\x04\x00\x00" + b"\x01" * (n - 4)
        return draw(st.binary(min_size=n, max_size=n))
    return build()


@functools.lru_cache(maxsize=None)
def tcp_flags():
    named = choose([0x02, 0x12, 0x10, 0x18, 0x04, 0x14, 0x01, 0x11, 0x06, 0x03, 0x00, 0x29, 0xC2])
    return st.one_of(named, st.integers(0, 255))


@functools.lru_cache(maxsize=None)
def padding(max_size: int):
    """Ethernet padding after the IP packet: none, mostly."""
    return st.one_of(st.just(b""), st.just(b""), st.binary(min_size=1, max_size=max_size))


@functools.lru_cache(maxsize=None)
def payload(max_size=64):
    return st.one_of(st.just(b""), st.binary(max_size=max_size))


# --- strategies: whole frames -------------------------------------------------------
SPORTS = choose([40000, 1024, 65535, 53, 80, 0]) | st.integers(0, 65535)
DOFF = st.one_of(st.none(), st.none(), st.integers(0, 15))
UDP_LENGTH = st.one_of(st.none(), st.none(), st.none(), st.integers(0, 0xFFFF))
EXT_UNITS = choose([0, 0, 0, 1, 3])


def upper(draw, version, src, dst, proto, dport, *, size=None):
    """A TCP/UDP header and data, `size` bytes in all when given."""
    sport = draw(SPORTS)
    if proto == TCP:
        flags = draw(tcp_flags())
        options = draw(choose([b"", b"\x02\x04\x05\xb4", b"\x01\x01\x04\x02\x01\x03\x03\x07"]))
        doff = draw(DOFF)
        data = draw(payload()) if size is None else b"d" * max(0, size - 20 - len(options))
        return tcp(src, dst, sport, dport, flags, data, options=options, doff=doff), \
            f"tcp {sport}->{dport} {flag_text(flags)}"
    data = draw(payload()) if size is None else b"u" * max(0, size - 8)
    length = draw(UDP_LENGTH)
    return udp(src, dst, sport, dport, data, length=length), f"udp {sport}->{dport}"


@functools.lru_cache(maxsize=None)
def chain_kinds(max_len=9):
    return _chain_kinds(max_len)


@st.composite
def _chain_kinds(draw, max_len):
    """A chain length drawn evenly from 0..max_len (the bound is 6, so 5, 6
    and 7 are as likely as 0), then its headers."""
    n = draw(st.integers(0, max_len))
    return draw(st.lists(choose([HOPOPTS, ROUTING, DSTOPTS]), min_size=n, max_size=n))


def v6_chain(draw, kinds, final_nh: int, body: bytes):
    """Extension headers `kinds` (each 8..32 bytes) in front of `body`."""
    out = body
    nh = final_nh
    for kind in reversed(kinds):
        out = ext_header(kind, nh, draw(EXT_UNITS)) + out
        nh = kind
    return nh, out


@st.composite
def l4_frames(draw):
    """TCP/UDP (and a few other protocols) to VIP and non-VIP addresses:
    VLAN shapes, IPv4 options, IPv6 chains of 0..9, fragments, flags,
    padding; lengths consistent."""
    version = draw(choose([4, 6]))
    proto = draw(choose([TCP, TCP, UDP, UDP, ESP, SCTP, GRE, AH] if version == 4 else
                                 [TCP, TCP, UDP, UDP, ESP, SCTP, AH, NONXT]))
    dst = draw(dst_address(version))
    src = draw(src_address(version))
    dport = draw(dport_for(dst, proto)) if proto in (TCP, UDP) else 0
    frag = draw(choose(["none"] * 5 + ["first", "middle", "last", "atomic"]))
    if proto in (TCP, UDP):
        body, what = (upper(draw, version, src, dst, proto, dport))
    else:
        body, what = draw(st.binary(min_size=0, max_size=40)), f"proto {proto}"
    ident = draw(st.integers(0, 0xFFFF))
    if frag in ("middle", "last"):
        body = draw(st.binary(min_size=8, max_size=48))
        offset = draw(st.integers(1, 0x1FFF))
    else:
        offset = 0
    if version == 4:
        options = draw(v4_options())
        packet = ipv4(src, dst, proto, body, options=options, tos=draw(st.integers(0, 255)), ident=ident,
                      df=(frag == "atomic") or draw(st.booleans()), mf=frag in ("first", "middle"),
                      offset=offset, ttl=draw(st.integers(1, 255)), reserved=draw(st.booleans()))
        note = f"v4 ihl={5 + len(options) // 4} {frag} {src}->{dst} {what}"
        ethertype = ETH_V4
    else:
        kinds = draw(chain_kinds())
        if frag != "none":
            # unfragmentable part, fragment header, then (first/atomic) the rest of the chain
            split = draw(st.integers(0, len(kinds)))
            if frag in ("middle", "last"):
                split = len(kinds)
            before, after = kinds[:split], kinds[split:]
            nh, rest = (v6_chain(draw, after, proto, body))
            fh = frag_header(nh, offset, frag in ("first", "middle"), ident)
            nh, chain_body = (v6_chain(draw, before, FRAGMENT, fh + rest))
            n_ext = len(kinds) + 1
        else:
            nh, chain_body = (v6_chain(draw, kinds, proto, body))
            n_ext = len(kinds)
        packet = ipv6(src, dst, nh, chain_body, tc=draw(st.integers(0, 255)),
                      flow=draw(st.integers(0, 0xFFFFF)))
        note = f"v6 ext={n_ext} {frag} {src}->{dst} {what}"
        ethertype = ETH_V6
    head, shape = l2(draw, ethertype, draw(st.booleans()))
    pad = draw(padding(24))
    if shape == "none" and draw(one_in(10)):
        head = head[:12] + draw(choose([b"\x88\xb5", b"\x08\x06", b"\x91\x00", b"\x88\x47",
                                                  b"\x86\xdc", b"\x08\x01"]))
        shape = "other ethertype"
    return Frame(head + packet + pad, f"{shape} {note} pad={len(pad)}")


@st.composite
def inconsistent_frames(draw):
    """Headers whose length fields or versions disagree with the frame or
    with themselves: total/payload length below the IP header, below the L4
    header, beyond the frame; IHL < 5; version lies; extension headers that
    run past the packet; frames cut anywhere."""
    version = draw(choose([4, 6]))
    proto = draw(choose([TCP, UDP, TCP, UDP, ICMP4 if version == 4 else ICMP6, ESP,
                                  SCTP if version == 4 else NONXT]))
    dst = draw(vip_or_other(version))
    src = draw(src_address(version))
    dport = draw(dport_for(dst, proto)) if proto in (TCP, UDP) else 0
    if proto in (TCP, UDP):
        body, what = (upper(draw, version, src, dst, proto, dport))
    else:
        body, what = draw(st.binary(min_size=0, max_size=30)), f"proto {proto}"
    lie = draw(choose(["short-l4", "short-l4", "below-header", "beyond-frame", "beyond-frame",
                                "version", "ihl", "exact+pad", "cut", "cut", "ext-overrun", "ext-len"]))
    if version == 4:
        options = draw(v4_options())
        hlen = 20 + len(options)
        total = hlen + len(body)
        ihl = None
        ver = 4
        if lie == "short-l4":
            total = hlen + draw(st.integers(0, (20 if proto == TCP else 8) - 1))
        elif lie == "below-header":
            total = draw(st.integers(0, hlen - 1))
        elif lie == "beyond-frame":
            total = total + draw(st.integers(1, 1500))
        elif lie == "version":
            ver = draw(choose([0, 1, 5, 6, 7, 15]))
        elif lie == "ihl":
            ihl = draw(st.integers(0, 4))
        packet = ipv4(src, dst, proto, body, options=options, ident=draw(st.integers(0, 0xFFFF)),
                      version=ver, ihl=ihl, total=total, df=draw(st.booleans()))
        note = f"v4 {lie} ihl={ihl if ihl is not None else hlen // 4} total={total} ver={ver}"
        ethertype = ETH_V4
    else:
        kinds = draw(chain_kinds(max_len=7))
        nh, chain_body = (v6_chain(draw, kinds, proto, body))
        ext_len = len(chain_body) - len(body)
        plen = len(chain_body)
        ver = 6
        if lie == "short-l4":
            plen = ext_len + draw(st.integers(0, (20 if proto == TCP else 8) - 1))
        elif lie in ("below-header", "ext-overrun") and ext_len:
            plen = draw(st.integers(0, ext_len - 1))
        elif lie == "beyond-frame":
            plen = plen + draw(st.integers(1, 1500))
        elif lie == "version":
            ver = draw(choose([0, 4, 5, 7, 15]))
        elif lie == "ext-len" and kinds:
            # one header's length byte says it runs past the end of the packet
            starts, off = [], 0
            for _ in kinds:
                starts.append(off)
                off += 8 * (chain_body[off + 1] + 1)
            at = starts[-1] if draw(st.booleans()) else starts[draw(st.integers(0, len(kinds) - 1))]
            grow = (len(chain_body) - at) // 8 + draw(st.integers(0, 200))
            chain_body = chain_body[:at + 1] + bytes([min(255, grow)]) + chain_body[at + 2:]
        packet = ipv6(src, dst, nh, chain_body, version=ver, plen=plen)
        note = f"v6 {lie} ext={len(kinds)} plen={plen} ver={ver}"
        ethertype = ETH_V6
    head, shape = l2(draw, ethertype)
    frame = head + packet
    if lie == "exact+pad":
        frame += draw(st.binary(min_size=1, max_size=40))
    if lie == "cut":
        frame = frame[:draw(st.integers(14, len(frame)))]
    return Frame(frame, f"{shape} {note} {what}")


def quoted(draw, version, vip_address, *, big=0):
    """The start of a packet a VIP sent (VIP -> client), as a router quotes it."""
    proto = draw(choose([TCP, UDP, TCP, UDP, ICMP4 if version == 4 else ICMP6]))
    served = [p.port for p in VIP_INDEX.get(vip_address, {}).get(proto, [])]
    sport = draw(choose(served)) if served and not draw(one_in(5)) else \
        draw(choose([80, 53, 443, 1234]))
    if served == [0]:
        sport = draw(st.integers(1, 65535))
    qsrc = vip_address if not draw(one_in(8)) else draw(choose(VIP_V4 + NOT_VIP_V4 if version == 4
                                                                           else VIP_V6 + NOT_VIP_V6))
    client = draw(src_address(version))
    cport = draw(st.integers(1, 65535))
    if proto == TCP:
        l4 = tcp(qsrc, client, sport, cport, 0x12, b"x" * big)
    elif proto == UDP:
        l4 = udp(qsrc, client, sport, cport, b"x" * big)
    else:
        l4 = b"\x00" * (8 + big)
    lie = "" if big else draw(choose(["", "", "", "", "", "", "", "", "version", "fragment"]))
    if version == 4:
        inner = ipv4(qsrc, client, proto, l4, options=draw(choose([b"", b"", b"\x01\x01\x01\x00"])),
                     df=True, version=draw(choose([0, 5, 6])) if lie == "version" else 4,
                     mf=lie == "fragment" and draw(st.booleans()),
                     offset=draw(st.integers(1, 0x1FFF)) if lie == "fragment" else 0)
        hlen = inner[0] & 0xF
        keep = len(inner) if big else draw(choose(
            [hlen * 4 + 8] * 3 + [hlen * 4 + 20, len(inner), 20, hlen * 4, hlen * 4 + 2]))
    else:
        inner = ipv6(qsrc, client, proto, l4, version=draw(choose([0, 4, 7])) if lie == "version" else 6)
        keep = len(inner) if big else draw(choose([48, 48, 48, 60, len(inner), 40, 30, 42]))
    return inner[:keep], f"quoting {qsrc}:{sport}->{client}:{cport}/{proto} ({keep} bytes{' ' + lie if lie else ''})"


@st.composite
def icmp_frames(draw):
    """ICMP to VIP and non-VIP addresses: frag-needed / packet-too-big
    quoting VIP flows (or not), echo, other errors, behind VLAN tags and
    (v6) a short extension-header chain."""
    version = draw(choose([4, 6]))
    dst = draw(dst_address(version))
    src = draw(router_or_host(version))
    data, what = (quoted(draw, version, dst))
    if version == 4:
        typ, code = draw(choose([(3, 4)] * 12 + [(3, 3), (3, 1), (3, 13), (11, 0), (12, 0), (5, 1),
                                                         (8, 0), (0, 0), (4, 0), (3, 5)]))
        rest = struct.pack("!HH", 0, draw(choose([1400, 1280, 576, 68, 0, 1500])))
        if typ in (8, 0):
            rest = struct.pack("!HH", draw(st.integers(0, 0xFFFF)), 1)
        msg = icmp4(typ, code, rest, data)
        total = None
        if draw(one_in(12)):  # the ICMP header itself cut short
            msg = msg[:draw(st.integers(0, 7))]
        packet = ipv4(src, dst, ICMP4, msg, total=total, ttl=draw(st.integers(1, 255)))
        ethertype = ETH_V4
    else:
        typ, code = draw(choose([(2, 0)] * 12 + [(2, 1), (1, 4), (1, 0), (3, 0), (4, 1), (128, 0),
                                                         (129, 0), (135, 0), (136, 0)]))
        rest = struct.pack("!I", draw(choose([1400, 1280, 1500, 0, 65535])))
        msg = icmp6(src, dst, typ, code, rest, data)
        if draw(one_in(12)):
            msg = msg[:draw(st.integers(0, 7))]
        kinds = draw(st.lists(choose([HOPOPTS, DSTOPTS]), max_size=2))
        nh, body = (v6_chain(draw, kinds, ICMP6, msg))
        packet = ipv6(src, dst, nh, body)
        what = f"ext={len(kinds)} " + what
        ethertype = ETH_V6
    head, shape = l2(draw, ethertype)
    pad = draw(padding(16))
    return Frame(head + packet + pad, f"{shape} icmpv{version} {typ}/{code} {src}->{dst} {what} pad={len(pad)}")


@st.composite
def path_mtu_frames(draw):
    """Packets to ipip VIPs sized around the largest that fits the egress
    MTU once encapsulated, with what RFC 1122 3.2.2 / RFC 4443 2.4(e) single
    out: ICMP errors (a frag-needed/packet-too-big forwarded to a backend),
    non-first fragments (client-affinity VIPs forward fragments), link-layer
    multicast/broadcast destinations, sources that are not one host."""
    version = draw(choose([4, 6]))
    overhead = 20 if version == 4 else 40
    limit = draw(choose(Egress.mtus[version])) - overhead
    size = limit + draw(choose([-1, 0, 1, 2, 7, 8, 9, 40]) | st.integers(-24, 48))
    what = draw(choose(["tcp", "tcp", "udp", "udp", "first", "middle", "last", "icmp-error"]))
    group = draw(one_in(6))
    src = draw(src_address(version, weird=draw(one_in(3))))
    if what in ("first", "middle", "last"):
        dst = AFFINITY_IPIP[version]
    else:
        dst = draw(choose(IPIP_VIPS[version]))
    proto = draw(choose([TCP, UDP]))
    if dst == WILDCARD_V6:
        proto = UDP
    dport = draw(dport_for(dst, proto))
    served = [p.port for p in VIP_INDEX[dst].get(proto, [])]
    if served and served != [0]:
        dport = served[0]
    hlen = 20 if version == 4 else 40
    ext = []
    if version == 4:
        options = draw(choose([b"", b"", b"\x01\x01\x01\x00"]))
        hlen += len(options)
    else:
        ext = draw(st.lists(choose([HOPOPTS, DSTOPTS, ROUTING]), max_size=2))
        hlen += 8 * len(ext)
        if what in ("first", "middle", "last") or draw(one_in(8)):
            hlen += 8   # a fragment header (atomic when not a fragment)
    room = max(0, size - hlen)
    if what == "icmp-error":
        if draw(st.booleans()):
            src = "198.18.10.1" if version == 4 else "fd00:10::1"
        inner, _ = (quoted(draw, version, dst, big=max(0, room - 8 - (28 if version == 4 else 48))))
        if version == 4:
            body, proto = icmp4(3, 4, struct.pack("!HH", 0, 1400), inner), ICMP4
        else:
            body, proto = icmp6(src, dst, 2, 0, struct.pack("!I", 1400), inner), ICMP6
        note = "icmp too-big about a VIP flow"
    elif what in ("middle", "last"):
        body = b"m" * room
        note = what
    else:
        body, note = (upper(draw, version, src, dst, proto, dport, size=room))
    offset = draw(st.integers(1, 0x1FFF)) if what in ("middle", "last") else 0
    if version == 4:
        packet = ipv4(src, dst, proto, body, options=options, df=draw(st.booleans()),
                      mf=what in ("first", "middle"), offset=offset, tos=draw(st.integers(0, 255)))
        ethertype = ETH_V4
    else:
        if hlen - 40 - 8 * len(ext) == 8:
            split = draw(st.integers(0, len(ext)))
            if what in ("middle", "last"):
                split = len(ext)
            nh, rest = (v6_chain(draw, ext[split:], proto, body))
            fh = frag_header(nh, offset, what in ("first", "middle"), draw(st.integers(0, 2**32 - 1)))
            nh, body = (v6_chain(draw, ext[:split], FRAGMENT, fh + rest))
        else:
            nh, body = (v6_chain(draw, ext, proto, body))
        packet = ipv6(src, dst, nh, body, tc=draw(st.integers(0, 255)))
        ethertype = ETH_V6
    head, shape = l2(draw, ethertype, group)
    pad = draw(padding(30))
    return Frame(head + packet + pad, f"{shape} v{version} {note} {src}->{dst} iplen={len(packet)} "
                                      f"limit={limit} group_dst={group} pad={len(pad)}")


@st.composite
def mutated_frames(draw):
    """Any frame of the grammar with a few bytes overwritten or cut, or
    plain random bytes: the program must still give one of the four
    verdicts, and the oracle still says which."""
    kind = draw(choose(["random", "flip", "flip", "cut", "grow"]))
    if kind == "random":
        data = draw(st.binary(min_size=14, max_size=160))
        return Frame(data, "random bytes")
    base = draw(st.one_of(l4_frames(), inconsistent_frames(), icmp_frames()))
    data = bytearray(base.data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 4))):
            pos = draw(st.integers(0, min(len(data), 90) - 1))
            data[pos] = draw(st.integers(0, 255))
    elif kind == "cut":
        data = data[:draw(st.integers(14, len(data)))]
    else:
        data += draw(st.binary(min_size=1, max_size=64))
    return Frame(bytes(data), f"{kind} of [{base.note}]")
