"""Each check type goes through the VIP's path (issue 21; docs/operating.md "Health
checks"): https (SNI and Host header, the backend answers 200 only when it
got both) and udp (a payload and the answer expected), each through a dsr
and an ipip VIP (a second-chance https VIP: GUE; a udp VIP: plain IP-in-IP),
IPv4 and IPv6. Passing checks keep every backend in; a VIP removed from one
backend's lo takes that one out, with the reason."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.lbdrun import host_config, running, vip_entry, wait_for

pytestmark = pytest.mark.netns

TLS_SERVER = str(Path(__file__).with_name("tls_server.py"))
NAME = "www.example.test"
TIMING = "interval: 300ms, timeout: 200ms, rise: 2, fall: 2"
# name -> (VIP, port, protocol, mode, family, backends, health)
VIPS = {
    "tls4": ("198.18.100.3", 8443, "tcp", "dsr", 4, ["b1", "b2"],
             f"{{type: https, path: /healthz, host: {NAME}, {TIMING}}}"),
    "tls6": ("fd00:100::3", 8443, "tcp", "ipip", 6, ["r1", "r2"],
             f"{{type: https, path: /healthz, host: {NAME}, {TIMING}}}"),
    "udp6": ("fd00:100::3", 5300, "udp", "dsr", 6, ["b1", "b2"],
             f"{{type: udp, payload: health, expect: ' health', {TIMING}}}"),
    "udp4": ("198.18.100.3", 5300, "udp", "ipip", 4, ["r1", "r2"],
             f"{{type: udp, payload: health, expect: ' health', {TIMING}}}"),
}


def config(lab):
    def for_socket(socket_path: str) -> str:
        text = host_config(lab, socket_path, "tests/netns/test_health_check_types.py")
        for name, (vip, port, proto, mode, _, names, health) in VIPS.items():
            text += vip_entry(lab, name, vip, port, proto, mode, names, health)
        return text
    return for_socket


@pytest.fixture(scope="module")
def lbd(lab):
    servers = []
    try:
        for name in ("b1", "b2", "r1", "r2"):
            proc = lab.spawn(name, [sys.executable, TLS_SERVER, "8443", NAME], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
            servers.append(proc)
            assert proc.stdout.readline().strip() == "listening"
        with running(lab, config(lab)) as daemon:
            yield daemon
    finally:
        for proc in servers:
            lab.stop(proc)


def view(lbd, name: str) -> dict:
    return {b["address"]: b for b in lbd.vip(name)["backends"]}


def test_every_check_type_passes_through_the_path(lab, lbd):
    def all_ok():
        return all(b["in_table"] and b["checks"]["verdict"] == "ok"
                   and b["checks"]["vip_check"] and b["checks"]["vip_check"]["state"] == "UP"
                   for name in VIPS for b in view(lbd, name).values())
    wait_for(all_ok, 10, what="every backend's checks passing, through the VIP and at its address")
    counts = {r: lbd.metric("lbd_health_path_packets_total", result=r) for r in ("dsr", "ipip", "gue")}
    assert all(counts.values()), counts  # dsr rewrites, plain IP-in-IP (udp4), GUE (tls6)


@pytest.mark.parametrize("name", list(VIPS))
def test_a_vip_off_lo_fails_the_check_through_the_vip(lab, lbd, name):
    vip, _, _, mode, family, names, _ = VIPS[name]
    broken = lab.backends[names[1]]
    address = str(broken.v4 if family == 4 else broken.v6)
    prefix = f"{vip}/{32 if family == 4 else 128}"
    wait_for(lambda: view(lbd, name)[address]["in_table"], 10, what="in the table before")
    lab.run(broken, ["ip", "addr", "del", prefix, "dev", "lo"], check=True)
    try:
        wait_for(lambda: not view(lbd, name)[address]["in_table"], 5, what=f"{broken.name} out of {name}")
        checks = view(lbd, name)[address]["checks"]
        assert checks["verdict"] == "path_broken" and f"through {mode}" in checks["reason"], checks
        other = view(lbd, name)[str(lab.backends[names[0]].v4 if family == 4 else lab.backends[names[0]].v6)]
        assert other["in_table"], other
    finally:
        lab.prepare_backend(broken)  # puts the VIP back as prepare's own (undo removes it later)
    wait_for(lambda: view(lbd, name)[address]["in_table"], 5, what=f"{broken.name} back in {name}")
