"""Flows as the connection-table tests drive them (test_explain_kernel,
test_conntrack_model, test_second_choice_programmer): client frames built
with struct (thousands per test, where scapy would cost more than the
kernel), the backend an output frame went to (and the second choice a GUE
frame names), and a flow's connection-table entry read, written back, aged
(as time passing would age it) and deleted (as an LRU eviction would delete
it) in its protocol's table."""
from __future__ import annotations

import ipaddress
import struct

from lbd.dataplane import layout
from lbd.dataplane.maps import addr_words, family_of, port_word
from lbd.explain import PACKET, RST, SYN, Flow
from tests.bpf.conftest import LBD_MAC
from tests.bpf.scenario import CLIENT_MAC, backend_mac

XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 1, 2, 3, 4
TCP, UDP = 6, 17
FIN, SYN_FLAG, RST_FLAG, PSH, ACK_FLAG = 0x01, 0x02, 0x04, 0x08, 0x10
FLAGS = {SYN: SYN_FLAG, PACKET: ACK_FLAG, "fin": FIN | ACK_FLAG, RST: RST_FLAG | ACK_FLAG}

GUE_PORT, GUE_MAGIC = layout.constant("LBD_GUE_PORT"), layout.constant("LBD_GUE_MAGIC")

_ETH_V4 = bytes.fromhex(LBD_MAC.replace(":", "")) + bytes.fromhex(CLIENT_MAC.replace(":", "")) + b"\x08\x00"
_ETH_V6 = _ETH_V4[:12] + b"\x86\xdd"


def frame(flow: Flow, kind: str = PACKET, payload: bytes = b"hello") -> bytes:
    """A client->VIP frame. kind: SYN, PACKET (an ACK), "fin", RST; UDP
    flows ignore it. No checksums: lbd checks none (docs/design.md)."""
    if flow.proto == TCP:
        l4 = struct.pack("!HHIIBBHHH", flow.sport, flow.dport, 1000, 0 if kind == SYN else 1,
                         5 << 4, FLAGS[kind], 65535, 0, 0)
        if kind == SYN:
            payload = b""
    else:
        l4 = struct.pack("!HHHH", flow.sport, flow.dport, 8 + len(payload), 0)
    body = l4 + payload
    if flow.src.version == 4:
        l3 = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), 0, 0x4000, 64, flow.proto, 0,
                         flow.src.packed, flow.dst.packed)
        return _ETH_V4 + l3 + body
    l3 = struct.pack("!IHBB16s16s", 6 << 28, len(body), flow.proto, 64, flow.src.packed,
                     flow.dst.packed)
    return _ETH_V6 + l3 + body


class Backends:
    """Which backend an output frame went to: by the outer destination of an
    ipip frame, else by the destination MAC (scenario.backend_mac)."""

    def __init__(self, addresses):
        self.by_mac = {backend_mac(a): ipaddress.ip_address(a) for a in addresses}

    def of(self, result) -> str | None:
        """The backend's address; None for a drop; "pass" for XDP_PASS."""
        if result.action == XDP_PASS:
            return "pass"
        if result.action not in (XDP_TX, XDP_REDIRECT):
            return None
        out = result.packet
        ethertype = struct.unpack_from("!H", out, 12)[0]
        if ethertype == 0x0800 and out[14 + 9] in (4, 41):
            return str(ipaddress.IPv4Address(out[14 + 16:14 + 20]))
        if ethertype == 0x86DD and out[14 + 6] in (4, 41):
            return str(ipaddress.IPv6Address(out[14 + 24:14 + 40]))
        address = self.by_mac.get(out[:6])
        assert address is not None, f"forwarded to an unknown MAC {out[:6].hex(':')}"
        return str(address)


GUE_PORT, GUE_MAGIC = layout.constant("LBD_GUE_PORT"), layout.constant("LBD_GUE_MAGIC")


