"""A real Prometheus scraping the real daemon, with lbd's alert rules loaded.

Debian's Prometheus server (/usr/bin/prometheus) runs with a temporary config
and storage directory in the lbd host's namespace, listening on 127.0.0.1 on
a free port, scraping every second and evaluating configs/lbd-alerts.yaml
every second. The lab is the two-host BGP fleet of test_fleet.py (BIRD on the
router and beside each lbd), so every row of the dashboard has data, the BGP
row included, and the fleet alerts see two hosts: lbd listens on
127.0.0.1:9100 in its namespace, as everywhere else, and lbd2 on its lab LAN
address, which the Prometheus in lbd's namespace reaches.

Through Prometheus' HTTP API (from the same namespace, tests/netns/promquery.py)
the tests check that the rules loaded and evaluate without error, that every
alert expression parses and none is active in the healthy fleet, that every
query of configs/grafana-dashboard.json (its Grafana variables substituted)
parses and returns at least one series, and that real failures make the
alerts they should pending: a backend that one host's checks fail (backend
down there, and the hosts' tables differ), a backend without its decap
program (lbd-backend's metrics, served from the backend's namespace as its
node_exporter would: tests/netns/backend_exporter.py) and a program
detached from a host (not attached, its VIPs withdrawn). `for:` durations are minutes, so
the tests see alerts pending; promtool's unit tests
(configs/lbd-alerts.test.yaml) take them to firing.

The tests run in file order on one fleet and one Prometheus; the last one
detaches a host's program and leaves it so (the lab is this module's own).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from lbd.testing.lab import Lab
from tests.netns.test_fleet import BACKENDS, VIP4, VIP6, FleetHost, both, wait_for
from tests.unit.test_packaging import DASHBOARD, _dashboard_exprs

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "configs" / "lbd-alerts.yaml"
PROMETHEUS = "/usr/bin/prometheus"
PROMQUERY = str(Path(__file__).with_name("promquery.py"))
JOB = "lbd"
BACKEND_JOB = "node"   # the backends' node_exporter, serving lbd-backend's textfile
EXPORTER = "tests.netns.backend_exporter"
EXPORTER_BACKEND, EXPORTER_PORT = "r1", 9101
# The dashboard's variables as Grafana would fill them with "All" selected and
# a 1 s scrape interval.
GRAFANA_VARIABLES = {"instance": ".*", "vip": ".*", "__rate_interval": "10s", "__range": "1m",
                     "__interval": "1s", "__range_s": "60", "__interval_ms": "1000"}
START_S = 30    # Prometheus answers ready, its targets are up, rules evaluated
DATA_S = 40     # every dashboard query has series (the 10 s connection-table sample included)
ALERT_S = 30    # an alert shows up, or goes away, after a change in the lab


class Prometheus:
    """The server in a lab namespace, and its HTTP API through promquery.py."""

    def __init__(self, lab: Lab, ns: str, port: int, directory: str):
        self.lab, self.ns, self.port, self.dir = lab, ns, port, directory
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = os.path.join(directory, "prometheus.log")
        self.proc: subprocess.Popen | None = None

    def start(self, config: str) -> None:
        config_path = os.path.join(self.dir, "prometheus.yml")
        Path(config_path).write_text(config)
        log = open(self.log_path, "ab")
        try:
            self.proc = self.lab.spawn(self.ns, [
                PROMETHEUS, f"--config.file={config_path}",
                f"--storage.tsdb.path={os.path.join(self.dir, 'data')}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1h", "--log.level=info"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GOMAXPROCS": "1"})
        finally:
            log.close()
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
            if self.get([("/-/ready", {})])[0]["code"] == 200:
                return
            time.sleep(0.3)
        raise TimeoutError(f"prometheus not ready in {START_S}s:\n{self.log()}")

    def log(self) -> str:
        try:
            return Path(self.log_path).read_text()[-4000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, timeout=10)

    def get(self, requests: list[tuple[str, dict]]) -> list[dict]:
        """Answers to GET requests, in one process in the namespace."""
        job = json.dumps({"base": self.base, "requests": requests, "timeout": 10})
        result = self.lab.run(self.ns, [sys.executable, PROMQUERY], input=job, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        return json.loads(result.stdout)

    def api(self, path: str, **params) -> dict:
        answer = self.get([(path, params)])[0]
        assert answer["code"] == 200 and answer["body"]["status"] == "success", answer
        return answer["body"]["data"]

    def queries(self, exprs: list[str]) -> list[dict]:
        """/api/v1/query of each expression: the JSON bodies."""
        return [a["body"] if isinstance(a["body"], dict) else {"status": "error", "error": str(a)}
                for a in self.get([("/api/v1/query", {"query": e}) for e in exprs])]

    def active_alerts(self) -> set[tuple]:
        """(alertname, state, instance, the other labels that say which) of
        every pending or firing alert."""
        found = set()
        for alert in self.api("/api/v1/alerts")["alerts"]:
            labels = alert["labels"]
            which = tuple(sorted((k, v) for k, v in labels.items()
                                 if k in ("vip", "backend", "interface", "peer", "table", "reason")))
            found.add((labels["alertname"], alert["state"], labels.get("instance", ""), which))
        return found


def prometheus_config(targets: list[str], backends: list[str]) -> str:
    return yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": targets}]},
                           {"job_name": BACKEND_JOB, "static_configs": [{"targets": backends}]}],
    }, sort_keys=False)


def free_port(lab: Lab, ns: str) -> int:
    """A TCP port free on 127.0.0.1 in the namespace (nothing else binds there meanwhile)."""
    probe = "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])"
    return int(lab.run(ns, [sys.executable, "-c", probe], check=True).stdout)


def substitute(expr: str) -> str:
    """The expression with the dashboard's Grafana variables filled in; an
    unknown variable fails the test (add it to GRAFANA_VARIABLES)."""
    def value(match):
        name = match.group(1) or match.group(2)
        assert name in GRAFANA_VARIABLES, f"Grafana variable ${name} in {expr!r}"
        return GRAFANA_VARIABLES[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, expression) of every query of the dashboard: panel targets,
    annotations, template variables (label_values(...) as Grafana sends it)."""
    dashboard = json.loads(DASHBOARD.read_text())
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['id']} {panel['title']!r} {target.get('refId', '')}", target["expr"]))
    for annotation in dashboard.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            found.append((f"annotation {annotation['name']!r}", annotation["expr"]))
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            found.append((f"variable ${variable['name']}", variable["definition"]))
    # nothing the packaging test checks the names of is left out here
    assert {expr for _, expr in found} == set(_dashboard_exprs(dashboard)), "a dashboard query not walked"
    return found


