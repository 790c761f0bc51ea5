"""A restart keeps what lbd knew about its backends' health (docs/operating.md: Operations,
restart / upgrade): a backend that was down before `kill -9` is still down
after the restart, from the first table the new daemon writes, so no new
connection meets it; it comes back only after `rise` passing checks.

Issue #11: before, every health-checked backend was trusted again until its
first checks, and 18-26 of 400 new connections failed right after a restart."""
from __future__ import annotations

import time

import pytest

from tests.netns.lbdrun import Connections, running, wait_for

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def lbd(lab):
    with running(lab) as daemon:
        yield daemon
    if not lab.server_running("b2", "http"):
        lab.start_server("b2", "http")


def b2_of(lbd, lab) -> dict:
    return next(b for b in lbd.vip("web4")["backends"] if b["address"] == str(lab.backends["b2"].v4))


def test_restart_keeps_a_down_backend_down_and_costs_no_connection(lab, lbd):
    lab.stop_server("b2", "http")
    try:
        wait_for(lambda: not b2_of(lbd, lab)["in_table"], 10, what="lbd marks b2 down")
        connections = Connections(lab, "198.18.100.1", lab.client.v4s[:50], per_s=100, max_s=90)
        try:
            time.sleep(0.5)
            lbd.kill9()
            lbd.start()
            ready = time.monotonic()
            # the window in which a forgetful restart sends flows to b2: the
            # first apply until `fall` failed checks (interval 0.5 s, fall 2)
            time.sleep(3)
            results = connections.stop()
        finally:
            connections.kill()
        after = [r for r in results if r["t"] >= ready]
        failed = [r for r in results if r["error"]]
        print(f"{len(results)} new connections during and after the restart "
              f"({len(after)} after ready), {len(failed)} failed")
        assert len(results) >= 300 and len(after) >= 150, (len(results), len(after))
        assert not failed, failed[:5]
        assert {r["backend"] for r in results} <= {"b1", "b3"}
        # the daemon says it started from the pinned state
        log = lbd.log().split("datapath_adopted", 1)[1]
        assert f"health_restored target=web4/{lab.backends['b2'].v4} state=DOWN" in log
        assert f"health_restored target=web4/{lab.backends['b1'].v4} state=UP" in log
        b2 = b2_of(lbd, lab)
        assert not b2["in_table"] and b2["health"] in ("DOWN", "RISING"), b2
    finally:
        lab.start_server("b2", "http")
    # and it comes back once its checks pass (rise: 2)
    wait_for(lambda: b2_of(lbd, lab)["in_table"], 10, what="b2 back in the table")
    counts = {r.body.split()[0] for r in lab.http_get_many(lab.url("198.18.100.1", "/whoami"),
                                                           lab.client.v4s[:40])}
    assert "b2" in counts


def test_restart_keeps_up_backends_up(lab, lbd):
    # every backend healthy before: after a restart all are in the table at
    # once (UP, not waiting for checks) and stay there
    wait_for(lambda: all(b["in_table"] for b in lbd.vip("web4")["backends"]), 10, what="all in table")
    lbd.kill9()
    lbd.start()
    backends = lbd.vip("web4")["backends"]
    assert all(b["in_table"] for b in backends), backends
    assert {b["health"] for b in backends} <= {"UP"}, backends
