"""Long-lived QUIC connections (aioquic) that exchange data through VIPs and
rebind their local socket on command, as a NAT or a migrating client does.

    python quicclients.py --vip 198.18.100.1 --vip 198.18.100.3 --port 443 \\
        --source 198.18.10.2 --source 198.18.10.3 ... --per-vip 10 --duration 60

Each connection opens from its own source address, then sends a short message
on a new stream every 200 ms and waits for the echo (the lab's
lbd.testing.quicserver). It counts an exchange that takes longer than
EXCHANGE_TIMEOUT_S as failed, and a connection with a failed exchange or a
terminated connection as broken. Commands on stdin, one per line:
`rebind-port` (a new socket on the same address: a NAT's new mapping) and
`rebind-address` (a new socket on the next source address, with a new CID:
the client migrates); `stop` ends the run; any other line is answered
`done LINE` (a mark: the test changes something meanwhile). It prints "ready" once every
connection has finished its handshake and one JSON line per connection at
the end (with `first_local`, the ADDR:PORT its first socket had; --local
chooses them). Bounded: --duration seconds at most.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, StreamDataReceived

from lbd.testing.quicserver import client_configuration

EXCHANGE_TIMEOUT_S = 3.0
INTERVAL_S = 0.2


class EchoClient(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.waiting: dict[int, asyncio.Future] = {}
        self.replies: dict[int, bytes] = {}
        self.terminated = False
        self.servers: set[str] = set()
        self.exchange_timeout = EXCHANGE_TIMEOUT_S

    def quic_event_received(self, event) -> None:
        if isinstance(event, StreamDataReceived):
            self.replies[event.stream_id] = self.replies.get(event.stream_id, b"") + event.data
            waiter = self.waiting.get(event.stream_id)
            if event.end_stream and waiter and not waiter.done():
                waiter.set_result(self.replies.pop(event.stream_id))
        elif isinstance(event, ConnectionTerminated):
            self.terminated = True
        super().quic_event_received(event)

    async def exchange(self, message: bytes) -> bytes:
        stream_id = self._quic.get_next_available_stream_id()
        waiter = self.waiting[stream_id] = self._loop.create_future()
        self._quic.send_stream_data(stream_id, message, end_stream=True)
        self.transmit()
        try:
            return await asyncio.wait_for(waiter, self.exchange_timeout)
        finally:
            del self.waiting[stream_id]


class Connection:
    def __init__(self, vip: str, port: int, sources: list[str], index: int,
                 exchange_timeout: float = EXCHANGE_TIMEOUT_S):
        self.vip, self.port, self.sources, self.index = vip, port, sources, index
        self.exchange_timeout = exchange_timeout
        self.source_at = index % len(sources)
        self.first_local = (sources[self.source_at], 0)  # the first socket's (address, port)
        self.protocol: EchoClient | None = None
        self.transports = []
        self.exchanges = self.failures = self.rebinds = 0
        self.error = ""

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.protocol = EchoClient(QuicConnection(configuration=client_configuration()))
        self.protocol.exchange_timeout = self.exchange_timeout
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self.protocol, local_addr=self.first_local)
        self.transports.append(transport)
        self.protocol.connect((self.vip, self.port))
        await asyncio.wait_for(self.protocol.wait_connected(), 10)

    async def rebind(self, new_address: bool) -> None:
        """A new local socket: the server sees the connection come from a new port
        (and address); the old socket stays open, unused, until the end."""
        loop = asyncio.get_running_loop()
        if new_address:
            self.source_at = (self.source_at + 1) % len(self.sources)
            self.protocol.change_connection_id()  # a migrating client moves to a new CID
        await loop.create_datagram_endpoint(lambda: self.protocol,
                                            local_addr=(self.sources[self.source_at], 0))
        self.rebinds += 1

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            if self.protocol.terminated:
                self.error = "terminated"
                return
            try:
                reply = await self.protocol.exchange(f"{self.index} {self.exchanges}".encode())
                self.protocol.servers.add(reply.split(b" ", 1)[0].decode())
            except asyncio.TimeoutError:
                self.failures += 1
            self.exchanges += 1
            await asyncio.sleep(INTERVAL_S)

    def result(self) -> dict:
        return {"vip": self.vip, "index": self.index, "exchanges": self.exchanges, "failures": self.failures,
                "rebinds": self.rebinds, "error": self.error, "servers": sorted(self.protocol.servers),
                "first_local": "%s:%d" % self.transports[0].get_extra_info("sockname")[:2],
                "broken": bool(self.failures or self.error)}


async def main_async(args) -> None:
    conns = [Connection(vip, args.port, args.source, i, args.exchange_timeout)
             for vip in args.vip for i in range(args.per_vip)]
    if args.local:
        assert len(args.local) == len(conns), f"--local: {len(args.local)} given for {len(conns)} connections"
        for conn, local in zip(conns, args.local):
            address, port = local.rsplit(":", 1)
            conn.first_local = (address, int(port))
    await asyncio.gather(*(c.open() for c in conns))
    stop = asyncio.Event()
    runs = [asyncio.ensure_future(c.run(stop)) for c in conns]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    deadline = loop.time() + args.duration
    while loop.time() < deadline:
        try:
            line = (await asyncio.wait_for(reader.readline(), deadline - loop.time())).decode().strip()
        except asyncio.TimeoutError:
            break
        if line in ("stop", ""):
            break
        if line in ("rebind-port", "rebind-address"):
            await asyncio.gather(*(c.rebind(line == "rebind-address") for c in conns))
        print(f"done {line}", flush=True)  # any other line: a mark the test waits on
    stop.set()
    await asyncio.gather(*runs)
    for c in conns:
        print(json.dumps(c.result()), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vip", action="append", required=True)
    parser.add_argument("--port", type=int, default=443)
    parser.add_argument("--source", action="append", required=True)
    parser.add_argument("--per-vip", type=int, default=10)
    parser.add_argument("--local", action="append", default=[],
                        help="ADDR:PORT of each connection's first socket, in order (every VIP's "
                             "--per-vip in turn): a test that predicts where each flow goes")
    parser.add_argument("--duration", type=float, default=90)
    parser.add_argument("--exchange-timeout", type=float, default=EXCHANGE_TIMEOUT_S,
                        help="longer where a path fails over (a fleet host dies: BGP hold time)")
    asyncio.run(main_async(parser.parse_args()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
