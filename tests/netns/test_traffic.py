"""Real traffic end to end: the lbd daemon in the lab's lbd namespace, real
HTTP and UDP from client namespaces through the VIPs to nginx and the UDP
echo on the backends, and things going wrong in the middle.

Every test reports the XDP mode lbd ran in (native on the lab's veths)."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests import yamlbombs
from tests.netns.lbdrun import lab_config, running

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lbd(lab):
    with running(lab) as daemon:
        yield daemon


@pytest.fixture(autouse=True)
def report_mode(lbd, pytestconfig, request):
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    mode = ", ".join(f"{k}={v}" for k, v in lbd.status()["attached"].items())
    assert "native" in mode, f"the lab runs lbd in native XDP mode, got {mode}"
    if reporter:
        reporter.write_line(f"  [{request.node.name}: lbd XDP mode {mode}]")


def answered_by(replies) -> collections.Counter:
    assert all(r.ok for r in replies), [r.error for r in replies if not r.ok][:5]
    return collections.Counter(r.body.split()[0] for r in replies)


@pytest.mark.parametrize("vip,name,family,expected", [
    ("198.18.100.1", "web4", 4, {"b1", "b2", "b3"}),
    ("fd00:100::1", "web6", 6, {"b1", "b2", "b3"}),
    ("198.18.100.2", "ipip4", 4, {"r1", "r2", "r3"}),
    ("fd00:100::2", "ipip6", 6, {"r1", "r2", "r3"}),
])
def test_http_through_vip(lab, lbd, vip, name, family, expected):
    before = lbd.vip(name)["counters"]["packets"]
    tx_before = lbd.status()["global"]["actions"]["tx"]
    sources = (lab.client.v4s if family == 4 else lab.client.v6s)[:30]
    counts = answered_by(lab.http_get_many(lab.url(vip, "/whoami"), sources))
    assert set(counts) <= expected and len(counts) >= 2, counts
    # every request's packets went through the XDP program (SYN, ACK, request, FIN...)
    after = lbd.vip(name)["counters"]["packets"]
    assert after - before >= 30 * 4
    assert lbd.status()["global"]["actions"]["tx"] - tx_before >= 30 * 4


def test_udp_echo_through_vip_and_metrics_count_exactly(lab, lbd):
    before = lbd.metric("lbd_vip_packets_total", vip="echo4")
    replies = [lab.udp_echo("198.18.100.1", f"n{i}", source=lab.client.v4s[i]) for i in range(20)]
    assert all(r and r.split()[0] in {"b1", "b2", "b3"} and r.endswith(f"n{i}")
               for i, r in enumerate(replies)), replies
    # UDP has no handshake: /metrics counts exactly the datagrams the clients sent
    assert lbd.metric("lbd_vip_packets_total", vip="echo4") - before == 20


def test_metrics_count_tcp_packets_within_handshakes(lab, lbd):
    before = lbd.metric("lbd_vip_packets_total", vip="web4")
    requests = 25
    answered_by(lab.http_get_many(lab.url("198.18.100.1", "/"), lab.client.v4s[:requests]))
    sent = lbd.metric("lbd_vip_packets_total", vip="web4") - before
    # per request the client sends SYN, ACK, the request, FIN(+ACK), final ACK: 4 to 7
    # packets; health checks go to backend addresses, not the VIP
    assert 4 * requests <= sent <= 7 * requests, sent


def test_weighted_spread_within_five_points(lab, lbd):
    # 600 connections from one client address and 600 fixed source ports: a
    # repeatable sample (random ephemeral ports would make the test a lottery)
    result = lab.run(lab.client, [sys.executable, str(Path(__file__).with_name("fixedports.py")),
                                  "198.18.100.3", "80", str(lab.client.v4s[0]), "20000", "600"], timeout=120)
    counts = collections.Counter(json.loads(result.stdout))
    assert sum(counts[b] for b in ("b1", "b2", "b3")) == 600, counts
    shares = {name: counts[name] / 600 for name in ("b1", "b2", "b3")}
    print("weighted shares:", shares)
    for name, want in (("b1", 0.25), ("b2", 0.25), ("b3", 0.50)):
        assert abs(shares[name] - want) <= 0.05, shares


def test_client_affinity(lab, lbd):
    one = answered_by(lab.http_get_many(lab.url("fd00:100::3", "/"), [lab.client.v6s[4]] * 100))
    assert len(one) == 1, f"100 connections from one client address: {one}"
    many = answered_by(lab.http_get_many(lab.url("fd00:100::3", "/"), lab.client.v6s[:50]))
    assert len(many) >= 2, f"50 client addresses should spread: {many}"


def test_backend_failure_leaves_table_and_new_connections_succeed(lab, lbd):
    interval, fall = 0.5, 2
    stop_clients = threading.Event()

    def clients_keep_going():
        while not stop_clients.is_set():
            lab.http_get(lab.url("198.18.100.1", "/"), source=lab.client.v4s[1], timeout=2)

    background = threading.Thread(target=clients_keep_going, daemon=True)
    background.start()
    streams = lbd.start_streams("198.18.100.1", lab.client.v4s[20:32], duration=6)
    time.sleep(1)
    lab.stop_server("b2", "http")
    stopped = time.monotonic()
    try:
        deadline = stopped + interval * fall + 1.0 + 1.0  # the promise, plus polling slack
        left = None
        while time.monotonic() < deadline:
            backend = next(b for b in lbd.vip("web4")["backends"] if b["address"].endswith(".12"))
            if not backend["in_table"]:
                left = time.monotonic() - stopped
                break
            time.sleep(0.05)
        assert left is not None and left <= interval * fall + 1.0, f"b2 still in the table after {left}"
        print(f"b2 left the table {left:.2f}s after its server stopped")
        # after that, every new connection succeeds, none reaches b2
        counts = answered_by(lab.http_get_many(lab.url("198.18.100.1", "/"), lab.client.v4s[:40]))
        assert "b2" not in counts
        # connections on the other backends were never reset
        results = lbd.stream_results(streams, timeout=30)
        survivors = [r for r in results if r["backend"] in ("b1", "b3")]
        assert survivors and not [r for r in survivors if r["error"]], results
        assert lbd.metric("lbd_backend_up", vip="web4", backend=str(lab.backends["b2"].v4)) == 0
    finally:
        if streams.poll() is None:
            streams.kill()
        stop_clients.set()
        background.join(10)
        lab.start_server("b2", "http")
    # and it comes back once healthy
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if all(b["in_table"] for b in lbd.vip("web4")["backends"]):
            break
        time.sleep(0.2)
    assert all(b["in_table"] for b in lbd.vip("web4")["backends"])


def test_reload_under_load_adds_and_drains_without_breaking_streams(lab, lbd):
    lbd.write_config(lab_config(lab, lbd.socket, web_backends=("b1", "b2")))
    lbd.lbctl("reload")
    sources = lab.client.v4s[10:22]
    streams = lbd.start_streams("198.18.100.1", sources, duration=12)
    try:
        time.sleep(2)
        lbd.write_config(lab_config(lab, lbd.socket, web_backends=("b1", "b2", "b3"), web_drain=("b1",)))
        out = lbd.lbctl("reload").stdout
        assert "web4: changed" in out
        counts = answered_by(lab.http_get_many(lab.url("198.18.100.1", "/"), lab.client.v4s[30:59]))
        assert "b3" in counts, f"new connections reach the added backend: {counts}"
        assert "b1" not in counts, f"the drained backend gets no new connections: {counts}"
        results = lbd.stream_results(streams, timeout=40)
    finally:
        if streams.poll() is None:
            streams.kill()
        lbd.write_config(lab_config(lab, lbd.socket))
        lbd.lbctl("reload")
    assert len(results) == len(sources)
    broken = [r for r in results if r["error"]]
    assert not broken, broken
    on_b1 = [r for r in results if r["backend"] == "b1"]
    assert on_b1, "some streams started on b1 before it was drained"
    assert all(r["bytes"] > 32_000 * 5 for r in results), "streams kept flowing"


def test_hitless_restart_after_kill_9(lab, lbd):
    streams = lbd.start_streams("198.18.100.1", lab.client.v4s[40:52], duration=14)
    try:
        time.sleep(2)
        table_before = lbd.conntrack_keys()
        lbd.kill9()
        # forwarding goes on without the daemon
        during = answered_by(lab.http_get_many(lab.url("198.18.100.1", "/"), lab.client.v4s[:20]))
        assert sum(during.values()) == 20
        lbd.start()
        assert lbd.conntrack_keys() >= table_before, "no connection-table entry lost"
        results = lbd.stream_results(streams, timeout=40)
    finally:
        if streams.poll() is None:
            streams.kill()
    broken = [r for r in results if r["error"]]
    assert not broken, broken
    assert "datapath_adopted" in lbd.log()


def who_serves_whom(lab) -> list[str]:
    # the client-affinity VIP answers each client address from one backend:
    # a mapping that must not change when a bad reload is refused
    replies = lab.http_get_many(lab.url("fd00:100::3", "/whoami"), lab.client.v6s[:20])
    answered_by(replies)
    return [r.body.split()[0] for r in replies]


def test_bad_reload_changes_nothing(lab, lbd):
    good = lbd.status()
    fingerprints = {v["name"]: v["fingerprint"] for v in good["vips"]}
    failures = lbd.metric("lbd_reloads_total", result="failure")
    before = who_serves_whom(lab)
    original = lab_config(lab, lbd.socket)
    lbd.write_config(original.replace("port: 80, protocol: tcp, mode: dsr, health",
                                      "port: 80, protocol: tcpp, mode: dsr, health"))
    try:
        result = lbd.lbctl("reload", check=False)
        assert result.returncode != 0 and "tcpp" in result.stderr
        status = lbd.status()
        assert status["reload"]["last_result"] == "failure" and "tcpp" in status["reload"]["last_error"]
        assert lbd.metric("lbd_reloads_total", result="failure") == failures + 1
        assert lbd.metric("lbd_config_last_reload_successful") == 0
        assert "reload_failure" in lbd.log()
        assert {v["name"]: v["fingerprint"] for v in status["vips"]} == fingerprints
        assert who_serves_whom(lab) == before, "traffic continues exactly as before"
    finally:
        lbd.write_config(original)
        lbd.lbctl("reload")


@pytest.mark.parametrize("shape", sorted(yamlbombs.shapes("vips:\n")))
def test_yaml_bomb_reload_is_refused_quickly(lab, lbd, shape):
    # issue 19: a 12-line alias bomb took `lbd check` past 60 s and 4 GB; by
    # `lbctl reload` it reached the daemon itself. lbctl's own timeout (60 s) bounds this.
    fingerprints = {v["name"]: v["fingerprint"] for v in lbd.status()["vips"]}
    before = who_serves_whom(lab)
    original = lab_config(lab, lbd.socket)
    bomb = yamlbombs.shapes(original)[shape]
    lbd.write_config(bomb.text)
    try:
        result = lbd.lbctl("reload", check=False)
        assert result.returncode != 0, result.stdout
        error = lbd.status()["reload"]["last_error"]
        assert error in result.stderr and "\n" not in error and len(error) < 400, error
        line = int(error.removeprefix(f"{lbd.config_path}:").split(":")[0])
        assert line in bomb.lines and error.startswith(f"{lbd.config_path}:{line}: {bomb.path}"), error
        assert bomb.word in error, error
        assert {v["name"]: v["fingerprint"] for v in lbd.status()["vips"]} == fingerprints
        assert who_serves_whom(lab) == before, "traffic continues exactly as before"
    finally:
        lbd.write_config(original)
        lbd.lbctl("reload")


def test_boot_only_change_is_refused_by_name(lab, lbd):
    original = lab_config(lab, lbd.socket)
    lbd.write_config(original.replace("ipip: {", "limits: {ring_size: 251}\nipip: {"))
    try:
        result = lbd.lbctl("reload", check=False)
        assert result.returncode != 0 and "limits.ring_size" in result.stderr
        assert lbd.metric("lbd_reloads_total", result="refused") >= 1
    finally:
        lbd.write_config(original)
        lbd.lbctl("reload")


def test_explain_names_slot_and_backend(lab, lbd):
    out = lbd.lbctl("explain", f"{lab.client.v4s[3]}:40000", "198.18.100.1:80/tcp").stdout
    assert '"table_slot"' in out and '"vip": "web4"' in out and "new flow" in out


def test_metrics_have_no_client_addresses(lab, lbd):
    text = lbd.metrics()
    assert "198.18.10." not in text and "fd00:10::" not in text
    assert "lbd_xdp_attached" in text and 'mode="native"' in text


def test_check_diff_says_what_a_reload_would_move(lab, lbd):
    fingerprint = lbd.vip("web4")["fingerprint"]
    candidate = Path(lab.tmpdir, "candidate.yaml")
    candidate.write_text(lab_config(lab, lbd.socket, web_backends=("b1", "b2")))
    result = subprocess.run([sys.executable, "-m", "lbd.cli", "check", "--diff", "--socket", lbd.socket,
                             str(candidate)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    web4 = next(line for line in result.stdout.splitlines() if line.startswith("web4:"))
    share = float(web4.split(",")[1].split("%")[0])
    # removing one of three equal backends moves about a third of the flows
    assert 30.0 <= share <= 37.0, web4
    assert "echo4: unchanged, 0.00%" in result.stdout
    assert lbd.vip("web4")["fingerprint"] == fingerprint, "check --diff applies nothing"
    assert len(lbd.vip("web4")["backends"]) == 3


def check_metrics_serve_the_dashboard(text: str, without: tuple[str, ...] = ()) -> None:
    """promtool accepts the scrape, and it has every metric the dashboard
    queries (but those whose names start with one of `without`, and the
    backends' own, which their node_exporters serve: test_prometheus.py)."""
    check = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    from tests.unit.test_packaging import BACKEND_METRICS, DASHBOARD, _dashboard_exprs, _metric_names
    queried = set().union(*map(_metric_names, _dashboard_exprs(json.loads(DASHBOARD.read_text())))) \
        - BACKEND_METRICS
    queried = {name for name in queried if not without or not name.startswith(without)}
    exported = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    exported |= {name + "_total" for name in exported}
    assert queried <= exported, sorted(queried - exported)


def test_metrics_pass_promtool_and_serve_the_dashboard(lab, lbd):
    # lbd_bgp_* exist only with a bgp section: test_fleet.py checks them on a fleet host
    check_metrics_serve_the_dashboard(lbd.metrics(), without=("lbd_bgp_",))
