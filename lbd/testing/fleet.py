"""Fleet labs: BIRD on the router (ECMP over the lbd hosts) and on each host,
and a host that dies (a part of lbd.testing.lab.Lab)."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time

from lbd.testing.netns import _WAIT_STEP, remove_netns
from lbd.testing.topology import HOST_AS, ROUTER_AS, ROUTER_IFACES, Node


class Fleet:
    """BGP for fleet labs (Lab(lbd_hosts=2, bgp=True))."""

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

    def ecmp_hosts(self, flows, vip: str, port: int, protocol: str = "tcp") -> list[str | None]:
        """The lbd host (name) the router forwards each flow (client address,
        client port) to VIP:port through, as the kernel answers `ip route get
        ... iif cli0 sport .. dport .. ipproto ..` for it: the path a packet
        from the client net takes, by the 5-tuple hash the lab sets. None for
        a flow routed through no lbd host (no route to the VIP).

        IPv4 only: for IPv6 this kernel (6.18) answers `ip route get` with
        another hash than it forwards by (7 of 20 TCP flows took the other
        path, each the same path every time, in a two-nexthop namespace
        test), so an IPv6 prediction would be wrong, not merely unsure."""
        if ":" in str(vip):
            raise ValueError("ecmp_hosts predicts IPv4 flows only (see its docstring)")
        by_gateway = {str(host.v4): host.name for host in self.lbd_hosts}
        batch = "".join(f"route get {vip} from {source} iif {ROUTER_IFACES['clients']} ipproto {protocol} "
                        f"sport {sport} dport {port}\n" for source, sport in flows)
        result = self.run(self.router, ["ip", "-j", "-batch", "-"], input=batch, check=False)
        answers = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
        assert len(answers) == len(flows), f"ip route get answered {len(answers)} of {len(flows)}: {result.stderr}"
        return [by_gateway.get(answer[0].get("gateway")) if answer else None for answer in answers]

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
