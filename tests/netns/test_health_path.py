"""Health checks travel the path client packets take (issue 21; docs/operating.md "Health
checks"): a backend whose path breaks while its service still answers at its
own address leaves its VIP's table within fall x interval plus one interval,
no new connection through the VIP fails after that, lbd says which check
fails and why, and the backend is back within rise x interval (plus one) once
the path is restored. A stopped service is still told apart ("service down").

Real daemon, real nginx backends, for a dsr and an ipip (second-chance, so
GUE) VIP, IPv4 and IPv6, native XDP on the lab's veths.

Timing bounds carry SLACK_S on top of the promise: the status is polled
every 0.1 s, and a health change is applied to the maps by a task of the
daemon's loop (one apply, milliseconds on a quiet machine, more on a busy
CI box)."""
from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import pytest

from tests.netns.lbdrun import host_config, running, vip_entry

pytestmark = pytest.mark.netns

INTERVAL, TIMEOUT, RISE, FALL = 0.3, 0.2, 2, 2
SLACK_S = 0.7
HEALTH = (f"{{type: http, path: /healthz, interval: {int(INTERVAL * 1000)}ms, "
          f"timeout: {int(TIMEOUT * 1000)}ms, rise: {RISE}, fall: {FALL}}}")
# name -> (VIP, mode, family, the backend these tests break)
VIPS = {"dsr4": ("198.18.100.1", "dsr", 4, "b2"), "dsr6": ("fd00:100::1", "dsr", 6, "b2"),
        "ipip4": ("198.18.100.2", "ipip", 4, "r2"), "ipip6": ("fd00:100::2", "ipip", 6, "r2")}


def config(lab):
    def for_socket(socket_path: str) -> str:
        text = host_config(lab, socket_path, "tests/netns/test_health_path.py")
        for name, (vip, mode, _, _) in VIPS.items():
            names = ["b1", "b2", "b3"] if mode == "dsr" else ["r1", "r2", "r3"]
            text += vip_entry(lab, name, vip, 80, "tcp", mode, names, HEALTH)
        return text
    return for_socket


@pytest.fixture(scope="module")
def lbd(lab):
    with running(lab, config(lab)) as daemon:
        yield daemon


def backend_of(lbd, lab, name: str) -> dict:
    vip, _, family, broken = VIPS[name]
    node = lab.backends[broken]
    address = str(node.v4 if family == 4 else node.v6)
    return next(b for b in lbd.vip(name)["backends"] if b["address"] == address)


def wait_until(condition, limit_s: float, what: str) -> float:
    """Seconds until condition() held; fails past limit_s (+ SLACK_S)."""
    start = time.monotonic()
    while time.monotonic() - start < limit_s + SLACK_S + 10:  # bounded: the assert says how late
        if condition():
            elapsed = time.monotonic() - start
            assert elapsed <= limit_s + SLACK_S, f"{what} after {elapsed:.2f}s, promised {limit_s:.2f}s"
            return elapsed
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {limit_s + SLACK_S + 10:.1f}s")


# --- ways to break the path but not the service -------------------------------------------


@contextlib.contextmanager
def vip_off_lo(lab, backend: str, vip: str, family: int):
    prefix = f"{vip}/{32 if family == 4 else 128}"
    lab.run(backend, ["ip", "addr", "del", prefix, "dev", "lo"], check=True)
    try:
        yield
    finally:
        # as the operator's fix would: prepare puts the VIP back as its own
        # (marked, so a later `lbd-backend undo` in the shared lab removes it)
        lab.prepare_backend(backend)


@contextlib.contextmanager
def program_detached(lab, backend: str, vip: str, family: int):
    # the decapsulation (the tunnel's end) is the backend program: without it
    # IP-in-IP and GUE packets reach a kernel that has no tunnel for them
    node = lab.backends[backend]
    lab.run(backend, ["ip", "link", "set", "dev", node.ifname, "xdp", "off"], check=True)
    try:
        yield
    finally:
        lab.prepare_backend(backend)


