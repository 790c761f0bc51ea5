"""New TCP connections through a VIP at a steady pace, run inside a client
namespace: each one connects from the next source address, sends a GET and
reads the status line. Prints "started", then runs until a line arrives on
stdin, `max_count` connections or `max_s` seconds, whichever comes first
(all bounded), and prints one JSON line per connection: the time it started
(time.monotonic, the same clock as the test's on this host), its source, the
backend that answered (the body's first word) and the error, if any."""
import json
import select
import socket
import sys
import time


def one(vip: str, port: int, source: str) -> dict:
    started = time.monotonic()
    result = {"t": started, "source": source, "backend": None, "error": None}
    try:
        with socket.create_connection((vip, port), timeout=2, source_address=(source, 0)) as s:
            s.sendall(f"GET /whoami HTTP/1.0\r\nHost: {vip}\r\n\r\n".encode())
            data = b""
            while len(data) < 65536:  # HTTP/1.0: the server closes after its answer
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0].decode(errors="replace")
            if " 200 " not in status + " ":
                result["error"] = f"status line {status!r}"
            result["backend"] = (body.split() or [b""])[0].decode(errors="replace")
    except OSError as err:
        result["error"] = f"{type(err).__name__}: {err}"
    return result


def main() -> None:
    vip, port, per_s, max_count, max_s, *sources = sys.argv[1:]
    port, per_s, max_count, max_s = int(port), float(per_s), int(max_count), float(max_s)
    print("started", flush=True)
    results = []
    deadline = time.monotonic() + max_s
    while len(results) < max_count and time.monotonic() < deadline:
        results.append(one(vip, port, sources[len(results) % len(sources)]))
        # pace, and stop as soon as the test says so
        if select.select([sys.stdin], [], [], 1 / per_s)[0]:
            break
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