def as_request(expr: str) -> tuple[str, dict]:
    """The API request Grafana makes for a query of the dashboard."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", expr.strip())
    if match:
        return f"/api/v1/label/{match.group(2)}/values", {"match[]": match.group(1)}
    return "/api/v1/query", {"query": expr}


def series_count(answer: dict) -> int:
    data = answer["body"]["data"]
    return len(data["result"]) if isinstance(data, dict) else len(data)


@pytest.fixture(scope="module")
def fleet():
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root (namespaces, veth, XDP)")
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.fail(f"{PROMETHEUS} not found: apt-get install prometheus (lbd.hostsetup installs it "
                    "for the lab)", pytrace=False)
    with Lab(vips_v4=[VIP4], vips_v6=[VIP6], dsr_backends=0, ipip_backends=3, lbd_hosts=2,
             bgp=True) as lab:
        order = list(BACKENDS)
        random.Random(7).shuffle(order)
        hosts = {"lbd": FleetHost(lab, "lbd", list(BACKENDS)), "lbd2": FleetHost(lab, "lbd2", order)}
        # lbd2 serves /metrics on its LAN address, where lbd's namespace reaches it
        lbd2 = hosts["lbd2"].lbd
        config = Path(lbd2.config_path).read_text()
        assert "http: {listen: 127.0.0.1:9100}" in config
        lbd2.write_config(config.replace("http: {listen: 127.0.0.1:9100}",
                                         f"http: {{listen: '{lab.nodes['lbd2'].v4}:9100'}}"))
        for host in hosts.values():
            host.start()
        wait_for(lambda: lab.router_nexthops(f"{VIP4}/32") == both(lab), "the router's ECMP route via both hosts")
        yield lab, hosts


@pytest.fixture(scope="module")
def instances(fleet):
    """Host name -> the instance label Prometheus gives its target."""
    lab, _ = fleet
    return {"lbd": "127.0.0.1:9100", "lbd2": f"{lab.nodes['lbd2'].v4}:9100"}


@pytest.fixture(scope="module")
def backend_target(fleet):
    """lbd-backend's metrics of one ipip backend, served on its lab address as
    its node_exporter would (tests/netns/backend_exporter.py); the target."""
    lab, _ = fleet
    backend = lab.backends[EXPORTER_BACKEND]
    proc = lab.spawn(backend, [sys.executable, "-m", EXPORTER, str(backend.v4), str(EXPORTER_PORT),
                               backend.ifname], cwd=str(ROOT))
    try:
        yield f"{backend.v4}:{EXPORTER_PORT}"
    finally:
        lab.stop(proc, timeout=10)


@pytest.fixture(scope="module")
def prometheus(fleet, instances, backend_target):
    lab, _ = fleet
    directory = tempfile.mkdtemp(prefix="lbd-prometheus-")
    server = Prometheus(lab, "lbd", free_port(lab, "lbd"), directory)
    try:
        server.start(prometheus_config(list(instances.values()), [backend_target]))
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def test_prometheus_scrapes_both_hosts_and_loads_every_rule_without_errors(prometheus, instances,
                                                                          backend_target):
    expected = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    scrapes = f'min(count_over_time(up{{job="{JOB}"}}[1m]))'

    def alert_rules() -> list[dict]:
        return [r for g in prometheus.api("/api/v1/rules", type="alert")["groups"] for r in g["rules"]]

    def loaded() -> bool:
        targets = prometheus.api("/api/v1/targets")["activeTargets"]
        up = {t["labels"]["instance"] for t in targets if t["health"] == "up"}
        rules = alert_rules()
        evaluated = bool(rules) and all(r["health"] != "unknown" for r in rules)
        result = prometheus.api("/api/v1/query", query=scrapes)["result"]
        return up == {*instances.values(), backend_target} and evaluated and bool(result) and \
            float(result[0]["value"][1]) >= 3

    try:
        wait_for(loaded, "both hosts and the backend up, 3 scrapes of each host in, every rule evaluated",
                 timeout=START_S)
    except AssertionError:
        raise AssertionError(f"targets: {prometheus.api('/api/v1/targets')['activeTargets']}\n"
                             f"rules: {alert_rules()}\n{prometheus.log()}") from None
    rules = alert_rules()
    assert {r["name"] for r in rules} == expected
    assert all(r["health"] == "ok" and not r.get("lastError") for r in rules), \
        [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok" or r.get("lastError")]


def test_every_alert_expression_parses_and_none_is_active_in_a_healthy_fleet(prometheus):
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    answers = prometheus.queries([rule["expr"] for rule in rules])
    bad = [(rule["alert"], answer.get("error")) for rule, answer in zip(rules, answers)
           if answer.get("status") != "success"]
    assert not bad, bad
    # no alert pending or firing, for 3 s in a row (3 evaluations)
    quiet_since = [None]

    def stays_quiet():
        if prometheus.active_alerts():
            quiet_since[0] = None
        elif quiet_since[0] is None:
            quiet_since[0] = time.monotonic()
        return quiet_since[0] is not None and time.monotonic() - quiet_since[0] >= 3

    try:
        wait_for(stays_quiet, "no alert active for 3 s", timeout=ALERT_S)
    except AssertionError:
        raise AssertionError(f"active in a healthy fleet: {sorted(prometheus.active_alerts())}") from None


def test_every_dashboard_query_parses_and_returns_series(fleet, prometheus):
    """With some traffic and one reload (the dashboard's Reloads annotation
    shows reloads of the last minute), every query has at least one series;
    a query still empty after DATA_S fails with its panel named."""
    lab, hosts = fleet
    hosts["lbd"].lbd.lbctl("reload")
    for vip in (VIP4, VIP6):
        replies = lab.http_get_many(lab.url(vip, "/whoami"), lab.client.v4s[:20] if vip == VIP4
                                    else lab.client.v6s[:20])
        assert all(r.ok for r in replies), [r for r in replies if not r.ok][:3]
    queries = [(where, substitute(expr)) for where, expr in dashboard_queries()]
    waiting, errors = dict(queries), {}
    deadline = time.monotonic() + DATA_S
    while waiting and time.monotonic() < deadline:
        answers = prometheus.get([as_request(expr) for expr in waiting.values()])
        for (where, expr), answer in zip(list(waiting.items()), answers):
            body = answer["body"]
            if answer["code"] != 200 or not isinstance(body, dict) or body.get("status") != "success":
                errors[where] = (expr, body)
                del waiting[where]
            elif series_count(answer):
                del waiting[where]
        if waiting:
            time.sleep(1)
    assert not errors, f"queries Prometheus refused: {errors}"
    # per-backend QUIC series exist only for backends of a QUIC VIP, which this
    # fleet has none of (tests/netns/test_quic*.py run QUIC VIPs): their queries
    # must parse (above), not find series
    waiting = {where: expr for where, expr in waiting.items() if "lbd_backend_quic_" not in expr}
    assert not waiting, f"queries without a series after {DATA_S}s: {waiting}"
    print(f"{len(queries)} dashboard queries, each with series")


def wait_for_alerts(prometheus, predicate, what: str) -> set:
    seen = [set()]

    def check():
        seen[0] = prometheus.active_alerts()
        return predicate({(name, instance, which) for name, _state, instance, which in seen[0]})

    try:
        wait_for(check, what, timeout=ALERT_S)
    except AssertionError:
        raise AssertionError(f"{what}: not within {ALERT_S}s; active: {sorted(seen[0])}") from None
    return seen[0]


def test_a_backend_failing_on_one_host_only_makes_backend_down_and_tables_differ_pending(fleet, prometheus,
                                                                                         instances):
    lab, hosts = fleet
    r1 = lab.backends["r1"]
    lbd = instances["lbd"]
    expected = {("LbdBackendDown", lbd, (("backend", str(r1.v4)), ("vip", "web4"))),
                ("LbdBackendDown", lbd, (("backend", str(r1.v6)), ("vip", "web6"))),
                ("LbdFleetTablesDiffer", "", (("vip", "web4"),)),
                ("LbdFleetTablesDiffer", "", (("vip", "web6"),))}
    # lbd's health checks of r1 fail, both (and only lbd's: lbd2 still reaches it):
    # r1 drops what lbd's address sends to its port 80 (the checks through the
    # VIP arrive in GUE, decapsulated before netfilter sees them; lbd's output
    # hook would see them addressed to the VIP, before the TC program
    # encapsulates them)
    lbd_node = hosts["lbd"].node
    rules = ("table inet promtest {\n chain in {\n type filter hook input priority 0;\n"
             f" ip saddr {lbd_node.v4} tcp dport 80 drop\n ip6 saddr {lbd_node.v6} tcp dport 80 drop\n }}\n}}\n")
    lab.run(r1, ["nft", "-f", "-"], input=rules, check=True)
    try:
        active = wait_for_alerts(prometheus, lambda found: found == expected,
                                 "r1 down on lbd and the two hosts' tables differ, nothing else")
        assert {state for _, state, _, _ in active} == {"pending"}, active   # for: 5m
    finally:
        lab.run(r1, ["nft", "delete", "table", "inet", "promtest"])
    wait_for_alerts(prometheus, lambda found: not found, "r1 back on lbd: no alert")


def test_a_backend_without_its_decap_program_makes_decap_missing_pending(fleet, prometheus, backend_target,
                                                                         instances):
    lab, _ = fleet
    backend = lab.backends[EXPORTER_BACKEND]
    # the backend says what it lacks; both lbd hosts' checks through the VIPs
    # fail (its service answers at its own address): out of their tables, and
    # named a broken path (issue 21)
    expected = {("LbdBackendDecapMissing", backend_target, (("interface", backend.ifname),))}
    for host in ("lbd", "lbd2"):
        for vip, address in (("web4", backend.v4), ("web6", backend.v6)):
            which = (("backend", str(address)), ("vip", vip))
            expected |= {("LbdBackendDown", instances[host], which),
                         ("LbdBackendPathBroken", instances[host], which)}
    lab.run(backend, ["ip", "link", "set", "dev", backend.ifname, "xdp", "off"], check=True)
    try:
        active = wait_for_alerts(
            prometheus, lambda found: found == expected,
            f"{EXPORTER_BACKEND} without lbd_decap, and out of both hosts' tables, nothing else")
        assert {state for _, state, _, _ in active} == {"pending"}, active   # for: 2m
    finally:
        lab.prepare_backend(backend)
    wait_for_alerts(prometheus, lambda found: not found, f"{EXPORTER_BACKEND} prepared again: no alert")


def test_a_detached_program_makes_not_attached_and_withdrawn_pending(fleet, prometheus, instances):
    lab, hosts = fleet
    lbd2 = instances["lbd2"]
    before = hosts["lbd2"].lbd.metric("lbd_xdp_attached", interface="eth0")
    assert before == 1, "lbd2's program is attached before"
    # what an operator's stray command does: lbd2 keeps running, its program is gone
    lab.run(hosts["lbd2"].node, ["ip", "link", "set", "dev", "eth0", "xdp", "off"], check=True)
    expected = {("LbdXdpNotAttached", lbd2, (("interface", "eth0"),)),
                ("LbdBgpVipWithdrawn", lbd2, (("vip", "web4"),)),
                ("LbdBgpVipWithdrawn", lbd2, (("vip", "web6"),))}
    active = wait_for_alerts(prometheus, lambda found: found == expected,
                             "lbd2 not attached and withdrawing its VIPs, nothing else")
    assert hosts["lbd2"].lbd.metric("lbd_xdp_attached", interface="eth0") == 0
    assert ("LbdBgpVipNotAnnounced", "pending", "", (("vip", "web4"),)) not in active, "lbd still announces"
