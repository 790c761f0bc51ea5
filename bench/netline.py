"""A line of benchmark namespaces (generator/clients -> balancer -> backends),
created together and removed together, also when building fails. Shared by
bench/datapath.py and bench/sharedmem.py; each adds its own links."""
from __future__ import annotations

import os
import subprocess

BASE = "lbdb"
BASE_SYSCTLS = ("net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0",
                "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")


def sh(argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True, **kw)


def nsx(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


class NamespaceLine:
    """Subclasses set ROLES and SYSCTLS and add links in _build()."""
    ROLES: tuple[str, ...] = ()
    SYSCTLS: tuple[str, ...] = ()

    def __init__(self, index: int):
        from lbd.testing.netns import remove_stale

        remove_stale(BASE)  # what killed runs left behind
        self.prefix = f"{BASE}{os.getpid()}-{index}-"
        self.names = {role: self.prefix + role for role in self.ROLES}
        self.created: list[str] = []
        self.ifindex: dict[str, int] = {}

    def __enter__(self):
        try:
            self._add_namespaces()
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        from lbd.testing.netns import remove_netns

        for ns in reversed(self.created):
            remove_netns(ns)
        self.created.clear()

    def _add_namespaces(self) -> None:
        for ns in self.names.values():
            sh(["ip", "netns", "add", ns])
            self.created.append(ns)
            sh(nsx(ns, "sysctl", "-qw", *BASE_SYSCTLS, *self.SYSCTLS))
            sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(nsx(self.names["lb"], "sysctl", "-qw", "net.ipv4.ip_forward=1"))

    def _build(self) -> None:
        raise NotImplementedError

    def _lookup_ifindexes(self, node: str, devs) -> None:
        from pyroute2 import IPRoute

        with IPRoute(netns=self.names[node]) as ipr:
            for dev in devs:
                self.ifindex[dev] = ipr.link_lookup(ifname=dev)[0]

    def attach(self, node: str, dev: str, fd: int) -> str:
        """Attach a program (its fd) in native mode, or detach with fd -1;
        returns the mode the kernel reports ("none" once detached)."""
        from lbd.dataplane import xdplink

        if fd < 0:
            xdplink.detach(dev, netns=self.names[node])
            return xdplink.mode(dev, netns=self.names[node]) or "none"
        return xdplink.attach(fd, dev, "native", netns=self.names[node])
