"""`make demo` (README: the two commands) as a newcomer reads it: it ends in
DEMO OK, and its `lbctl status` says what it means: health-checked backends
that serve are UP (not a bare INIT), unchecked ones say so, and the flow
columns count the demo's own connections, with the time they were counted."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from lbd.testing.demo import REQUESTS

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def demo() -> str:
    result = subprocess.run([sys.executable, "-m", "lbd.testing.demo"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def status_rows(text: str) -> dict[str, list[list[str]]]:
    """VIP endpoint -> its backend rows (split on spaces), from lbctl status --stats."""
    rows: dict[str, list[list[str]]] = {}
    section = text.split("== lbctl status --stats", 1)[1].split("== a few lines of /metrics", 1)[0]
    vip = None
    for line in section.splitlines():
        if re.match(r"^TCP\s+\S+:\d+", line):
            vip = line.split()[1]
            rows[vip] = []
        elif line.startswith("  -> ") and vip and not line.startswith("  -> Backend"):
            rows[vip].append(line.split()[1:])
    return rows


def test_the_demo_succeeds(demo):
    assert "DEMO OK" in demo


def test_health_reads_as_a_verdict_or_says_there_is_no_check(demo):
    rows = status_rows(demo)
    # configs/demo.yaml: web (198.18.100.1) is health-checked, web-remote is not
    assert [r[3] for r in rows["198.18.100.1:80"]] == ["UP"] * 3, demo
    assert [r[3] for r in rows["198.18.100.2:80"]] == ["unchecked"] * 3, demo
    assert "INIT" not in demo


def test_flow_columns_count_the_demos_connections_and_say_when(demo):
    rows = status_rows(demo)
    for vip, backends in rows.items():
        live_and_idle = sum(int(r[4]) + int(r[5]) for r in backends)  # Flows + Idle
        # one entry per 4-tuple: a client may open a later request from the
        # port of an earlier one (the server closed first, so the client holds
        # no TIME_WAIT), which then shares its entry; a handful at most
        assert REQUESTS - 5 <= live_and_idle <= REQUESTS, (vip, demo)
    assert re.search(r"flows counted at \d\d:\d\d:\d\d \(\d+ s ago; the tables are walked every 10 s\)", demo)