@contextlib.contextmanager
def firewall_drops_vip(lab, backend: str, vip: str, family: int):
    table = "lbdtest_health"
    match = "ip daddr" if family == 4 else "ip6 daddr"
    script = (f"add table inet {table}\n"
              f"add chain inet {table} input {{ type filter hook input priority 0; }}\n"
              f"add rule inet {table} input {match} {vip} tcp dport 80 drop\n")
    lab.run(backend, ["nft", "-f", "-"], input=script, check=True)
    try:
        yield
    finally:
        lab.run(backend, ["nft", "delete", "table", "inet", table], check=True)


BREAKS = {"vip_off_lo": vip_off_lo, "program_detached": program_detached,
          "firewall_drops_vip": firewall_drops_vip}
CASES = [(vip, brk) for vip in VIPS for brk in BREAKS
         if not (brk == "program_detached" and VIPS[vip][1] == "dsr")]  # dsr backends run no program


def new_connections_ok(lab, vip: str, count: int = 60) -> list:
    """New connections through the VIP from `count` client addresses: the
    failures, and who answered."""
    family = 6 if ":" in vip else 4
    sources = (lab.client.v4s if family == 4 else lab.client.v6s)[:count]
    replies = lab.http_get_many(lab.url(vip, "/whoami"), sources, timeout=2)
    return [r for r in replies if not r.ok], {r.body.split()[0] for r in replies if r.ok}


@pytest.mark.parametrize("name, way", CASES, ids=[f"{v}-{b}" for v, b in CASES])
def test_a_broken_path_takes_the_backend_out_and_says_why(lab, lbd, name, way):
    vip, mode, family, broken = VIPS[name]
    assert backend_of(lbd, lab, name)["in_table"], "in the table before"
    with BREAKS[way](lab, broken, vip, family):
        wait_until(lambda: not backend_of(lbd, lab, name)["in_table"], (FALL + 1) * INTERVAL,
                   f"{broken} out of {name}'s table")
        failed, answered = new_connections_ok(lab, vip)
        assert not failed, failed[:3]
        assert broken not in answered and answered, answered
        checks = backend_of(lbd, lab, name)["checks"]
        assert checks["verdict"] == "path_broken", checks
        assert f"unreachable through {mode}" in checks["reason"], checks["reason"]
        assert "own address" in checks["reason"] and "answers" in checks["reason"]
        assert checks["vip_check"]["up"] is False and checks["address_check"]["up"] is True
        assert "lbd-backend check" in lbd.lbctl("status").stdout
    wait_until(lambda: backend_of(lbd, lab, name)["in_table"], (RISE + 1) * INTERVAL,
               f"{broken} back in {name}'s table")
    assert backend_of(lbd, lab, name)["checks"]["verdict"] == "ok"


@pytest.mark.parametrize("name", ["dsr4", "ipip6"])
def test_a_stopped_service_is_still_detected_and_named_so(lab, lbd, name):
    vip, _, _, broken = VIPS[name]
    lab.stop_server(broken, "http")
    try:
        wait_until(lambda: not backend_of(lbd, lab, name)["in_table"], (FALL + 1) * INTERVAL,
                   f"{broken} out of {name}'s table")
        # the second signal follows at the same pace
        wait_until(lambda: backend_of(lbd, lab, name)["checks"]["verdict"] == "service_down", INTERVAL * 2,
                   "both checks failing")
        reason = backend_of(lbd, lab, name)["checks"]["reason"]
        assert reason.startswith("service down") and "connect refused" in reason, reason
        assert lbd.metric("lbd_health_verdict", vip=name, verdict="service_down") == 1
    finally:
        lab.start_server(broken, "http")
    wait_until(lambda: backend_of(lbd, lab, name)["in_table"], (RISE + 1) * INTERVAL, "back")


