"""systemd/lbd-backend.service: `lbd-backend prepare` at every boot, from
/etc/default/lbd-backend (docs/operating.md, "Preparing backends"). Checked here without
a running systemd: systemd-analyze verify (its security score is checked
with every unit's in test_packaging.py), and that the command line the unit
builds is one prepare takes; tests/netns/test_install.py boots it under a
private systemd."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from lbd.backend.cli import _parser
from tests.unit.test_packaging import _unit_settings, _verify, _verify_root

pytestmark = pytest.mark.unit

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "lbd-backend.service"
EXAMPLE = re.compile(r'^#\s+LBD_BACKEND_PREPARE_ARGS="([^"]+)"$', re.M)


def test_unit_passes_systemd_analyze_verify(tmp_path):
    root = _verify_root(tmp_path, UNIT.read_text(), name=UNIT.name)
    (root / "etc/default").mkdir(parents=True)
    (root / "etc/default/lbd-backend").write_text('LBD_BACKEND_PREPARE_ARGS="--mode dsr --vip 192.0.2.1"\n')
    result = _verify(root, UNIT.name)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_it_runs_prepare_once_at_boot_and_stays_active():
    unit = _unit_settings(UNIT.read_text())
    assert unit["Type"] == ["oneshot"] and unit["RemainAfterExit"] == ["yes"]
    assert unit["WantedBy"] == ["multi-user.target"]
    # required: a backend enabled without its VIPs fails, it does not pass silently
    assert unit["EnvironmentFile"] == ["/etc/default/lbd-backend"]
    assert unit["ExecStart"] == ["/opt/lbd/venv/bin/lbd-backend prepare $LBD_BACKEND_PREPARE_ARGS"]
    assert "ExecStop" not in unit, "stopping the unit must not take the VIPs away"


def test_the_documented_example_is_a_command_line_prepare_takes():
    [example] = EXAMPLE.findall(UNIT.read_text())
    args = _parser().parse_args(["prepare", *shlex.split(example)])
    assert args.mode == "ipip" and args.vip and args.interface == "eth0"
