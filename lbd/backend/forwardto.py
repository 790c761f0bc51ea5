"""Where a backend's decap program may send a second-chance packet on: the
prefixes in its forward_to LPM trie (xdp/decap.c, struct lbd_forward_prefix).

A GUE packet names the address of its second choice, and the program sends
it there from this host. Without a limit anyone who can reach UDP 6080 on a
backend could have it send packets to any address; with one, only to the
backends' own networks. The default is the prefixes of the interface lbd's
packets arrive on (its global addresses' networks), which holds every peer
backend when they share a subnet; a fleet whose backends sit in other
subnets passes them with `--forward-to CIDR` (or `any`). A packet naming an
address outside is kept where it arrived, as if it named no second choice,
and counted (forward_refused).

One trie holds both families: an IPv4 prefix is stored IPv4-mapped
(::ffff:a.b.c.d, its length plus 96), as the program looks IPv4 up.
"""
from __future__ import annotations

import ipaddress
import struct

from lbd.dataplane import bpfsys, layout

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAP_NAME = "forward_to"
_KEY = struct.Struct("=I16s")   # struct lbd_forward_prefix: prefixlen (host order), address
KEY_SIZE = _KEY.size
ANY = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def parse(values: list[str]) -> list[IPNetwork]:
    """`--forward-to` values: CIDRs (an address alone is its /32 or /128) or
    `any`. A prefix with host bits set is an error that names it."""
    found: list[IPNetwork] = []
    for value in values:
        if value == "any":
            found += ANY
            continue
        try:
            found.append(ipaddress.ip_network(value))
        except ValueError as err:
            raise ValueError(f"--forward-to {value!r}: {err} (a CIDR such as 10.0.0.0/8, or any)") from None
    return canonical(found)


def canonical(networks) -> list[IPNetwork]:
    """Each network once, IPv4 first, in address order: how lists compare."""
    return sorted(set(networks), key=lambda n: (n.version, n.network_address.packed, n.prefixlen))


def key(network: IPNetwork) -> bytes:
    """The trie key of a prefix."""
    if network.version == 4:
        mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + network.network_address.packed)
        return _KEY.pack(network.prefixlen + 96, mapped.packed)
    return _KEY.pack(network.prefixlen, network.network_address.packed)


def network_of(raw: bytes) -> IPNetwork:
    """The prefix a trie key holds (the inverse of key)."""
    length, packed = _KEY.unpack(raw)
    address = ipaddress.IPv6Address(packed)
    if length >= 96 and address in _MAPPED:
        return ipaddress.IPv4Network((packed[12:], length - 96))
    return ipaddress.IPv6Network((packed, length))


def read(map_fd: int) -> list[IPNetwork]:
    return canonical(network_of(k) for k in bpfsys.map_keys(map_fd, KEY_SIZE))


def write(map_fd: int, networks: list[IPNetwork]) -> bool:
    """Make the trie hold exactly `networks` (new ones first, then the old
    ones go, so a change never refuses what both lists allow). Returns
    whether anything changed."""
    if len(networks) > layout.constant("LBD_FORWARD_PREFIXES"):
        raise ValueError(f"{len(networks)} --forward-to prefixes; the program holds at most "
                         f"{layout.constant('LBD_FORWARD_PREFIXES')}")
    wanted = {key(n) for n in networks}
    present = set(bpfsys.map_keys(map_fd, KEY_SIZE))
    for k in wanted - present:
        bpfsys.update_bytes(map_fd, k, b"\x01")
    for k in present - wanted:
        bpfsys.delete_bytes(map_fd, k)
    return wanted != present


def describe(networks: list[IPNetwork]) -> str:
    if set(ANY) <= set(networks):
        return "any address"
    return ", ".join(map(str, networks)) if networks else "no address"
