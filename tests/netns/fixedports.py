"""HTTP GETs from one client address and a fixed range of source ports, run
inside a client namespace; prints how many each backend answered (JSON).
Fixed ports make a spread measurement repeatable: the same flows hash the
same way on every run. An optional sixth argument walks the range that many
times (a port-reusing client: every connection after the first round opens
on the 4-tuple of a closed one; the server closes first, so the client's
side of the 4-tuple is free again once its FIN is acknowledged)."""
import collections
import json
import socket
import sys


def main() -> None:
    host, port, source, first, count = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    rounds = int(sys.argv[6]) if len(sys.argv) > 6 else 1
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    counts = collections.Counter()
    for sport in [p for _ in range(rounds) for p in range(first, first + count)]:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind((source, sport))
                s.connect((host, port))
                s.sendall(f"GET / HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
            counts[data.split(b"\r\n\r\n", 1)[1].decode().split()[0]] += 1
        except (OSError, IndexError) as err:
            counts[f"error: {type(err).__name__}"] += 1
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
