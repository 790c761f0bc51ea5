"""lbd's GUE frames, built from the wire format (xdp/lbd_shared.h, "Second-
chance forwarding"; draft-ietf-intarea-gue variant 0) with scapy, never by
the programs' code: what the backend program's tests and bench/decap_cost.py
feed it.

    outer IPv4/IPv6 | UDP to LBD_GUE_PORT, checksum 0 | GUE header (version 0,
    C 0, Hlen = private data words, proto 4 or 41, flags 0) | private data
    (magic, hops, pad 0, the second choice's address) | the client's packet
"""
from __future__ import annotations

import ipaddress
import struct

from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1AD, Dot1Q, Ether

from lbd.dataplane import layout

PORT, MAGIC = layout.constant("LBD_GUE_PORT"), layout.constant("LBD_GUE_MAGIC")


def private_data(second: str, hops: int = 0, magic: int = MAGIC) -> bytes:
    """lbd_gue_second_v4/_v6: magic, hops, pad 0, the second choice's address."""
    return struct.pack("!HBB", magic, hops, 0) + ipaddress.ip_address(second).packed


def frame(inner, *, second: str, outer_src: str, outer_dst: str, src_mac: str, dst_mac: str,
          hops: int = 0, sport: int = 51000, vlans=(), header: bytes | None = None,
          private: bytes | None = None, udp_len: int | None = None, outer_kw=None) -> bytes:
    """A GUE frame naming `second`; the outer family is the addresses'.
    header, private, udp_len and outer_kw (outer IP fields) override the
    correct values, for frames that are not."""
    version = ipaddress.ip_address(outer_dst).version
    private = private_data(second, hops) if private is None else private
    header = bytes([len(private) // 4, 4 if version == 4 else 41, 0, 0]) if header is None else header
    if version == 4:
        outer = IP(**{"src": outer_src, "dst": outer_dst, "ttl": 63, "flags": "DF", **(outer_kw or {})})
    else:
        outer = IPv6(**{"src": outer_src, "dst": outer_dst, "hlim": 63, "fl": 0x12345,
                        **(outer_kw or {})})
    l2 = Ether(src=src_mac, dst=dst_mac)
    for i, tag in enumerate(vlans):     # two tags: 802.1ad outside, 802.1Q inside
        l2 = l2 / (Dot1AD(vlan=tag) if i == 0 and len(vlans) == 2 else Dot1Q(vlan=tag))
    return bytes(l2 / outer / UDP(sport=sport, dport=PORT, chksum=0, len=udp_len) /
                 (header + private) / inner)
