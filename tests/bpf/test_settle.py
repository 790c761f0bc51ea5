"""Settled slots (docs/design.md, "What a SYN looks up"; lbd.dataplane.settle):
a SYN in a slot of which no connection-table entry disagrees with the table
goes to the table without looking its entry up, and lands exactly where the
flow rules send it with the lookup. The real program, real packets, the real
walk: the rules are written from docs/design.md's flow table, not from the
walk's code."""
from __future__ import annotations

import array
import ctypes
import dataclasses
import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.l2 import Ether

from lbd.dataplane import _maglev, flowhash, settle
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
    return tuple(b if str(b.address) != address else dataclasses.replace(b, state=state) for b in members)


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
    fk.silence(lb.dp, _flow(ended), 90)  # docs/design.md: removed after 60 s of silence
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


def test_a_second_table_change_unsettles_its_vip_before_it_lands(lb):
    plan = _plan(sc.backends("198.18.0.", 3))
    lb.apply([plan])
    settle.settle(lb.dp)
    vip_id = _vip_id(lb, plan)
    assert settle.slot_state(lb.dp, vip_id, _slot(lb, plan, PORTS[0])) == settle.SLOT_SETTLED
    lb.dp.write_second_rings({vip_id: array.array("I", bytes(4 * lb.dp.limits.ring_size))})
    assert all(settle.slot_state(lb.dp, vip_id, _slot(lb, plan, port)) == settle.SLOT_UNSETTLED
               for port in PORTS)


def test_marks_never_reach_what_reads_a_table(lb):
    """The marks share the table's slots: the program's table reads (a packet
    without an entry) and the daemon's (explain, previews) see backends only."""
    plan = _plan(sc.backends("198.18.0.", 3))
    lb.apply([plan])
    settle.settle(lb.dp)
    vip_id = _vip_id(lb, plan)
    assert list(lb.dp.read_ring(vip_id)) == list(lb.programmer.applied()[plan.key].table)
    for port in PORTS[:20]:
        packet = sc.client_packet(sc.DSR_V4, 80, sport=port, flags="A")
        assert _send(lb, port, "A") == sc.mac(sc.predicted_backend(lb, plan, packet).dst_mac)


addresses = st.one_of(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address),
                      st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(flows=st.lists(st.tuples(addresses, st.integers(0, 2**128 - 1), st.integers(0, 65535),
                                st.integers(0, 65535), st.sampled_from([6, 17]), st.booleans()),
                      min_size=1, max_size=20))
def test_the_walks_slots_are_the_programs_hash(datapath, flows):
    """flow_slots (C) against lbd.dataplane.flowhash (the Python reference the
    kernel is held to), on keys laid out by the program's own key type."""
    keys, client_only, expected = b"", b"", []
    size = datapath.limits.ring_size
    for src, dst_bits, sport, dport, proto, client in flows:
        dst = ipaddress.IPv4Address(dst_bits % 2**32) if src.version == 4 else ipaddress.IPv6Address(dst_bits)
        keys += bytes(datapath.flow_key(src, dst, sport, dport, proto))
        client_only += bytes([client])
        hashed = flowhash.client_hash(src) if client else flowhash.flow_hash(src, dst, sport, dport, proto)
        expected.append(flowhash.table_slot(hashed, size))
    key = datapath.conntrack.Key
    offsets = (key.src.offset, key.dst.offset, key.sport.offset, key.proto.offset, key.family.offset)
    got = array.array("I", _maglev.flow_slots(keys, ctypes.sizeof(key), offsets, client_only, size))
    assert list(got) == expected


def test_the_walks_compare_and_swap_moves_only_the_marks_of_lbd_shared_h():
    """mark_candidates and settle_slots on a table's memory (u32 in 8-byte
    slots): only the marks change, as the header defines them, and a slot
    unmarked meanwhile (the program's FIN) stays unsettled."""
    ids = [1, 2, 0x3FFFFFFF, 7]
    memory = bytearray(b"".join(i.to_bytes(4, "little") + bytes(4) for i in ids))
    value = lambda i: int.from_bytes(memory[8 * i:8 * i + 4], "little")  # noqa: E731
    assert _maglev.mark_candidates(memory, len(ids)) == len(ids)
    assert [value(i) for i in range(len(ids))] == [i | settle.SLOT_CANDIDATE for i in ids]
    memory[8 * 3:8 * 3 + 4] = ids[3].to_bytes(4, "little")  # the program clears slot 3
    assert _maglev.settle_slots(memory, bytes([0, 1, 0, 0])) == 2  # slot 1 blocked
    assert [value(i) for i in range(len(ids))] == [ids[0] | settle.SLOT_SETTLED, ids[1] | settle.SLOT_CANDIDATE,
                                                   ids[2] | settle.SLOT_SETTLED, ids[3]]
    assert settle.SLOT_MARKS == settle.SLOT_SETTLED | settle.SLOT_CANDIDATE
    assert max(ids) & settle.SLOT_MARKS == 0
