"""Where a backend is on the wire: egress interface, our MAC, its MAC.

DSR rewrites only MAC addresses, so each DSR backend must be on a directly
connected network; its MAC comes from the kernel's neighbour table, with a
probe (one UDP datagram to the discard port, which makes the kernel ARP or
send a neighbour solicitation) when the entry is missing. For ipip backends
the next hop is the FIB's business, but lbd primes the gateway's neighbour
entry the same way so that the first packets do not meet an unresolved
next hop. Blocking netlink calls: run them in an executor.
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
_VALID = 0x02 | 0x04 | 0x08 | 0x10 | 0x40 | 0x80  # REACHABLE STALE DELAY PROBE NOARP PERMANENT
DISCARD_PORT = 9


@dataclass(frozen=True)
class Resolved:
    address: IPAddress
    ifindex: int = 0
    ifname: str = ""
    our_mac: bytes = b""
    mac: bytes = b""           # the backend's (dsr) or the gateway's (ipip) MAC
    gateway: IPAddress | None = None
    problem: str = ""          # why it could not be resolved, for status and logs

    @property
    def ok(self) -> bool:
        return not self.problem


def _mac_bytes(text: str | None) -> bytes:
    return bytes.fromhex(text.replace(":", "")) if text else b""


def _probe(address: IPAddress) -> None:
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.sendto(b"", (str(address), DISCARD_PORT))
        except OSError:
            pass  # unreachable is reported by the lookup that follows


class NeighbourResolver:
    def __init__(self, probe_wait_s: float = 1.0):
        self.probe_wait_s = probe_wait_s

    def _neighbour(self, ipr: IPRoute, address: IPAddress, ifindex: int) -> bytes:
        family = socket.AF_INET if address.version == 4 else socket.AF_INET6
        for entry in ipr.get_neighbours(family=family, ifindex=ifindex):
            if entry.get_attr("NDA_DST") == str(address) and entry["state"] & _VALID:
                return _mac_bytes(entry.get_attr("NDA_LLADDR"))
        return b""

    def resolve(self, address: IPAddress, on_link: bool) -> Resolved:
        """The egress interface, our MAC and the MAC of the backend (on_link,
        for dsr) or of its next hop (for ipip)."""
        with IPRoute() as ipr:
            try:
                route = ipr.route("get", dst=str(address))[0]
            except Exception as err:  # pyroute2 raises NetlinkError
                return Resolved(address, problem=f"no route to {address}: {err}")
            ifindex = route.get_attr("RTA_OIF")
            gateway = route.get_attr("RTA_GATEWAY")
            link = ipr.link("get", index=ifindex)[0]
            ifname = link.get_attr("IFLA_IFNAME")
            our_mac = _mac_bytes(link.get_attr("IFLA_ADDRESS"))
            if on_link and gateway:
                return Resolved(address, ifindex, ifname, our_mac, gateway=ipaddress.ip_address(gateway),
                                problem=f"dsr backend {address} is behind gateway {gateway}: "
                                        "dsr needs backends on a directly connected network (use ipip)")
            target = ipaddress.ip_address(gateway) if gateway else address
            mac = self._neighbour(ipr, target, ifindex)
            deadline = time.monotonic() + self.probe_wait_s
            probed = False
            while not mac and time.monotonic() < deadline:
                if not probed:
                    _probe(target)
                    probed = True
                time.sleep(0.02)
                mac = self._neighbour(ipr, target, ifindex)
        if not mac:
            return Resolved(address, ifindex, ifname, our_mac, gateway=target if gateway else None,
                            problem=f"no MAC for {target} on {ifname} (no ARP/ND answer)")
        return Resolved(address, ifindex, ifname, our_mac, mac,
                        ipaddress.ip_address(gateway) if gateway else None)
