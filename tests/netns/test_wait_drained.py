"""Draining a backend and waiting for its flows, as docs/operating.md's runbook has
it: drain (reload), `lbctl wait-drained VIP BACKEND`, then stop the backend.

The streams and keep-alive connections are real TCP through lbd to nginx on
the lab's backends. web4 starts with b1 alone, so every connection made
before the reload is b1's; the reload drains b1 and adds b2, so the VIP
keeps taking new connections while b1 keeps its established ones.
"""
from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.netns.lbdrun import backends, host_config, running, wait_for

pytestmark = pytest.mark.netns

VIP = "198.18.100.1"
IDLERS = str(Path(__file__).with_name("idlers.py"))


def config(lab, socket_path: str, web4=("b1",), drain=(), echo4_drain=()) -> str:
    return host_config(lab, socket_path, "tests/netns/test_wait_drained.py") + f"""\
  - {{name: web4, address: {VIP}, port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, web4, drain=drain)}}}
  - {{name: echo4, address: {VIP}, port: 5300, protocol: udp, mode: dsr,
     backends: {backends(lab, ["b1", "b2"], drain=echo4_drain)}}}
"""


@pytest.fixture
def lbd(lab):
    with running(lab, lambda socket: config(lab, socket)) as daemon:
        yield daemon


def drain_b1(lab, lbd) -> None:
    lbd.write_config(config(lab, lbd.socket, web4=("b1", "b2"), drain=("b1",)))
    assert "web4: changed" in lbd.lbctl("reload").stdout


def test_wait_drained_waits_while_a_stream_lives_and_returns_once_it_closed(lab, lbd):
    b1 = str(lab.backends["b1"].v4)
    streams = lbd.start_streams(VIP, lab.client.v4s[:2], duration=14)
    waiter = None
    try:
        started = time.monotonic()
        drain_b1(lab, lbd)
        # the streams are alive on the drained backend: at the timeout, 1 and the count
        t0 = time.monotonic()
        short = lbd.lbctl("wait-drained", "web4", b1, "--timeout", "3s", "--idle", "2s", check=False)
        assert short.returncode == 1, short.stdout + short.stderr
        assert "2 live flows left after 3 s" in short.stdout
        assert 3 <= time.monotonic() - t0 < 10, "bounded by --timeout"
        by_address = lbd.lbctl("wait-drained", f"{VIP}:80/tcp", b1, "--timeout", "1s", check=False)
        assert by_address.returncode == 1 and "2 live flows left" in by_address.stdout

        # the default window (30 s): the streams' close, not silence, ends the wait
        waiter = subprocess.Popen([sys.executable, "-m", "lbd.lbctl", "--socket", lbd.socket, "wait-drained",
                                   "web4", b1, "--timeout", "60s"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        time.sleep(2)
        assert waiter.poll() is None, "still waiting while the streams run"
        results = lbd.stream_results(streams, timeout=40)
        closed = time.monotonic()
        out, _ = waiter.communicate(timeout=30)
        waited = time.monotonic() - closed
        assert waiter.returncode == 0, out
        assert "drained, no live flow" in out
        assert waited < 10, f"returned {waited:.1f} s after the streams closed (2 s after the close, " \
                           f"then the next ask)"
        assert closed - started >= 13, "the streams ran their course"
    finally:
        if waiter and waiter.poll() is None:
            waiter.kill()
        if streams.poll() is None:
            streams.kill()
    # the drain kept the established streams on b1, to their end
    assert len(results) == 2 and not [r for r in results if r["error"]], results
    assert {r["backend"] for r in results} == {"b1"}

    # what the sample shows of them now: no live flow on b1, their entries idle
    def sampled():
        b = next(x for x in lbd.vip("web4")["backends"] if x["address"] == b1)
        return b if b["flows"] == 0 and b["idle_flows"] >= 2 else None
    wait_for(sampled, timeout=15, every=0.5, what="b1: 0 live flows, its closed streams idle")
    assert lbd.metric("lbd_backend_flows", vip="web4", backend=b1) == 0
    assert lbd.metric("lbd_backend_idle_flows", vip="web4", backend=b1) >= 2
    row = next(line for line in lbd.lbctl("status").stdout.splitlines() if line.strip().startswith(f"-> {b1} "))
    assert re.search(r"draining\s+\S+\s+0\s+[2-9]\d*\b", row), row  # Flows 0, Idle 2+


def test_an_idle_keepalive_connection_counts_as_live_only_within_idle(lab, lbd):
    b1 = str(lab.backends["b1"].v4)
    idlers = lab.spawn(lab.client, [sys.executable, IDLERS, VIP, "80", "60", *map(str, lab.client.v4s[2:3])],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = idlers.stdout.readline().strip()
        assert line.startswith("ready"), line
        drain_b1(lab, lbd)
        # silent, but not for 30 s yet: live under the default window
        quiet = lbd.lbctl("wait-drained", "web4", b1, "--timeout", "2s", check=False)
        assert quiet.returncode == 1 and "1 live flows left" in quiet.stdout, quiet.stdout + quiet.stderr
        # with --idle 2s it no longer counts once silent that long
        t0 = time.monotonic()
        idle = lbd.lbctl("wait-drained", "web4", b1, "--timeout", "20s", "--idle", "2s", check=False)
        assert idle.returncode == 0, idle.stdout + idle.stderr
        assert "1 idle" in idle.stdout and time.monotonic() - t0 < 10
        # and the connection is still b1's: the drain kept it
        out, _ = idlers.communicate("go\n", timeout=30)
        reply = [row for row in out.splitlines() if row.startswith("{")]
        assert '"second": "b1"' in reply[0] and '"error": null' in reply[0], reply
    finally:
        if idlers.poll() is None:
            idlers.kill()


def test_wait_drained_refuses_what_can_never_drain(lab, lbd):
    b1 = str(lab.backends["b1"].v4)
    active = lbd.lbctl("wait-drained", "web4", b1, "--timeout", "5s", check=False)
    assert active.returncode == 2 and "is active" in active.stderr, active.stderr
    unknown = lbd.lbctl("wait-drained", "web9", b1, check=False)
    assert unknown.returncode == 2 and "no VIP named or at 'web9'" in unknown.stderr
    stranger = lbd.lbctl("wait-drained", "web4", "198.51.100.99", check=False)
    assert stranger.returncode == 2 and "is not a backend of VIP web4" in stranger.stderr


def test_wait_drained_on_a_udp_vip_speaks_of_silence_not_of_fin(lab, lbd):
    # issue 19: it said "after the client's FIN or RST", which UDP has not
    b1 = str(lab.backends["b1"].v4)
    answers = [lab.udp_echo(VIP, "hi", source=source) for source in lab.client.v4s[:12]]
    assert sum(a is not None and a.startswith("b1 ") for a in answers) >= 1, answers
    lbd.write_config(config(lab, lbd.socket, echo4_drain=("b1",)))
    assert "echo4: changed" in lbd.lbctl("reload").stdout
    # b1's datagram flows are live until quiet for --idle, then it is drained
    waited = lbd.lbctl("wait-drained", "echo4", b1, "--timeout", "30s", "--idle", "1s", check=False)
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "drained, no live flow" in waited.stdout and "no packet for 1 s" in waited.stdout, waited.stdout
    assert "UDP flow has no close" in waited.stdout and "FIN" not in waited.stdout, waited.stdout
