"""A network-namespace lab with real clients, a router, the lbd host and backends.

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
their 5-tuple (fib_multipath_hash_policy=1). Each host runs lbd and its own
BIRD (`start_bird`) with the config lbd renders. The
bridges live in a `switch` namespace. Every backend runs nginx on port 80
(body: its name; /healthz: 200; /whoami: name and client address) and
lbd.udp_echo on 5300, and was prepared by `lbd-backend prepare`.

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

`python -m lbd.lab up` builds one and keeps it until Ctrl-C; `python -m
lbd.lab clean` removes what dead runs left.
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import functools
import ipaddress
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from pyroute2.netlink.rtnl.ifaddrmsg import IFA_F_NODAD

from lbd import xdplink

log = logging.getLogger("lbd.lab")

IPv4 = ipaddress.IPv4Address
IPv6 = ipaddress.IPv6Address

BASE_PREFIX = "lbdt"
NETNS_DIR = "/run/netns"
BPFFS = "/sys/fs/bpf"
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
_WAIT_STEP = 0.05


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


@dataclass
class _Server:
    argv: list[str]
    proc: subprocess.Popen | None = None


def url(address, path: str = "/", port: int = HTTP_PORT) -> str:
    """http://ADDR[:PORT]/path with IPv6 addresses bracketed."""
    address = ipaddress.ip_address(str(address))
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"http://{host}{'' if port == 80 else f':{port}'}{path}"


# --- namespaces and processes, also used for the cleanup of dead runs --------------
def _netns_inode(ns: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, ns)).st_ino
    except FileNotFoundError:
        return None


