"""The lab's QUIC server (aioquic) whose connection IDs carry its server ID in
the QUIC-LB plaintext format (lbd.dataplane.quiclb, docs/quic.md), and the
lab's QUIC clients: long-lived connections that echo data, and can migrate.

    python -m lbd.testing.quicserver serve --bind 198.18.100.5 --port 443 \\
        --config-id 0 --server-id c4605e --nonce-length 4 --name b1
    python -m lbd.testing.quicserver serve ... --random-cids     # a server that ignores its ID

aioquic (1.2 .. 1.7, pinned in pyproject.toml) has no public hook for the
CIDs it issues: it draws its host CID and each replenished one from
os.urandom in QuicConnection (`_host_cids[0]` in __init__, and
`_replenish_connection_ids`). LbQuicConnection sets the first right after
__init__ (before the server registers the connection under it) and
overrides the replenishment; aioquic's server builds its connections by the
module's `QuicConnection` name, so `serve` points that name at the subclass
in this process only. Each stream echoes what it receives, prefixed with
the server's name once per stream.

Behind direct server return the server must answer from the VIP: bind to
the VIP address (on the backend's lo), never the wildcard.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import subprocess
import tempfile
from pathlib import Path

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio import server as aioquic_server
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection, QuicConnectionId
from aioquic.quic.events import StreamDataReceived

from lbd.dataplane.quiclb import CidFormat

ALPN = ["lbd-echo"]


class LbQuicConnection(QuicConnection):
    """A server connection whose every host CID carries `cid_format`'s server ID."""
    cid_format: CidFormat | None = None   # set per process by serve()
    server_id: bytes = b""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.cid_format is not None and not self._is_client:
            cid = self._new_cid()
            self._host_cids[0].cid = cid
            self.host_cid = cid
            self._local_initial_source_connection_id = cid

    def _new_cid(self) -> bytes:
        return self.cid_format.encode(self.server_id)

    def _replenish_connection_ids(self) -> None:
        if self.cid_format is None:
            return super()._replenish_connection_ids()
        while len(self._host_cids) < min(8, self._remote_active_connection_id_limit):
            self._host_cids.append(QuicConnectionId(
                cid=self._new_cid(), sequence_number=self._host_cid_seq,
                stateless_reset_token=os.urandom(16)))
            self._host_cid_seq += 1


class EchoServerProtocol(QuicConnectionProtocol):
    name = "server"

    def quic_event_received(self, event) -> None:
        if isinstance(event, StreamDataReceived):
            self._quic.send_stream_data(event.stream_id, self.name.encode() + b" " + event.data,
                                        end_stream=event.end_stream)
            self.transmit()


def self_signed(directory: str) -> tuple[str, str]:
    """A throwaway certificate for the lab (clients do not verify it)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    if not os.path.exists(cert):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=lbd-lab"],
                       check=True, capture_output=True)
    return cert, key


def server_configuration(cid_format: CidFormat | None, certdir: str) -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=False, alpn_protocols=ALPN, idle_timeout=120.0)
    if cid_format is not None:
        configuration.connection_id_length = cid_format.cid_length
    configuration.load_cert_chain(*self_signed(certdir))
    return configuration


def client_configuration() -> QuicConfiguration:
    configuration = QuicConfiguration(is_client=True, alpn_protocols=ALPN, idle_timeout=120.0)
    configuration.verify_mode = ssl.CERT_NONE
    return configuration


async def run_server(binds: list[str], port: int, name: str, cid_format: CidFormat | None,
                     server_id: bytes) -> None:
    LbQuicConnection.cid_format, LbQuicConnection.server_id = cid_format, server_id
    aioquic_server.QuicConnection = LbQuicConnection  # this process only: see the module docstring
    EchoServerProtocol.name = name
    certdir = tempfile.mkdtemp(prefix="lbd-quic-")
    configuration = server_configuration(cid_format, certdir)
    for address in binds:
        await serve(address, port, configuration=configuration, create_protocol=EchoServerProtocol)
    print("listening", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lbd.testing.quicserver")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="a QUIC echo server whose CIDs carry its server ID")
    s.add_argument("--bind", action="append", required=True, help="an address to listen on (repeat)")
    s.add_argument("--port", type=int, default=443)
    s.add_argument("--name", required=True)
    s.add_argument("--config-id", type=int, default=0)
    s.add_argument("--server-id", default="")
    s.add_argument("--nonce-length", type=int, default=4)
    s.add_argument("--random-cids", action="store_true", help="ignore the server ID (aioquic's own CIDs)")
    args = parser.parse_args(argv)
    server_id = bytes.fromhex(args.server_id)
    cid_format = None if args.random_cids or not server_id else \
        CidFormat(args.config_id, len(server_id), args.nonce_length)
    try:
        asyncio.run(run_server(args.bind, args.port, args.name, cid_format, server_id))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
