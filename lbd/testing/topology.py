"""The lab's shape: its nets, addresses, MACs and nodes (see lbd.testing.lab
for the picture), and the small netlink helpers that wire them."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

HTTP_PORT = 80
UDP_PORT = 5300
NETS_V4 = {"lan": ipaddress.ip_network("198.18.0.0/24"),
           "clients": ipaddress.ip_network("198.18.10.0/24"),
           "remote": ipaddress.ip_network("198.18.20.0/24"),
           "vips": ipaddress.ip_network("198.18.100.0/24")}
NETS_V6 = {"lan": ipaddress.ip_network("fd00:0:0:1::/64"),
           "clients": ipaddress.ip_network("fd00:10::/64"),
           "remote": ipaddress.ip_network("fd00:20::/64"),
           "vips": ipaddress.ip_network("fd00:100::/64")}
# third byte of each net's MACs, so a MAC tells its net: 02:00:c6:12:<net>:<host>
_MAC_NET = {"lan": 0x00, "clients": 0x10, "remote": 0x20}
DEFAULT_VIPS_V4 = ("198.18.100.1", "198.18.100.2", "198.18.100.3")
DEFAULT_VIPS_V6 = ("fd00:100::1", "fd00:100::2", "fd00:100::3")
ROUTER_AS, HOST_AS = 65000, 65001   # fleet labs: the router and every lbd host
# interfaces of the router, by net
ROUTER_IFACES = {"clients": "cli0", "lan": "lan0", "remote": "rem0"}
BRIDGES = {"clients": "brcli", "lan": "brlan", "remote": "brrem"}


def v4_host(net: str, host: int) -> IPv4:
    return NETS_V4[net].network_address + host


def v6_host(net: str, host: int) -> IPv6:
    """The IPv6 twin of v4_host: host 11 becomes ::11 (the digits read as hex)."""
    return NETS_V6[net].network_address + int(str(host), 16)


def mac_of(net: str, host: int, bridge_side: bool = False) -> str:
    return f"02:{int(bridge_side):02x}:c6:12:{_MAC_NET[net]:02x}:{host:02x}"


@dataclass(frozen=True)
class Node:
    """One host of the lab, as seen on its network."""
    name: str                     # short name: "lbd", "router", "b1", "r2", "client"
    ns: str                       # full namespace name
    ifname: str                   # its interface on that network
    v4s: tuple[IPv4, ...]         # first one is the host's main address
    v6s: tuple[IPv6, ...]
    mac: str
    net: str                      # "lan", "remote" or "clients"
    mode: str = ""                # backends: "dsr" (on the LAN) or "ipip" (remote)

    @property
    def v4(self) -> IPv4:
        return self.v4s[0]

    @property
    def v6(self) -> IPv6:
        return self.v6s[0]


def url(address, path: str = "/", port: int = HTTP_PORT) -> str:
    """http://ADDR[:PORT]/path with IPv6 addresses bracketed."""
    address = ipaddress.ip_address(str(address))
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}{'' if port == 80 else f':{port}'}{path}"


def _port_name(node: Node) -> str:
    return f"p-{node.name}"


def _bridge_mac(node: Node) -> str:
    return node.mac.replace("02:00:", "02:01:", 1)


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"no interface {ifname}")
    return found[0]


def _add_addr(ipr, index: int, address, prefixlen: int) -> None:
    ipr.addr("add", index=index, address=str(address), prefixlen=prefixlen,
             flags=IFA_F_NODAD if address.version == 6 else 0)
