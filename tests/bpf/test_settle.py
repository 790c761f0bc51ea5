"""Settled slots (docs/design.md, "What a SYN looks up"; lbd.dataplane.settle):
a SYN in a slot of which no connection-table entry disagrees with the table
goes to the table without looking its entry up, and lands exactly where the
flow rules send it with the lookup. The real program, real packets, the real
walk: the rules are written from docs/design.md's flow table, not from the
walk's code."""
from __future__ import annotations

import pytest
from scapy.layers.l2 import Ether

from lbd.dataplane import flowhash, settle
from lbd.plan import DRAINING
from tests.bpf import flowkit as fk
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

PORTS = range(41000, 41120)


def _plan(members):
    return sc.vip(sc.DSR_V4, 80, 6, members=members)


def _vip_id(lb, plan) -> int:
    return lb.programmer.applied()[plan.key].vip_id


def _slot(lb, plan, port: int) -> int:
    packet = sc.client_packet(sc.DSR_V4, 80, sport=port)
    return flowhash.table_slot(sc.flow_hash_for(plan, packet), lb.dp.limits.ring_size)


def _send(lb, port: int, flags: str = "S") -> str:
    out = lb.run(bytes(sc.client_packet(sc.DSR_V4, 80, sport=port, flags=flags)))
    return Ether(out.packet).dst


def _flow(port: int) -> fk.Flow:
    return fk.Flow(*sc.flow_of(sc.client_packet(sc.DSR_V4, 80, sport=port)))


def _with_state(members, address, state):
    return tuple(b if str(b.address) != address else b.__class__(**{**b.__dict__, "state": state})
                 for b in members)


def test_every_slot_of_a_vip_without_entries_settles_and_its_syns_skip_the_lookup(lb):
    plan = _plan(sc.backends("198.18.0.", 3))
    lb.apply([plan])
    result = settle.settle(lb.dp)
    assert result.settled == result.slots == lb.dp.limits.ring_size, result
    skipped = lb.dp.syns_without_lookup()
    for port in PORTS:
        packet = sc.client_packet(sc.DSR_V4, 80, sport=port)
        assert _send(lb, port) == sc.mac(sc.predicted_backend(lb, plan, packet).dst_mac)
        assert fk.entry(lb.dp, _flow(port)) is None, "a SYN makes no entry"
    assert lb.dp.syns_without_lookup() - skipped == len(PORTS)


def test_entries_that_disagree_keep_their_slots_unsettled_and_their_rules(lb):
    """A drained backend's entries and entries of active backends whose slots
    moved (a backend added) disagree with the table: their SYNs keep the
    rules of docs/design.md's flow table, and every other slot settles."""
    members = sc.backends("198.18.0.", 3)
    lb.apply([_plan(members)])
    first = {port: _send(lb, port, "A") for port in PORTS}  # established flows
    drained = sc.mac(members[0].dst_mac)
    grown = _with_state(members, str(members[0].address), DRAINING) + sc.backends("198.18.1.", 2)
    plan = _plan(grown)
    lb.apply([plan])
    vip_id = _vip_id(lb, plan)
    table_mac = {port: sc.mac(sc.predicted_backend(lb, plan, sc.client_packet(sc.DSR_V4, 80, sport=port)).dst_mac)
                 for port in PORTS}
    disagree = {port for port in PORTS if first[port] != table_mac[port]}
    assert any(first[p] == drained for p in disagree) and any(first[p] != drained for p in disagree), \
        "the scenario must hold both kinds of disagreeing entry"
    result = settle.settle(lb.dp)
    blocked = {_slot(lb, plan, port) for port in disagree}
    assert result.blocked == len(blocked) and result.settled == result.slots - len(blocked), result
    for port in PORTS:
        settled = settle.slot_state(lb.dp, vip_id, _slot(lb, plan, port)) == settle.SLOT_SETTLED
        assert settled == (_slot(lb, plan, port) not in blocked), port
    removed = lb.dp.global_counters()["ct_removed_by_syn"]
    for port in sorted(disagree):
        got = _send(lb, port)
        if first[port] == drained:  # a new connection never joins a drained backend
            assert got == table_mac[port] and fk.entry(lb.dp, _flow(port)) is None
        else:  # a SYN of a live connection on an active backend stays there
            assert got == first[port] and fk.entry(lb.dp, _flow(port)) is not None
    assert lb.dp.global_counters()["ct_removed_by_syn"] - removed == \
        sum(first[p] == drained for p in disagree)


def test_a_clients_fin_unsettles_its_slot_so_the_next_syn_removes_the_ended_entry(lb):
    plan = _plan(sc.backends("198.18.0.", 3))
    lb.apply([plan])
    port = PORTS[0]
    backend = _send(lb, port, "A")
    settle.settle(lb.dp)
    slot = _slot(lb, plan, port)
    assert settle.slot_state(lb.dp, _vip_id(lb, plan), slot) == settle.SLOT_SETTLED
    assert _send(lb, port, "FA") == backend
    assert settle.slot_state(lb.dp, _vip_id(lb, plan), slot) == settle.SLOT_UNSETTLED
    removed = lb.dp.global_counters()["ct_removed_by_syn"]
    assert _send(lb, port) == backend  # the table's backend: the slot has not moved
    assert fk.entry(lb.dp, _flow(port)) is None, "a SYN on a finished connection removes its entry"
    assert lb.dp.global_counters()["ct_removed_by_syn"] - removed == 1


def test_a_fin_that_makes_an_entry_unsettles_its_slot(lb):
    plan = _plan(sc.backends("198.18.0.", 3))
    lb.apply([plan])
    settle.settle(lb.dp)
    _send(lb, PORTS[1], "FA")  # the first packet lbd sees of this flow ends it
    assert settle.slot_state(lb.dp, _vip_id(lb, plan), _slot(lb, plan, PORTS[1])) == settle.SLOT_UNSETTLED


def test_ended_entries_that_agree_are_removed_once_silent_and_their_slots_settle(lb):
    plan = _plan(sc.backends("198.18.0.", 3))
    lb.apply([plan])
    ended, recent = PORTS[2], PORTS[3]
    for port in (ended, recent):
        _send(lb, port, "A")
        _send(lb, port, "FA")
    fk.silence(lb.dp, _flow(ended), 5)  # its close's last ACK came long ago
    result = settle.settle(lb.dp)
    assert result.removed == 1
    assert fk.entry(lb.dp, _flow(ended)) is None and fk.entry(lb.dp, _flow(recent)) is not None
    vip_id = _vip_id(lb, plan)
    assert settle.slot_state(lb.dp, vip_id, _slot(lb, plan, ended)) == settle.SLOT_SETTLED
    assert settle.slot_state(lb.dp, vip_id, _slot(lb, plan, recent)) != settle.SLOT_SETTLED


def test_a_table_change_unsettles_every_slot_of_its_vip_before_it_lands(lb):
    members = sc.backends("198.18.0.", 3)
    lb.apply([_plan(members)])
    settle.settle(lb.dp)
    plan = _plan(members + sc.backends("198.18.1.", 1))
    lb.apply([plan])
    vip_id = _vip_id(lb, plan)
    assert all(settle.slot_state(lb.dp, vip_id, _slot(lb, plan, port)) == settle.SLOT_UNSETTLED
               for port in PORTS)
    skipped = lb.dp.syns_without_lookup()
    _send(lb, PORTS[0])
    assert lb.dp.syns_without_lookup() == skipped
