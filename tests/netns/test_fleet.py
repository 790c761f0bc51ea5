"""Two lbd hosts behind one router, announcing their VIPs over BGP (BIRD).

The router (BIRD, AS 65000) learns the VIPs from both hosts (AS 65001) and
installs ECMP routes; each host runs the real daemon and its own BIRD with
the config lbd renders. The hosts' YAML files list the same VIPs and
backends in different orders: the Maglev tables must not care.

The tests run in file order on one lab; the last one kills a host.
"""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time

import pytest

from lbd.testing.lab import Lab
from lbd.testing.topology import ROUTER_AS
from tests.netns.lbdrun import HEALTH, LbdUnderTest
from tests.netns.test_traffic import check_metrics_serve_the_dashboard

pytestmark = pytest.mark.netns

VIP4, VIP6 = "198.18.100.2", "fd00:100::2"
BACKENDS = ("r1", "r2", "r3")
WAIT_S = 30   # BGP sessions, health checks and ECMP routes settle well within this


def fleet_config(lab: Lab, host, directory: str, order: list[str]) -> str:
    def backends(family: int) -> str:
        nodes = [lab.backends[name] for name in order]
        return ", ".join(f"{{address: '{n.v4 if family == 4 else n.v6}'}}" for n in nodes)

    vips = [f"""  - {{name: web4, address: {VIP4}, port: 80, protocol: tcp, mode: ipip, health: {HEALTH},
     backends: [{backends(4)}]}}""",
            f"""  - {{name: web6, address: '{VIP6}', port: 80, protocol: tcp, mode: ipip, health: {HEALTH},
     backends: [{backends(6)}]}}"""]
    if order != sorted(order):
        vips.reverse()
    return f"""# {host.name} of the fleet lab (tests/netns/test_fleet.py)
interfaces: [{{name: eth0, mode: native}}]
http: {{listen: 127.0.0.1:9100}}
control: {{socket: {directory}/lbd.sock}}
bpffs: {lab.bpffs_dir}/{host.name}
ipip: {{source_v4: {host.v4}, source_v6: '{host.v6}'}}
vips:
{chr(10).join(vips)}
bgp:
  local_as: 65001
  router_id: {host.v4}
  communities: ["65001:100"]
  maintenance_file: {directory}/maintenance
  bird_config: {directory}/bird.conf
  bird_socket: {directory}/bird.ctl
  withdraw_delay: 1s
  peers:
    - {{address: {lab.router.v4}, as: {ROUTER_AS}, hold_time: 3}}
    - {{address: '{lab.router.v6}', as: {ROUTER_AS}, hold_time: 3}}
"""


