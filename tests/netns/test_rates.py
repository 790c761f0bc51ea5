"""`lbctl status --rate` against real traffic (docs/operating.md: Operations): per VIP
and per backend, new flows, packets and bytes per second over the daemon's
last seconds; a VIP that gets traffic shows it, one that gets none shows 0.
And `--watch`, which redraws that view in place."""
from __future__ import annotations

import time

import pytest

from tests.netns.lbdrun import Connections, LbdUnderTest, backends, host_config

pytestmark = pytest.mark.netns

BUSY, QUIET = "198.18.100.1", "198.18.100.3"


def config(lab, socket_path: str) -> str:
    return host_config(lab, socket_path, "tests/netns/test_rates.py") + f"""\
  - {{name: busy, address: {BUSY}, port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, ("b1", "b2"))}}}
  - {{name: quiet, address: {QUIET}, port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, ("b1", "b2"))}}}
"""


def columns(text: str, starts: str) -> list[float]:
    """NewFlows/s, Packets/s and Bytes/s of the line that starts so."""
    line = next(line for line in text.splitlines() if line.startswith(starts))
    return [float(x) for x in line.split()[2:5]]


def test_status_rate_shows_the_traffic_of_the_last_seconds(lab):
    daemon = LbdUnderTest(lab)
    daemon.write_config(config(lab, daemon.socket))
    traffic = None
    try:
        daemon.start()
        traffic = Connections(lab, BUSY, lab.client.v4s[:20], per_s=40, max_s=40)
        time.sleep(7)  # more than the rate window (5 s)
        text = daemon.lbctl("status", "--rate").stdout
        frames = daemon.lbctl("status", "--rate", "--watch", "--count", "2").stdout
        done = traffic.stop()
        traffic = None
    finally:
        if traffic:
            traffic.kill()
        daemon.teardown()
    ok = [c for c in done if not c["error"]]
    assert len(ok) >= 100, done[:3]
    assert "rates per second over the last" in text.splitlines()[0]
    new, packets, bytes_ = columns(text, f"TCP  {BUSY}:80")
    # about 40 connections a second were made (fewer on a busy machine), each
    # an entry at its handshake's ACK and a few packets of a GET
    assert 5 <= new <= 60 and packets >= 3 * new and bytes_ >= 50 * packets, text
    assert columns(text, f"TCP  {QUIET}:80") == [0.0, 0.0, 0.0], text
    lines = text.splitlines()
    busy_at = next(i for i, line in enumerate(lines) if line.startswith(f"TCP  {BUSY}:80"))
    per_backend = [[float(x) for x in lines[i].split()[2:5]] for i in (busy_at + 1, busy_at + 2)]
    assert all(row[0] > 0 and row[1] > 0 for row in per_backend), text
    assert abs(sum(row[0] for row in per_backend) - new) <= 0.2, "the backends' new flows are the VIP's"
    quiet_at = next(i for i, line in enumerate(lines) if line.startswith(f"TCP  {QUIET}:80"))
    assert [float(x) for x in lines[quiet_at + 1].split()[2:5]] == [0.0, 0.0, 0.0]

    # --watch: two frames, each homing the cursor and redrawing the same view
    assert frames.startswith("\x1b[2J\x1b[H") and frames.count("\x1b[H") == 2, repr(frames[:80])
    assert all(f"TCP  {BUSY}:80" in frame for frame in frames.split("\x1b[H")[1:])
    assert "Ctrl-C to stop" in frames
