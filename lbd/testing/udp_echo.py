"""A tiny UDP echo server for lab backends: answers `<name> <payload>`.

    python -m lbd.testing.udp_echo --port 5300 --name b1            # 0.0.0.0 and ::
    python -m lbd.testing.udp_echo --bind 198.18.0.11 --port 5300 --name b1

Behind a direct-server-return balancer the client sent its datagram to a VIP,
so the answer must come from that VIP, not from whatever address the routing
table would pick for a wildcard socket. The server therefore reads each
datagram's destination address (IP_PKTINFO / IPV6_PKTINFO) and sends the
answer from it.
"""
from __future__ import annotations

import argparse
import ipaddress
import selectors
import signal
import socket
import struct
import sys

# Linux values; Python does not export IP_PKTINFO on every build.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
_CMSG_SPACE = socket.CMSG_SPACE(64)


def open_socket(address: str, port: int) -> socket.socket:
    """A UDP socket bound to address:port that reports each datagram's destination."""
    family = socket.AF_INET6 if ipaddress.ip_address(address).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        # IPv4 has its own socket: a dual-stack one would see v4-mapped pktinfo
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind((address, port))
    return sock


def _reply_ancillary(ancdata) -> list:
    """Ancillary data that makes the reply leave from the request's destination."""
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
            _ifindex, _spec_dst, dst = struct.unpack("=i4s4s", data[:12])
            return [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=i4s4s", 0, dst, bytes(4)))]
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO:
            dst = data[:16]
            return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, struct.pack("=16si", dst, 0))]
    return []


def serve_one(sock: socket.socket, name: bytes) -> None:
    payload, ancdata, _flags, peer = sock.recvmsg(65535, _CMSG_SPACE)
    try:
        sock.sendmsg([name + b" " + payload], _reply_ancillary(ancdata), 0, peer)
    except OSError as err:  # an unreachable client must not stop the server
        print(f"udp_echo: reply to {peer[0]} failed: {err}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lbd.testing.udp_echo", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", action="append", metavar="ADDR",
                        help="address to listen on (repeatable; default 0.0.0.0 and ::)")
    parser.add_argument("--port", type=int, default=5300)
    parser.add_argument("--name", required=True, help="the word every answer starts with")
    args = parser.parse_args(argv)

    # SIGTERM ends the loop through KeyboardInterrupt's path: sockets close cleanly
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    selector = selectors.DefaultSelector()
    for address in args.bind or ["0.0.0.0", "::"]:
        selector.register(open_socket(address, args.port), selectors.EVENT_READ)
    print(f"udp_echo: {args.name} listening on port {args.port}", flush=True)
    name = args.name.encode()
    try:
        while True:
            for key, _ in selector.select():
                serve_one(key.fileobj, name)
    except KeyboardInterrupt:
        return 0
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()


if __name__ == "__main__":
    sys.exit(main())
