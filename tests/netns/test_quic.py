"""Issue 22, netns tier: real QUIC (aioquic clients and the lab's aioquic
server, lbd.testing.quicserver) through lbd, native XDP, DSR.

Two UDP VIPs on port 443 with the same three backends and the same servers:
one with a `quic:` section (routed by the server ID in the CIDs the servers
issue) and, beside it, the same VIP without it (the control, placed by the
4-tuple as today). Long-lived connections exchange data every 200 ms while
their clients rebind, repeatedly: a new source port (a NAT's new mapping),
then a new source address with a new CID (a migrating client). No
connection on the QUIC VIP may break; the control must lose some, or the
scenario would not exercise the problem.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lbd.testing.lab import Lab
from tests.netns.lbdrun import LbdUnderTest, host_config, table_places

pytestmark = pytest.mark.netns

QUIC_VIP, CONTROL_VIP, PORT = "198.18.100.1", "198.18.100.3", 443
UDP = 17
BACKENDS = {"b1": "0000b1", "b2": "0000b2", "b3": "0000b3"}
CLIENTS = str(Path(__file__).with_name("quicclients.py"))
FLOOD = str(Path(__file__).with_name("quicflood.py"))
PER_VIP = 10


# UDP VIPs are checked on the backends' nginx (a QUIC server answers no TCP)
HEALTH = "{type: http, port: 80, path: /healthz, interval: 500ms, timeout: 300ms, rise: 2, fall: 2}"


def quic_config(lab: Lab, socket_path: str, names=tuple(BACKENDS), drain=()) -> str:
    def members(quic: bool) -> str:
        return "[" + ", ".join(
            f"{{address: {lab.backends[name].v4}" + (", drain: true" if name in drain else "")
            + (f", server_id: '{BACKENDS[name]}'}}" if quic else "}") for name in names) + "]"
    return host_config(lab, socket_path, "tests/netns/test_quic.py") + f"""\
  - {{name: h3, address: {QUIC_VIP}, port: {PORT}, protocol: udp, mode: dsr, health: {HEALTH},
     quic: {{config_id: 1, server_id_length: 3, nonce_length: 6}}, backends: {members(True)}}}
  - {{name: h3-control, address: {CONTROL_VIP}, port: {PORT}, protocol: udp, mode: dsr, health: {HEALTH},
     backends: {members(False)}}}
