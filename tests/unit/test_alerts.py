"""The Prometheus alert rules shipped in configs/lbd-alerts.yaml.

`promtool check rules` accepts them and `promtool test rules` passes their
unit tests (configs/lbd-alerts.test.yaml), which hold, for every alert, a case
where it fires and a case where it does not. Every alert has a severity, a
`for:`, a summary and a runbook; every metric the rules read is one lbd
exports (the METRICS set that also checks the dashboard) or lbd-backend
writes for node_exporter (BACKEND_METRICS), and docs/monitoring.md
names every alert. tests/netns/test_prometheus.py loads the same file into a
real Prometheus scraping the lab.
"""
from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.unit.test_packaging import BACKEND_METRICS, METRICS, ROOT, _metric_names

pytestmark = pytest.mark.unit

RULES = ROOT / "configs" / "lbd-alerts.yaml"
RULE_TESTS = ROOT / "configs" / "lbd-alerts.test.yaml"
MONITORING = ROOT / "docs" / "monitoring.md"   # the Alerts table
SEVERITIES = {"critical", "warning"}
# Not lbd's: the scrape's own health, which Prometheus records for every target.
PROMETHEUS_SERIES = {"up"}


def _promtool() -> str:
    path = shutil.which("promtool")
    if not path:
        pytest.fail("promtool not found: apt-get install prometheus (lbd.hostsetup installs it "
                    "for the lab)", pytrace=False)
    return path


def _alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def _selectors(expr: str) -> set[str]:
    """Names of the series an expression selects: the identifiers left once
    label matchers, ranges, grouping clauses, functions and keywords are
    taken out."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)           # label values
    text = re.sub(r"\{[^}]*\}|\[[^]]*\]", " ", text)               # matchers, ranges
    text = re.sub(r"\b(by|on|without|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    keywords = {"and", "or", "unless", "offset", "bool"}
    return {name for name in re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text)
            if name not in keywords}


def test_promtool_check_rules_accepts_the_file():
    result = subprocess.run([_promtool(), "check", "rules", str(RULES)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout, result.stdout


def test_promtool_test_rules_passes():
    result = subprocess.run([_promtool(), "test", "rules", str(RULE_TESTS)], capture_output=True, text=True,
                            timeout=120, check=False, cwd=RULE_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout, result.stdout


def test_every_alert_has_severity_for_summary_and_runbook():
    alerts = _alerts()
    assert alerts and all("alert" in rule for rule in alerts), "alerting rules only"
    names = [rule["alert"] for rule in alerts]
    assert len(names) == len(set(names)), names
    for rule in alerts:
        name = rule["alert"]
        assert rule.get("labels", {}).get("severity") in SEVERITIES, name
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: a for: duration"
        annotations = rule.get("annotations", {})
        assert annotations.get("summary", "").strip(), f"{name}: summary"
        runbook = annotations.get("runbook", "").strip()
        assert runbook and "\n" not in runbook, f"{name}: a runbook line"
        # a runbook says what to run: an lbctl, lbd, systemctl, ... command
        assert re.search(r"\b(lbctl|lbd|lbd-backend|systemctl|journalctl|birdc|bird|ip|curl)\s+\S", runbook), \
            f"{name}: the runbook names a command"


def test_every_alert_fires_and_stays_quiet_in_the_unit_tests():
    """promtool checks what the test cases expect; this checks that the
    cases exist: each alert is expected to fire once and to be silent once."""
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fires, quiet = set(), set()
    for group in tests["tests"]:
        for case in group.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {rule["alert"] for rule in _alerts()}
    assert names - fires == set(), f"never tested firing: {sorted(names - fires)}"
    assert names - quiet == set(), f"never tested silent: {sorted(names - quiet)}"
    assert (fires | quiet) <= names, f"tests of alerts that do not exist: {sorted((fires | quiet) - names)}"


def test_rules_read_only_metrics_lbd_exports():
    used = set()
    for rule in _alerts():
        lbd_names = _metric_names(rule["expr"])
        exported = METRICS | BACKEND_METRICS
        assert lbd_names <= exported, f"{rule['alert']}: {sorted(lbd_names - exported)}"
        others = _selectors(rule["expr"]) - lbd_names
        assert others <= PROMETHEUS_SERIES, f"{rule['alert']}: {sorted(others)}"
        used |= lbd_names
    # the alerts the issue asks for read these
    for needed in ("lbd_xdp_attached", "lbd_ready", "lbd_vip_backends_up", "lbd_vip_fail_open",
                   "lbd_backend_up", "lbd_config_last_reload_successful", "lbd_drops_total",
                   "lbd_conntrack_entries", "lbd_conntrack_capacity", "lbd_bgp_peer_established",
                   "lbd_bgp_vip_announced", "lbd_vip_table_info"):
        assert needed in used, needed


def test_selector_extraction_sees_what_it_must():
    """_selectors is not vacuous: it finds series names, and only those."""
    expr = ('sum by (instance, job, reason) (rate(lbd_drops_total{reason=~"a|b"}[5m])) > 1 and '
            'up{job="lbd"} == 0 unless on (instance) node_load1 offset 5m')
    assert _selectors(expr) == {"lbd_drops_total", "up", "node_load1"}


def test_docs_name_every_alert_and_the_file():
    doc = MONITORING.read_text()
    assert "configs/lbd-alerts.yaml" in doc and "rule_files" in doc
    missing = [rule["alert"] for rule in _alerts() if f"`{rule['alert']}`" not in doc]
    assert not missing, missing
    for rule in _alerts():   # its row in the Alerts table says its severity and for: as the rule does
        row = f"| `{rule['alert']}` | {rule['labels']['severity']}, {rule['for']} |"
        assert row in doc, f"{MONITORING.name}'s Alerts table: {row!r}"
