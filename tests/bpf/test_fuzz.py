"""Fuzz: 100,000+ random and mutated frames through the real program.

Two promises are checked for every frame:
  * a frame that is not VIP traffic leaves exactly as it came (XDP_PASS,
    bytes untouched);
  * a malformed frame to a VIP is never forwarded.
An independent oracle (plain struct parsing, written from the rules, not
from the C) says which frames are well-formed VIP traffic. For IPv4 it
predicts the exact verdict; for IPv6, whose extension-header walk it does not
model, it checks the two promises only.
"""
from __future__ import annotations

import random
import struct

import pytest

from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

XDP_DROP, XDP_PASS, XDP_TX = 1, 2, 3
FRAMES = 100_000
SEED = 424242


def vips():
    return [sc.vip(sc.DSR_V4, 80, 6), sc.vip(sc.DSR_V4, 53, 17), sc.vip(sc.DSR_V6, 80, 6),
            sc.vip(sc.WILDCARD_V4, 0, 17)]


V4_VIPS = {(sc.ip(sc.DSR_V4).packed, 6): {80}, (sc.ip(sc.DSR_V4).packed, 17): {53},
           (sc.ip(sc.WILDCARD_V4).packed, 17): {0}}
V6_VIP_ADDRS = {(sc.ip(sc.DSR_V6).packed, 6)}


V4_VIP_ADDRS = {addr for addr, _ in V4_VIPS}


def oracle_v4(frame: bytes):
    """'pass' (not VIP traffic), 'drop' (malformed or fragment to a VIP),
    'forward', or None when the frame is not IPv4. docs/design.md's rules: up to
    two VLAN tags; a packet to a VIP address whose IP header is inconsistent,
    or whose TCP/UDP header ends past the IP packet (its total length, not
    the frame), is malformed, whatever its protocol."""
    if len(frame) < 14:
        return "pass"
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    l3 = 14
    if ethertype in (0x8100, 0x88A8):
        if len(frame) < 18:
            return "pass"
        ethertype = struct.unpack_from("!H", frame, 16)[0]
        l3 = 18
        if ethertype == 0x8100:
            if len(frame) < 22:
                return "pass"
            ethertype = struct.unpack_from("!H", frame, 20)[0]
            l3 = 22
    if ethertype != 0x0800:
        return None
    if len(frame) < l3 + 20:
        return "pass"
    ver_ihl, _, total, _, frag, _, proto = struct.unpack_from("!BBHHHBB", frame, l3)
    dst = frame[l3 + 16:l3 + 20]
    if dst not in V4_VIP_ADDRS:
        return "pass"
    ihl = (ver_ihl & 0xF) * 4
    if ver_ihl >> 4 != 4 or ihl < 20 or total < ihl or l3 + total > len(frame):
        return "drop"
    if proto == 1:
        return "icmp"
    ports = V4_VIPS.get((dst, proto))
    if frag & 0x3FFF:
        return "drop" if ports is not None else "pass"  # fragments to a flow-hashed VIP
    if proto not in (6, 17):
        return "pass"
    need = 20 if proto == 6 else 8
    if ihl + need > total:
        return "drop"
    if ports is None:
        return "pass"
    dport = struct.unpack_from("!H", frame, l3 + ihl + 2)[0]
    if dport in ports or 0 in ports:
        return "forward"
    return "pass"


def looks_like_v6_vip_traffic(frame: bytes) -> bool:
    """The least a forwarded IPv6 frame must be: IPv6 to the VIP, with its
    payload length inside the frame and a TCP header to port 80 somewhere."""
    l3 = 18 if frame[12:14] == b"\x81\x00" else 14
    if struct.unpack_from("!H", frame, l3 - 2)[0] != 0x86DD or len(frame) < l3 + 40:
        return False
    plen = struct.unpack_from("!H", frame, l3 + 4)[0]
    return (frame[l3] >> 4 == 6 and frame[l3 + 24:l3 + 40] == sc.ip(sc.DSR_V6).packed
            and l3 + 40 + plen <= len(frame) and len(frame) >= l3 + 40 + 20)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    kind = rng.randrange(6)
    if kind == 0:  # flip a few bytes anywhere
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif kind == 1:  # truncate
        data = data[:rng.randrange(14, len(data) + 1)]
    elif kind == 2:  # lie about the IPv4 header or total length
        l3 = 18 if data[12:14] == b"\x81\x00" else 14
        if data[l3] >> 4 == 4:
            if rng.random() < 0.5:
                data[l3] = 0x40 | rng.randrange(16)
            else:
                struct.pack_into("!H", data, l3 + 2, rng.randrange(65536))
    elif kind == 3:  # set fragment bits
        l3 = 18 if data[12:14] == b"\x81\x00" else 14
        if data[l3] >> 4 == 4:
            struct.pack_into("!H", data, l3 + 6, rng.randrange(65536))
    elif kind == 4:  # flip bits in the headers only
        for _ in range(rng.randrange(1, 6)):
            pos = rng.randrange(min(len(data), 64))
            data[pos] ^= 1 << rng.randrange(8)
    else:  # append garbage
        data += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    return bytes(data)


def seeds():
    frames = []
    for vlan in (None, 3):
        frames += [
            sc.client_packet(sc.DSR_V4, 80, vlan=vlan), sc.client_packet(sc.DSR_V4, 53, 17, vlan=vlan),
            sc.client_packet(sc.DSR_V6, 80, vlan=vlan), sc.client_packet(sc.WILDCARD_V4, 9, 17, vlan=vlan),
            sc.client_packet(sc.DSR_V4, 80, ip_options=b"\x01\x01\x01\x00", vlan=vlan),
            sc.client_packet("198.18.100.99", 80, vlan=vlan),
        ]
    return [bytes(f) for f in frames]


def test_fuzz_never_changes_foreign_frames_or_forwards_malformed_ones(lb):
    lb.apply(vips())
    rng = random.Random(SEED)
    base = seeds()
    counts = {"forward": 0, "drop": 0, "pass": 0, "v6/other": 0}
    for i in range(FRAMES):
        if i % 5 == 0:  # random garbage of random length
            frame = bytes(rng.randrange(256) for _ in range(rng.randrange(14, 120)))
        else:
            frame = mutate(rng, rng.choice(base))
        result = lb.run(frame)
        expected = oracle_v4(frame)
        where = f"frame {i}: {frame.hex()}"
        if expected in ("pass", "drop", "forward"):
            counts[expected] += 1
            verdict = {"pass": XDP_PASS, "drop": XDP_DROP, "forward": XDP_TX}[expected]
            assert result.action == verdict, f"{where}: expected {expected}, got {result.action}"
            if expected == "pass":
                assert result.packet == frame, f"{where}: foreign frame changed"
        else:
            counts["v6/other"] += 1
            # IPv6/ICMP/other: never changed unless forwarded, and only
            # well-formed-looking VIP traffic can be forwarded at all
            if result.action == XDP_PASS:
                assert result.packet == frame, f"{where}: passed frame changed"
            elif result.action == XDP_TX:
                assert looks_like_v6_vip_traffic(frame), f"{where}: forwarded a malformed frame"
            else:
                assert result.action == XDP_DROP, where
    print(f"fuzz verdicts: {counts}")
    # the corpus really exercised every branch
    assert min(counts.values()) > 1000
