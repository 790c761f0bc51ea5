"""Issue 22, netns tier, a fleet: two lbd hosts behind the router's ECMP (BGP),
ipip backends r1..r3 running the lab's aioquic server, a QUIC VIP and the
same VIP without `quic:` (the control). While connections exchange data, r3
joins both hosts' tables (each host's entries keep its flows where they
were), then one host dies: its flows cross to a host that never saw them. No
QUIC connection breaks; the control loses every crossing flow whose slot
moved. The test chooses the connections' 4-tuples so that some of each VIP's
are such flows (the router's ECMP hash and the Maglev tables predict them:
Fleet.ecmp_hosts, lbdrun.table_places), so the control must lose them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbd.testing.lab import Lab
from lbd.testing.topology import ROUTER_AS
from tests.netns.lbdrun import LbdUnderTest, host_config, table_places
from tests.netns.test_quic import CONTROL_VIP, HEALTH, PORT, QUIC_VIP, UDP, client_sources, run_clients

pytestmark = pytest.mark.netns

SERVER_IDS = {"r1": "0000a1", "r2": "0000a2", "r3": "0000a3"}
PER_VIP = 20
CROSSING_AND_MOVED = 8  # of each VIP's PER_VIP connections
FIRST_PORT = 20000      # the connections' first client ports, below the ephemeral ones


def config(lab: Lab, host, directory: str, names) -> str:
    def members(quic: bool) -> str:
        return "[" + ", ".join(f"{{address: {lab.backends[n].v4}" + (f", server_id: '{SERVER_IDS[n]}'}}"
                                                                      if quic else "}") for n in names) + "]"
    return host_config(lab, f"{directory}/lbd.sock", "tests/netns/test_quic_fleet.py", host) + f"""\
  - {{name: h3, address: {QUIC_VIP}, port: {PORT}, protocol: udp, mode: ipip, health: {HEALTH},
     quic: {{config_id: 1, server_id_length: 3, nonce_length: 6}}, backends: {members(True)}}}
  - {{name: h3-control, address: {CONTROL_VIP}, port: {PORT}, protocol: udp, mode: ipip, health: {HEALTH},
     backends: {members(False)}}}
bgp:
  local_as: 65001
  router_id: {host.v4}
  maintenance_file: {directory}/maintenance
  bird_config: {directory}/bird.conf
  bird_socket: {directory}/bird.ctl
  withdraw_delay: 1s
  peers:
    - {{address: {lab.router.v4}, as: {ROUTER_AS}, hold_time: 3}}
