"""Health checks through the data path: the lbd host's side (docs/operating.md "Health checks").

A check of a VIP's backend connects to the VIP's address and the check's
port from a socket marked (SO_MARK) with the check's own mark. Three things
on the lbd host then deliver it exactly as the balancer delivers a client's
packet placed on that backend:

* policy routing: an `ip rule` for the mark range sends marked packets to a
  table of lbd's own (HEALTH_TABLE) with a route per VIP address out of the
  checks' interface, and a static neighbour entry per VIP address there, so
  the kernel neither sends them to its default route nor asks ARP/ND for a
  VIP (whose MAC no one should answer for);
* the TC egress program xdp/healthpath.c on that interface, which looks the
  mark up (a copy of the backend's entry as the balancer has it) and
  rewrites the MACs (dsr) or encapsulates with the balancer's own encap.h
  (ipip, GUE on a second-chance VIP), then lets the packet out;
* `MarkBook`, which gives each (VIP, backend) check a stable mark.

Only packets with a mark of the range are touched: forwarding and the host's
own traffic pass as before. The backend answers from the VIP to this host's
address, which is no VIP, so lbd's XDP program passes the answer up to the
checker's socket.

Limits: one interface carries every check (the first configured one; a dsr
backend on another interface is reached by a redirect); the lbd host must
not hold a VIP address itself (the local table comes before any rule).
`HealthPath.close()` removes the filter, the rules, the routes and the
neighbour entries; `remove_leftovers()` does the same for what a killed
daemon left behind.
"""
from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import logging
from collections.abc import Hashable, Iterable, Mapping

from lbd.dataplane import layout
from lbd.dataplane.maps import settings_leaf

log = logging.getLogger("lbd.dataplane.healthpath")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
C = layout.constant

MARK_BASE = C("LBD_HEALTH_MARK_BASE")
MARK_MASK = C("LBD_HEALTH_MARK_MASK")
MAX_PATHS = C("LBD_HEALTH_MAX_PATHS")
# The routing table and rule priority of the checks: "lb" (0x6c62), above the
# main table's rule (32766) so that a marked packet never takes the default
# route, below 100 so that site rules at the usual low numbers stay first.
HEALTH_TABLE = 0x6C62
RULE_PRIORITY = 1000
# The neighbour entry a VIP gets on the checks' interface: the program
# rewrites every marked packet's MACs, so this address is only where an
# unrewritten one (a bug) would go: nowhere.
PLACEHOLDER_MAC = "00:00:00:00:00:00"
FILTER_PRIO = 0x6C62  # the egress filter's priority, ours to find and remove
EGRESS_PARENT = "ffff:fff3"  # clsact's egress hook
NUD_PERMANENT = 0x80
LINK_SCOPE = 253  # RT_SCOPE_LINK: the VIP is "on" the interface, no gateway
SLOTS = layout.enum_names("LBD_HPATH_")


class MarkBook:
    """A stable SO_MARK per check key: a key keeps its mark while it is
    checked (reloads included); a freed mark goes to the next new key."""

    def __init__(self) -> None:
        self._marks: dict[Hashable, int] = {}

    def assign(self, keys: Iterable[Hashable], commit: bool = True) -> dict[Hashable, int]:
        """Marks for exactly `keys` (others are freed); raises past MAX_PATHS.
        commit=False answers what assign would, changing nothing (a preview)."""
        keys = list(keys)
        wanted = set(keys)
        marks = {k: m for k, m in self._marks.items() if k in wanted}
        used = set(marks.values())
        free = (MARK_BASE | n for n in range(1, MAX_PATHS + 1) if MARK_BASE | n not in used)
        for key in keys:
            if key not in marks:
                mark = next(free, None)
                if mark is None:
                    raise ValueError(f"more than {MAX_PATHS} checks through the data path")
                marks[key] = mark
        if commit:
            self._marks = marks
        return dict(marks)

    def get(self, key: Hashable) -> int | None:
        return self._marks.get(key)


