"""What the connection table promises: a flow keeps its backend when the
backend set changes, moves when its backend is removed or fails, and a
draining backend keeps its flows but gets no new ones. Plus: the kernel picks
exactly the backend the pure-Python reference picks."""
from __future__ import annotations

import ipaddress
import random

import pytest
from scapy.layers.l2 import Ether

from lbd.dataplane import flowhash, maglev
from lbd.plan import DOWN, DRAINING, BackendPlan
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

XDP_TX = 3
VIP = sc.DSR_V4


def picked(lb, packet) -> str:
    result = lb.run(bytes(packet))
    assert result.action == XDP_TX
    return Ether(result.packet).dst


def vip_with(members):
    return sc.vip(VIP, 80, 6, members=tuple(members))


def flows(count, seed=1):
    rng = random.Random(seed)
    return [sc.client_packet(VIP, 80, src=f"198.18.{rng.randrange(10, 60)}.{rng.randrange(1, 255)}",
                             sport=rng.randrange(1024, 65535), flags="A") for _ in range(count)]


def test_flows_keep_their_backend_when_backends_are_added(lb):
    three = sc.backends("198.18.0.", 3)
    lb.apply([vip_with(three)])
    packets = flows(300)
    before = [picked(lb, p) for p in packets]
    lb.apply([vip_with(sc.backends("198.18.0.", 6))])  # three more backends
    after = [picked(lb, p) for p in packets]
    assert after == before
    # while new flows do reach the new backends
    new_macs = {picked(lb, p) for p in flows(300, seed=2)}
    assert len(new_macs) == 6


def test_flows_of_a_removed_backend_move_to_a_live_one(lb):
    three = sc.backends("198.18.0.", 3)
    lb.apply([vip_with(three)])
    packets = flows(300)
    before = [picked(lb, p) for p in packets]
    removed = three[0]
    lb.apply([vip_with(three[1:])])
    after = [picked(lb, p) for p in packets]
    removed_mac = sc.mac(removed.dst_mac)
    assert removed_mac in before
    assert removed_mac not in after
    # only the removed backend's flows moved
    for b, a in zip(before, after):
        if b != removed_mac:
            assert a == b
    vip_id = lb.programmer.vip_id(vip_with(three).key)
    assert lb.dp.vip_counters(vip_id)["rescheduled"] == before.count(removed_mac)


def test_flows_of_a_failed_backend_move(lb):
    three = sc.backends("198.18.0.", 3)
    lb.apply([vip_with(three)])
    packets = flows(200)
    before = [picked(lb, p) for p in packets]
    failed = BackendPlan(three[1].address, three[1].weight, DOWN, three[1].dst_mac, three[1].src_mac)
    lb.apply([vip_with([three[0], failed, three[2]])])
    after = [picked(lb, p) for p in packets]
    assert sc.mac(failed.dst_mac) in before and sc.mac(failed.dst_mac) not in after


@pytest.mark.parametrize("how", ["drain flag", "weight 0"])
def test_draining_backend_keeps_flows_and_gets_no_new_ones(lb, how):
    three = sc.backends("198.18.0.", 3)
    lb.apply([vip_with(three)])
    packets = flows(300)
    before = [picked(lb, p) for p in packets]
    target = three[2]
    if how == "drain flag":
        drained = BackendPlan(target.address, target.weight, DRAINING, target.dst_mac, target.src_mac)
    else:
        drained = BackendPlan(target.address, 0, DRAINING, target.dst_mac, target.src_mac)
    lb.apply([vip_with([three[0], three[1], drained])])
    assert [picked(lb, p) for p in packets] == before, "established flows stay"
    drained_mac = sc.mac(target.dst_mac)
    assert drained_mac in before
    assert drained_mac not in {picked(lb, p) for p in flows(500, seed=9)}, "no new flows"


def test_table_swap_leaves_other_vips_alone(lb):
    other = sc.vip(sc.DSR_V6, 80, 6)
    lb.apply([vip_with(sc.backends("198.18.0.", 3)), other])
    other_ring = lb.dp.read_ring(lb.programmer.vip_id(other.key))
    results = lb.apply([vip_with(sc.backends("198.18.0.", 4)), other])
    assert {r.name: r.action for r in results}[other.name] == "unchanged"
    assert lb.dp.read_ring(lb.programmer.vip_id(other.key)) == other_ring


def test_kernel_matches_python_reference_for_10000_flows(lb):
    """Random v4 and v6 flows over flow- and client-hashed VIPs with weighted
    backends: the backend the kernel picks equals the one the pure-Python
    flow hash and pure-Python Maglev table pick."""
    rng = random.Random(2026)
    weights = [1, 2, 3, 5, 8]
    plans = [
        sc.vip(sc.DSR_V4, 80, 6, members=sc.backends("198.18.0.", 5, weights)),
        sc.vip(sc.DSR_V6, 53, 17, members=sc.backends("fd00::", 5, weights)),
        sc.vip(sc.AFFINITY_V4, 80, 6, client=True, members=sc.backends("198.18.0.", 5, weights)),
        sc.vip(sc.AFFINITY_V6, 80, 6, client=True, members=sc.backends("fd00::", 5, weights)),
    ]
    lb.apply(plans)
    ring = lb.dp.limits.ring_size
    reference = {}
    for plan in plans:
        ids = lb.programmer.applied()[plan.key].backend_ids
        table = maglev.build_table_reference(
            [(b.address.packed, b.weight, ids[b.address]) for b in plan.backends], ring)
        by_id = {ids[b.address]: sc.mac(b.dst_mac) for b in plan.backends}
        reference[plan.key] = (table, by_id)
    mismatches = 0
    for i in range(10_000):
        plan = plans[i % len(plans)]
        if plan.address.version == 4:
            src = ipaddress.IPv4Address(rng.getrandbits(32) | 0x01000000)
        else:
            src = ipaddress.IPv6Address((0xfd00 << 112) | rng.getrandbits(112))
        sport = rng.randrange(1, 65536)
        packet = sc.client_packet(str(plan.address), plan.port, plan.proto, src=str(src), sport=sport)
        if plan.client_affinity:
            h = flowhash.client_hash(src)
        else:
            h = flowhash.flow_hash(src, plan.address, sport, plan.port, plan.proto)
        table, by_id = reference[plan.key]
        expected = by_id[table[h % ring]]
        mismatches += picked(lb, packet) != expected
    assert mismatches == 0


def test_a_vip_or_backend_taking_a_freed_id_starts_its_counters_at_zero(lb):
    """Counters are per id; an id freed by a removed VIP or backend and taken
    by a new one must not hand over the old one's packets (a Prometheus
    counter of the new VIP would start at the old one's total)."""
    old = sc.vip(VIP, 80, 6, members=sc.backends("198.18.0.", 2))
    lb.apply([old])
    for packet in flows(50):
        picked(lb, packet)
    old_id = lb.programmer.vip_id(old.key)
    assert lb.dp.vip_counters(old_id)["packets"] == 50
    lb.apply([])
    new = sc.vip(sc.WILDCARD_V4, 0, 6, members=sc.backends("198.18.0.", 2, weights=[1, 1]))
    lb.apply([new])
    new_id = lb.programmer.vip_id(new.key)
    applied = lb.programmer.applied()[new.key]
    assert lb.dp.vip_counters(new_id)["packets"] == 0
    assert all(lb.dp.backend_counters(i)["packets"] == 0 for i in applied.backend_ids.values())
