"""Serve `lbd-backend metrics` over HTTP, as a backend's node_exporter serves
the textfile lbd-backend-metrics.timer writes (tests/netns/test_prometheus.py
runs it in a backend's namespace for Prometheus to scrape).

    python -m tests.netns.backend_exporter ADDRESS PORT INTERFACE

Each GET reads the program on INTERFACE anew, as the timer's next run would.
"""
from __future__ import annotations

import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from lbd.backend import metrics as backend_metrics
from lbd.backend.decap import decap_source_hash, decap_state


def main(address: str, port: int, interface: str) -> None:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = backend_metrics.text({interface: decap_state(interface)}, decap_source_hash()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):   # one line per scrape, every second: not needed
            pass

    HTTPServer((address, port), Handler).serve_forever()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
