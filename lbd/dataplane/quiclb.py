"""QUIC-LB plaintext connection IDs (draft-ietf-quic-load-balancers), both ends.

The format a QUIC VIP's servers issue and lbd's program reads (xdp/quic.h):

    octet 0: 3 config rotation bits (0b111: unroutable) | 5 bits: CID length - 1
             when the length is self-encoded, else random
    octets 1 .. server_id_length: the server ID (opaque octets)
    then the nonce: nonce_length octets (at least 4), random or a counter

The lab's QUIC server (lbd.testing.quicserver), `lbd-backend check --quic` and
`lbctl explain --quic-cid` use this module; the bpf tier holds it and the
program to the draft's test vectors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

UNROUTABLE = 0b111   # config rotation bits of a CID no load balancer can route
MAX_CID = 20         # RFC 9000
MIN_NONCE = 4


@dataclass(frozen=True)
class CidFormat:
    """One QUIC VIP's CID format (its config's `quic:` section)."""
    config_id: int
    server_id_length: int
    nonce_length: int
    self_encode_length: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.config_id < UNROUTABLE:
            raise ValueError(f"config_id must be 0..6, got {self.config_id}")
        if not 1 <= self.server_id_length <= MAX_CID - 1 - MIN_NONCE:
            raise ValueError(f"server_id_length must be 1..15, got {self.server_id_length}")
        if self.nonce_length < MIN_NONCE or self.cid_length > MAX_CID:
            raise ValueError(f"nonce_length must be {MIN_NONCE}.. with a CID of at most {MAX_CID} octets")

    @property
    def cid_length(self) -> int:
        return 1 + self.server_id_length + self.nonce_length

    def encode(self, server_id: bytes, nonce: bytes | None = None) -> bytes:
        """A CID carrying server_id; a random nonce unless one is given."""
        if len(server_id) != self.server_id_length:
            raise ValueError(f"server ID must be {self.server_id_length} octets, got {len(server_id)}")
        nonce = os.urandom(self.nonce_length) if nonce is None else nonce
        if len(nonce) != self.nonce_length:
            raise ValueError(f"nonce must be {self.nonce_length} octets, got {len(nonce)}")
        low = self.cid_length - 1 if self.self_encode_length else os.urandom(1)[0] & 0x1F
        return bytes([self.config_id << 5 | low]) + server_id + nonce

    def server_id(self, cid: bytes) -> bytes | None:
        """The server ID a CID carries under this format, or None if it carries
        none (0b111, another config ID, too short to hold the server ID)."""
        if len(cid) < 1 + self.server_id_length:
            return None
        if cid[0] >> 5 != self.config_id:
            return None
        return cid[1:1 + self.server_id_length]

    def unroutable(self) -> bytes:
        """A CID that says "route me by the 4-tuple" (config rotation 0b111)."""
        return bytes([UNROUTABLE << 5 | (os.urandom(1)[0] & 0x1F)]) + os.urandom(self.cid_length - 1)


def config_bits(cid: bytes) -> int | None:
    """The config rotation bits of a CID's first octet (7: unroutable)."""
    return cid[0] >> 5 if cid else None
