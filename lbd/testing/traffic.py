"""Traffic from the lab's clients: HTTP GETs and UDP echoes, each batch run
by one probe process inside a client namespace (`python -m
lbd.testing.traffic REQUESTS`), so 50+ requests cost one process."""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from dataclasses import dataclass

from lbd.testing.topology import UDP_PORT, Node, url


@dataclass
class HttpReply:
    """One HTTP GET made from a client namespace."""
    source: str | None
    status: int | None = None
    body: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200


class Traffic:
    """The lab's client side (a part of lbd.testing.lab.Lab)."""

    url = staticmethod(url)

    def _probe(self, client: str | Node | None, requests: list[dict],
               timeout: float) -> list[dict]:
        client = self.node(client or self.client)
        result = self.run(client, [sys.executable, "-m", "lbd.testing.traffic", json.dumps(requests),
                                   "--timeout", str(timeout)],
                          timeout=30 + timeout * len(requests))
        if result.returncode != 0:
            raise RuntimeError(f"probe in {client.ns} failed: {result.stderr.strip()}")
        return json.loads(result.stdout)

    def http_get(self, target: str, *, source=None, client=None, timeout: float = 5.0
                 ) -> HttpReply:
        """GET a URL from a client namespace, optionally from one of its addresses."""
        return self.http_get_many(target, [source], client=client, timeout=timeout)[0]

    def http_get_many(self, target: str, sources, *, client=None, timeout: float = 5.0,
                      ports=None) -> list[HttpReply]:
        """One GET per source address, in one process (fast for 50+ sources);
        `ports`: a source port for each (default: any)."""
        ports = ports or [0] * len(sources)
        requests = [{"kind": "http", "url": target, "port": port,
                     "source": None if s is None else str(s)} for s, port in zip(sources, ports)]
        return [HttpReply(**r) for r in self._probe(client, requests, timeout)]

    def udp_echo(self, address, payload: str = "ping", *, port: int = UDP_PORT, source=None,
                 client=None, timeout: float = 3.0) -> str | None:
        """Send one datagram from a client; the answer's text, or None on timeout."""
        request = {"kind": "udp", "address": str(address), "port": port, "payload": payload,
                   "source": None if source is None else str(source)}
        reply = self._probe(client, [request], timeout)[0]
        return reply["body"] if reply["error"] == "" else None


def _probe_one(request: dict, timeout: float) -> dict:
    import http.client
    import socket
    from urllib.parse import urlsplit

    source, port = request.get("source"), request.get("port", 0)
    reply = {"source": source, "status": None, "body": "", "error": ""}
    try:
        if request["kind"] == "http":
            parts = urlsplit(request["url"])
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout,
                                              source_address=(source, port) if source else None)
            try:
                conn.request("GET", parts.path or "/", headers={"Connection": "close"})
                response = conn.getresponse()
                reply["status"] = response.status
                reply["body"] = response.read().decode(errors="replace")
            finally:
                conn.close()
        else:
            address = ipaddress.ip_address(request["address"])
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as sock:
                sock.settimeout(timeout)
                if source:
                    sock.bind((source, 0))
                sock.sendto(request["payload"].encode(), (str(address), request["port"]))
                data, _ = sock.recvfrom(65535)
                reply["body"] = data.decode(errors="replace")
    except (OSError, http.client.HTTPException) as err:
        reply["error"] = f"{type(err).__name__}: {err}"
    return reply


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lbd.testing.traffic",
                                     description="run probe requests (JSON) from this namespace")
    parser.add_argument("requests")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)
    print(json.dumps([_probe_one(r, args.timeout) for r in json.loads(args.requests)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
