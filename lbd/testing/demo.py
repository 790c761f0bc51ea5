"""`make demo`: lbd forwarding real HTTP in a namespace lab, start to finish.

Builds the lab (clients, router, lbd host, DSR and ipip backends running
nginx), starts lbd on configs/demo.yaml, sends a few hundred HTTP requests
through each VIP from several client addresses, shows which backend answered
how often, `lbctl status --stats` and a few lines of /metrics, then tears
everything down. Exits 0 only if the traffic went through the XDP program.
"""
from __future__ import annotations

import collections
import os
import subprocess
import sys
import time
from pathlib import Path

from lbd.config import load_config
from lbd.control_client import UnixConnection, call
from lbd.testing.lab import Lab
from lbd.testing.topology import url

# the checkout's configs/demo.yaml: the demo runs from a checkout (make demo)
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
REQUESTS = 300


def say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    config = load_config(CONFIG)
    say("== lbd demo: building the namespace lab (clients, router, lbd host, 6 backends)")
    with Lab(vips_v4=[str(v.address) for v in config.vips]) as lab:
        say(f"   lab ready in {lab.build_seconds:.1f}s; helper XDP programs: "
            f"{sorted(set(lab.xdp_modes.values()))} mode")
        os.makedirs(os.path.dirname(config.control_socket), exist_ok=True)
        say(f"== starting lbd --config {CONFIG}")
        daemon = lab.spawn("lbd", [sys.executable, "-m", "lbd.cli", "--config", str(CONFIG)],
                           host_mounts=True)
        try:
            ready = _wait_ready(config.control_socket, daemon)
            if not ready:
                say(Path(daemon.log_path).read_text())
                say("FAILED: lbd did not become ready")
                return 1
            status = call(config.control_socket, "GET", "/status")[1]
            say(f"   lbd ready; XDP attached: {status['attached']}")
            verdicts = _wait_health_verdicts(config.control_socket)
            say(f"   health checks: {verdicts}")
            ok = True
            for vip in config.vips:
                say(f"\n== {REQUESTS} HTTP requests to http://{vip.address}/ ({vip.name}, {vip.mode}) "
                    f"from {len(lab.client.v4s[:30])} client addresses")
                sources = [lab.client.v4s[i % 30] for i in range(REQUESTS)]
                replies = lab.http_get_many(url(str(vip.address), "/whoami"), sources)
                counts = collections.Counter(r.body.split()[0] if r.ok else "FAILED" for r in replies)
                for backend, n in sorted(counts.items()):
                    say(f"   {backend:8} {n:4}  {'#' * (n * 50 // REQUESTS)}")
                ok &= counts.get("FAILED", 0) == 0
            traffic_done = time.time()
            say("\n== waiting for lbd's next walk of its connection tables (every "
                f"{status.get('flows_sample', {}).get('every_s', 10):g} s), so Flows and Idle count these requests")
            _wait_sample_after(config.control_socket, traffic_done)
            say("\n== lbctl status --stats")
            say(subprocess.run([sys.executable, "-m", "lbd.lbctl", "--socket", config.control_socket,
                                "status", "--stats"], capture_output=True, text=True).stdout)
            say("   (Flows: connections still open at the walk; each request above closed its own, so they "
                "are Idle: entries kept until the table needs the room. Health \"unchecked\": the VIP "
                "has no health check; \"checking\": no verdict yet, traffic still sent)\n")
            say("== a few lines of /metrics")
            metrics = _metrics(config.control_socket)
            for line in metrics.splitlines():
                if line.startswith(("lbd_vip_packets_total", "lbd_xdp_actions_total", "lbd_backend_up",
                                    "lbd_drops_total{reason=\"no_backend\"")):
                    say(f"   {line}")
            status = call(config.control_socket, "GET", "/status")[1]
            through_xdp = all(v["counters"]["packets"] >= REQUESTS * 4 for v in status["vips"])
            tx = status["global"]["actions"]["tx"]
            say(f"\n== verdict: {tx} packets bounced to backends by XDP_TX; "
                f"every request answered: {ok}; every VIP's packets counted in XDP: {through_xdp}")
        finally:
            lab.stop(daemon)
            subprocess.run([sys.executable, "-m", "lbd.cli", "--teardown", "--config", str(CONFIG)],
                           capture_output=True)
        say("== lab torn down")
    if ok and through_xdp and tx > 0:
        say("DEMO OK: real HTTP went through lbd's XDP program")
        return 0
    say("DEMO FAILED")
    return 1


def _wait_ready(socket_path: str, daemon, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and daemon.poll() is None:
        try:
            code, status = call(socket_path, "GET", "/status")
            if code == 200 and status.get("ready"):
                return True
        except (SystemExit, OSError, ValueError):
            pass
        time.sleep(0.3)
    return False


def _wait_health_verdicts(socket_path: str, timeout: float = 20) -> str:
    """Until every health-checked backend has its first verdict (a few check
    intervals), so the status below shows UP rather than "checking"."""
    deadline = time.monotonic() + timeout
    while True:
        backends = [b for v in call(socket_path, "GET", "/status")[1]["vips"] for b in v["backends"]
                    if b["health"] != "none"]
        waiting = [b["address"] for b in backends if b["health"] == "INIT"]
        if not waiting:
            return f"{len(backends)} backends checked, each has its first verdict"
        if time.monotonic() > deadline:
            return f"still checking {', '.join(waiting)} after {timeout:g} s"
        time.sleep(0.3)


def _wait_sample_after(socket_path: str, since: float, timeout: float = 30) -> None:
    """Until the daemon has walked its connection tables after `since`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sample = call(socket_path, "GET", "/status")[1].get("flows_sample") or {}
        if (sample.get("at") or 0) > since:
            return
        time.sleep(0.5)


def _metrics(socket_path: str) -> str:
    connection = UnixConnection(socket_path)
    connection.request("GET", "/metrics")
    body = connection.getresponse().read().decode()
    connection.close()
    return body


if __name__ == "__main__":
    sys.exit(main())
