"""The connection tables' fill and each backend's flows, as lbd samples them
(lbd.dataplane.flowtable): counted from the maps themselves, an entry counting for a
backend only while it would still lead a packet there, and as a live flow
only as docs/operating.md's Operations section says (a packet within the idle
window; once the client sent FIN or RST, within 2 s)."""
from __future__ import annotations

import collections
import time

import pytest
from scapy.layers.l2 import Ether

from lbd.dataplane import flowtable
from lbd.plan import DOWN
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



def test_live_and_idle_flows_as_the_readme_defines_them(lb):
    """Real time, real packets: the program stamps each packet's entry and
    marks a client's FIN or RST; a SYN that follows the entry (a new
    connection on the 4-tuple) unmarks it."""
    member = sc.backends("198.18.0.", 1)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=member), sc.vip(sc.DSR_V4, 53, 17, members=member)])
    applied = lb.programmer.applied()
    backend = applied[(sc.ip(sc.DSR_V4), 80, 6)].backend_ids[member[0].address]
    udp_backend = applied[(sc.ip(sc.DSR_V4), 53, 17)].backend_ids[member[0].address]

    def send(sport, flags="A", proto=6, port=80):
        out = lb.run(bytes(sc.client_packet(sc.DSR_V4, port, proto, sport=sport, flags=flags)))
        assert out.action == 3, "forwarded (XDP_TX)"

    port = {"open": 41000, "fin": 41001, "rst": 41002, "reused": 41003, "half_closed": 41004,
            "touched": 41005}
    for sport in port.values():
        send(sport)                               # the handshake's ACK makes the entry
    send(port["fin"], "FA")
    send(port["rst"], "R")
    send(port["reused"], "FA")                    # closed, then a new connection on its 4-tuple
    send(port["reused"], "S")
    send(port["reused"], "A")
    send(port["half_closed"], "FA")               # the client is done sending; the server is not
    send(53000, proto=17, port=53)                # UDP has no FIN: never closed
    time.sleep(1.2)
    send(port["half_closed"], "A")                # the client ACKs the server's data
    send(port["touched"], "PA")                   # an established flow's packet, not its first
    time.sleep(1.2)                               # the others' last packet: 2.4 s ago

    usage = flowtable.sample(lb.dp)               # the sample's window: 30 s
    assert (usage["tcp"].by_backend[backend], usage["tcp"].idle_by_backend[backend]) == (4, 2), \
        "live: open, reused, half_closed, touched; idle: fin and rst, closed 2.4 s ago"
    assert usage["udp"].by_backend == {udp_backend: 1} and not usage["udp"].idle_by_backend

    usage = flowtable.sample(lb.dp, idle_after_s=2.0)
    assert (usage["tcp"].by_backend[backend], usage["tcp"].idle_by_backend[backend]) == (2, 4), \
        "with a 2 s window only the flows with a packet 1.2 s ago are live"
    assert usage["udp"].idle_by_backend == {udp_backend: 1}

    fresh = flowtable.backend_flows(lb.dp, "tcp", backend, 2.0)
    assert (fresh.live, fresh.idle) == (2, 4), "wait-drained's walk counts as the sample does"
    assert flowtable.backend_flows(lb.dp, "udp", udp_backend, 30.0).live == 1


def test_a_removed_backends_entries_are_neither_live_nor_idle_flows_of_its_successor(lb):
    members = sc.backends("198.18.0.", 2)
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members)])
    ids = lb.programmer.applied()[(sc.ip(sc.DSR_V4), 80, 6)].backend_ids
    for sport in range(22000, 22100):
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=sport, flags="A")))
    gone = ids[members[0].address]
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members[1:])])
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=members)])   # its id may be reused: a new generation
    reused = lb.programmer.applied()[(sc.ip(sc.DSR_V4), 80, 6)].backend_ids[members[0].address]
    fresh = flowtable.backend_flows(lb.dp, "tcp", reused, 30.0)
    usage = flowtable.sample(lb.dp)
    assert (fresh.live, fresh.idle) == (0, 0)
    assert usage["tcp"].by_backend.get(reused, 0) == usage["tcp"].idle_by_backend.get(reused, 0) == 0
    assert gone == reused or gone not in usage["tcp"].by_backend


def test_entries_made_per_backend_add_up_to_the_vips(lb):
    """lbd_backend_new_flows_total and the rates of `lbctl status --rate`:
    one per entry made for a flow the table placed, as lbd_vip_new_flows_total
    counts them; none for a SYN, an established flow's packet or a flow moved
    off a failed backend."""
    members = sc.backends("198.18.0.", 3)
    plan = sc.vip(sc.DSR_V4, 80, 6, members=members)
    lb.apply([plan])
    applied = lb.programmer.applied()[(sc.ip(sc.DSR_V4), 80, 6)]
    count = max(applied.backend_ids.values()) + 1
    vips_before, backends_before = lb.dp.counter_arrays(count)   # the maps outlive earlier tests' VIPs
    for sport in range(23000, 23200):
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=sport)))              # SYN: no entry
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=sport, flags="A")))   # makes it
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=sport, flags="PA")))  # follows it
    lb.apply([sc.vip(sc.DSR_V4, 80, 6, members=sc.backends("198.18.0.", 3, state=DOWN)[:1] + members[1:])])
    for sport in range(23000, 23200):                                           # the down one's flows move
        lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=sport, flags="PA")))
    vips, backends = lb.dp.counter_arrays(count)
    vips, backends = vips - vips_before, backends - backends_before
    made = {address: int(backends[i][2]) for address, i in applied.backend_ids.items()}
    assert sum(made.values()) == int(vips[applied.vip_id][2]) == 200, made
    assert all(made.values()), made
    assert int(vips[applied.vip_id][0]) == 800
    after = {i: lb.dp.backend_counters(i) for i in applied.backend_ids.values()}  # one by one agrees
    assert all(after[i]["new_flows"] == int(backends_before[i][2] + backends[i][2]) for i in after)
