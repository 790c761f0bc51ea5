"""A spoofed SYN flood, then an ordinary reload: no real connection lost.

docs/design.md's promise: a connection that never completes its handshake leaves
no state, so a flood evicts no real flow's entry. Without that, the flood
fills the LRU, the entries of idle connections (the ones an LRU gives up
first) go, and the next change of the backend set moves every such
connection whose slot moved: reset by its new backend.

Scenario, run twice on the lab's lbd host with `limits.conntrack_size: 4096`:
30 idle keep-alive connections; a flood of SYNs from 50,000 spoofed sources,
each sent twice (the retransmit comes soon after the SYN, as flood tools
send them: the kernel's LRU keeps entries that were used again, so a flood
of single SYNs would spare idle connections, and one with quick retransmits
evicts them), raw frames from the router's namespace to the VIP; new connections all along;
then a reload that adds a backend; then every idle connection asks again.
The control run compiles the program with SYNs making entries
(-DLBD_SYN_MAKES_ENTRY=1, the old behaviour) and must show the breakage, so
the test proves its scenario exercises the problem.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.lbdrun import Connections, LbdUnderTest, backends

pytestmark = pytest.mark.netns

VIP = "198.18.100.1"
FLOOD = str(Path(__file__).with_name("synflood.py"))
IDLERS = str(Path(__file__).with_name("idlers.py"))
SPOOFED_SOURCES = 50_000
TABLE = 4096
RETRANSMIT_GAP = 512  # frames between a SYN and its retransmit: well inside the table's reach


def flood_config(lab, socket_path: str, web_backends) -> str:
    return f"""# written by tests/netns/test_flood.py
interfaces: [{{name: eth0, mode: native}}]
http: {{listen: 127.0.0.1:9100}}
control: {{socket: {socket_path}}}
bpffs: {lab.bpffs_dir}/lbd
limits: {{conntrack_size: {TABLE}}}
vips:
  - {{name: web4, address: {VIP}, port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, web_backends)}}}
"""


def run_scenario(lab, monkeypatch, syn_makes_entry: bool) -> dict:
    if syn_makes_entry:
        monkeypatch.setenv("LBD_EXTRA_CFLAGS", "-DLBD_SYN_MAKES_ENTRY=1")
    else:
        monkeypatch.delenv("LBD_EXTRA_CFLAGS", raising=False)
    daemon = LbdUnderTest(lab)
    daemon.write_config(flood_config(lab, daemon.socket, ("b1", "b2")))
    idlers = legit = None
    try:
        daemon.start()
        idle_sources = [str(a) for a in lab.client.v4s[:30]]
        idlers = lab.spawn(lab.client, [sys.executable, IDLERS, VIP, "80", "90", *idle_sources],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
        line = idlers.stdout.readline().strip()
        assert line.startswith("ready"), line
        idle_keys = daemon.conntrack_keys()
        assert len(idle_keys) == len(idle_sources), "one entry per idle connection, made at its ACK"

        legit = Connections(lab, VIP, lab.client.v4s[30:], per_s=40, max_count=2000, max_s=80)
        router_mac = lab.run("router", ["cat", "/sys/class/net/lan0/address"],
                             check=True).stdout.strip()
        flood = lab.run("router", [sys.executable, FLOOD, "lan0", router_mac, lab.lbd.mac, VIP, "80",
                                   str(SPOOFED_SOURCES), str(RETRANSMIT_GAP), "40"], check=True,
                           timeout=90)
        sent = json.loads(flood.stdout.strip().splitlines()[-1])
        surviving = idle_keys & daemon.conntrack_keys()

        daemon.write_config(flood_config(lab, daemon.socket, ("b1", "b2", "b3")))
        assert "web4: changed" in daemon.lbctl("reload").stdout
        time.sleep(3)  # new connections after the flood and the reload too
        connections = legit.stop()
        legit = None
        out, _ = idlers.communicate("go\n", timeout=60)
        idle = [json.loads(row) for row in out.splitlines() if row.startswith("{")]
        return {"sent": sent, "surviving": len(surviving), "idle": idle, "connections": connections,
                "stateless": daemon.metric("lbd_stateless_forwards_total"),
                "made": daemon.metric("lbd_conntrack_entries_made_total", table="tcp"),
                "capacity": daemon.metric("lbd_conntrack_capacity", table="tcp"),
                "status": daemon.lbctl("status").stdout,
                "log": daemon.log()}
    finally:
        if legit:
            legit.kill()
        if idlers and idlers.poll() is None:
            idlers.kill()
        daemon.teardown()


def broken(idle) -> list[dict]:
    return [c for c in idle if c["error"] or c["second"] != c["first"]]


def test_a_syn_flood_then_a_reload_breaks_no_connection(lab, monkeypatch):
    result = run_scenario(lab, monkeypatch, syn_makes_entry=False)
    assert result["sent"]["sent"] >= SPOOFED_SOURCES, result["sent"]
    assert result["stateless"] >= SPOOFED_SOURCES * 0.9, "the flood reached the program"
    assert len(result["idle"]) == 30
    assert not broken(result["idle"]), broken(result["idle"])
    assert result["surviving"] == 30, "every idle connection's entry is still in the table"
    ok = [c for c in result["connections"] if not c["error"]]
    assert len(result["connections"]) >= 100
    assert len(ok) >= 0.99 * len(result["connections"]), \
        [c for c in result["connections"] if c["error"]][:5]
    # what an operator sees of the table's pressure
    assert result["made"] >= 30 and result["capacity"] == TABLE
    assert "connection table tcp:" in result["status"] and f"of {TABLE} entries" in result["status"]


def test_control_with_syns_making_entries_the_same_flood_breaks_connections(lab, monkeypatch):
    result = run_scenario(lab, monkeypatch, syn_makes_entry=True)
    assert result["sent"]["sent"] >= SPOOFED_SOURCES, result["sent"]
    assert result["surviving"] < 30, ("the flood evicted idle connections' entries",
                                      result["made"], result["stateless"], result["log"][-3000:])
    assert broken(result["idle"]), "with SYNs making entries, the reload breaks evicted connections"
