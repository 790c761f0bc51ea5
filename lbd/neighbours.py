"""Where backends are on the wire: egress interface, our MAC, their MAC.

DSR rewrites only MAC addresses, so each DSR backend must be on a directly
connected network; its MAC comes from the kernel's neighbour table, with a
probe (one empty UDP datagram to the discard port, which makes the kernel
send ARP or a neighbour solicitation) when the entry is missing. For ipip
backends the next hop is the FIB's business, but lbd primes the next hop's
neighbour entry the same way so first packets don't meet an unresolved one.

Everything is resolved in one batch from three netlink dumps (links, routes
of the main table, neighbours): thousands of backends cost milliseconds.
Policy routing is not consulted: backends are looked up in the main table.
Blocking netlink calls: run in an executor.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from pyroute2 import IPRoute

log = logging.getLogger("lbd.neighbours")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# NUD states with a usable MAC: REACHABLE STALE DELAY PROBE NOARP PERMANENT
_USABLE = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80
DISCARD_PORT = 9
MAIN_TABLE = 254


@dataclass(frozen=True)
class Resolved:
    address: IPAddress
    ifindex: int = 0
    ifname: str = ""
    our_mac: bytes = b""
    mac: bytes = b""                  # the backend's (dsr) or its next hop's (ipip)
    gateway: IPAddress | None = None
    problem: str = ""                 # why not, for status and logs

    @property
    def ok(self) -> bool:
        return not self.problem


def _mac(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


def _probe(address: IPAddress) -> None:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.sendto(b"", (str(address), DISCARD_PORT))
        except OSError:
            pass  # no route: reported by the lookup


class _Snapshot:
    """Links, main-table routes and neighbours as the kernel has them now."""

    def __init__(self, ipr: IPRoute):
        self.links = {link["index"]: (link.get_attr("IFLA_IFNAME"), _mac(link.get_attr("IFLA_ADDRESS")))
                      for link in ipr.get_links()}
        self.routes: list[tuple[ipaddress._BaseNetwork, int, IPAddress | None]] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=MAIN_TABLE):
                dst = route.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
                gateway = route.get_attr("RTA_GATEWAY")
                oif = route.get_attr("RTA_OIF")
                if oif is None:
                    continue
                network = ipaddress.ip_network(f"{dst}/{route['dst_len']}", strict=False)
                self.routes.append((network, oif, ipaddress.ip_address(gateway) if gateway else None))
        self.routes.sort(key=lambda r: r[0].prefixlen, reverse=True)
        self.neighbours: dict[tuple[int, IPAddress], bytes] = {}
        for entry in ipr.get_neighbours():
            dst, mac = entry.get_attr("NDA_DST"), entry.get_attr("NDA_LLADDR")
            if dst and mac and entry["state"] & _USABLE:
                self.neighbours[(entry["ifindex"], ipaddress.ip_address(dst))] = _mac(mac)

    def route(self, address: IPAddress):
        for network, oif, gateway in self.routes:
            if network.version == address.version and address in network:
                return oif, gateway
        return None


class NeighbourResolver:
    def __init__(self, probe_wait_s: float = 1.0):
        self.probe_wait_s = probe_wait_s

    def resolve_all(self, dsr: set[IPAddress], ipip: set[IPAddress]) -> dict[IPAddress, Resolved]:
        """Resolve every backend; probe the missing ones once, then wait up to
        probe_wait_s for answers."""
        with IPRoute() as ipr:
            results = self._pass(_Snapshot(ipr), dsr, ipip)
            missing = {r.gateway or r.address for r in results.values() if r.problem.startswith("no MAC")}
            if missing:
                for target in missing:
                    _probe(target)
                deadline = time.monotonic() + self.probe_wait_s
                while missing and time.monotonic() < deadline:
                    time.sleep(0.05)
                    results = self._pass(_Snapshot(ipr), dsr, ipip)
                    missing = {r.gateway or r.address for r in results.values()
                               if r.problem.startswith("no MAC")}
        return results

    def _pass(self, snap: _Snapshot, dsr: set[IPAddress], ipip: set[IPAddress]) -> dict[IPAddress, Resolved]:
        results = {}
        for address in dsr | ipip:
            on_link = address in dsr
            route = snap.route(address)
            if route is None:
                results[address] = Resolved(address, problem=f"no route to {address}")
                continue
            oif, gateway = route
            ifname, our_mac = snap.links.get(oif, ("?", b""))
            if on_link and gateway:
                results[address] = Resolved(
                    address, oif, ifname, our_mac, gateway=gateway,
                    problem=f"dsr backend {address} is behind gateway {gateway}: dsr needs "
                            "backends on a directly connected network (use mode: ipip)")
                continue
            target = gateway or address
            mac = snap.neighbours.get((oif, target), b"")
            if not mac:
                results[address] = Resolved(address, oif, ifname, our_mac, gateway=gateway,
                                            problem=f"no MAC for {target} on {ifname} "
                                                    "(no ARP/ND answer)")
            else:
                results[address] = Resolved(address, oif, ifname, our_mac, mac, gateway)
        return results
