"""What the balancer must do with a frame, from docs/design.md's "Packet and flow
rules" and the RFCs (791 IPv4, 8200 IPv6, 793 TCP, 768 UDP, 792 / 1122 3.2.2
and 4443 2.4 for ICMP errors, 1191 / 8201 for path MTU) -- never from
xdp/*.c. `expect(world, frame)` parses the bytes itself and answers one of:

  Pass()            untouched XDP_PASS: output bytes == input
  Forward(...)      to the backend the Python reference picks (lbd.dataplane.flowhash
                    over the table the programmer wrote), DSR or ipip
  Drop(reason)      XDP_DROP, counted in lbd_drops_total{reason}
  TooBig(...)       answered with ICMP frag-needed / packet-too-big
  Unspecified(...)  a frame docs/design.md leaves open (see below): any verdict,
                    but a pass must leave it untouched

`verify(lb, world, frame)` runs the frame through the program and checks the
verdict, the output bytes (scapy for the ipip outer header and the ICMP
reply), the global counters and the connection tables. A disagreement
raises an AssertionError subclass named after the rule, so Hypothesis shrinks
and reports each class of disagreement on its own.

Readings chosen where docs/design.md is not explicit (a network engineer's):

 1. VLAN: the outer tag may be 802.1ad or 802.1Q, a second tag must be
    802.1Q; one 802.1ad tag alone is parsed; 802.1ad inside a tag (or any
    third tag) is not parsed: the frame passes.
 2. "Everything read lies inside the IP packet": an IPv4 packet is judged
    once 20 bytes follow the L2 header (dst is known), an IPv6 packet once 40
    do; shorter frames pass. IHL*4 beyond the frame means total length below
    the header or beyond the frame: malformed.
 3. Header consistency comes before the fragment rule: a fragment whose IP
    lengths disagree with the frame is malformed, not "fragment".
 4. The TCP/UDP header check applies to any TCP/UDP packet to a VIP address,
    even if no VIP of that protocol is on it ("any VIP of any protocol on
    that address"); a well-formed one then passes.
 5. A non-first fragment (no ports) belongs to the VIP of its (address,
    protocol); with none it passes (a protocol no VIP there serves). A first
    fragment is matched by its ports; one to a port no VIP serves, or too
    short for its L4 header, is Unspecified (the grammar avoids both).
 6. IPv6: the 7th extension header is known from the 6th's next-header
    field, so a 7-long chain is ipv6_ext_chain even if the 7th does not fit.
    Headers after a non-first fragment header are not parsed. An extension
    header must fit whole (8 * (len + 1) bytes; the fragment header 8).
    AH, ESP and no-next-header end the chain (protocols no VIP serves).
 7. ICMP: a frag-needed (3/4) / packet-too-big (ICMPv6 type 2, any code) is
    about a VIP flow when its quote holds an IPv4/IPv6 header (version 4/6,
    IHL >= 5 and honoured, no extension headers) from the address the error
    was sent to, TCP or UDP, not a non-first fragment (whose "ports" are
    payload), and 8 bytes of its L4 header (RFC 792), all inside the error's
    IP packet. A quote with 4..7 L4 bytes, or with IPv6 extension headers, is
    Unspecified; anything else about the quote is "other ICMP" and passes.
    ICMP packets that are fragments are Unspecified.
 8. The too-big reply: L2 addresses swapped and the frame's tags kept, from
    the VIP address to the client, TTL/hop limit > 0, not a fragment, right
    checksums; MTU = the backend route's MTU minus 20 (IPv4) / 40 (IPv6).
    IPv4 quotes the packet's IP header and at least 8 bytes (RFC 1122
    3.2.2), the whole reply at most 576 bytes (RFC 1812 4.3.2.3); IPv6
    quotes exactly as much as fits in 1280 bytes (RFC 4443 2.4(c)).
    "Would exceed the egress MTU" is 20/40 + the IP length (not the frame).
 9. ipip carries Ethernet padding after the inner packet (the outer length
    covers only the IP packet), as DSR leaves it in place. The outer header
    is checked for version, IHL 5, lengths, protocol 4/41, addresses, TTL >
    0, no fragmentation, checksum; TOS and flow label are not specified.
10. Connection tables are empty before each frame. Then a forwarded TCP/UDP
    packet makes an entry (with its backend) unless it is a SYN (SYN without
    ACK) or carries RST; a forwarded ICMP error makes none; passed and
    dropped frames make none. Fragments and too-big answers: not specified.
11. A forwarded frame to a link-layer group address is fine (docs/design.md
    singles those out only for ICMP errors).
12. Counters: a frame moves exactly one action counter; a drop moves its
    reason only; icmp_to_backend / fragments_forwarded count frames really
    forwarded (not ones then dropped as too big); icmp_too_big_sent counts
    replies.
"""
from __future__ import annotations

