"""The connection tables' fill and each backend's flows, as lbd samples them
(lbd.flowtable): counted from the maps themselves, an entry counting for a
backend only while it would still lead a packet there."""
from __future__ import annotations

import collections

import pytest
from scapy.layers.l2 import Ether

from lbd import flowtable
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf


def test_sample_counts_each_backends_flows_and_both_tables(lb):
    members = sc.backends("198.18.0.", 3)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members), sc.vip(sc.DSR_V4, 53, 17, members=members)])
    placed = collections.Counter()
    for port in range(20000, 20300):
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port)))  # a SYN: no entry
        out = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
        placed[Ether(out.packet).dst] += 1
    for port in range(30000, 30050):
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 53, 17, sport=port)))
    usage = flowtable.sample(lb.dp)
    assert usage["tcp"].entries == 300 and usage["udp"].entries == 50
    assert usage["tcp"].capacity == lb.dp.limits.conntrack_size
    ids = lb.programmer.applied()[(sc.ip(sc.DSR_V4), 80, 6)].backend_ids
    expected = {ids[b.address]: placed[sc.mac(b.dst_mac)] for b in members if placed[sc.mac(b.dst_mac)]}
    assert usage["tcp"].by_backend == expected


def test_entries_of_a_removed_backend_count_for_nobody(lb):
    members = sc.backends("198.18.0.", 3)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members)])
    for port in range(21000, 21200):
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")))
    gone = lb.programmer.applied()[(sc.ip(sc.DSR_V4), 80, 6)].backend_ids[members[0].address]
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members[1:])])
    usage = flowtable.sample(lb.dp)
    assert usage["tcp"].entries == 200, "stale entries still take room"
    assert gone not in usage["tcp"].by_backend
