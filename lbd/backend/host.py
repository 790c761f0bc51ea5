"""The backend host's own settings that lbd's packets need (lbd-backend
prepare, check and undo; the reasons are in lbd.backend.cli):

- sysctls: ARP suppressed for the VIPs (arp_ignore, arp_announce), no strict
  reverse-path filter, IPv6 on lo;
- the VIPs on lo (/32, /128), added with their own IFA_PROTO value (76; newer
  iproute2 shows it as `proto 76`), so `undo` removes exactly those and never
  an address an operator added by hand;
- the interface's prefixes (the decap program's default forward list), the
  default route's interface, and the TCP listeners `check --port` looks for.
"""
from __future__ import annotations

import ipaddress
import socket

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from lbd.backend import forwardto

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

LBD_ADDR_PROTO = 76        # IFA_PROTO of addresses we add ('L'); the kernel's own are 0..3


class PrepError(RuntimeError):
    """A problem prepare cannot fix by itself; the message says what to do."""


# --- sysctls -------------------------------------------------------------------
def _sysctl_path(name: str) -> str:
    # sysctl(8) spelling: dots separate, a slash stands for a dot in a name (eth0/100)
    return "/proc/sys/" + "/".join(part.replace("/", ".") for part in name.split("."))


def read_sysctl(name: str) -> int:
    with open(_sysctl_path(name)) as f:
        return int(f.read().split()[0])


def write_sysctl(name: str, value: int) -> None:
    with open(_sysctl_path(name), "w") as f:
        f.write(f"{value}\n")


def conf(family: str, device: str, key: str) -> str:
    # interface names may hold dots, which /proc/sys writes as slashes
    return f"net.{family}.conf.{device.replace('.', '/')}.{key}"


def effective_conf(device: str, key: str) -> int:
    """arp_ignore, arp_announce and rp_filter: the kernel uses max(all, device)."""
    return max(read_sysctl(conf("ipv4", "all", key)), read_sysctl(conf("ipv4", device, key)))


# --- links and XDP -------------------------------------------------------------
def iproute():
    from pyroute2 import IPRoute
    return IPRoute()


def default_interface() -> str:
    """The interface of the IPv4 default route, else of the IPv6 one."""
    with iproute() as ipr:
        for family in (socket.AF_INET, socket.AF_INET6):
            for route in ipr.get_routes(family=family, table=254):
                if route["dst_len"] != 0:
                    continue
                oif = route.get_attr("RTA_OIF")
                if oif is None:
                    multipath = route.get_attr("RTA_MULTIPATH") or []
                    oif = multipath[0]["oif"] if multipath else None
                if oif is not None:
                    return ipr.get_links(oif)[0].get_attr("IFLA_IFNAME")
    raise PrepError("no default route, so no default interface: pass --interface IFACE")


def interface_prefixes(ifname: str) -> list:
    """The networks of the interface's global addresses (IPv4 and IPv6): the
    default forward list (lbd.backend.forwardto)."""
    with iproute() as ipr:
        found = {ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
                 for a in ipr.get_addr(index=link_index(ipr, ifname)) if a["scope"] == 0}
    return forwardto.canonical(found)


def link_index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise PrepError(f"interface {ifname!r} does not exist: pass --interface with one "
                        f"that does (see `ip link`)")
    return found[0]


# --- VIPs on loopback ---------------------------------------------------------
def loopback_addresses() -> dict[IPAddress, int]:
    """Addresses on lo, with their IFA_PROTO (0 when unset)."""
    with iproute() as ipr:
        lo = link_index(ipr, "lo")
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS")): a.get_attr("IFA_PROTO") or 0
                for a in ipr.get_addr(index=lo)}


def lo_up() -> bool:
    with iproute() as ipr:
        return ipr.get_links(link_index(ipr, "lo"))[0]["flags"] & 1 == 1  # IFF_UP


def add_vip(vip: IPAddress) -> None:
    with iproute() as ipr:
        lo = link_index(ipr, "lo")
        ipr.link("set", index=lo, state="up")
        # no duplicate address detection: the VIP lives on many hosts by design
        ipr.addr("add", index=lo, address=str(vip), prefixlen=vip.max_prefixlen,
                 proto=LBD_ADDR_PROTO, flags=IFA_F_NODAD if vip.version == 6 else 0)


def remove_vip(vip: IPAddress) -> None:
    with iproute() as ipr:
        ipr.addr("del", index=link_index(ipr, "lo"), address=str(vip),
                 prefixlen=vip.max_prefixlen)


def tcp_listeners(port: int) -> set[IPAddress]:
    """Local addresses with a TCP socket listening on port (from /proc/net/tcp*)."""
    found: set[IPAddress] = set()
    for path, version in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 6)):
        try:
            lines = open(path).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            local, state = fields[1], fields[3]
            hex_addr, hex_port = local.split(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            raw = bytes.fromhex(hex_addr)
            # the kernel prints each 32-bit word in host (little-endian) order
            packed = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
            found.add(ipaddress.ip_address(packed))
    return found
