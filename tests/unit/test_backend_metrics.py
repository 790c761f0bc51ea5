"""`lbd-backend metrics`: the Prometheus text node_exporter's textfile
collector reads, from what lbd-backend found on the interfaces (the reading of
a real program is tested in tests/bpf/test_decap_second_chance.py)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbd.backend import metrics as backend_metrics
from lbd.dataplane import layout, xdpstats
from lbd.backend.cli import _parser
from lbd.backend.decap import DecapState, counter_summary, decap_source_hash
from tests.unit.test_packaging import BACKEND_METRICS, _unit_settings, _verify, _verify_root

pytestmark = pytest.mark.unit

RESULTS = list(layout.enum_names("LBD_DECAP_").values())
CURRENT = decap_source_hash()


def samples(text: str) -> dict[tuple, float]:
    """(name, sorted labels) -> value, from text in the exposition format."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def counters(**given: int) -> dict[str, int]:
    return {name: given.get(name, 0) for name in RESULTS}


def test_an_attached_current_program_shows_every_result_and_its_build():
    state = DecapState("eth0", 42, "native", CURRENT, counters(ipip=7, kept_syn=3, forwarded=2,
                                                                 malformed=1))
    got = samples(backend_metrics.text({"eth0": state}, CURRENT))
    assert got[("lbd_backend_decap_attached", (("interface", "eth0"),))] == 1
    assert got[("lbd_backend_decap_build_current", (("interface", "eth0"),))] == 1
    assert got[("lbd_backend_decap_info", (("build", CURRENT), ("interface", "eth0"),
                                           ("mode", "native"), ("program_id", "42")))] == 1
    packets = {dict(labels)["result"]: value for (name, labels), value in got.items()
               if name == "lbd_backend_decap_packets_total"}
    assert packets == {name: float(n) for name, n in counters(ipip=7, kept_syn=3, forwarded=2,
                                                               malformed=1).items()}
    assert ("lbd_backend_decap_forward_prefixes", (("interface", "eth0"),)) not in got, \
        "a state read from a build without the list has no count"


def test_the_names_are_the_ones_alerts_may_read():
    """BACKEND_METRICS (what configs/lbd-alerts.yaml may read) is what the text holds."""
    state = DecapState("eth0", 1, "native", CURRENT, counters(), [ipaddress.ip_network("10.0.0.0/8")],
                       xdpstats.XdpTx(sent=3, lost=2, peer_ifindex=7))
    exported = {s.name for family in text_string_to_metric_families(
        backend_metrics.text({"eth0": state}, CURRENT)) for s in family.samples}
    assert exported == BACKEND_METRICS