"""


def choose_flows(lab: Lab, vip: str, dying: str, exclude=()) -> tuple[list[tuple[str, int]], set[str]]:
    """PER_VIP client (address, port)s for the VIP's connections, the first
    CROSSING_AND_MOVED of them flows the router sends through `dying` and whose
    slot r3 takes from another backend (so the host they cross to, which has no
    entry for them, places them elsewhere); and those flows as "address:port"."""
    sources = client_sources(lab)
    candidates = [(src, FIRST_PORT + i) for i in range(100) for src in sources if (src, FIRST_PORT + i) not in exclude]
    hosts = lab.ecmp_hosts(candidates, vip, PORT, "udp")
    before = table_places(lab, ["r1", "r2"], candidates, vip, PORT, UDP)
    after = table_places(lab, ["r1", "r2", "r3"], candidates, vip, PORT, UDP)
    moved = [c for c, h, b, a in zip(candidates, hosts, before, after) if h == dying and a != b]
    others = [c for c in candidates if c not in moved]
    assert len(moved) >= CROSSING_AND_MOVED, f"only {len(moved)} of {len(candidates)} flows cross and move"
    chosen = moved[:CROSSING_AND_MOVED] + others[:PER_VIP - CROSSING_AND_MOVED]
    return chosen, {f"{a}:{p}" for a, p in moved[:CROSSING_AND_MOVED]}


@pytest.fixture(scope="module")
def quic_fleet():
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root (namespaces, veth, XDP)")
    with Lab(vips_v4=[QUIC_VIP, CONTROL_VIP], vips_v6=[], dsr_backends=0, ipip_backends=3, lbd_hosts=2,
             bgp=True) as lab:
        servers = []
        for name, sid in SERVER_IDS.items():
            servers.append(lab.spawn(name, [sys.executable, "-m", "lbd.testing.quicserver", "serve",
                                            "--bind", QUIC_VIP, "--bind", CONTROL_VIP, "--port", str(PORT),
                                            "--name", name, "--config-id", "1", "--server-id", sid,
                                            "--nonce-length", "6"]))
        for proc in servers:
            deadline = time.monotonic() + 20
            while "listening" not in Path(proc.log_path).read_text():
                assert proc.poll() is None and time.monotonic() < deadline, Path(proc.log_path).read_text()
                time.sleep(0.1)
        hosts = {}
        for node in lab.lbd_hosts:
            directory = os.path.join(lab.tmpdir, node.name)
            os.makedirs(directory, exist_ok=True)
            lbd = LbdUnderTest(lab, node.name, config(lab, node, directory, ("r1", "r2")), directory)
            written = subprocess.run([sys.executable, "-m", "lbd.cli", "bird-config", "--config",
                                      lbd.config_path, "--if-missing"], capture_output=True, text=True, timeout=60)
            assert written.returncode == 0, written.stderr
            lab.start_bird(node, os.path.join(directory, "bird.conf"), os.path.join(directory, "bird.ctl"))
            lbd.start()
            hosts[node.name] = (node, directory, lbd)
        # both hosts announce both VIPs before the clients start
        deadline = time.monotonic() + 40
        while not all(len(lab.run("router", ["ip", "route", "show", vip]).stdout.splitlines()) >= 3
                      for vip in (QUIC_VIP, CONTROL_VIP)):
            assert time.monotonic() < deadline, lab.run("router", ["ip", "route"]).stdout
            time.sleep(0.5)
        yield lab, hosts


def test_quic_connections_survive_a_backend_added_then_a_host_dying(quic_fleet):
    lab, hosts = quic_fleet

    def add_r3():
        for node, directory, lbd in hosts.values():
            lbd.write_config(config(lab, node, directory, ("r1", "r2", "r3")))
            lbd.lbctl("reload")

    quic_flows, quic_moving = choose_flows(lab, QUIC_VIP, "lbd2")
    control_flows, control_moving = choose_flows(lab, CONTROL_VIP, "lbd2", exclude=quic_flows)
    results = run_clients(lab, [add_r3, lambda: lab.kill_host("lbd2")], pause_s=15.0, per_vip=PER_VIP,
                          exchange_timeout=20.0, local=quic_flows + control_flows)
    quic = [r for r in results if r["vip"] == QUIC_VIP]
    control = [r for r in results if r["vip"] == CONTROL_VIP]
    assert len(quic) == len(control) == PER_VIP
    assert {r["first_local"] for r in quic} >= quic_moving  # the chosen flows were the ones opened
    broken = [r for r in quic if r["broken"]]
    assert not broken, f"QUIC VIP: {len(broken)} of {len(quic)} broke: {broken}"
    # every control flow that crossed to lbd1 and whose slot moved lost its server
    crossed = [r for r in control if r["first_local"] in control_moving]
    assert len(crossed) == CROSSING_AND_MOVED, control
    kept = [r for r in crossed if not r["broken"]]
    assert not kept, f"the control kept {len(kept)} crossing flows whose slot moved: {kept}"
    print(f"QUIC VIP: none of {len(quic)} broke ({len(quic_moving)} crossed and moved); control: "
          f"{len([r for r in control if r['broken']])} of {len(control)} broke, "
          f"all {len(crossed)} that crossed and moved")
