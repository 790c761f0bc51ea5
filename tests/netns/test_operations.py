"""Operating a running lbd (docs/operating.md: Operations, Running it under systemd):
`lbd check --diff` on ordinary edits of health-checked VIPs, and which ways of
reloading a bad file the daemon counts in lbd_reloads_total{result="failure"}."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lbd.testing.lab import Lab
from tests.netns.lbdrun import HEALTH, backends, host_config, running, wait_for

pytestmark = pytest.mark.netns
ROOT = Path(__file__).resolve().parents[2]


def config(lab: Lab, socket_path: str, web4=("b1", "b2"), weights=(100, 100, 200), web6_drain=(),
           echo4=("b1", "b2", "b3")) -> str:
    """Three health-checked VIPs and one without checks."""
    return host_config(lab, socket_path, "tests/netns/test_operations.py") + f"""\
  - {{name: web4, address: 198.18.100.1, port: 80, protocol: tcp, mode: dsr, health: {HEALTH},
     backends: {backends(lab, web4)}}}
  - {{name: weighted, address: 198.18.100.3, port: 80, protocol: tcp, mode: dsr, health: {HEALTH},
     backends: {backends(lab, ["b1", "b2", "b3"], weights=list(weights))}}}
  - {{name: web6, address: 'fd00:100::1', port: 80, protocol: tcp, mode: dsr, health: {HEALTH},
     backends: {backends(lab, ["b1", "b2", "b3"], 6, drain=web6_drain)}}}
  - {{name: echo4, address: 198.18.100.1, port: 5300, protocol: udp, mode: dsr,
     backends: {backends(lab, echo4)}}}
"""


@pytest.fixture(scope="module")
def lbd(lab):
    with running(lab, lambda socket: config(lab, socket)) as daemon:
        yield daemon


def shares(text: str) -> dict[str, float]:
    """VIP name -> percent of flows, from the lines of check --diff or lbctl reload."""
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\S+): \w+, (?:moved )?([\d.]+)% of flows", text, re.M)}


def test_check_diff_of_ordinary_edits_agrees_with_the_reload(lab, lbd):
    # b3 added to web4 (health-checked: the checker does not track web4/b3
    # yet), a weight changed, a backend drained, one removed
    candidate = Path(lab.tmpdir, "candidate.yaml")
    candidate.write_text(config(lab, lbd.socket, web4=("b1", "b2", "b3"), weights=(100, 100, 100),
                                web6_drain=("b2",), echo4=("b1", "b2")))
    fingerprints = {v["name"]: v["fingerprint"] for v in lbd.status()["vips"]}
    diff = subprocess.run([sys.executable, "-m", "lbd.cli", "check", "--diff", str(candidate),
                           "--socket", lbd.socket], capture_output=True, text=True, timeout=60)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    assert f"{candidate}: OK" in diff.stdout
    predicted = shares(diff.stdout)
    assert set(predicted) == {"web4", "weighted", "web6", "echo4"}, diff.stdout
    # adding a third, draining or removing one of three equal backends moves about a third
    for name in ("web4", "web6", "echo4"):
        assert 30.0 <= predicted[name] <= 37.0, (name, diff.stdout)
    # 200 -> 100 of 400 -> 300: b3's share goes from 1/2 to 1/3, so about 1/6 moves
    assert 14.0 <= predicted["weighted"] <= 22.0, diff.stdout
    assert {v["name"]: v["fingerprint"] for v in lbd.status()["vips"]} == fingerprints, "diff applies nothing"

    # the reload does what the diff said: same shares, b3 in web4's table at once
    original = Path(lbd.config_path).read_text()
    lbd.write_config(candidate.read_text())
    try:
        reloaded = shares(lbd.lbctl("reload").stdout)
        assert reloaded == predicted, (reloaded, predicted)
        b3 = next(b for b in lbd.vip("web4")["backends"] if b["address"] == str(lab.backends["b3"].v4))
        assert b3["in_table"], b3
    finally:
        lbd.write_config(original)
        lbd.lbctl("reload")


def test_check_diff_errors_are_messages(lab, lbd):
    missing = Path(lab.tmpdir, "absent.yaml")
    broken = Path(lab.tmpdir, "broken.yaml")
    broken.write_text(config(lab, lbd.socket).replace("protocol: udp", "protocol: udpp"))
    for path, words in ((missing, "cannot read"), (broken, "vips[3].protocol")):
        result = subprocess.run([sys.executable, "-m", "lbd.cli", "check", "--diff", str(path),
                                 "--socket", lbd.socket], capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and words in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def exec_reload(unit: str, config_path: str, mainpid: int) -> list[subprocess.CompletedProcess]:
    """Run the unit's ExecReload= commands as systemd does: in order, with
    ${LBD_CONFIG} and $MAINPID, stopping at the first that fails."""
    done = []
    for line in unit.splitlines():
        if not line.startswith("ExecReload="):
            continue
        argv = (line.removeprefix("ExecReload=").replace("${LBD_CONFIG}", config_path)
                .replace("$MAINPID", str(mainpid)).split())
        if argv[0].endswith("/lbd"):
            argv[:1] = [sys.executable, "-m", "lbd.cli"]  # the installed lbd is this checkout's
        done.append(subprocess.run(argv, capture_output=True, text=True, timeout=60))
        if done[-1].returncode != 0:
            break
    return done


def test_which_bad_reloads_the_daemon_counts(lab, lbd):
    failures = lambda: lbd.metric("lbd_reloads_total", result="failure")  # noqa: E731
    original = Path(lbd.config_path).read_text()
    bad = original.replace("protocol: udp", "protocol: udpp")
    before = failures()
    lbd.write_config(bad)
    try:
        # systemctl reload: `lbd check` refuses the file first; the daemon never sees it
        steps = exec_reload((ROOT / "systemd" / "lbd.service").read_text(), lbd.config_path, lbd.proc.pid)
        assert len(steps) == 1 and steps[0].returncode != 0, steps
        assert f"{lbd.config_path}:" in steps[0].stderr and "udpp" in steps[0].stderr
        assert failures() == before
        assert lbd.status()["reload"]["last_result"] == "success"
        # lbctl reload reaches the daemon, which counts it
        assert lbd.lbctl("reload", check=False).returncode != 0
        assert failures() == before + 1
        # and so does a bare SIGHUP (kill -HUP, docker kill -s HUP)
        os.kill(lbd.proc.pid, signal.SIGHUP)
        wait_for(lambda: failures() == before + 2, 10, what="SIGHUP counted")
        assert lbd.status()["reload"]["last_result"] == "failure"
    finally:
        lbd.write_config(original)
        lbd.lbctl("reload")
    assert lbd.status()["reload"]["last_result"] == "success"