class HealthPath:
    """The TC egress program and the routing that brings checks to it.

    `load()` compiles and loads the program (bcc); without it the object
    only knows the netlink side, which is what `remove_leftovers` needs."""

    def __init__(self, ifname: str, netns: str | None = None) -> None:
        self.ifname = ifname
        self._netns = netns
        self.bpf = self.function = self.paths = self.settings = self.stats = None
        self._addresses: set[IPAddress] = set()
        self._made_clsact = False
        self._ipr = None

    def load(self) -> HealthPath:
        from bcc import BPF  # imported here so unit tests never need bcc

        self.bpf = BPF(src_file=str(layout.XDP_DIR / "healthpath.c").encode(),
                       cflags=[f"-I{layout.XDP_DIR}", "-Wno-unused-function"])
        self.function = self.bpf.load_func(b"lbd_health_egress", BPF.SCHED_CLS)
        self.paths = self.bpf[b"health_paths"]
        self.settings = self.bpf[b"health_settings"]
        self.stats = self.bpf[b"health_stats"]
        return self

    # --- netlink --------------------------------------------------------------
    def _netlink(self):
        if self._ipr is None:
            from pyroute2 import IPRoute

            self._ipr = IPRoute(netns=self._netns) if self._netns else IPRoute()
        return self._ipr

    def _index(self) -> int:
        found = self._netlink().link_lookup(ifname=self.ifname)
        if not found:
            raise RuntimeError(f"no interface {self.ifname!r} for health checks")
        return found[0]

    def attach(self) -> None:
        """The egress filter on the interface (replacing ours if there), and
        the mark rules of both families."""
        ipr, index = self._netlink(), self._index()
        kinds = [q.get_attr("TCA_KIND") for q in ipr.get_qdiscs(index)]
        if "clsact" not in kinds:
            ipr.tc("add", "clsact", index)
            self._made_clsact = True
        self._remove_filter(index)
        self._clear_leftovers(index)
        ipr.tc("add-filter", "bpf", index, ":1", fd=self.function.fd, name="lbd_health_egress",
               parent=EGRESS_PARENT, classid=1, direct_action=True, prio=FILTER_PRIO)
        for family in (2, 10):
            self._remove_rule(family)
            ipr.rule("add", family=family, fwmark=MARK_BASE, fwmask=MARK_MASK, table=HEALTH_TABLE,
                     priority=RULE_PRIORITY)
        log.info("health_path_attached interface=%s table=%d mark=%#x/%#x", self.ifname, HEALTH_TABLE,
                 MARK_BASE, MARK_MASK)

    def _remove_filter(self, index: int) -> None:
        ipr = self._netlink()
        with contextlib.suppress(Exception):
            for f in ipr.get_filters(index, parent=0xFFFFFFF3):
                if f["info"] >> 16 == FILTER_PRIO and f.get_attr("TCA_KIND") == "bpf":
                    ipr.tc("del-filter", "bpf", index, ":1", parent=EGRESS_PARENT, prio=FILTER_PRIO)
                    break

    def _remove_rule(self, family: int) -> None:
        ipr = self._netlink()
        for rule in ipr.get_rules(family=family):
            if rule.get_attr("FRA_TABLE") == HEALTH_TABLE:
                with contextlib.suppress(Exception):
                    ipr.rule("del", family=family, priority=rule.get_attr("FRA_PRIORITY"),
                             table=HEALTH_TABLE, fwmark=rule.get_attr("FRA_FWMARK"),
                             fwmask=rule.get_attr("FRA_FWMASK"))

    def _clear_leftovers(self, index: int) -> None:
        """What a daemon killed before close() left: routes in our table and
        placeholder neighbour entries on the interface."""
        ipr = self._netlink()
        for family in (2, 10):
            for route in ipr.get_routes(family=family, table=HEALTH_TABLE):
                if route.get_attr("RTA_TABLE") == HEALTH_TABLE:
                    with contextlib.suppress(Exception):
                        ipr.route("del", family=family, table=HEALTH_TABLE, dst=route.get_attr("RTA_DST"),
                                  dst_len=route["dst_len"], oif=route.get_attr("RTA_OIF"),
                                  scope=route["scope"])
            for neigh in ipr.get_neighbours(family=family, ifindex=index):
                if neigh.get_attr("NDA_LLADDR") == PLACEHOLDER_MAC and neigh["state"] & NUD_PERMANENT:
                    with contextlib.suppress(Exception):
                        ipr.neigh("del", dst=neigh.get_attr("NDA_DST"), ifindex=index, family=family)

    def set_addresses(self, addresses: Iterable[IPAddress]) -> None:
        """Route and neighbour entries for exactly these VIP addresses."""
        ipr, index = self._netlink(), self._index()
        wanted = {ipaddress.ip_address(a) for a in addresses}
        for address in wanted - self._addresses:
            family, plen = (2, 32) if address.version == 4 else (10, 128)
            ipr.route("replace", dst=f"{address}/{plen}", oif=index, table=HEALTH_TABLE, family=family,
                      scope=LINK_SCOPE if family == 2 else 0)
            ipr.neigh("replace", dst=str(address), lladdr=PLACEHOLDER_MAC, ifindex=index,
                      state=NUD_PERMANENT, family=family)
        for address in self._addresses - wanted:
            self._remove_address(index, address)
        self._addresses = wanted

    def _remove_address(self, index: int, address: IPAddress) -> None:
        ipr = self._netlink()
        family, plen = (2, 32) if address.version == 4 else (10, 128)
        with contextlib.suppress(Exception):
            # an IPv4 route is found for deletion only with the scope it was made with
            ipr.route("del", dst=f"{address}/{plen}", oif=index, table=HEALTH_TABLE, family=family,
                      scope=LINK_SCOPE if family == 2 else 0)
        with contextlib.suppress(Exception):
            ipr.neigh("del", dst=str(address), ifindex=index, family=family)

    # --- maps -------------------------------------------------------------------
    def set_sources(self, v4: ipaddress.IPv4Address | None, v6: ipaddress.IPv6Address | None) -> None:
        """The ipip outer sources (the balancer's settings)."""
        self.settings[ctypes.c_uint32(0)] = settings_leaf(self.settings.Leaf, v4, v6)

    def set_paths(self, entries: Mapping[int, bytes]) -> None:
        """Make the mark -> backend entry map exactly `entries` (struct
        lbd_backend bytes, as the balancer's backends map holds them:
        bytes(datapath.backend(id)), or bytes(backend_leaf(...)))."""
        current = {k.value for k in self.paths.keys()}
        for mark, raw in entries.items():
            key = ctypes.c_uint32(mark)
            leaf = self.paths.Leaf.from_buffer_copy(bytes(raw))
            existing = self.paths.get(key)
            if existing is None or bytes(existing) != bytes(leaf):
                self.paths[key] = leaf
        for mark in current - entries.keys():
            with contextlib.suppress(KeyError):
                del self.paths[ctypes.c_uint32(mark)]

    def counters(self) -> dict[str, int]:
        """What the program did with marked packets, by enum lbd_health_slot name."""
        out = {}
        for slot, name in SLOTS.items():
            out[name] = sum(self.stats[ctypes.c_uint32(slot)])
        return out

    # --- teardown ---------------------------------------------------------------
    def close(self) -> None:
        """Remove the filter (and the clsact qdisc if we made it and it is
        empty), the rules, and every route and neighbour entry we added
        (or, on an object that never attached, that a killed daemon left)."""
        try:
            ipr, index = self._netlink(), self._index()
        except Exception:  # the interface is gone, and with it its filter and neighbours
            index = None
        if index is not None:
            self._remove_filter(index)
            for address in self._addresses:
                self._remove_address(index, address)
            self._clear_leftovers(index)
            if self._made_clsact:
                with contextlib.suppress(Exception):
                    if not ipr.get_filters(index, parent=0xFFFFFFF3) and \
                            not ipr.get_filters(index, parent=0xFFFFFFF2):
                        ipr.tc("del", "clsact", index)
        self._addresses = set()
        with contextlib.suppress(Exception):
            for family in (2, 10):
                self._remove_rule(family)
        if self._ipr is not None:
            with contextlib.suppress(Exception):
                self._ipr.close()
            self._ipr = None
        log.info("health_path_removed interface=%s", self.ifname)


def remove_leftovers(ifname: str, netns: str | None = None) -> None:
    """Remove the checks' filter, rules, routes and neighbour entries from
    `ifname` (lbd --teardown; a daemon killed before it could)."""
    HealthPath(ifname, netns).close()
