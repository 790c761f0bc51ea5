"""Idle keep-alive HTTP connections through a VIP, run inside a client namespace.

    idlers.py VIP PORT MAX_IDLE_S SOURCE [SOURCE ...]

One connection per source address: a first request (its answer names the
backend), then silence, which is what makes a connection's entry the one an
LRU gives up first. Prints `ready` and a JSON object {source: [port,
backend]}, waits for a line on stdin (or MAX_IDLE_S), then sends a second
request on every connection and prints one JSON line each: source, port,
first, second (backend names) and error. A connection that was moved to
another backend is reset by it: error set, second None. Never reconnects.
"""
import http.client
import json
import sys
import threading


def main() -> int:
    vip, port, max_idle = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    conns = {}
    for source in sys.argv[4:]:
        conn = http.client.HTTPConnection(vip, port, timeout=5, source_address=(source, 0))
        conn.auto_open = 0  # a broken connection must fail, not be replaced silently
        conn.connect()
        conn.request("GET", "/")
        first = conn.getresponse().read().decode().split()[0]
        conns[source] = (conn, conn.sock.getsockname()[1], first)
    print("ready " + json.dumps({s: [p, b] for s, (_, p, b) in conns.items()}), flush=True)
    go = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
    go.wait(max_idle)
    for source, (conn, local_port, first) in conns.items():
        out = {"source": source, "port": local_port, "first": first, "second": None, "error": None}
        try:
            conn.request("GET", "/")
            out["second"] = conn.getresponse().read().decode().split()[0]
        except (OSError, http.client.HTTPException) as err:
            out["error"] = f"{type(err).__name__}: {err}"
        finally:
            conn.close()
        print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
