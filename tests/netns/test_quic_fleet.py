"""Issue 22, netns tier, a fleet: two lbd hosts behind the router's ECMP (BGP),
ipip backends r1..r3 running the lab's aioquic server, a QUIC VIP and the
same VIP without `quic:` (the control). While connections exchange data, r3
joins both hosts' tables (each host's entries keep its flows where they
were), then one host dies: its flows cross to a host that never saw them. No
QUIC connection breaks; the control loses the crossing flows whose slot
moved (the test asserts some did)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbd.testing.lab import Lab
from lbd.testing.topology import ROUTER_AS
from tests.netns.lbdrun import LbdUnderTest
from tests.netns.test_quic import CONTROL_VIP, HEALTH, PORT, QUIC_VIP, run_clients

pytestmark = pytest.mark.netns

SERVER_IDS = {"r1": "0000a1", "r2": "0000a2", "r3": "0000a3"}


def config(lab: Lab, host, directory: str, names) -> str:
    def members(quic: bool) -> str:
        return "[" + ", ".join(f"{{address: {lab.backends[n].v4}" + (f", server_id: '{SERVER_IDS[n]}'}}"
                                                                      if quic else "}") for n in names) + "]"
    return f"""# {host.name} (tests/netns/test_quic_fleet.py)
interfaces: [{{name: eth0, mode: native}}]
http: {{listen: 127.0.0.1:9100}}
control: {{socket: {directory}/lbd.sock}}
bpffs: {lab.bpffs_dir}/{host.name}
ipip: {{source_v4: {host.v4}, source_v6: '{host.v6}'}}
vips:
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

    results = run_clients(lab, [add_r3, lambda: lab.kill_host("lbd2")], pause_s=15.0, per_vip=20,
                          exchange_timeout=20.0)
    quic = [r for r in results if r["vip"] == QUIC_VIP]
    control = [r for r in results if r["vip"] == CONTROL_VIP]
    broken = [r for r in quic if r["broken"]]
    assert quic and not broken, f"QUIC VIP: {len(broken)} of {len(quic)} broke: {broken}"
    lost = [r for r in control if r["broken"]]
    assert lost, f"the control lost nothing: no crossing flow's slot moved {control}"
    print(f"QUIC VIP: none of {len(quic)} broke; control: {len(lost)} of {len(control)} broke")