def carried(result) -> tuple[str, str | None]:
    """(the outer destination, the second choice the GUE header names or
    None for plain IP-in-IP) of a frame an ipip VIP forwarded, its GUE
    fields checked (lbd_shared.h, draft-ietf-intarea-gue variant 0)."""
    assert result.action in (XDP_TX, XDP_REDIRECT), result.action
    out = result.packet
    if struct.unpack_from("!H", out, 12)[0] == 0x0800:
        proto, first, l4, size = out[14 + 9], ipaddress.IPv4Address(out[30:34]), 14 + 20, 4
    else:
        proto, first, l4, size = out[14 + 6], ipaddress.IPv6Address(out[38:54]), 14 + 40, 16
    if proto in (4, 41):
        return str(first), None
    assert proto == 17 and struct.unpack_from("!H", out, l4 + 2)[0] == GUE_PORT
    gue = l4 + 8
    assert out[gue] == (2 if size == 4 else 5), "version 0, C 0, Hlen = words of private data"
    assert out[gue + 1] == (4 if size == 4 else 41) and out[gue + 2:gue + 4] == b"\0\0"
    magic, hops, pad = struct.unpack_from("!HBB", out, gue + 4)
    assert (magic, hops, pad) == (GUE_MAGIC, 0, 0)
    return str(first), str(ipaddress.ip_address(out[gue + 8:gue + 8 + size]))


def table(dp, proto: int):
    """The connection table of a protocol (TCP and UDP have one each)."""
    return dp.flow_table(proto)


def _key(tbl, flow: Flow):
    key = tbl.Key()
    key.src[:] = addr_words(flow.src)
    key.dst[:] = addr_words(flow.dst)
    key.sport = port_word(flow.sport)
    key.dport = port_word(flow.dport)
    key.proto = flow.proto
    key.family = family_of(flow.src)
    return key


def entry(dp, flow: Flow, in_table_of: int | None = None) -> tuple[int, int] | None:
    """(backend id, generation) of the flow's entry, or None; in its own
    protocol's table unless `in_table_of` names another."""
    tbl = table(dp, in_table_of or flow.proto)
    leaf = tbl.get(_key(tbl, flow))
    return None if leaf is None else (int(leaf.backend_id), int(leaf.generation))


def snapshot(dp, flow: Flow):
    """A copy of the flow's whole entry (backend, generation, seen, flags,
    second choice), or None: what restore() puts back."""
    tbl = table(dp, flow.proto)
    leaf = tbl.get(_key(tbl, flow))
    return None if leaf is None else tbl.Leaf.from_buffer_copy(leaf)


def restore(dp, flow: Flow, saved) -> None:
    """Make the flow's entry exactly what snapshot() saw again (None: no entry)."""
    tbl = table(dp, flow.proto)
    key = _key(tbl, flow)
    if saved is None:
        tbl.pop(key, None)
    else:
        tbl[key] = saved


def put_entry(dp, flow: Flow, backend_id: int, generation: int, flags: int = 0, second_id: int = 0) -> None:
    """Write the flow's entry as a live connection's: its latest packet now
    (an entry with an old time is a finished connection's to a SYN)."""
    tbl = table(dp, flow.proto)
    tbl[_key(tbl, flow)] = tbl.Leaf(backend_id=backend_id, generation=generation, seen=dp.jiffies() & 0xFFFFFFFF,
                                    flags=flags, second_id=second_id)


def silence(dp, flow: Flow, seconds: float) -> int:
    """Make the flow's entry look as if its latest packet came `seconds` ago,
    as time passing would; returns that time in jiffies (the entry's clock)."""
    tbl = table(dp, flow.proto)
    key = _key(tbl, flow)
    leaf = tbl[key]
    seen = dp.jiffies() - int(seconds * dp.hz)
    leaf.seen = seen & 0xFFFFFFFF  # the entry keeps jiffies' low 32 bits
    tbl[key] = leaf
    return seen


def evict(dp, flow: Flow) -> bool:
    """Delete the flow's entry, as the LRU does when it needs the room."""
    return dp.forget_flow(flow.src, flow.dst, flow.sport, flow.dport, flow.proto)


def clear(dp) -> None:
    dp.clear_flows()
