"""The lab's QUIC server (lbd.testing.quicserver, aioquic) issues connection
IDs in the QUIC-LB plaintext format with its server ID, and `lbd-backend check
--quic` (lbd.backend.quiccheck) tells such a server from one that ignores its
ID. Real QUIC handshakes over loopback, no root."""
from __future__ import annotations

import socket
import subprocess
import sys
import time

import pytest

from lbd.backend import quiccheck
from lbd.dataplane.quiclb import CidFormat

pytestmark = pytest.mark.unit

FMT = CidFormat(2, 3, 6)
SERVER_ID = bytes.fromhex("c4605e")


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["encodes", "random"])
def server(request):
    port = free_udp_port()
    argv = [sys.executable, "-m", "lbd.testing.quicserver", "serve", "--bind", "127.0.0.1", "--port",
            str(port), "--name", "b1", "--config-id", "2", "--server-id", SERVER_ID.hex(), "--nonce-length", "6"]
    if request.param == "random":
        argv.append("--random-cids")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "listening", proc.stderr.read()
        yield request.param, port
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_check_quic_tells_a_server_that_encodes_its_id_from_one_that_does_not(server):
    kind, port = server
    result = quiccheck.check_quic("127.0.0.1", port, FMT, SERVER_ID, alpn=("lbd-echo",))
    assert result.reached, result.error
    # the first SCID and the NEW_CONNECTION_ID frames: aioquic issues up to 8
    assert len(result.cids) >= 2
    if kind == "encodes":
        assert result.ok and all(FMT.server_id(bytes.fromhex(c)) == SERVER_ID for c in result.cids)
        assert all(bytes.fromhex(c)[0] == (2 << 5 | FMT.cid_length - 1) for c in result.cids)
        assert "ok" in quiccheck.report(result, FMT, SERVER_ID)[0]
    else:
        assert not result.ok and "FAIL" in quiccheck.report(result, FMT, SERVER_ID)[0]


def test_check_quic_without_a_server_says_so():
    result = quiccheck.check_quic("127.0.0.1", free_udp_port(), FMT, SERVER_ID, timeout=1.0)
    assert not result.reached and "no QUIC handshake" in result.error
