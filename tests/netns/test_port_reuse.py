"""A backend added under load gets its share of a port-reusing client's new
connections (README "A SYN on a finished connection's 4-tuple").

One client address cycles through a small fixed set of source ports, one
HTTP/1.0 connection at a time (the server closes, the client sends its FIN),
through a dsr VIP of four backends: every 4-tuple gets an entry, and every
later connection opens on the 4-tuple of a closed one. A fifth backend is
added by reload. Each following SYN finds a finished connection's entry and
is placed by the new table, so the new backend takes its weight's share (a
fifth) and every connection answers. Before the rule, each SYN followed its
old entry and the new backend got none of this client's connections.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import os
import sys
from pathlib import Path

import pytest

from lbd.dataplane import flowhash, maglev
from lbd.testing.lab import Lab
from tests.conftest import require_root
from tests.netns.lbdrun import LbdUnderTest, backends, host_config

pytestmark = pytest.mark.netns

VIP = "198.18.100.1"
FIRST_PORT, PORTS = 30000, 250   # the client's fixed source ports
ROUNDS_AFTER = 2                 # walks of the ports after the reload
FIXEDPORTS = str(Path(__file__).with_name("fixedports.py"))


def config(lab: Lab, socket_path: str, names) -> str:
    return host_config(lab, socket_path, "tests/netns/test_port_reuse.py") + f"""\
  - {{name: web4, address: {VIP}, port: 80, protocol: tcp, mode: dsr,
     backends: {backends(lab, names)}}}
"""


def connect_rounds(lab: Lab, rounds: int) -> collections.Counter:
    """Connections from the client's first address over the fixed ports; how many each backend answered."""
    result = lab.run(lab.client, [sys.executable, FIXEDPORTS, VIP, "80", str(lab.client.v4s[0]),
                                  str(FIRST_PORT), str(PORTS), str(rounds)], timeout=240)
    assert result.returncode == 0, result.stderr
    return collections.Counter(json.loads(result.stdout))


def table_places(lab: Lab, names) -> collections.Counter:
    """How many of the client's 4-tuples the VIP's table of `names` (equal
    weights) places on each backend: the pure-Python Maglev reference."""
    addresses = [lab.backends[n].v4 for n in names]
    table = maglev.build_table_reference([(a.packed, 100, i + 1) for i, a in enumerate(addresses)])
    client, vip = lab.client.v4s[0], ipaddress.ip_address(VIP)
    placed = collections.Counter()
    for sport in range(FIRST_PORT, FIRST_PORT + PORTS):
        slot = flowhash.table_slot(flowhash.flow_hash(client, vip, sport, 80, 6), len(table))
        placed[names[table[slot] - 1]] += 1
    return placed


def test_a_backend_added_under_load_takes_its_share_of_a_port_reusing_client():
    require_root("a namespace lab")
    four, five = ["b1", "b2", "b3", "b4"], ["b1", "b2", "b3", "b4", "b5"]
    with Lab(vips_v4=[VIP], vips_v6=[], dsr_backends=5, ipip_backends=0, addresses_per_client=1) as lab:
        lbd = LbdUnderTest(lab, config=config(lab, os.path.join(lab.tmpdir, "lbd.sock"), four))
        try:
            lbd.start()
            print(f"lbd XDP mode: {lbd.status()['attached']}")
            before = connect_rounds(lab, 1)   # every 4-tuple gets an entry on one of four
            assert before == table_places(lab, four), before

            lbd.write_config(config(lab, lbd.socket, five))
            lbd.lbctl("reload")
            b5 = next(b for b in lbd.vip("web4")["backends"] if b["address"] == str(lab.backends["b5"].v4))
            assert b5["in_table"], b5

            after = connect_rounds(lab, ROUNDS_AFTER)
        finally:
            lbd.teardown()
    total = ROUNDS_AFTER * PORTS
    errors = {k: v for k, v in after.items() if k.startswith("error")}
    assert not errors, f"connections failed: {after}"
    shares = {name: after[name] / total for name in five}
    print(f"after b5 was added, {total} connections of one port-reusing client: "
          + ", ".join(f"{n} {s:.1%}" for n, s in shares.items()))
    # every SYN met a closed connection's entry and went where the new table places its 4-tuple
    placed = table_places(lab, five)
    assert after == collections.Counter({n: ROUNDS_AFTER * c for n, c in placed.items()}), (after, placed)
    assert abs(shares["b5"] - 0.20) <= 0.04, shares