import ipaddress
import json
import struct
import subprocess
from dataclasses import dataclass, field

from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6

from lbd.dataplane import flowhash
from tests.bpf.conftest import GW_MAC, IPIP_SRC_V4, IPIP_SRC_V6, LBD_MAC, NAMESPACE
from tests.bpf.packet_grammar import csum, pseudo

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
VERDICTS = {XDP_ABORTED: "aborted", XDP_DROP: "drop", XDP_PASS: "pass", XDP_TX: "tx", XDP_REDIRECT: "redirect"}
TCP, UDP, ICMP4, ICMP6 = 6, 17, 1, 58
EXT_HEADERS = (0, 43, 60, 44)
MAX_EXT = 6
FRAG_V6 = 44


# --- expectations ------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    rule: str


@dataclass(frozen=True)
class Drop:
    reason: str
    rule: str


@dataclass(frozen=True)
class Forward:
    rule: str
    plan: object
    backend: object
    backend_id: int
    kind: str               # "flow" | "fragment" | "icmp"
    ip: tuple               # (start, end) of the IP packet in the frame
    flow: tuple | None      # client->VIP 5-tuple (ipaddress, ipaddress, int, int, int)
    entry: bool | None      # connection-table entry made (None: not specified)


@dataclass(frozen=True)
class TooBig:
    rule: str
    version: int
    ip: tuple
    mtu: int                # the MTU the reply carries
    vip: object
    client: object


@dataclass(frozen=True)
class Unspecified:
    rule: str


# --- what the program was programmed with ------------------------------------------
def route_mtu(address) -> int:
    """The MTU bpf_fib_lookup() reports toward an address in the bpf tier's
    namespace: the route's mtu metric, else its device's MTU."""
    run = lambda *a: json.loads(subprocess.run(["ip", "-n", NAMESPACE, "-j", *a], check=True,
                                               capture_output=True, text=True).stdout or "[]")
    route = run("-d", "route", "get", str(address))[0]
    for metric in route.get("metrics", []):
        if isinstance(metric, dict) and "mtu" in metric:
            return int(metric["mtu"])
    return int(run("link", "show", "dev", route["dev"])[0]["mtu"])


@dataclass
class World:
    """The VIPs as applied: for each VIP its table (slot -> backend id) and
    backends by id, and each ipip backend's egress MTU."""
    plans: list
    ring: int
    tables: dict = field(default_factory=dict)
    by_id: dict = field(default_factory=dict)
    ids: dict = field(default_factory=dict)
    vips: dict = field(default_factory=dict)         # (addr bytes, proto, port) -> plan
    by_addr_proto: dict = field(default_factory=dict)  # (addr bytes, proto) -> [plans]
    addresses: set = field(default_factory=set)
    mtu: dict = field(default_factory=dict)

    @classmethod
    def of(cls, lb, plans) -> "World":
        world = cls(list(plans), lb.dp.limits.ring_size)
        applied = lb.programmer.applied()
        for plan in plans:
            a = applied[plan.key]
            world.tables[plan.key] = a.table
            world.ids[plan.key] = a.backend_ids
            world.by_id[plan.key] = {a.backend_ids[b.address]: b for b in plan.backends}
            world.vips[(plan.address.packed, plan.proto, plan.port)] = plan
            world.by_addr_proto.setdefault((plan.address.packed, plan.proto), []).append(plan)
            world.addresses.add(plan.address.packed)
            if plan.ipip:
                for b in plan.backends:
                    world.mtu[b.address] = route_mtu(b.address)
        return world

    def vip(self, addr: bytes, proto: int, port: int):
        return self.vips.get((addr, proto, port)) or self.vips.get((addr, proto, 0))

    def pick(self, plan, src: bytes, dst: bytes, sport: int, dport: int, proto: int):
        """(backend, id) of the table's slot for a flow, (None, 0) if the slot
        holds no active backend."""
        s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        h = flowhash.client_hash(s) if plan.client_affinity else flowhash.flow_hash(s, d, sport, dport, proto)
        backend_id = int(self.tables[plan.key][flowhash.table_slot(h, self.ring)])
        backend = self.by_id[plan.key].get(backend_id)
        if backend is None or not backend.in_table:
            return None, 0
        return backend, backend_id