def test_metrics_name_the_failing_check(lab, lbd):
    vip, _, family, broken = VIPS["dsr4"]
    address = str(lab.backends[broken].v4)
    with vip_off_lo(lab, broken, vip, family):
        wait_until(lambda: not backend_of(lbd, lab, "dsr4")["in_table"], (FALL + 1) * INTERVAL, "out")
        assert lbd.metric("lbd_health_check_up", vip="dsr4", backend=address, via="vip") == 0
        assert lbd.metric("lbd_health_check_up", vip="dsr4", backend=address, via="address") == 1
        assert lbd.metric("lbd_health_verdict", vip="dsr4", backend=address, verdict="path_broken") == 1
        assert lbd.metric("lbd_health_checks_total", vip="dsr4", backend=address, via="vip",
                          result="fail") >= FALL
    wait_until(lambda: backend_of(lbd, lab, "dsr4")["in_table"], (RISE + 1) * INTERVAL, "back")
    # the TC program sent checks both ways and dropped none of its own accord
    assert lbd.metric("lbd_health_path_packets_total", result="dsr") > 0
    assert lbd.metric("lbd_health_path_packets_total", result="gue") > 0
    for result in ("unknown_mark", "unparsed", "no_route", "no_neighbour", "too_big", "encap_failed"):
        assert lbd.metric("lbd_health_path_packets_total", result=result) == 0, result


def test_a_reload_routes_checks_for_a_new_vip_and_forgets_a_removed_one(lab, lbd):
    original = Path(lbd.config_path).read_text()
    added = original + vip_entry(lab, "extra", "198.18.100.3", 80, "tcp", "dsr", ["b1", "b3"],
                                 HEALTH.replace("}", ", via: address}"))
    lbd.write_config(added)
    try:
        lbd.lbctl("reload")
        assert "198.18.100.3" in lab.run("lbd", ["ip", "route", "show", "table", "27746"]).stdout
        wait_until(lambda: all(b["checks"]["verdict"] == "ok" and b["checks"]["vip_check"]["up"]
                               for b in lbd.vip("extra")["backends"]), (RISE + 1) * INTERVAL,
                   "the new VIP's checks, both ways, passing")
        assert {b["checks"]["via"] for b in lbd.vip("extra")["backends"]} == {"address"}
    finally:
        lbd.write_config(original)
        lbd.lbctl("reload")
    assert "198.18.100.3" not in lab.run("lbd", ["ip", "route", "show", "table", "27746"]).stdout
    assert "198.18.100.3 " not in lab.run("lbd", ["ip", "neigh"]).stdout


def test_stopping_lbd_removes_the_checks_routing(lab, lbd):
    rules = lab.run("lbd", ["ip", "rule"], check=True).stdout
    assert "0x6c620000/0xffff0000" in rules
    assert "lbd_health_egress" in lab.run("lbd", ["tc", "filter", "show", "dev", "eth0", "egress"]).stdout
    lbd.stop()
    try:
        for family in ("-4", "-6"):
            assert "0x6c620000" not in lab.run("lbd", ["ip", family, "rule"], check=True).stdout
            assert "00:00:00:00:00:00" not in lab.run("lbd", ["ip", family, "neigh"], check=True).stdout
            assert lab.run("lbd", ["ip", family, "route", "show", "table", "27746"]).stdout.strip() == ""
        assert "lbd_health_egress" not in lab.run("lbd", ["tc", "filter", "show", "dev", "eth0",
                                                          "egress"]).stdout
    finally:
        lbd.start()


def test_teardown_removes_what_a_killed_daemon_left(lab, lbd):
    lbd.kill9()
    # kill -9: nothing removed the checks' routing; forwarding goes on
    assert "0x6c620000/0xffff0000" in lab.run("lbd", ["ip", "rule"], check=True).stdout
    try:
        # lbd --teardown on the lbd host, as an operator runs it there
        lab.run("lbd", [sys.executable, "-m", "lbd.cli", "--teardown", "--config", lbd.config_path],
                host_mounts=True, check=True)
        assert "0x6c620000" not in lab.run("lbd", ["ip", "-6", "rule"], check=True).stdout
        assert "0x6c620000" not in lab.run("lbd", ["ip", "rule"], check=True).stdout
        assert "00:00:00:00:00:00" not in lab.run("lbd", ["ip", "neigh"], check=True).stdout
        assert lab.run("lbd", ["ip", "route", "show", "table", "27746"]).stdout.strip() == ""
        assert "lbd_health_egress" not in lab.run("lbd", ["tc", "filter", "show", "dev", "eth0",
                                                          "egress"]).stdout
    finally:
        lbd.start()
