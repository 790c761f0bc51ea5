"""The flow hash the XDP program uses to pick a Maglev slot, in Python.

The XDP program hashes each new flow with MurmurHash3_x86_32 (seed
LBD_HASH_SEED from xdp/lbd_shared.h) and takes the hash modulo the ring size
as the slot of the VIP's Maglev table. This module computes the same numbers
so the control plane and `lbctl` can say which backend a given flow goes to,
and so tests can check the tables' shares with real hashes. Maglev table
construction also uses murmur3_x86_32 (lbd/dataplane/maglev.py).

The byte strings hashed are fixed here and must match the C side exactly:
  5-tuple:          src | dst | sport | dport | proto | 3 zero bytes
                    (addresses and ports in network order; 16 bytes for IPv4,
                    40 for IPv6)
  client affinity:  src (4 or 16 bytes)
"""
from __future__ import annotations

import ipaddress
import struct

from lbd.dataplane import layout

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

HASH_SEED = layout.constant("LBD_HASH_SEED")

_M32 = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593


def murmur3_x86_32(data: bytes, seed: int = HASH_SEED) -> int:
    """MurmurHash3_x86_32 of data, as an unsigned 32-bit int.

    Same result as mmh3.hash(data, seed, signed=False) and as the reference
    C implementation (blocks read little-endian whatever the host).
    """
    h = seed & _M32
    n = len(data)
    nblocks = n // 4
    for k in struct.unpack_from(f"<{nblocks}I", data):
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
        h = ((h << 13) | (h >> 19)) & _M32
        h = (h * 5 + 0xE6546B64) & _M32
    tail = data[nblocks * 4:]
    if tail:
        k = int.from_bytes(tail, "little")
        k = (k * _C1) & _M32
        k = ((k << 15) | (k >> 17)) & _M32
        k = (k * _C2) & _M32
        h ^= k
    h ^= n
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    h ^= h >> 16
    return h


def flow_key_bytes(src: IPAddress, dst: IPAddress, sport: int, dport: int, proto: int) -> bytes:
    """The bytes the XDP program hashes for a flow (see the module docstring)."""
    if src.version != dst.version:
        raise ValueError(f"flow mixes address families: {src} -> {dst}")
    # struct.pack rejects ports and protocols out of range; the trailing 3 zero
    # bytes pad the key to a multiple of 4 as the C side's key struct does.
    return src.packed + dst.packed + struct.pack("!HHB3x", sport, dport, proto)


def flow_hash(src: IPAddress, dst: IPAddress, sport: int, dport: int, proto: int) -> int:
    """Hash of a flow's 5-tuple: picks its slot in a VIP's Maglev table."""
    return murmur3_x86_32(flow_key_bytes(src, dst, sport, dport, proto), HASH_SEED)


def client_hash(src: IPAddress) -> int:
    """Hash of the client address alone: the slot for client-affinity VIPs."""
    return murmur3_x86_32(src.packed, HASH_SEED)


def table_slot(hash_value: int, ring_size: int) -> int:
    """The Maglev table slot a hash selects."""
    return hash_value % ring_size