def netns_pids(ns: str) -> list[int]:
    """Processes whose network namespace is ns (what `ip netns pids` prints)."""
    inode = _netns_inode(ns)
    pids = []
    if inode is None:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def stop_groups(procs, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Signal every process group (each spawned with start_new_session), wait
    up to `timeout` in all for them to end, then SIGKILL each group, which
    also ends children left behind in it."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)


def _kill_pids(pids: list[int], timeout: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if process_alive(p)]
        time.sleep(_WAIT_STEP)


def process_alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def remove_netns(ns: str) -> None:
    """Kill every process in ns, then remove it (its links go with it)."""
    from pyroute2 import netns

    _kill_pids(netns_pids(ns))
    with contextlib.suppress(FileNotFoundError):
        netns.remove(ns)


def lab_namespaces(base: str = BASE_PREFIX) -> dict[str, int]:
    """Namespaces of labs with this base prefix, with the pid of the run that made them."""
    pattern = re.compile(rf"^{re.escape(base)}(\d+)-\d+-")
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(NETNS_DIR):
            match = pattern.match(name)
            if match:
                found[name] = int(match.group(1))
    return found


def remove_stale(base: str = BASE_PREFIX, everything: bool = False) -> list[str]:
    """Remove namespaces and bpffs dirs of earlier runs whose process is gone (or all)."""
    removed = []
    for name, pid in lab_namespaces(base).items():
        if everything or not process_alive(pid):
            remove_netns(name)
            removed.append(name)
    pattern = re.compile(rf"^{re.escape(base)}(\d+)-\d+$")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(BPFFS):
            match = pattern.match(name)
            if match and (everything or not process_alive(int(match.group(1)))):
                shutil.rmtree(os.path.join(BPFFS, name), ignore_errors=True)
                removed.append(os.path.join(BPFFS, name))
    if removed:
        log.info("lab_stale_removed count=%d first=%s", len(removed), removed[0])
    return removed


@functools.cache
def pass_program():
    """lbd_pass, compiled once per process and attached wherever a lab needs it."""
    from lbd.datapath import load_helper

    return load_helper("lbd_pass")


_sequence = iter(range(1 << 30))


class Lab:
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

    # --- clients -----------------------------------------------------------------
    url = staticmethod(url)

    def _probe(self, client: str | Node | None, requests: list[dict],
               timeout: float) -> list[dict]:
        client = self.node(client or self.client)
        result = self.run(client, [sys.executable, "-m", "lbd.lab", "probe", json.dumps(requests),
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

    # --- backend servers ---------------------------------------------------------
    def _nginx_conf(self, backend: Node) -> str:
        root = os.path.join(self.tmpdir, backend.name)
        os.makedirs(root, exist_ok=True)
        conf = os.path.join(root, "nginx.conf")
        temp = "".join(f"    {kind}_temp_path {root}/{kind};\n"
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        with open(os.path.join(root, "stream.txt"), "w") as f:
            f.write(f"{backend.name}\n" + ("." * 63 + "\n") * 32768)
        with open(conf, "w") as f:
            f.write(f"""# lab backend {backend.name}
user root;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    default_type text/plain;
{temp}    server {{
        # wildcards, so the VIPs on lo are served too
        listen {HTTP_PORT};
        listen [::]:{HTTP_PORT} ipv6only=on;
        location = /healthz {{ return 200 "ok\\n"; }}
        location = /whoami {{ return 200 "{backend.name} $remote_addr\\n"; }}
        # a long-lived stream (about a minute): name first, then paced filler
        location = /stream {{ alias {root}/stream.txt; limit_rate 32k; }}
        location / {{ return 200 "{backend.name}\\n"; }}
    }}
}}
""")
        return conf

    def _server_argv(self, backend: Node, service: str) -> list[str]:
        if service == "http":
            conf = self._nginx_conf(backend)
            root = os.path.dirname(conf)
            return ["nginx", "-p", root, "-c", conf, "-e", f"{root}/error.log",
                    "-g", "daemon off;"]
        return [sys.executable, "-m", "lbd.udp_echo", "--port", str(UDP_PORT),
                "--name", backend.name]

    def start_server(self, backend: str | Node, service: str = "all",
                     wait: bool = True) -> None:
        """Start the backend's nginx ("http"), UDP echo ("udp") or both ("all")."""
        backend = self.node(backend)
        services = ("http", "udp") if service == "all" else (service,)
        for svc in services:
            server = self._servers.setdefault((backend.name, svc),
                                              _Server(self._server_argv(backend, svc)))
            if server.proc is None or server.proc.poll() is not None:
                server.proc = self.spawn(backend, server.argv)
        if wait:
            for svc in services:
                self._wait_listening(backend, svc)

    def stop_server(self, backend: str | Node, service: str = "all") -> None:
        """Stop the backend's server(s), as a failing backend would."""
        backend = self.node(backend)
        for svc in ("http", "udp") if service == "all" else (service,):
            server = self._servers.get((backend.name, svc))
            if server and server.proc is not None:
                self.stop(server.proc)
                server.proc = None

    def server_running(self, backend: str | Node, service: str) -> bool:
        server = self._servers.get((self.node(backend).name, service))
        return bool(server and server.proc and server.proc.poll() is None)

    def _wait_listening(self, backend: Node, service: str, timeout: float = 10.0) -> None:
        server = self._servers[(backend.name, service)]
        proto, state = ("tcp", "0A") if service == "http" else ("udp", "07")
        port = HTTP_PORT if service == "http" else UDP_PORT
        deadline = time.monotonic() + timeout
        while True:
            if server.proc.poll() is not None:
                raise RuntimeError(f"{service} server of {backend.name} exited with "
                                   f"{server.proc.returncode}; see {server.proc.log_path}")
            # /proc/<pid>/net shows the sockets of that process's network namespace
            if all(_listening(server.proc.pid, f"{proto}{v}", port, state) for v in ("", "6")):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{service} server of {backend.name} not listening on "
                                   f"{port} after {timeout}s; see {server.proc.log_path}")
            time.sleep(_WAIT_STEP)

    # --- lbd-backend ---------------------------------------------------------------
    def backend_command(self, backend: str | Node, command: str, *args: str,
                        vips=None) -> list[str]:
        """argv of `lbd-backend <command>` for a backend, with the lab's VIPs.

        prepare shares one decap program among the ipip backends through a pin
        in the lab's bpffs_dir (compiled once, not once per backend), so run
        it with host_mounts=True, as prepare_backend() does.
        """
        backend = self.node(backend)
        argv = [sys.executable, "-m", "lbd.backend_prep", command]
        if command in ("prepare", "check"):
            argv += ["--mode", backend.mode, "--interface", backend.ifname]
            for vip in vips or (*self.vips_v4, *self.vips_v6):
                argv += ["--vip", str(vip)]
        if command == "prepare" and self.bpffs_dir:
            argv += ["--pin-dir", os.path.join(self.bpffs_dir, "decap")]
        return argv + list(args)

    def prepare_backend(self, backend: str | Node, *args: str,
                        vips=None) -> subprocess.CompletedProcess:
        """Run `lbd-backend prepare` in the backend's namespace; raises if it fails."""
        result = self.run(backend, self.backend_command(backend, "prepare", *args, vips=vips),
                          host_mounts=True)
        if result.returncode != 0:
            raise RuntimeError(f"lbd-backend prepare on {self.node(backend).name} failed: "
                               f"{result.stderr.strip() or result.stdout.strip()}")
        return result

    def check_backend(self, backend: str | Node, *args: str,
                      vips=None) -> subprocess.CompletedProcess:
        """Run `lbd-backend check` in the backend's namespace (exit 1 = a problem)."""
        return self.run(backend, self.backend_command(backend, "check", *args, vips=vips))

    def add_vips(self, vips_v4=(), vips_v6=()) -> None:
        """Add VIPs to the lab and prepare every backend for them."""
        self.vips_v4 += [ipaddress.IPv4Address(v) for v in vips_v4 if v not in self.vips_v4]
        self.vips_v6 += [ipaddress.IPv6Address(v) for v in vips_v6 if v not in self.vips_v6]
        self._prepare_all()

    def _prepare_all(self) -> None:
        self._finish_prepares(self._start_prepares())

    # --- XDP --------------------------------------------------------------------
    def attach_xdp(self, ns: str | Node, ifname: str, fd: int) -> str:
        """Attach a loaded XDP program (its fd) in native mode to a link in a
        namespace (lbd.xdplink: one load serves every namespace). Returns the
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

    # --- BGP (fleet labs) ------------------------------------------------------------
    def start_bird(self, ns: str | Node, config_path: str, socket_path: str,
                   timeout: float = 10.0) -> subprocess.Popen:
        """Start BIRD in a namespace (as lbd-bird.service would on a host) and
        wait for its control socket."""
        proc = self.spawn(ns, ["bird", "-f", "-c", config_path, "-s", socket_path])
        deadline = time.monotonic() + timeout
        while not os.path.exists(socket_path):
            if proc.poll() is not None or time.monotonic() > deadline:
                log_text = open(proc.log_path).read() if proc.log_path else ""
                raise RuntimeError(f"bird in {self.ns(ns)} did not start: {log_text.strip()}")
            time.sleep(_WAIT_STEP)
        return proc

    def birdc(self, socket_path: str, *command: str) -> str:
        return subprocess.run(["birdc", "-s", socket_path, *command], capture_output=True,
                              text=True, timeout=10, check=False).stdout

    def _router_bird_conf(self) -> str:
        sessions = []
        for host in self.lbd_hosts:
            for version, address in ((4, host.v4), (6, host.v6)):
                sessions.append(f"""protocol bgp {host.name}_v{version} {{
    local as {ROUTER_AS};
    neighbor {address} as {HOST_AS};
    hold time 3; keepalive time 1; connect retry time 1; error wait time 1, 5;
    ipv{version} {{ import all; export none; }};
}}""")
        kernels = "\n".join(f"""protocol kernel {{
    ipv{v} {{ import none; export where source = RTS_BGP; }};
    merge paths yes;   # equal routes from several hosts: one ECMP route
}}""" for v in (4, 6))
        return (f"router id {self.router.v4};\nlog stderr all;\nprotocol device {{}}\n"
                f"{kernels}\n" + "\n".join(sessions) + "\n")

    def start_router_bgp(self) -> None:
        root = os.path.join(self.tmpdir, "router-bird")
        os.makedirs(root, exist_ok=True)
        conf = os.path.join(root, "bird.conf")
        with open(conf, "w") as f:
            f.write(self._router_bird_conf())
        self.router_bird_socket = os.path.join(root, "bird.ctl")
        self.start_bird(self.router, conf, self.router_bird_socket)

    def router_nexthops(self, prefix: str) -> set[str]:
        """Gateways of the router's route to prefix (two for an ECMP route; none if absent)."""
        family = ["-6"] if ":" in prefix else []
        out = self.run(self.router, ["ip", "-j", *family, "route", "show", "exact", prefix],
                       check=True).stdout
        gateways = set()
        for route in json.loads(out or "[]"):
            if route.get("gateway"):
                gateways.add(route["gateway"])
            gateways.update(hop["gateway"] for hop in route.get("nexthops", []) if "gateway" in hop)
        return gateways

    def kill_host(self, host: str | Node) -> None:
        """A host dies: every process in it ends and its links are gone."""
        ns = self.ns(host)
        remove_netns(ns)
        if ns in self._namespaces:
            self._namespaces.remove(ns)
        ipr = self._ipr.pop(ns, None)
        if ipr is not None:
            with contextlib.suppress(Exception):
                ipr.close()

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

        from lbd.mounts import on_bpffs

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
                                  # ECMP by 5-tuple, as routers in front of a fleet hash
                                  "net.ipv4.fib_multipath_hash_policy=1",
                                  "net.ipv6.fib_multipath_hash_policy=1"]}
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

    def _start_prepares(self) -> dict[str, subprocess.Popen]:
        return {b.name: subprocess.Popen(self._argv(b, self.backend_command(b, "prepare"), True),
                                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                         text=True)
                for b in self.backends.values()}

    def _finish_prepares(self, procs: dict[str, subprocess.Popen]) -> None:
        failed = []
        for name, proc in procs.items():
            try:
                out, _ = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                out, _ = proc.communicate()
            log.debug("lab_prepare backend=%s output=%s", name, out.strip().replace("\n", "; "))
            if proc.returncode != 0:
                failed.append(f"{name}: {out.strip()}")
        if failed:
            raise RuntimeError("lbd-backend prepare failed: " + " | ".join(failed))

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


def _listening(pid: int, table: str, port: int, state: str) -> bool:
    try:
        with open(f"/proc/{pid}/net/{table}") as f:
            rows = f.read().splitlines()[1:]
    except (FileNotFoundError, ProcessLookupError):
        return False
    for row in rows:
        fields = row.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state:
            return True
    return False


# --- the probe, run by the lab inside a client namespace ----------------------
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
    parser = argparse.ArgumentParser(prog="python -m lbd.lab", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build a lab, print it, keep it until Ctrl-C")
    up.add_argument("--vip", action="append", default=[], help="VIP (repeatable)")
    clean = sub.add_parser("clean", help="remove lab namespaces of dead runs")
    clean.add_argument("--base", default=BASE_PREFIX)
    clean.add_argument("--all", action="store_true", help="also those of live runs")
    probe = sub.add_parser("probe", help=argparse.SUPPRESS)
    probe.add_argument("requests")
    probe.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args(argv)

    if args.command == "probe":
        print(json.dumps([_probe_one(r, args.timeout) for r in json.loads(args.requests)]))
        return 0
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