"""


@pytest.fixture
def quic_lab(lab):
    servers = []
    lbd = None
    try:
        for name, sid in BACKENDS.items():
            proc = lab.spawn(name, [sys.executable, "-m", "lbd.testing.quicserver", "serve", "--bind", QUIC_VIP,
                                    "--bind", CONTROL_VIP, "--port", str(PORT), "--name", name,
                                    "--config-id", "1", "--server-id", sid, "--nonce-length", "6"])
            servers.append(proc)
        for proc in servers:
            deadline = time.monotonic() + 20
            while "listening" not in Path(proc.log_path).read_text():
                assert proc.poll() is None and time.monotonic() < deadline, Path(proc.log_path).read_text()
                time.sleep(0.1)
        lbd = LbdUnderTest(lab)
        lbd.write_config(quic_config(lab, lbd.socket))
        lbd.start()
        yield lab, lbd
    finally:
        if lbd is not None:
            lbd.teardown()
        for proc in servers:
            lab.stop(proc)


def client_sources(lab: Lab) -> list[str]:
    """The client addresses the connections open from (and rebind to)."""
    return [str(a) for a in lab.client.v4s[1:21]]


def run_clients(lab: Lab, commands: list, pause_s: float = 3.0, per_vip: int = PER_VIP,
                exchange_timeout: float = 3.0, vips=(QUIC_VIP, CONTROL_VIP), local=()) -> list[dict]:
    """Open the connections, send each command (waiting for the clients to
    carry it out, then pause_s of traffic), stop, and return the results. A
    command may be a callable: the test's own change, made between marks.
    local: each connection's first (address, port), every VIP's per_vip in
    turn (default: the sources in turn, any port)."""
    proc = lab.spawn(lab.client, [sys.executable, CLIENTS, *sum((["--vip", v] for v in vips), []),
                                  "--port", str(PORT), *sum((["--source", s] for s in client_sources(lab)), []),
                                  *sum((["--local", f"{a}:{p}"] for a, p in local), []),
                                  "--per-vip", str(per_vip), "--duration", "150",
                                  "--exchange-timeout", str(exchange_timeout)],
                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(pause_s)
        for command in commands:
            if callable(command):
                command()
                command = "mark"
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
            assert proc.stdout.readline().strip() == f"done {command}"
            time.sleep(pause_s)
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_quic_connections_survive_nat_rebinding_and_migration(quic_lab):
    lab, lbd = quic_lab
    results = run_clients(lab, ["rebind-port", "rebind-address", "rebind-port", "rebind-address",
                                "rebind-port"])
    quic = [r for r in results if r["vip"] == QUIC_VIP]
    control = [r for r in results if r["vip"] == CONTROL_VIP]
    assert len(quic) == len(control) == PER_VIP
    assert all(r["rebinds"] == 5 and r["exchanges"] >= 50 for r in quic), quic
    broken = [r for r in quic if r["broken"]]
    assert not broken, f"QUIC VIP: {len(broken)} of {PER_VIP} connections broke: {broken}"
    # each connection stayed on one server (its echo names it) across every rebind
    assert all(len(r["servers"]) == 1 for r in quic), quic
    lost = [r for r in control if r["broken"]]
    assert lost, f"the control VIP lost no connection: the rebinding did not exercise the problem {control}"
    # the QUIC VIP's packets went by CID (metrics), and made no connection-table entry
    assert lbd.metric("lbd_quic_packets_total", how="routed_short") > 0
    assert lbd.metric("lbd_quic_packets_total", how="fb_client_cid") > 0
    # lbctl status and /status name each backend's server ID and its CID-routed packets
    backends = {b["address"]: b for b in lbd.vip("h3")["backends"]}
    assert {a: b["server_id"] for a, b in backends.items()} == \
        {str(lab.backends[n].v4): sid for n, sid in BACKENDS.items()}
    assert sum(b["quic_routed"] for b in backends.values()) > 0
    assert "server ID 0000b1" in lbd.lbctl("status").stdout
    print(f"control: {len(lost)} of {PER_VIP} connections broken; QUIC VIP: none")


def empty_udp_table(lbd: LbdUnderTest) -> int:
    """Delete every entry of the pinned UDP connection table (bpftool, not lbd)."""
    pin_dir = next(d for d in Path(lbd.lab.bpffs_dir, lbd.host).iterdir() if d.name.startswith("layout"))
    table = str(pin_dir / "conntrack_udp")
    dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", table], capture_output=True, text=True,
                          check=True)
    keys = [entry["key"] for entry in json.loads(dump.stdout)]
    for key in keys:
        subprocess.run(["bpftool", "map", "delete", "pinned", table, "key", "hex", *key], check=True,
                       capture_output=True)
    return len(keys)


def test_quic_connections_survive_backend_changes_with_the_udp_table_emptied(quic_lab):
    """b3 added, b1 drained, b2 failing its health check, the UDP connection
    table emptied after each: no QUIC connection breaks but those on b2, whose
    server lbd no longer sends to (as any flow of a failed backend); the
    control loses connections whose slot moved."""
    lab, lbd = quic_lab
    emptied = []

    def change(names, drain=()):
        def apply():
            lbd.write_config(quic_config(lab, lbd.socket, names, drain))
            lbd.lbctl("reload")
            emptied.append(empty_udp_table(lbd))
        return apply

    def fail_b2():
        lab.stop_server("b2", "http")
        wait_down = time.monotonic() + 10
        while lbd.vip("h3")["backends"][1]["state"] != "down":
            assert time.monotonic() < wait_down, lbd.vip("h3")
            time.sleep(0.2)
        emptied.append(empty_udp_table(lbd))

    # start with b1 and b2 only
    lbd.write_config(quic_config(lab, lbd.socket, ("b1", "b2")))
    lbd.lbctl("reload")
    try:
        results = run_clients(lab, [change(("b1", "b2", "b3")), change(("b1", "b2", "b3"), drain=("b1",)),
                                    fail_b2])
    finally:
        lab.start_server("b2", "http")
    assert emptied[0] > 0, "the control's flows made no entries to empty"
    quic = [r for r in results if r["vip"] == QUIC_VIP]
    control = [r for r in results if r["vip"] == CONTROL_VIP]
    on_b2 = [r for r in quic if r["servers"] == ["b2"]]
    survivors = [r for r in quic if r["servers"] != ["b2"]]
    assert survivors and all(len(r["servers"]) == 1 for r in quic), quic
    broken = [r for r in survivors if r["broken"]]
    assert not broken, f"QUIC VIP: {len(broken)} of {len(survivors)} connections not on b2 broke: {broken}"
    lost = [r for r in control if r["broken"] and r["servers"] != ["b2"]]
    assert lost, f"the control lost no connection off b2: the changes did not exercise the problem {control}"
    print(f"QUIC VIP: none of {len(survivors)} broke ({len(on_b2)} were on b2); control: {len(lost)} of "
          f"{len([r for r in control if r['servers'] != ['b2']])} off b2 broke")


def moving_flows(lab: Lab, vip: str, before, after, count: int, exclude=()) -> list[tuple[str, int]]:
    """`count` client (address, port)s whose slot the VIP's table of `before`
    gives a backend that `after` keeps and the table of `after` another one:
    flows that only their entry keeps on their backend (Maglev moves few such
    slots, about 1 in 5,000 when one of three backends goes; the reference
    tables say which). Ports from 10000, below the ephemeral ones."""
    candidates = [(src, port) for port in range(10000, 15000) for src in client_sources(lab)
                  if (src, port) not in exclude]
    was = table_places(lab, list(before), candidates, vip, PORT, UDP)
    now = table_places(lab, list(after), candidates, vip, PORT, UDP)
    found = [c for c, b, a in zip(candidates, was, now) if b in after and a != b][:count]
    assert len(found) == count, f"{vip}: only {len(found)} of {len(candidates)} flows move between kept backends"
    return found


def test_quic_connections_survive_a_backend_removed_with_the_udp_table_emptied(quic_lab):
    """b3 removed from the config (a reload) while connections run, then the
    UDP connection table emptied: no QUIC connection on b1 or b2 breaks. Those
    on b3 break on both VIPs (its server is gone from the VIP) and are not
    counted. Some of each VIP's connections are flows whose slot moves from b1
    to b2 or back (moving_flows): the control, its entries gone, must lose
    every one of them; the QUIC VIP, routed by CID, none."""
    lab, lbd = quic_lab
    emptied = []

    def remove_b3():
        lbd.write_config(quic_config(lab, lbd.socket, ("b1", "b2")))
        lbd.lbctl("reload")
        emptied.append(empty_udp_table(lbd))

    kept, count = ("b1", "b2"), 3
    quic_moving = moving_flows(lab, QUIC_VIP, BACKENDS, kept, count)
    control_moving = moving_flows(lab, CONTROL_VIP, BACKENDS, kept, count, exclude=quic_moving)
    sources = client_sources(lab)
    # the rest from any port of the next addresses (port 0: the kernel picks one)
    fill = [(sources[i % len(sources)], 0) for i in range(PER_VIP - count)]
    results = run_clients(lab, [remove_b3], local=quic_moving + fill + control_moving + fill)
    assert emptied[0] > 0, "the control's flows made no entries to empty"
    quic = [r for r in results if r["vip"] == QUIC_VIP]
    control = [r for r in results if r["vip"] == CONTROL_VIP]
    assert len(quic) == len(control) == PER_VIP
    survivors = [r for r in quic if r["servers"] != ["b3"]]
    assert all(len(r["servers"]) == 1 for r in quic), quic
    assert {f"{a}:{p}" for a, p in quic_moving} <= {r["first_local"] for r in survivors}, quic
    broken = [r for r in survivors if r["broken"]]
    assert not broken, f"QUIC VIP: {len(broken)} of {len(survivors)} connections not on b3 broke: {broken}"
    moved = [r for r in control if r["first_local"] in {f"{a}:{p}" for a, p in control_moving}]
    assert len(moved) == count and all(r["servers"] != ["b3"] for r in moved), control
    kept_on = [r for r in moved if not r["broken"]]
    assert not kept_on, f"the control kept {len(kept_on)} flows whose slot moved between b1 and b2: {kept_on}"
    print(f"QUIC VIP: none of {len(survivors)} off b3 broke; control: all {count} whose slot moved broke, "
          f"{len([r for r in control if r['broken']])} of {PER_VIP} in all")


def udp_entries(lbd: LbdUnderTest) -> int:
    pin_dir = next(d for d in Path(lbd.lab.bpffs_dir, lbd.host).iterdir() if d.name.startswith("layout"))
    dump = subprocess.run(["bpftool", "-j", "map", "dump", "pinned", str(pin_dir / "conntrack_udp")],
                          capture_output=True, text=True, check=True)
    return len(json.loads(dump.stdout))


def test_a_spoofed_quic_flood_leaves_no_state_and_breaks_nothing(quic_lab):
    """5,000 spoofed Initials and 5,000 short headers whose CIDs carry the
    VIP's config ID and random server IDs, while connections run: none breaks,
    the UDP table does not grow by them (docs/design.md: neither makes an
    entry), and the counters see them by reason."""
    lab, lbd = quic_lab
    count = 5000
    seen = {}

    def flood():
        seen["entries"] = udp_entries(lbd)
        seen["initials"] = lbd.metric("lbd_quic_packets_total", how="fb_client_cid")
        seen["unknown"] = lbd.metric("lbd_quic_packets_total", how="fb_unknown_server")
        lab.run(lab.client, [sys.executable, FLOOD, QUIC_VIP, str(PORT), str(count), "1", "3", "6"],
                check=True, timeout=120)
        seen["entries_after"] = udp_entries(lbd)

    results = run_clients(lab, [flood])
    quic = [r for r in results if r["vip"] == QUIC_VIP]
    assert quic and not [r for r in quic if r["broken"]], quic
    # the control's own datagrams make entries; the flood made none
    assert seen["entries_after"] - seen["entries"] < 50, seen
    assert lbd.metric("lbd_quic_packets_total", how="fb_client_cid") - seen["initials"] >= count
    # a random 3-octet server ID is one of the three backends' once in 5.6 million
    assert lbd.metric("lbd_quic_packets_total", how="fb_unknown_server") - seen["unknown"] >= count - 5