def test_the_forward_to_prefixes_are_counted():
    """0 tells an operator second chance is off from this backend."""
    networks = [ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/48")]
    states = {"eth0": DecapState("eth0", 1, "native", CURRENT, counters(), networks),
              "eth1": DecapState("eth1", 2, "native", CURRENT, counters(), [])}
    got = samples(backend_metrics.text(states, CURRENT))
    assert got[("lbd_backend_decap_forward_prefixes", (("interface", "eth0"),))] == 2
    assert got[("lbd_backend_decap_forward_prefixes", (("interface", "eth1"),))] == 0


def test_frames_the_interface_lost_after_xdp_tx_are_counted_apart_from_those_sent():
    """The program says "forwarded 12"; the interface sent 5 and lost 7: the
    metrics say both, and nothing where the driver keeps no such counters."""
    lossy = DecapState("veth0", 1, "native", CURRENT, counters(forwarded=12), [],
                       xdpstats.XdpTx(sent=5, lost=7, peer_ifindex=3))
    unknown = DecapState("eth1", 2, "native", CURRENT, counters(forwarded=4), [], None)
    got = samples(backend_metrics.text({"veth0": lossy, "eth1": unknown}, CURRENT))
    frames = {(dict(labels)["interface"], dict(labels)["result"]): value for (name, labels), value
              in got.items() if name == "lbd_backend_xdp_tx_frames_total"}
    assert frames == {("veth0", "sent"): 5, ("veth0", "lost"): 7}


# ethtool -S of a veth with two queues, as this kernel (6.18) names its statistics
VETH_STATISTICS = [("peer_ifindex", 11)] + [
    (f"rx_queue_{q}_{name}", value) for q, values in ((0, (9, 900, 0, 0, 0, 4, 6)), (1, (2, 200, 0, 0, 0, 1, 1)))
    for name, value in zip(("xdp_packets", "xdp_bytes", "drops", "xdp_redirect", "xdp_drops", "xdp_tx",
                            "xdp_tx_errors"), values)] + [
    ("tx_queue_0_xdp_xmit", 5), ("tx_queue_0_xdp_xmit_errors", 8),
    ("tx_queue_1_xdp_xmit", 0), ("tx_queue_1_xdp_xmit_errors", 0)]


def test_xdp_tx_counters_are_summed_over_a_veths_queues():
    """Frames sent back out (xdp_tx) and lost (xdp_tx_errors) on every queue,
    not the frames others redirected into it (tx_queue_*_xdp_xmit*)."""
    assert xdpstats.from_statistics(VETH_STATISTICS) == xdpstats.XdpTx(sent=5, lost=7, peer_ifindex=11)
    no_tx_counters = [(name, value) for name, value in VETH_STATISTICS if "xdp_tx" not in name]
    assert xdpstats.from_statistics(no_tx_counters) is None
    assert xdpstats.from_statistics([]) is None


def test_a_missing_program_and_an_old_build_are_visible_as_numbers():
    old = DecapState("eth1", 9, "generic", None, None)
    got = samples(backend_metrics.text({"eth0": None, "eth1": old}, CURRENT))
    assert got[("lbd_backend_decap_attached", (("interface", "eth0"),))] == 0
    assert got[("lbd_backend_decap_attached", (("interface", "eth1"),))] == 1
    assert got[("lbd_backend_decap_build_current", (("interface", "eth1"),))] == 0
    assert ("lbd_backend_decap_build_current", (("interface", "eth0"),)) not in got
    assert not [k for k in got if k[0] == "lbd_backend_decap_packets_total"], "an old build has none"
    assert got[("lbd_backend_decap_info", (("build", "old"), ("interface", "eth1"),
                                           ("mode", "generic"), ("program_id", "9")))] == 1


def test_another_build_is_not_current():
    state = DecapState("eth0", 1, "native", "0123456789abcdef", counters())
    assert not state.current and "not this lbd's" in state.build_text()
    got = samples(backend_metrics.text({"eth0": state}, CURRENT))
    assert got[("lbd_backend_decap_build_current", (("interface", "eth0"),))] == 0


def test_the_textfile_is_replaced_whole(tmp_path: Path):
    """node_exporter never reads half a file: a new file is renamed over the
    old one, and no temporary file is left where it looks (*.prom)."""
    path = tmp_path / "collector" / "lbd-backend.prom"
    state = DecapState("eth0", 42, "native", CURRENT, counters(kept_socket=5))
    backend_metrics.write(str(path), {"eth0": state}, CURRENT)
    first_inode = path.stat().st_ino
    backend_metrics.write(str(path), {"eth0": state}, CURRENT)
    assert path.read_text() == backend_metrics.text({"eth0": state}, CURRENT)
    assert path.stat().st_ino != first_inode, "renamed over, not rewritten in place"
    assert os.listdir(path.parent) == ["lbd-backend.prom"]


def test_counter_summary_groups_kept_forwarded_dropped():
    line = counter_summary(counters(ipip=1, kept_syn=2, kept_socket=3, forwarded=4,
                                    forward_failed=5, malformed=6, forward_refused=7))
    assert line.startswith("ipip 1; GUE kept 12 (syn 2, socket 3, syncookie 0, forwarded 0, other 0, refused 7)")
    assert line.endswith("forwarded 4, dropped 11 (forward_failed 5, malformed 6)")


def test_the_command_line_takes_interfaces_and_a_textfile():
    args = _parser().parse_args(["metrics", "--interface", "eth0", "--interface", "eth1",
                                 "--textfile", "/tmp/x.prom"])
    assert (args.command, args.interface, args.textfile) == ("metrics", ["eth0", "eth1"], "/tmp/x.prom")
    args = _parser().parse_args(["metrics"])
    assert args.interface is None and args.textfile is None


# --- the systemd units that refresh the textfile -------------------------------------
SYSTEMD = Path(__file__).resolve().parents[2] / "systemd"
SERVICE, TIMER = SYSTEMD / "lbd-backend-metrics.service", SYSTEMD / "lbd-backend-metrics.timer"


def test_units_pass_systemd_analyze_verify(tmp_path):
    root = _verify_root(tmp_path, SERVICE.read_text(), name=SERVICE.name)
    (root / "etc/systemd/system" / TIMER.name).write_text(TIMER.read_text())
    for unit in (SERVICE.name, TIMER.name):
        result = _verify(root, unit)
        assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
            result.stdout + result.stderr


def test_timer_refreshes_every_15_s_into_node_exporters_textfile_directory():
    timer, service = _unit_settings(TIMER.read_text()), _unit_settings(SERVICE.read_text())
    assert timer["OnUnitActiveSec"] == ["15s"] and timer["WantedBy"] == ["timers.target"]
    assert service["Type"] == ["oneshot"]
    path = "/var/lib/prometheus/node-exporter/lbd-backend.prom"
    assert service["Environment"] == [f"LBD_BACKEND_TEXTFILE={path}"]
    assert service["ReadWritePaths"] == [f"-{os.path.dirname(path)}"]
    argv = service["ExecStart"][0].split()
    assert argv[:4] == ["/opt/lbd/venv/bin/lbd-backend", "metrics", "--textfile", "${LBD_BACKEND_TEXTFILE}"]
    assert _parser().parse_args(["metrics", "--textfile", path]).textfile == path
