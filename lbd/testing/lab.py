"""A network-namespace lab with real clients, a router, the lbd host and backends.

The test lab, not the product: lbd.testing is left out of the installed
package. The lab is split by job: netns (namespaces and processes),
topology (nets, addresses, nodes), traffic (client probes), servers
(nginx, UDP echo, lbd-backend), fleet (BIRD); this module builds and tears
down the whole and runs things in it.

Used by the netns test tier, `make demo` and the benchmarks. Everything lives
in namespaces named `<base><pid>-<n>-<node>` (e.g. `lbdt4242-0-router`), so
nothing touches the host's network, and a lab left behind by a killed run is
removed by the next one that starts with the same base.

    client ──cli0─ router ─lan0──[ LAN bridge ]── lbd (eth0)      198.18.0.2
    198.18.10.0/24   │             │  │  │                         fd00:0:0:1::2
    fd00:10::/64     │             b1 b2 b3  DSR backends         .11-.13
                     rem0─[ remote bridge ]── r1 r2 r3  ipip      198.18.20.11-13
                                                                   fd00:20::11-13
The router forwards between the client net, the LAN (198.18.0.0/24,
fd00:0:0:1::/64) and the remote net (198.18.20.0/24, fd00:20::/64), and
routes the VIP ranges (198.18.100.0/24, fd00:100::/64) to the lbd host.

A fleet lab (`Lab(lbd_hosts=2, bgp=True)`) has a second lbd host, lbd2 on
198.18.0.3 / fd00:0:0:1::3, and no static VIP route: the router runs BIRD
(AS 65000) with a session to each host (AS 65001, addresses v4 and v6),
installs what they announce as ECMP routes and hashes flows over them by
the 5-tuple in their headers (fib_multipath_hash_policy=3, fields 0x37), so
a flow keeps its host, and `ecmp_hosts` predicts which host an IPv4 flow crosses. Each host runs lbd and its own
BIRD (`start_bird`) with the config lbd renders. The
bridges live in a `switch` namespace. Every backend runs nginx on port 80
(body: its name; /healthz: 200; /whoami: name and client address) and
lbd.testing.udp_echo on 5300, and was prepared by `lbd-backend prepare`.

Native XDP on veth (docs/background.md): the lab attaches the lbd_pass helper to the
bridge-side peer of lbd's eth0 and of each ipip backend's eth0, and turns TX
checksum offload off on every veth, so a native XDP_TX from lbd and the
native decap program on r1..r3 deliver. `Lab.xdp_modes` says which mode
each program runs in. The lbd host knows its router's MAC from the start (a
permanent neighbour entry), since bpf_fib_lookup() cannot resolve one.
MACs are fixed: 02:00:c6:12:<net>:<host> (net 00 LAN, 10 clients, 20 remote).

    with Lab(vips_v4=["198.18.100.1"], vips_v6=["fd00:100::1"]) as lab:
        lab.run("lbd", ["ip", "addr"])                  # CompletedProcess
        daemon = lab.spawn("lbd", ["lbd", "run", ...], host_mounts=True)
        lab.attach_xdp("lbd", "eth0", prog_fd)          # native; returns the mode
        reply = lab.http_get(lab.url(lab.vips_v4[0]), source=lab.client.v4s[7])
        replies = lab.http_get_many(lab.url(vip, "/whoami"), lab.client.v4s)
        lab.udp_echo(vip, "hi")                         # "b2 hi" or None
        lab.stop_server("b2"); lab.start_server("b2")   # "http", "udp" or both

`python -m lbd.testing.lab up` builds one and keeps it until Ctrl-C; `python -m
lbd.testing.lab clean` removes what dead runs left.

Length (over 450 lines, on purpose): building the lab (namespaces,
sysctls before links, wiring, checksum offloads) and tearing it down are
one ordered sequence over the same state; its other jobs are the mixins
named above.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import ipaddress
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from lbd.dataplane import xdplink
from lbd.testing.fleet import Fleet
from lbd.testing.netns import BASE_PREFIX, BPFFS, NETNS_DIR, remove_netns, remove_stale, stop_groups
from lbd.testing.servers import Servers, _Server
from lbd.testing.topology import (BRIDGES, DEFAULT_VIPS_V4, DEFAULT_VIPS_V6, NETS_V4, NETS_V6,
                                  ROUTER_IFACES, Node, _add_addr, _bridge_mac, _index, _port_name,
                                  mac_of, v4_host, v6_host)
from lbd.testing.traffic import Traffic

log = logging.getLogger("lbd.testing")


@functools.cache
def pass_program():
    """lbd_pass, compiled once per process and attached wherever a lab needs it."""
    from lbd.dataplane.maps import load_helper

    return load_helper("lbd_pass")


_sequence = iter(range(1 << 30))


class Lab(Traffic, Servers, Fleet):
    """The namespace lab. Build with `with Lab(...) as lab:` or `Lab(...).start()`.

    Attributes once started: `lbd`, `router` (its LAN side), `backends` (name
    -> Node, b* dsr then r* ipip), `dsr_backends`, `ipip_backends`, `clients`,
    `client` (the first), `vips_v4`, `vips_v6`, `router_addresses` (net ->
    (v4, v6)), `xdp_modes` ("ns-short/ifname" -> "native"/"generic"), `tmpdir`,
    `bpffs_dir` (a directory of the host's bpffs that close() removes, for
    pins of programs run with host_mounts=True; None without a host bpffs),
    `build_seconds`.
    """

    def __init__(self, vips_v4=DEFAULT_VIPS_V4, vips_v6=DEFAULT_VIPS_V6, *,
                 dsr_backends: int = 3, ipip_backends: int = 3, clients: int = 1,
                 addresses_per_client: int = 59, servers: bool = True, mtu: int = 1500,
                 base: str = BASE_PREFIX, lbd_hosts: int = 1, bgp: bool = False):
        """VIPs go on every backend's loopback; `servers=False` starts no nginx
        or UDP echo; `mtu` is that of every lab link; `base` starts every
        namespace name (labs of other bases are never touched); `lbd_hosts`
        (1 or 2) lbd hosts on the LAN; `bgp`: the router learns the VIPs over
        BGP (BIRD) instead of a static route."""
        if lbd_hosts not in (1, 2):
            raise ValueError(f"lbd_hosts must be 1 or 2, got {lbd_hosts}")
        self._n_lbd, self.bgp = lbd_hosts, bgp
        self.vips_v4 = [ipaddress.IPv4Address(v) for v in vips_v4]
        self.vips_v6 = [ipaddress.IPv6Address(v) for v in vips_v6]
        for vip in (*self.vips_v4, *self.vips_v6):
            if vip not in NETS_V4["vips"] and vip not in NETS_V6["vips"]:
                raise ValueError(f"VIP {vip} is outside the lab's VIP ranges "
                                 f"{NETS_V4['vips']} and {NETS_V6['vips']}")
        if clients * addresses_per_client > 250:
            raise ValueError(f"{clients} clients x {addresses_per_client} addresses do not "
                             f"fit in {NETS_V4['clients']}")
        if dsr_backends > 9 or ipip_backends > 9:
            raise ValueError("at most 9 backends of each kind (addresses .11-.19)")
        self.base = base
        self.prefix = f"{base}{os.getpid()}-{next(_sequence)}-"
        self._n_dsr, self._n_ipip, self._n_clients = dsr_backends, ipip_backends, clients
        self._per_client = addresses_per_client
        self._with_servers = servers
        self.mtu = mtu
        self.tmpdir = ""
        self.bpffs_dir: str | None = None
        self.xdp_modes: dict[str, str] = {}
        self.build_seconds = 0.0
        self._namespaces: list[str] = []
        self._ipr: dict[str, object] = {}
        self._procs: list[subprocess.Popen] = []
        self._servers: dict[tuple[str, str], _Server] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._started = time.monotonic()
        self._plan()

    # --- naming and addressing -------------------------------------------------
    def ns(self, name: str | Node) -> str:
        """The full namespace name of a node ("b1" -> "lbdt4242-0-b1")."""
        if isinstance(name, Node):
            return name.ns
        return name if name.startswith(self.prefix) else self.prefix + name

    def _plan(self) -> None:
        p = self.prefix
        self.lbd_hosts = [Node(name, p + name, "eth0", (v4_host("lan", host),), (v6_host("lan", host),),
                               mac_of("lan", host), "lan")
                          for name, host in (("lbd", 2), ("lbd2", 3))[:self._n_lbd]]
        self.lbd = self.lbd_hosts[0]
        self.router = Node("router", p + "router", ROUTER_IFACES["lan"], (v4_host("lan", 1),),
                           (v6_host("lan", 1),), mac_of("lan", 1), "lan")
        self.router_addresses = {net: (v4_host(net, 1), v6_host(net, 1)) for net in NETS_V4
                                 if net != "vips"}
        self.dsr_backends = [Node(f"b{i}", f"{p}b{i}", "eth0", (v4_host("lan", 10 + i),),
                                  (v6_host("lan", 10 + i),), mac_of("lan", 10 + i), "lan", "dsr")
                             for i in range(1, self._n_dsr + 1)]
        self.ipip_backends = [Node(f"r{i}", f"{p}r{i}", "eth0", (v4_host("remote", 10 + i),),
                                   (v6_host("remote", 10 + i),), mac_of("remote", 10 + i),
                                   "remote", "ipip")
                              for i in range(1, self._n_ipip + 1)]
        self.backends = {b.name: b for b in (*self.dsr_backends, *self.ipip_backends)}
        self.clients = []
        for k in range(self._n_clients):
            hosts = range(2 + k * self._per_client, 2 + (k + 1) * self._per_client)
            name = "client" if k == 0 else f"client{k + 1}"
            self.clients.append(Node(name, p + name, "eth0",
                                     tuple(v4_host("clients", h) for h in hosts),
                                     tuple(v6_host("clients", h) for h in hosts),
                                     mac_of("clients", hosts[0]), "clients"))
        self.client = self.clients[0]
        self.nodes = {n.name: n for n in (*self.lbd_hosts, self.router, *self.backends.values(),
                                          *self.clients)}
        self.switch_ns = p + "switch"

    def node(self, name: str | Node) -> Node:
        if isinstance(name, Node):
            return name
        return self.nodes[name.removeprefix(self.prefix)]

    # --- running things in namespaces -----------------------------------------
    def _argv(self, ns: str | Node, argv, host_mounts: bool) -> list[str]:
        full = self.ns(ns)
        if host_mounts:
            # nsenter joins only the network namespace: the process keeps the
            # host's mounts, bpffs included, so pins outlive it and are shared
            return ["nsenter", f"--net={NETNS_DIR}/{full}", "--", *map(str, argv)]
        return ["ip", "netns", "exec", full, *map(str, argv)]

    def run(self, ns: str | Node, argv, *, check: bool = False, timeout: float = 60,
            host_mounts: bool = False, **kw) -> subprocess.CompletedProcess:
        """Run a command in a namespace and wait for it (text output captured).

        `ip netns exec` gives the command its own mount namespace with /sys
        remounted for the netns; a bpffs is not mounted there. With
        host_mounts=True the command keeps the host's mounts instead.
        """
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        return subprocess.run(self._argv(ns, argv, host_mounts), check=check,
                              timeout=timeout, **kw)

    def spawn(self, ns: str | Node, argv, *, host_mounts: bool = False,
              **kw) -> subprocess.Popen:
        """Start a long-running process in a namespace; close() ends it.

        Output goes to a log file in the lab's tmpdir unless stdout/stderr are
        given; its path is the returned Popen's `log_path`. The process gets its
        own process group, so stopping it also stops its children.
        """
        log_path = None
        if "stdout" not in kw and "stderr" not in kw:
            short = self.ns(ns).removeprefix(self.prefix)
            log_path = os.path.join(self.tmpdir, f"{short}-{os.path.basename(str(argv[0]))}"
                                                 f"-{len(self._procs)}.log")
            out = open(log_path, "ab")
            kw["stdout"], kw["stderr"] = out, subprocess.STDOUT
        kw.setdefault("stdin", subprocess.DEVNULL)
        try:
            proc = subprocess.Popen(self._argv(ns, argv, host_mounts), start_new_session=True,
                                    **kw)
        finally:
            if log_path:
                out.close()
        proc.log_path = log_path
        with self._lock:
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen, timeout: float = 5.0) -> int | None:
        """SIGTERM a spawned process group, SIGKILL it after timeout; returns its code."""
        stop_groups([proc], timeout=timeout)
        return proc.returncode

    # --- XDP --------------------------------------------------------------------
    def attach_xdp(self, ns: str | Node, ifname: str, fd: int) -> str:
        """Attach a loaded XDP program (its fd) in native mode to a link in a
        namespace (lbd.dataplane.xdplink: one load serves every namespace). Returns the
        mode read back."""
        mode = xdplink.attach(fd, ifname, "native", ipr=self._ipr_for(self.ns(ns)))
        short = self.ns(ns).removeprefix(self.prefix)
        self.xdp_modes[f"{short}/{ifname}"] = mode
        log.info("lab_xdp namespace=%s interface=%s mode=%s", short, ifname, mode)
        return mode

    def detach_xdp(self, ns: str | Node, ifname: str) -> None:
        """Remove the XDP program of a link in a namespace, whichever mode it runs in."""
        xdplink.detach(ifname, ipr=self._ipr_for(self.ns(ns)))
        self.xdp_modes.pop(f"{self.ns(ns).removeprefix(self.prefix)}/{ifname}", None)

    def read_xdp_mode(self, ns: str | Node, ifname: str) -> str | None:
        return xdplink.mode(ifname, ipr=self._ipr_for(self.ns(ns)))

    # --- build ----------------------------------------------------------------
    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> Lab:
        """Build everything; on any failure (or Ctrl-C) tear down what was built."""
        self._started = time.monotonic()
        atexit.register(self.close)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self.build_seconds = time.monotonic() - self._started
        log.info("lab_ready prefix=%s seconds=%.2f xdp=%s", self.prefix, self.build_seconds,
                 self.xdp_modes)
        return self

    def _ipr_for(self, ns: str):
        from pyroute2 import IPRoute

        if ns not in self._ipr:
            self._ipr[ns] = IPRoute(netns=ns)
        return self._ipr[ns]

    def _build(self) -> None:
        from pyroute2 import netns

        from lbd.dataplane.mounts import on_bpffs

        remove_stale(self.base)
        self.tmpdir = tempfile.mkdtemp(prefix=self.prefix)
        if on_bpffs(BPFFS):
            self.bpffs_dir = os.path.join(BPFFS, self.prefix.rstrip("-"))
            os.makedirs(self.bpffs_dir)
        # compiling lbd_pass (~2 s) overlaps the namespace work; bcc releases the GIL
        compiled: dict = {}
        compiler = threading.Thread(target=_compile_into, args=(compiled,), daemon=True)
        compiler.start()

        names = [self.switch_ns, *(n.ns for n in self.nodes.values())]
        for name in names:
            netns.create(name)
            self._namespaces.append(name)
        self._mark("namespaces")
        self._sysctls_before_links()
        self._wire()
        self._mark("wired")
        # backends can be prepared (they compile decap.c) while the rest goes on
        prepares = self._start_prepares()
        self._checksum_offload_off()
        self._mark("offloads off")
        compiler.join(timeout=120)
        self._mark("lbd_pass compiled")
        if "error" in compiled or "program" not in compiled:
            raise RuntimeError(f"compiling lbd_pass failed: {compiled.get('error', 'timeout')}")
        _bpf, function = compiled["program"]
        for node in (*self.lbd_hosts, *self.ipip_backends):
            mode = self.attach_xdp(self.switch_ns, _port_name(node), function.fd)
            if mode != "native":
                raise RuntimeError(f"lbd_pass on {_port_name(node)} runs in {mode} mode, "
                                   f"not native")
        self._finish_prepares(prepares)
        self._mark("backends prepared")
        for backend in self.ipip_backends:
            self.xdp_modes[f"{backend.name}/{backend.ifname}"] = \
                self.read_xdp_mode(backend, backend.ifname)
        if self.bgp:
            self.start_router_bgp()
        if self._with_servers:
            for backend in self.backends.values():
                self.start_server(backend, wait=False)
            for backend in self.backends.values():
                for service in ("http", "udp"):
                    self._wait_listening(backend, service)

    def _mark(self, phase: str) -> None:
        log.debug("lab_build prefix=%s phase=%s at=%.2fs", self.prefix, phase,
                  time.monotonic() - self._started)

    def _sysctls_before_links(self) -> None:
        # Before any link exists, so every new interface inherits "default":
        # no DAD (addresses usable at once), no rp_filter surprises; the switch
        # only bridges, without IPv6 chatter of its own.
        common = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0",
                  "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.default.rp_filter=0"]
        extra = {self.switch_ns: ["net.ipv6.conf.all.disable_ipv6=1",
                                  "net.ipv6.conf.default.disable_ipv6=1"],
                 self.router.ns: ["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1",
                                  # ECMP by the 5-tuple in the headers, as routers in front of
                                  # a fleet hash. Not policy 1: in a namespace it hashes a
                                  # random value the client's socket leaves on the packet, so
                                  # neither `ip route get` nor a retransmission follows it.
                                  # 0x37: addresses, protocol, ports (no flow label).
                                  "net.ipv4.fib_multipath_hash_policy=3",
                                  "net.ipv4.fib_multipath_hash_fields=0x37",
                                  "net.ipv6.fib_multipath_hash_policy=3",
                                  "net.ipv6.fib_multipath_hash_fields=0x37"]}
        self._parallel({ns: ["sysctl", "-q", "-w", *common, *extra.get(ns, [])]
                        for ns in self._namespaces})

    def _checksum_offload_off(self) -> None:
        # docs/background.md: TCP from a veth with TX checksum offload leaves with a
        # partial checksum that native XDP drops; off on every veth, both ends.
        per_ns: dict[str, list[str]] = {self.switch_ns: []}
        for node in self.nodes.values():
            if node is self.router:
                continue
            per_ns.setdefault(node.ns, []).append(node.ifname)
            per_ns[self.switch_ns].append(_port_name(node))
        per_ns[self.router.ns] = list(ROUTER_IFACES.values())
        per_ns[self.switch_ns] += [f"p-{iface}" for iface in ROUTER_IFACES.values()]
        script = {ns: ["sh", "-ec", "; ".join(f"ethtool -K {dev} tx off >/dev/null"
                                              for dev in devs)]
                  for ns, devs in per_ns.items()}
        self._parallel(script)

    def _parallel(self, commands: dict[str, list[str]], timeout: float = 30) -> None:
        procs = {ns: subprocess.Popen(self._argv(ns, argv, False), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True)
                 for ns, argv in commands.items()}
        failed = []
        for ns, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            if proc.returncode != 0:
                failed.append(f"{ns}: {' '.join(proc.args[4:])}: {out.strip()}")
        if failed:
            raise RuntimeError("lab setup command failed: " + " | ".join(failed))

    def _wire(self) -> None:
        sw = self._ipr_for(self.switch_ns)
        for net, bridge in BRIDGES.items():
            sw.link("add", ifname=bridge, kind="bridge")
            sw.link("set", index=_index(sw, bridge), state="up", mtu=self.mtu)
        sw.link("set", index=_index(sw, "lo"), state="up")

        # the router: one interface per net
        r = self._ipr_for(self.router.ns)
        for net, iface in ROUTER_IFACES.items():
            self._veth(self.router.ns, iface, mac_of(net, 1), f"p-{iface}", mac_of(net, 1, True),
                       BRIDGES[net])
            index = _index(r, iface)
            _add_addr(r, index, v4_host(net, 1), NETS_V4[net].prefixlen)
            _add_addr(r, index, v6_host(net, 1), NETS_V6[net].prefixlen)
        if not self.bgp:
            r.route("add", dst=str(NETS_V4["vips"]), gateway=str(self.lbd.v4))
            r.route("add", dst=str(NETS_V6["vips"]), gateway=str(self.lbd.v6))

        for node in self.nodes.values():
            if node is self.router:
                continue
            self._veth(node.ns, node.ifname, node.mac, _port_name(node), _bridge_mac(node),
                       BRIDGES[node.net])
            ipr = self._ipr_for(node.ns)
            index = _index(ipr, node.ifname)
            for address in node.v4s:
                _add_addr(ipr, index, address, NETS_V4[node.net].prefixlen)
            for address in node.v6s:
                _add_addr(ipr, index, address, NETS_V6[node.net].prefixlen)
            gw4, gw6 = self.router_addresses[node.net]
            ipr.route("add", dst="0.0.0.0/0", gateway=str(gw4))
            ipr.route("add", dst="::/0", gateway=str(gw6), family=10)
        # XDP cannot start neighbour resolution, and bpf_fib_lookup() answers
        # "no neighbour" until the kernel has resolved the next hop: give the
        # lbd host its router's MAC up front, as a busy host would have it.
        for host in self.lbd_hosts:
            ipr = self._ipr_for(host.ns)
            eth = _index(ipr, host.ifname)
            for address, family in ((self.router.v4, 2), (self.router.v6, 10)):
                ipr.neigh("add", dst=str(address), lladdr=self.router.mac, ifindex=eth,
                          state=0x80, family=family)   # NUD_PERMANENT

    def _veth(self, ns: str, ifname: str, mac: str, port: str, port_mac: str,
              bridge: str) -> None:
        """A veth from a node (ns/ifname) to a port of a bridge in the switch namespace."""
        ipr = self._ipr_for(ns)
        ipr.link("add", ifname=ifname, kind="veth", address=mac, mtu=self.mtu,
                 peer={"ifname": port, "address": port_mac, "mtu": self.mtu,
                       "net_ns_fd": self.switch_ns})
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        ipr.link("set", index=_index(ipr, ifname), state="up")
        sw = self._ipr_for(self.switch_ns)
        sw.link("set", index=_index(sw, port), master=_index(sw, bridge), state="up")

    # --- teardown ---------------------------------------------------------------
    def close(self) -> None:
        """Stop every process, remove every namespace (and so every link). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            procs = list(self._procs)
        atexit.unregister(self.close)
        stop_groups(procs, timeout=3)
        for ipr in self._ipr.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._ipr.clear()
        for name in reversed(self._namespaces):
            remove_netns(name)
        self._namespaces.clear()
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
        if self.bpffs_dir:
            shutil.rmtree(self.bpffs_dir, ignore_errors=True)
        log.info("lab_closed prefix=%s", self.prefix)


