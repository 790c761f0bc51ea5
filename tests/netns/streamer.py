"""Long-lived HTTP streams through a VIP, one per source address, run inside
a client namespace. Reads for `duration` seconds (bounded), then prints one
JSON line per stream: source, port (its local port), backend (the body's
first line), bytes read, and the error that ended it early, if any. A stream that breaks (reset,
closed) before the duration is over is what the tests look for."""
import json
import socket
import sys
import threading
import time


def stream(url_host: str, port: int, source: str, duration: float, out: dict,
           connected: threading.Event) -> None:
    family = socket.AF_INET6 if ":" in url_host else socket.AF_INET
    out.update(source=source, port=None, backend=None, bytes=0, error=None)
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.bind((source, 0))
            try:
                s.connect((url_host, port))
                out["port"] = s.getsockname()[1]
            finally:
                connected.set()
            host = f"[{url_host}]" if family == socket.AF_INET6 else url_host
            s.sendall(f"GET /stream HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            buf = b""
            deadline = time.monotonic() + duration
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    out["error"] = "closed early"
                    return
                out["bytes"] += len(chunk)
                if out["backend"] is None:
                    buf += chunk
                    if b"\r\n\r\n" in buf:
                        body = buf.split(b"\r\n\r\n", 1)[1]
                        if b"\n" in body:
                            out["backend"] = body.split(b"\n", 1)[0].decode()
    except OSError as err:
        out["error"] = f"{type(err).__name__}: {err}"


def main() -> None:
    host, port, duration = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    sources = sys.argv[4:]
    results = [{} for _ in sources]
    connected = [threading.Event() for _ in sources]
    threads = [threading.Thread(target=stream, args=(host, port, src, duration, res, done))
               for src, res, done in zip(sources, results, connected)]
    for t in threads:
        t.start()
    for done in connected:
        done.wait(6)
    # each stream's local port, so a test can name its flow (lbctl explain)
    print("started " + json.dumps({r["source"]: r.get("port") for r in results}), flush=True)
    for t in threads:
        t.join(duration + 10)
    for res in results:
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
