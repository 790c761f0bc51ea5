"""`lbd-backend check --quic`: does the QUIC server on this backend issue
connection IDs that carry its server ID (docs/quic.md)?

It opens one QUIC connection to the server (any ALPN the server accepts is
fine: the handshake is what matters, and a server that refuses our ALPN
has still issued its first CID), waits for the server's NEW_CONNECTION_ID
frames, and decodes every CID the server issued with the VIP's format
(lbd.dataplane.quiclb). aioquic keeps the CIDs a peer issued in private
attributes (`_peer_cid`, `_peer_cid_available`; read as in aioquic 1.2 ..
1.7); aioquic is imported only here, so the rest of lbd-backend needs none.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field

from lbd.dataplane.quiclb import CidFormat


@dataclass
class QuicCheck:
    reached: bool
    error: str = ""
    cids: list[str] = field(default_factory=list)     # every CID the server issued, hex
    carrying: list[str] = field(default_factory=list)  # those carrying the configured server ID

    @property
    def ok(self) -> bool:
        return self.reached and bool(self.cids) and len(self.carrying) == len(self.cids)


async def _issued_cids(host: str, port: int, alpn: list[str], timeout: float) -> list[bytes]:
    from aioquic.asyncio import connect
    from aioquic.quic.configuration import QuicConfiguration

    configuration = QuicConfiguration(is_client=True, alpn_protocols=alpn, idle_timeout=timeout)
    configuration.verify_mode = ssl.CERT_NONE
    async with connect(host, port, configuration=configuration, wait_connected=True) as client:
        await client.ping()  # a round trip more: the server's NEW_CONNECTION_ID frames arrive
        conn = client._quic
        return [conn._peer_cid.cid] + [c.cid for c in conn._peer_cid_available]


def check_quic(host: str, port: int, cid_format: CidFormat, server_id: bytes,
               alpn: tuple[str, ...] = ("h3", "lbd-echo"), timeout: float = 5.0) -> QuicCheck:
    try:
        cids = asyncio.run(asyncio.wait_for(_issued_cids(host, port, list(alpn), timeout), timeout))
    except ImportError:
        return QuicCheck(False, "needs aioquic (apt install python3-aioquic, or pip install aioquic)")
    except (OSError, asyncio.TimeoutError, ConnectionError) as err:
        return QuicCheck(False, f"no QUIC handshake with {host}:{port}: {err or 'timed out'}")
    carrying = [c.hex() for c in cids if cid_format.server_id(c) == server_id and len(c) == cid_format.cid_length]
    return QuicCheck(True, "", [c.hex() for c in cids], carrying)


def report(result: QuicCheck, cid_format: CidFormat, server_id: bytes) -> list[str]:
    """The lines `lbd-backend check --quic` prints."""
    want = f"config {cid_format.config_id}, server ID {server_id.hex()}, {cid_format.cid_length}-octet CIDs"
    if not result.reached:
        return [f"quic: FAIL: {result.error}"]
    if result.ok:
        return [f"quic: ok: all {len(result.cids)} CIDs the server issued carry {want}"]
    wrong = [c for c in result.cids if c not in result.carrying]
    return [f"quic: FAIL: {len(wrong)} of {len(result.cids)} CIDs the server issued do not carry {want} "
            f"(e.g. {wrong[0]}): lbd routes its connections by the 4-tuple only; docs/quic.md says how "
            "to configure the server"]