# --- parsing, from the rules --------------------------------------------------------
def single_host_v4(a: bytes) -> bool:
    return not (a[0] == 0 or a[0] == 127 or a[0] >= 224)


def single_host_v6(a: bytes) -> bool:
    return not (a == bytes(16) or a == bytes(15) + b"\x01" or a[0] == 0xFF)


def l2_header(frame: bytes):
    """(offset of the IP header, ethertype, tags) or None when the frame
    is not one docs/design.md parses (rule 1)."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    off = 14
    tags = 0
    while ethertype in (0x8100, 0x88A8):
        if tags == 2 or (tags == 1 and ethertype != 0x8100):
            return None
        if len(frame) < off + 4:
            return None
        ethertype = struct.unpack_from("!H", frame, off + 2)[0]
        off += 4
        tags += 1
    if ethertype not in (0x0800, 0x86DD):
        return None
    return off, ethertype, tags


def expect(world: World, frame: bytes):
    head = l2_header(frame)
    if head is None:
        return Pass("not Ethernet II / up to two tags / IPv4 or IPv6")
    l3, ethertype, _ = head
    n = len(frame)
    if ethertype == 0x0800:
        if n < l3 + 20:
            return Pass("frame too short for an IPv4 header")
        dst = frame[l3 + 16:l3 + 20]
        if dst not in world.addresses:
            return Pass("not a VIP address")
        ver, ihl = frame[l3] >> 4, (frame[l3] & 0xF) * 4
        total = struct.unpack_from("!H", frame, l3 + 2)[0]
        if ver != 4:
            return Drop("malformed", "IPv4 version not 4")
        if ihl < 20:
            return Drop("malformed", "IHL below 5")
        if total < ihl:
            return Drop("malformed", "total length below the header")
        if l3 + total > n:
            return Drop("malformed", "total length beyond the frame")
        frag = struct.unpack_from("!H", frame, l3 + 6)[0]
        offset, more = frag & 0x1FFF, bool(frag & 0x2000)
        return transport(world, frame, 4, frame[l3 + 9], frame[l3 + 12:l3 + 16], dst, l3, l3 + ihl,
                         l3 + total, fragment=more or offset > 0, first=offset == 0)
    if n < l3 + 40:
        return Pass("frame too short for an IPv6 header")
    dst = frame[l3 + 24:l3 + 40]
    if dst not in world.addresses:
        return Pass("not a VIP address")
    if frame[l3] >> 4 != 6:
        return Drop("malformed", "IPv6 version not 6")
    end = l3 + 40 + struct.unpack_from("!H", frame, l3 + 4)[0]
    if end > n:
        return Drop("malformed", "payload length beyond the frame")
    nh, off, count = frame[l3 + 6], l3 + 40, 0
    fragment, first = False, True
    while nh in EXT_HEADERS:
        count += 1
        if count > MAX_EXT:
            return Drop("ipv6_ext_chain", "IPv6 chain longer than 6 extension headers")
        if nh == FRAG_V6:
            if off + 8 > end:
                return Drop("malformed", "fragment header beyond the IP packet")
            word = struct.unpack_from("!H", frame, off + 2)[0]
            if word >> 3 or word & 1:
                fragment = True
            nh = frame[off]
            if word >> 3:
                first = False
                off = None   # nothing after a non-first fragment header is parsed
                break
            off += 8
            continue
        if off + 2 > end or off + 8 * (frame[off + 1] + 1) > end:
            return Drop("malformed", "extension header beyond the IP packet")
        nh, off = frame[off], off + 8 * (frame[off + 1] + 1)
    return transport(world, frame, 6, nh, frame[l3 + 8:l3 + 24], dst, l3, off, end,
                     fragment=fragment, first=first)


def transport(world, frame, version, proto, src, dst, l3, l4, end, *, fragment, first):
    if proto in (TCP, UDP):
        if fragment and not first:
            plans = world.by_addr_proto.get((dst, proto), [])
            if not plans:
                return Pass("non-first fragment of a protocol no VIP of the address serves")
            return fragment_rule(world, frame, version, plans[0], src, dst, l3, end, first=False)
        need = 20 if proto == TCP else 8
        if l4 + need > end:
            if fragment:
                return Unspecified("first fragment too short for its L4 header")
            return Drop("malformed", f"{'TCP' if proto == TCP else 'UDP'} header beyond the IP packet")
        sport, dport = struct.unpack_from("!HH", frame, l4)
        plan = world.vip(dst, proto, dport)
        if plan is None:
            if fragment:
                return Unspecified("first fragment to a port no VIP serves")
            return Pass("no VIP on this port and protocol")
        if fragment:
            return fragment_rule(world, frame, version, plan, src, dst, l3, end, first=True)
        backend, backend_id = world.pick(plan, src, dst, sport, dport, proto)
        if backend is None:
            return Drop("no_backend", "slot holds no active backend")
        flow = (ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport, proto)
        entry = True
        if proto == TCP:
            flags = frame[l4 + 13]
            syn = flags & 0x02 and not flags & 0x10
            entry = not syn and not flags & 0x04
        rule = (f"{'tcp' if proto == TCP else 'udp'} to a {'ipip' if plan.ipip else 'dsr'} VIP"
                f"{' (client affinity)' if plan.client_affinity else ''}{' (port 0)' if plan.port == 0 else ''}")
        return encapsulation(world, frame, version, Forward(rule, plan, backend, backend_id, "flow",
                                                            (l3, end), flow, entry), src, is_error=False,
                             non_first=False)
    if proto == (ICMP4 if version == 4 else ICMP6):
        if fragment:
            return Unspecified("ICMP in a fragment")
        return icmp_rule(world, frame, version, src, dst, l3, l4, end)
    return Pass(f"protocol {proto}: no VIP serves it")


def fragment_rule(world, frame, version, plan, src, dst, l3, end, *, first):
    if not plan.client_affinity:
        return Drop("fragment", "fragment to a VIP without client affinity")
    backend, backend_id = world.pick(plan, src, dst, 0, 0, 0)
    if backend is None:
        return Drop("no_backend", "slot holds no active backend")
    what = "first" if first else "non-first"
    return encapsulation(world, frame, version, Forward(f"{what} fragment to a client-affinity VIP", plan,
                                                        backend, backend_id, "fragment", (l3, end), None,
                                                        None), src, is_error=False, non_first=not first)


def icmp_rule(world, frame, version, src, dst, l3, l4, end):
    if l4 + 8 > end:
        return Pass("ICMP header beyond the IP packet: not an error lbd knows")
    typ, code = frame[l4], frame[l4 + 1]
    if version == 4 and (typ, code) != (3, 4) or version == 6 and typ != 2:
        return Pass("other ICMP passes to the host")
    q = l4 + 8
    if version == 4:
        if q + 20 > end or frame[q] >> 4 != 4 or (frame[q] & 0xF) < 5:
            return Pass("quote holds no IPv4 header")
        qproto = frame[q + 9]
        qsrc, qdst = frame[q + 12:q + 16], frame[q + 16:q + 20]
        qoff = struct.unpack_from("!H", frame, q + 6)[0] & 0x1FFF
        ql4 = q + (frame[q] & 0xF) * 4
        if qoff:
            return Pass("quote is a non-first fragment: no ports")
    else:
        if q + 40 > end or frame[q] >> 4 != 6:
            return Pass("quote holds no IPv6 header")
        qproto = frame[q + 6]
        qsrc, qdst = frame[q + 8:q + 24], frame[q + 24:q + 40]
        ql4 = q + 40
        if qproto in EXT_HEADERS and qsrc == dst:
            return Unspecified("quote with IPv6 extension headers")
    if qproto not in (TCP, UDP) or qsrc != dst:
        return Pass("quote is not a TCP/UDP packet from this address")
    if ql4 + 8 > end:
        if ql4 + 4 <= end:
            return Unspecified("quote with its ports but under 8 L4 bytes")
        return Pass("quote too short for ports")
    vport, cport = struct.unpack_from("!HH", frame, ql4)
    plan = world.vip(dst, qproto, vport)
    if plan is None:
        return Pass("quoted flow is not a VIP's")
    backend, backend_id = world.pick(plan, qdst, qsrc, cport, vport, qproto)
    if backend is None:
        return Unspecified("ICMP error about a flow of a VIP with no backend")
    flow = (ipaddress.ip_address(qdst), ipaddress.ip_address(qsrc), cport, vport, qproto)
    return encapsulation(world, frame, version, Forward("ICMP too-big about a VIP flow to its backend", plan,
                                                        backend, backend_id, "icmp", (l3, end), flow, False),
                         src, is_error=True, non_first=False)


def encapsulation(world, frame, version, forward: Forward, src, *, is_error, non_first):
    """The path-MTU rule for ipip."""
    if not forward.plan.ipip:
        return forward
    overhead = 20 if version == 4 else 40
    start, end = forward.ip
    mtu = world.mtu[forward.backend.address]
    if end - start + overhead <= mtu:
        return forward
    if is_error:
        return Drop("too_big", "too big, about an ICMP error: no ICMP error")
    if non_first:
        return Drop("too_big", "too big, a non-first fragment: no ICMP error")
    if frame[0] & 1:
        return Drop("too_big", "too big, to a link-layer group address: no ICMP error")
    if not (single_host_v4(src) if version == 4 else single_host_v6(src)):
        return Drop("too_big", "too big, from a source that is not one host: no ICMP error")
    return TooBig(f"too big for the egress MTU once encapsulated (v{version})", version, forward.ip,
                  mtu - overhead, forward.plan.address, ipaddress.ip_address(src))


# --- checking the program against the oracle ------------------------------------------
_CLASSES: dict[str, type] = {}


class Disagreement(AssertionError):
    pass


def disagreement(rule: str, expected: str, got: str, detail: str) -> Disagreement:
    name = f"{rule} | expected {expected} | got {got}"
    cls = _CLASSES.get(name)
    if cls is None:
        cls = _CLASSES[name] = type("Disagreement", (Disagreement,), {"__qualname__": f"Disagreement[{name}]"})
    return cls(f"[{name}] {detail}")


def flow_tables(dp):
    tables = [dp.conntrack]
    try:
        tables.append(dp.bpf[b"conntrack_udp"])
    except Exception:
        pass
    return tables


def flow_table(dp, proto):
    tables = flow_tables(dp)
    return tables[1] if proto == UDP and len(tables) > 1 else tables[0]


def is_empty(table) -> bool:
    for _ in table.keys():
        return False
    return True


def clear_flows(dp) -> None:
    for table in flow_tables(dp):
        if not is_empty(table):
            table.clear()


INSERTS = ("ct_inserts_tcp", "ct_inserts_udp")


def counters(dp) -> dict:
    c = dp.global_counters()
    out = {"actions": dict(c["actions"]), "drops": dict(c["drops"]),
           "icmp_too_big_sent": c["icmp_too_big_sent"], "icmp_to_backend": c["icmp_to_backend"],
           "fragments_forwarded": c["fragments_forwarded"]}
    # entries made, if the program counts them: tells whether the (LRU, 1M-bucket)
    # tables need a walk after a frame -- a walk of an empty one costs ~1 ms
    out["inserts"] = sum(c[k] for k in INSERTS) if all(k in c for k in INSERTS) else None
    return out


def delta(before, after) -> dict:
    out = {}
    for k in before:
        if k == "inserts":
            continue
        if isinstance(before[k], dict):
            for name in set(before[k]) | set(after[k]):
                d = after[k].get(name, 0) - before[k].get(name, 0)
                if d:
                    out[f"{k}.{name}"] = d
        elif after[k] != before[k]:
            out[k] = after[k] - before[k]
    return out


def kind_of(expectation) -> str:
    if isinstance(expectation, Drop):
        return f"drop({expectation.reason})"
    if isinstance(expectation, Forward):
        return f"forward({'ipip' if expectation.plan.ipip else 'dsr'})"
    if isinstance(expectation, TooBig):
        return "icmp too-big"
    return type(expectation).__name__.lower()


def got_kind(action: int, out: bytes, frame: bytes, d: dict) -> str:
    if action == XDP_PASS:
        return "pass" + ("" if out == frame else " (changed)")
    if action == XDP_DROP:
        reasons = [k.split(".", 1)[1] for k in d if k.startswith("drops.")]
        return f"drop({','.join(reasons) or 'uncounted'})"
    if action in (XDP_TX, XDP_REDIRECT):
        return "icmp too-big" if d.get("icmp_too_big_sent") else "forward"
    return VERDICTS.get(action, f"action {action}")


def verify(lb, world: World, frame: bytes, stats: dict | None = None):
    """Run one frame and check it against the oracle; return its expectation."""
    dp = lb.dp
    want = expect(world, frame)
    before = counters(dp)
    result = lb.run(frame)
    after = counters(dp)
    d = delta(before, after)
    inserted = None if before["inserts"] is None else after["inserts"] - before["inserts"]
    out = result.packet
    got = got_kind(result.action, out, frame, d)
    if stats is not None:
        stats[want.rule] = stats.get(want.rule, 0) + 1

    def fail(what, expected=None, detail=""):
        raise disagreement(f"{want.rule}{': ' + what if what else ''}", expected or kind_of(want), got,
                           f"{detail}\n  verdict {VERDICTS.get(result.action, result.action)}, counters {d}"
                           f"\n  in  {frame.hex()}\n  out {out.hex()}")

    try:
        if result.action not in (XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT):
            fail("verdict is none of pass/drop/tx/redirect")
        if result.action == XDP_PASS and out != frame:
            fail("a passed frame must leave untouched")
        if isinstance(want, Unspecified):
            return want
        if isinstance(want, Pass):
            if result.action != XDP_PASS:
                fail("")
            if d != {"actions.pass": 1}:
                fail("counters", detail="a pass counts actions.pass only")
            check_no_entries(dp, inserted, fail)
        elif isinstance(want, Drop):
            if result.action != XDP_DROP or d.get(f"drops.{want.reason}") != 1:
                fail("")
            if d != {"actions.drop": 1, f"drops.{want.reason}": 1}:
                fail("counters", detail=f"a {want.reason} drop counts that reason once")
            if want.reason != "too_big":
                check_no_entries(dp, inserted, fail)
        elif isinstance(want, Forward):
            if result.action not in (XDP_TX, XDP_REDIRECT) or d.get("icmp_too_big_sent"):
                fail("")
            check_forward(lb, world, want, frame, out, fail)
            extra = {"icmp": "icmp_to_backend", "fragment": "fragments_forwarded"}.get(want.kind)
            act = "actions.tx" if result.action == XDP_TX else "actions.redirect"
            if {k: v for k, v in d.items() if k.startswith("drops.") or k in (
                    "icmp_too_big_sent", "icmp_to_backend", "fragments_forwarded")} != ({extra: 1} if extra else {}):
                fail("counters", detail=f"expected {extra or 'no drop/ICMP/fragment counter'} +1")
            if d.get(act) != 1:
                fail("counters", detail=f"{act} +1")
            check_entry(dp, want, inserted, fail)
        elif isinstance(want, TooBig):
            if result.action not in (XDP_TX, XDP_REDIRECT) or d.get("icmp_too_big_sent") != 1:
                fail("")
            check_too_big(want, frame, out, fail)
            if any(k.startswith("drops.") for k in d):
                fail("counters", detail="an ICMP answer drops nothing")
        return want
    finally:
        forget(dp, want, inserted)


def forget(dp, want, inserted) -> None:
    """Empty the connection tables for the next frame: delete the one entry
    the frame may have made, walk the tables only if it made others (or the
    program does not count what it makes)."""
    deleted = 0
    if isinstance(want, Forward) and want.flow is not None:
        src, dst, sport, dport, proto = want.flow
        try:
            del flow_table(dp, proto)[dp.flow_key(src, dst, sport, dport, proto)]
            deleted = 1
        except KeyError:
            pass
    if inserted is None or inserted > deleted:
        clear_flows(dp)


def no_entries(dp, inserted) -> bool:
    if inserted is not None:
        return inserted == 0
    return all(is_empty(t) for t in flow_tables(dp))


def check_no_entries(dp, inserted, fail):
    if not no_entries(dp, inserted):
        fail("connection table", detail="a frame that was not forwarded made an entry")


def check_entry(dp, want: Forward, inserted, fail):
    if want.entry is None:
        return
    src, dst, sport, dport, proto = want.flow
    table = flow_table(dp, proto)
    entry = table.get(dp.flow_key(src, dst, sport, dport, proto))
    if want.kind == "icmp":
        if entry is not None or not no_entries(dp, inserted):
            fail("connection table", detail="an ICMP error is forwarded without making an entry (docs/design.md)")
        return
    if want.entry and entry is None:
        fail("connection table", detail="a non-SYN, non-RST packet (or UDP) makes an entry")
    if not want.entry and entry is not None:
        fail("connection table", detail="a SYN or RST placed by the table makes no entry")
    if entry is not None and entry.backend_id != want.backend_id:
        fail("connection table", detail=f"entry backend {entry.backend_id}, placed on {want.backend_id}")


def check_forward(lb, world, want: Forward, frame: bytes, out: bytes, fail):
    l3, end = want.ip
    b = want.backend
    if not want.plan.ipip:
        expected = b.dst_mac + b.src_mac + frame[12:]
        if out != expected:
            fail("DSR output", detail=f"only the MACs change, to {b.dst_mac.hex()} / {b.src_mac.hex()}")
        return
    version = 4 if frame[l3] >> 4 == 4 else 6
    inner = frame[l3:end]
    ohl = 20 if b.address.version == 4 else 40
    problems = []
    if out[:6] != bytes.fromhex(GW_MAC.replace(":", "")) or out[6:12] != bytes.fromhex(LBD_MAC.replace(":", "")):
        problems.append(f"MACs {out[:12].hex()} are not next hop {GW_MAC} / ours {LBD_MAC}")
    if out[12:l3 - 2] != frame[12:l3 - 2]:
        problems.append("VLAN tags not kept")
    if out[l3 - 2:l3] != (b"\x08\x00" if ohl == 20 else b"\x86\xdd"):
        problems.append("EtherType is not the outer header's")
    if out[l3 + ohl:l3 + ohl + len(inner)] != inner:
        problems.append("inner packet changed")
    if out[l3 + ohl + len(inner):] != frame[end:]:
        problems.append(f"bytes after the inner packet ({len(out) - l3 - ohl - len(inner)}) are not the frame's "
                        f"padding ({len(frame) - end})")
    outer = out[l3:l3 + ohl]
    inner_proto = 4 if version == 4 else 41
    if ohl == 20:
        o = IP(outer)
        if (o.version, o.ihl, o.len, o.proto) != (4, 5, 20 + len(inner), inner_proto):
            problems.append(f"outer version/ihl/len/proto {o.version}/{o.ihl}/{o.len}/{o.proto}")
        if o.src != IPIP_SRC_V4 or o.dst != str(b.address):
            problems.append(f"outer {o.src} -> {o.dst}")
        if o.ttl == 0 or o.frag or o.flags.MF:
            problems.append("outer TTL 0 or fragmented")
        if csum(outer) != 0:
            problems.append("outer IPv4 checksum wrong")
    else:
        o = IPv6(outer)
        if (o.version, o.plen, o.nh) != (6, len(inner), inner_proto):
            problems.append(f"outer version/plen/nh {o.version}/{o.plen}/{o.nh}")
        if ipaddress.ip_address(o.src) != ipaddress.ip_address(IPIP_SRC_V6) or \
                ipaddress.ip_address(o.dst) != b.address:
            problems.append(f"outer {o.src} -> {o.dst}")
        if o.hlim == 0:
            problems.append("outer hop limit 0")
    if problems:
        fail("ipip output", detail="; ".join(problems) + f" (backend {b.address})")


def check_too_big(want: TooBig, frame: bytes, out: bytes, fail):
    l3, end = want.ip
    original = frame[l3:end]
    problems = []
    if out[:6] != frame[6:12] or out[6:12] not in (frame[0:6], bytes.fromhex(LBD_MAC.replace(":", ""))):
        problems.append("L2 addresses not swapped")
    if out[12:l3 - 2] != frame[12:l3 - 2]:
        problems.append("VLAN tags not kept")
    if out[l3 - 2:l3] != frame[l3 - 2:l3]:
        problems.append("EtherType changed")
    reply = out[l3:]
    if want.version == 4:
        if len(reply) < 28 or reply[0] >> 4 != 4:
            fail("ICMP reply", detail="no IPv4 reply")
        hl = (reply[0] & 0xF) * 4
        total = struct.unpack_from("!H", reply, 2)[0]
        frag = struct.unpack_from("!H", reply, 6)[0]
        if hl < 20 or total != len(reply):
            problems.append(f"IHL {hl} / total length {total} vs {len(reply)} bytes")
        if csum(reply[:hl]) != 0:
            problems.append("IPv4 header checksum wrong")
        if reply[8] == 0 or frag & 0x3FFF or reply[9] != ICMP4:
            problems.append("TTL 0, fragmented, or not ICMP")
        if reply[12:16] != want.vip.packed or reply[16:20] != want.client.packed:
            problems.append(f"{ipaddress.ip_address(reply[12:16])} -> {ipaddress.ip_address(reply[16:20])}")
        icmp = reply[hl:total]
        if len(icmp) < 8 or icmp[0] != 3 or icmp[1] != 4:
            problems.append(f"ICMP type/code {icmp[:2].hex()} not 3/4")
        elif csum(icmp) != 0:
            problems.append("ICMP checksum wrong")
        else:
            unused, mtu = struct.unpack_from("!HH", icmp, 4)
            if mtu != want.mtu or unused:
                problems.append(f"next-hop MTU {mtu} (unused {unused}), want {want.mtu}")
            quote = icmp[8:]
            least = min(len(original), (original[0] & 0xF) * 4 + 8)
            if original[:len(quote)] != quote or len(quote) < least:
                problems.append(f"quote ({len(quote)} bytes) is not the packet's first >= {least} bytes")
            if total > 576:
                problems.append(f"reply {total} bytes > 576 (RFC 1812 4.3.2.3)")
    else:
        if len(reply) < 48 or reply[0] >> 4 != 6:
            fail("ICMP reply", detail="no IPv6 reply")
        plen = struct.unpack_from("!H", reply, 4)[0]
        if plen + 40 != len(reply) or reply[6] != ICMP6 or reply[7] == 0:
            problems.append(f"plen {plen} vs {len(reply) - 40}, nh {reply[6]}, hlim {reply[7]}")
        if reply[8:24] != want.vip.packed or reply[24:40] != want.client.packed:
            problems.append(f"{ipaddress.ip_address(reply[8:24])} -> {ipaddress.ip_address(reply[24:40])}")
        icmp = reply[40:]
        if icmp[0] != 2 or icmp[1] != 0:
            problems.append(f"ICMPv6 type/code {icmp[:2].hex()} not 2/0")
        elif csum(pseudo(str(want.vip), str(want.client), ICMP6, len(icmp)) + icmp) != 0:
            problems.append("ICMPv6 checksum wrong")
        else:
            mtu = struct.unpack_from("!I", icmp, 4)[0]
            if mtu != want.mtu:
                problems.append(f"MTU {mtu}, want {want.mtu}")
            quote = icmp[8:]
            if quote != original[:1280 - 48]:
                problems.append(f"quote ({len(quote)} bytes) is not the packet's first "
                                f"{min(len(original), 1232)} (RFC 4443 2.4(c))")
    if problems:
        fail("ICMP reply", detail="; ".join(problems))
