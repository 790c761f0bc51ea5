"""What the balancer must do with a UDP datagram to a QUIC VIP, written from
RFC 9000 (17.2 long header, 17.3 short header, 14.1 Initial size), RFC 9369
(QUIC v2's version and long-header types), RFC 9001 5.4.2 (header protection
samples 16 octets from 4 past the packet number), the QUIC-LB draft
(draft-ietf-quic-load-balancers: plaintext CIDs) and docs/quic.md's rules --
never from xdp/quic.h.

`way(datagram, fmt, owners)` answers (slot, backend): the lbd_quic_slot name
the program counts and, for a routed packet, the backend that owns the CID's
server ID. Only octets of the datagram itself are looked at.
"""
from __future__ import annotations

from dataclasses import dataclass

V1, V2 = 0x00000001, 0x6B3343CF
MIN_DATAGRAM = 23  # docs/quic.md: shorter is no QUIC packet lbd reads
HP_SAMPLE = 20     # RFC 9001 5.4.2: 4 octets of packet number room + a 16-octet sample
# the fallbacks that make no connection-table entry (docs/design.md's flow rules)
NO_ENTRY = {"fb_unknown_version", "fb_client_cid", "fb_retry", "fb_short_cid",
            "fb_unknown_server", "fb_unusable_server"}
ROUTED = {"routed_short", "routed_handshake"}

# RFC 9000 17.2: v1 types 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry.
# RFC 9369 3.2: v2 types 1 Initial, 2 0-RTT, 3 Handshake, 0 Retry.
TYPES = {V1: {0: "initial", 1: "0rtt", 2: "handshake", 3: "retry"},
         V2: {1: "initial", 2: "0rtt", 3: "handshake", 0: "retry"}}


@dataclass(frozen=True)
class Format:
    config_id: int
    server_id_len: int
    cid_len: int


def way(d: bytes, fmt: Format, owners: dict[bytes, object | None]) -> tuple[str, object | None]:
    """owners: server ID -> a usable backend, or None for one whose backend
    is not usable (down, removed); IDs not in it belong to no backend."""
    if len(d) < MIN_DATAGRAM or not d[0] & 0x40:
        return "fb_not_quic", None
    if d[0] & 0x80:
        version = int.from_bytes(d[1:5], "big")
        if version not in TYPES:
            return "fb_unknown_version", None
        dcid_len = d[5]
        if dcid_len > 20 or 6 + dcid_len > len(d):
            return "fb_not_quic", None
        kind = TYPES[version][(d[0] >> 4) & 3]
        if kind == "retry":
            return "fb_retry", None
        if kind != "handshake":
            return "fb_client_cid", None
        # packet number offset >= 6 + DCID + SCID length octet + a Length octet
        if dcid_len < 1 + fmt.server_id_len or len(d) < 6 + dcid_len + 2 + HP_SAMPLE:
            return "fb_short_cid", None
        cid, routed = d[6:6 + dcid_len], "routed_handshake"
    else:
        if len(d) < 1 + fmt.cid_len + HP_SAMPLE:
            return "fb_short_cid", None
        cid, routed = d[1:1 + fmt.cid_len], "routed_short"
    if cid[0] >> 5 == 0b111:
        return "fb_unroutable", None
    if cid[0] >> 5 != fmt.config_id:
        return "fb_other_config", None
    server_id = cid[1:1 + fmt.server_id_len]
    if server_id not in owners:
        return "fb_unknown_server", None
    if owners[server_id] is None:
        return "fb_unusable_server", None
    return routed, owners[server_id]
