"""A stand-in for the daemon's control socket in unit tests: HTTP on a unix
socket (what lbd.control_client talks to), answering JSON."""
from __future__ import annotations

import json
import socketserver


class UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def get_request(self):
        request, _ = super().get_request()
        return request, ("local", 0)  # BaseHTTPRequestHandler wants a (host, port)


def send_json(handler, code: int, body) -> None:
    """Answer a request of an http.server handler with `body` as JSON."""
    data = json.dumps(body).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)
