"""lbd started the way systemd starts it (Type=notify, WatchdogSec): READY=1
only once the program is attached and the config applied, RELOADING=1 then
READY=1 around a reload, WATCHDOG=1 pings from the event loop, STOPPING=1."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from tests.netns.lbdrun import LbdUnderTest

pytestmark = pytest.mark.netns


def receive(sock: socket.socket, until: float) -> list[tuple[float, str]]:
    messages = []
    while time.monotonic() < until:
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            messages.append((time.monotonic(), sock.recv(4096).decode()))
        except TimeoutError:
            break
    return messages


def test_notify_protocol(lab, tmp_path):
    daemon = LbdUnderTest(lab)
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    env = dict(os.environ, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
    lab.detach_xdp("lbd", "eth0")
    proc = lab.spawn("lbd", [sys.executable, "-m", "lbd.cli", "--config", daemon.config_path],
                     host_mounts=True, env=env)
    daemon.proc = proc
    try:
        ready_at = None
        deadline = time.monotonic() + 60
        while ready_at is None and time.monotonic() < deadline and proc.poll() is None:
            for _, message in receive(sock, time.monotonic() + 0.5):
                assert "READY=1" in message or "WATCHDOG=1" in message or "STATUS" in message, message
                if "READY=1" in message:
                    ready_at = time.monotonic()
                    # at READY the program must already be attached and the VIPs applied
                    assert lab.read_xdp_mode("lbd", "eth0") == "native"
                    assert daemon.status()["ready"] and len(daemon.status()["vips"]) == 7
        assert ready_at is not None, daemon.log()

        pings = [m for _, m in receive(sock, time.monotonic() + 1.5) if "WATCHDOG=1" in m]
        assert len(pings) >= 3, f"watchdog at half of 400ms: {pings}"

        os.kill(proc.pid, signal.SIGHUP)  # what ExecReload does
        messages = [m for _, m in receive(sock, time.monotonic() + 3) if "WATCHDOG=1" not in m]
        reload_msgs = [m for m in messages if "RELOADING=1" in m or "READY=1" in m]
        assert reload_msgs and "RELOADING=1" in reload_msgs[0] and "MONOTONIC_USEC=" in reload_msgs[0]
        assert "READY=1" in reload_msgs[-1] and len(reload_msgs) >= 2, messages

        os.kill(proc.pid, signal.SIGTERM)
        stopping = [m for _, m in receive(sock, time.monotonic() + 5) if "STOPPING=1" in m]
        assert stopping
        proc.wait(10)
        assert proc.returncode == 0
        # a clean stop leaves the datapath forwarding
        assert lab.read_xdp_mode("lbd", "eth0") == "native"
    finally:
        daemon.stop()
        sock.close()
        subprocess.run([sys.executable, "-m", "lbd.cli", "--teardown", "--config", daemon.config_path],
                       capture_output=True, timeout=60)