def _compile_into(out: dict) -> None:
    try:
        out["program"] = pass_program()
    except BaseException as err:  # reported by the builder thread
        out["error"] = err


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lbd.testing.lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a lab, print it, keep it until Ctrl-C")
    up.add_argument("--vip", action="append", default=[], help="VIP (repeatable)")
    clean = sub.add_parser("clean", help="remove lab namespaces of dead runs")
    clean.add_argument("--base", default=BASE_PREFIX)
    clean.add_argument("--all", action="store_true", help="also those of live runs")
    args = parser.parse_args(argv)

    if args.command == "clean":
        for name in remove_stale(args.base, everything=args.all):
            print(f"removed {name}")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    vips = [ipaddress.ip_address(v) for v in args.vip]
    v4 = [v for v in vips if v.version == 4] or list(DEFAULT_VIPS_V4)
    v6 = [v for v in vips if v.version == 6] or list(DEFAULT_VIPS_V6)
    with Lab(v4, v6) as lab:
        print(f"lab {lab.prefix} built in {lab.build_seconds:.1f}s; xdp: {lab.xdp_modes}")
        for node in lab.nodes.values():
            print(f"  {node.name:8} {node.ns:24} {node.ifname} {node.v4} {node.v6} {node.mac}")
        print("Ctrl-C removes it.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