class FleetHost:
    """One lbd host: its BIRD (started as lbd-bird.service would) and lbd."""

    def __init__(self, lab: Lab, name: str, order: list[str]):
        self.lab, self.node = lab, lab.nodes[name]
        self.dir = os.path.join(lab.tmpdir, name)
        os.makedirs(self.dir, exist_ok=True)
        self.lbd = LbdUnderTest(lab, name, fleet_config(lab, self.node, self.dir, order), self.dir)
        self.bird_socket = os.path.join(self.dir, "bird.ctl")

    def start(self) -> None:
        written = subprocess.run([sys.executable, "-m", "lbd.cli", "bird-config", "--config",
                                  self.lbd.config_path, "--if-missing"],
                                 capture_output=True, text=True, timeout=60)
        assert written.returncode == 0, written.stderr
        self.lab.start_bird(self.node, os.path.join(self.dir, "bird.conf"), self.bird_socket)
        self.lbd.start()

    def explain(self, flows: list[tuple[str, int]], vip: str = f"{VIP4}:80/tcp") -> list[dict]:
        batch = "".join(f"{source}:{port} {vip}\n" for source, port in flows)
        result = subprocess.run([sys.executable, "-m", "lbd.lbctl", "--socket", self.lbd.socket,
                                 "explain", "--batch", "-"], input=batch, capture_output=True,
                                text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def announced(self, vip: str = "web4") -> bool:
        return any(d["vip"] == vip and d["announce"] for d in self.lbd.status()["bgp"]["vips"])


def wait_for(predicate, what: str, timeout: float = WAIT_S) -> float:
    """Seconds until predicate() held; fails the test with `what` after timeout."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout}s: {what}")


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root (namespaces, veth, XDP)")
    with Lab(vips_v4=[VIP4], vips_v6=[VIP6], dsr_backends=0, ipip_backends=3, lbd_hosts=2,
             bgp=True) as lab:
        order = list(BACKENDS)
        random.Random(7).shuffle(order)
        hosts = {"lbd": FleetHost(lab, "lbd", list(BACKENDS)), "lbd2": FleetHost(lab, "lbd2", order)}
        for host in hosts.values():
            host.start()
        yield lab, hosts


def both(lab: Lab) -> set[str]:
    return {str(host.v4) for host in lab.lbd_hosts}


def test_router_learns_each_vip_from_both_hosts_as_one_ecmp_route(fleet):
    lab, hosts = fleet
    wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == both(lab), "IPv4 ECMP route via both hosts")
    wait_for(lambda: lab.router_nexthops(f"{VIP6}/128") == {str(h.v6) for h in lab.lbd_hosts},
             "IPv6 ECMP route via both hosts")
    routes = lab.birdc(lab.router_bird_socket, "show", "route", "all", f"{VIP4}/32")
    assert "(65001,100)" in routes, f"the community lbd attaches reaches the router:\n{routes}"
    for host in hosts.values():
        status = host.lbd.lbctl("status").stdout
        assert "BGP: in service" in status and "announced" in status, status
        assert host.lbd.metric("lbd_bgp_vip_announced", vip="web4") == 1
        assert host.lbd.metric("lbd_bgp_peer_established") == 1
        check_metrics_serve_the_dashboard(host.lbd.metrics())


def test_a_thousand_flows_get_the_same_backend_from_either_host(fleet):
    lab, hosts = fleet
    sources = [lab.client.v4s[i % len(lab.client.v4s)] for i in range(1000)]
    ports = [30000 + i for i in range(1000)]
    replies = lab.http_get_many(lab.url(VIP4, "/whoami"), sources, ports=ports)
    failed = [r for r in replies if not r.ok]
    assert not failed, f"{len(failed)} of 1000 requests failed, first: {failed[0]}"
    flows = list(zip(map(str, sources), ports))
    explained = {name: host.explain(flows) for name, host in hosts.items()}
    predicted = lab.ecmp_hosts(flows, VIP4, 80)
    by_address = {str(lab.backends[name].v4): name for name in BACKENDS}
    carried = {name: 0 for name in hosts}
    for i, reply in enumerate(replies):
        served_by, client = reply.body.split()
        assert client == str(sources[i])
        picks = {name: by_address[e[i]["table_backend"]["backend"]] for name, e in explained.items()}
        assert set(picks.values()) == {served_by}, f"flow {flows[i]}: hosts pick {picks}, " \
                                                   f"{served_by} answered"
        through = [name for name, e in explained.items() if e[i]["connection_table"] is not None]
        # the router's 5-tuple hash sent it through the host `ip route get` names, and only that one
        assert through == [predicted[i]], f"flow {flows[i]}: predicted via {predicted[i]}, went via {through}"
        carried[through[0]] += 1
    # ECMP spread the flows over both hosts, each flow through exactly one
    assert all(count >= 200 for count in carried.values()), carried
    assert sum(carried.values()) == 1000, carried


def run_streams_across(lab, hosts, leaving: str, make_it_leave, sources) -> int:
    """Long-lived streams through the VIP while `leaving` leaves the fleet.
    Checks that none broke and that the ones that went through `leaving`
    moved to the other host; returns how many did."""
    staying = hosts[next(name for name in hosts if name != leaving)]
    streams = staying.lbd.start_streams(VIP4, sources, duration=14)
    try:
        time.sleep(2)
        flows = [(source, port) for source, port in streams.ports.items() if port]
        assert len(flows) == len(sources), f"not every stream connected: {streams.ports}"
        # ECMP sends a flow through one host: the ones the staying host has
        # not seen go through the leaving one
        before = staying.explain(flows)
        through_leaving = [flow for flow, e in zip(flows, before) if e["connection_table"] is None]
        predicted = lab.ecmp_hosts(flows, VIP4, 80)
        assert through_leaving == [flow for flow, host in zip(flows, predicted) if host == leaving], \
            f"the streams through {leaving} are the ones the router's hash sends there: {predicted}"
        tables = {name: h.lbd.vip("web4")["fingerprint"] for name, h in hosts.items()}
        assert len(set(tables.values())) == 1, f"the hosts' Maglev tables differ: {tables}"
        make_it_leave()
        wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == {str(staying.node.v4)},
                 f"the router routes the VIP only via {staying.node.name}", timeout=15)
        assert set(lab.ecmp_hosts(flows, VIP4, 80)) == {staying.node.name}, "every stream crosses now"
        results = LbdUnderTest.stream_results(streams, timeout=40)
    finally:
        if streams.poll() is None:
            streams.kill()
    assert len(results) == len(sources)
    broken = [r for r in results if r["error"] or r["backend"] is None]
    assert not broken, f"streams broke while {leaving} left: {broken}; the staying host says: " \
        f"{staying.explain([(r['source'], r['port']) for r in broken])}"
    # 14 s at nginx's 32 KB/s pace, less the seconds of the switch-over
    assert all(r["bytes"] > 32_000 * 8 for r in results), results
    after = staying.explain(flows)
    crossed = [flow for flow, e, b in zip(flows, after, before)
               if e["connection_table"] is not None and b["connection_table"] is None]
    assert crossed == through_leaving, \
        "every stream that went through the leaving host, and only those, crossed to the staying one"
    return len(through_leaving)


def test_a_host_whose_vip_has_no_healthy_backend_withdraws_it(fleet):
    lab, hosts = fleet
    host = hosts["lbd"]
    # its health checks (and only its own) fail: the backends are fine for lbd2
    block = ["nft", "-f", "-"]
    rules = "table inet fleettest {\n chain out {\n type filter hook output priority 0;\n tcp dport 80 drop\n }\n}\n"
    lab.run(host.node, block, input=rules, check=True)
    try:
        wait_for(lambda: not host.announced("web4"), "lbd withdraws web4")
        wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == {str(lab.nodes['lbd2'].v4)},
                 "the router drops lbd's route")
        decision = next(d for d in host.lbd.status()["bgp"]["vips"] if d["vip"] == "web4")
        assert decision["reason"] == "0 healthy backends, 1 needed", decision
        assert host.lbd.metric("lbd_bgp_vip_announced", vip="web4") == 0
        assert lab.http_get(lab.url(VIP4, "/")).ok, "the VIP still answers, through lbd2"
    finally:
        lab.run(host.node, ["nft", "delete", "table", "inet", "fleettest"])
    wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == both(lab), "lbd announces web4 again")


def test_a_drained_host_withdraws_and_its_streams_carry_on_through_the_other(fleet):
    lab, hosts = fleet
    host = hosts["lbd"]
    moved = run_streams_across(lab, hosts, "lbd", lambda: host.lbd.lbctl("drain"),
                               lab.client.v4s[10:26])
    try:
        assert moved, "some streams went through lbd before the drain"
        assert "DRAINED" in host.lbd.lbctl("status").stdout
        assert os.path.exists(os.path.join(host.dir, "maintenance"))
        assert host.lbd.metric("lbd_bgp_drained") == 1
    finally:
        host.lbd.lbctl("undrain")
    wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == both(lab), "undrained lbd announces again")
    # the maintenance file alone does the same
    maintenance = os.path.join(host.dir, "maintenance")
    open(maintenance, "w").close()
    try:
        wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == {str(lab.nodes['lbd2'].v4)},
                 "touching the maintenance file withdraws")
    finally:
        os.unlink(maintenance)
    wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == both(lab), "removing it announces again")


def test_a_restart_keeps_announcing_and_a_teardown_withdraws_first(fleet):
    lab, hosts = fleet
    host = hosts["lbd2"]
    host.lbd.stop()   # SIGTERM: the program stays attached, BIRD keeps the routes
    time.sleep(5)     # longer than the hold time
    assert lab.router_nexthops(f"{VIP4}/32") == both(lab), "a stopped lbd withdrew nothing"
    host.lbd.start()
    assert host.announced("web4"), "the restarted lbd announces at once (backends not rechecked yet)"
    assert lab.router_nexthops(f"{VIP4}/32") == both(lab)

    moved = run_streams_across(lab, hosts, "lbd2", lambda: host.lbd.lbctl("teardown"),
                               lab.client.v4s[30:46])
    assert moved, "some streams went through lbd2 before its teardown"
    # a host joining again announces once its checks pass
    host.lbd.start()
    wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == both(lab), "lbd2 rejoins")


def test_a_dead_host_is_dropped_and_its_streams_carry_on_through_the_other(fleet):
    lab, hosts = fleet
    moved = run_streams_across(lab, hosts, "lbd2", lambda: lab.kill_host("lbd2"),
                               lab.client.v4s[46:58])
    assert moved, "some streams went through lbd2 before it died"
    bgp = lab.birdc(lab.router_bird_socket, "show", "protocols")
    assert "lbd2_v4" in bgp and "Established" not in next(line for line in bgp.splitlines()
                                                        if line.startswith("lbd2_v4")), bgp
