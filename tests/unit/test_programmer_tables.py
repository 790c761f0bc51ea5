"""The tables the Programmer writes, though it keeps none of them once written
(lbd/dataplane/programmer/stored.py) and VIPs of the same backends share one
build (by pool): every VIP's first table is Maglev of its own in-table
backends, its second table is the rule's (lbd.dataplane.secondchoice's
reference), and what an apply reports of a change (the share of slots that
moved, the share of those whose second choice is the backend they had) is
of the tables the maps held before and after. Oracles: the pure-Python
references, over the maps as written (FakeMaps)."""
from __future__ import annotations

import dataclasses
import ipaddress

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from lbd.dataplane import maglev, secondchoice
from lbd.dataplane.programmer import Programmer
from lbd.plan import ACTIVE, DOWN, BackendPlan, VipPlan
from tests.unit.fakes import FAKE_RING, FakeMaps

pytestmark = pytest.mark.unit

POOL = [ipaddress.ip_address(f"198.18.20.{i}") for i in range(11, 19)]


class Clock:
    def __call__(self):
        return 1_000_000.0


@st.composite
def configs(draw):
    """VIPs (several on one address, by port) whose backend sets repeat: a few
    sets, each given to one or more VIPs, with weights and states."""
    sets = draw(st.lists(st.lists(st.sampled_from(POOL), min_size=1, max_size=6, unique=True),
                         min_size=1, max_size=3))
    plans = []
    for port in range(1, draw(st.integers(2, 6)) + 1):
        members = draw(st.sampled_from(sets))
        weights = {a: draw(st.sampled_from([1, 50, 100])) for a in members}
        plans.append(VipPlan(ipaddress.ip_address("198.18.100.1"), port, 6, ipip=True, second_chance=True,
                             name=f"vip{port}", hold_s=120.0,
                             backends=tuple(BackendPlan(a, weights[a]) for a in members)))
    return plans


def by_address(table, maps: FakeMaps) -> list:
    return [None if i == 0 else maps.entries[int(i)].address for i in table]


def reference_first(plan: VipPlan) -> list:
    """Maglev of the plan's in-table backends, by address."""
    ranks = {b.address: r for r, b in enumerate(sorted(plan.backends, key=lambda b: b.address.packed), start=1)}
    table = maglev.build_table_reference([maglev.Backend(b.address.packed, b.weight, ranks[b.address])
                                          for b in plan.backends if b.in_table], FAKE_RING)
    address = {r: a for a, r in ranks.items()}
    return [None if r == 0 else address[r] for r in table]


def reference_second(plan: VipPlan) -> list:
    """The rule's second table (no holds running: every backend of the plan a candidate)."""
    ranks = {b.address: r for r, b in enumerate(sorted(plan.backends, key=lambda b: b.address.packed), start=1)}
    first = maglev.build_table_reference([maglev.Backend(b.address.packed, b.weight, ranks[b.address])
                                          for b in plan.backends if b.in_table], FAKE_RING)
    cset = [maglev.Backend(b.address.packed, b.candidate_weight, ranks[b.address]) for b in plan.backends]
    address = {r: a for a, r in ranks.items()}
    return [None if r == 0 else address[r] for r in secondchoice.second_table_reference(first, cset, FAKE_RING)]


@settings(max_examples=25, deadline=None)
@given(configs(), st.data())
def test_every_vip_gets_its_own_tables_and_a_change_is_reported_of_the_tables_written(plans, data):
    maps = FakeMaps()
    programmer = Programmer(maps, clock=Clock())
    programmer.apply(plans)
    for plan in plans:
        vip_id = programmer.vip_id(plan.key)
        assert by_address(maps.rings[vip_id], maps) == reference_first(plan), plan.name
        assert by_address(maps.second_rings[vip_id], maps) == reference_second(plan), plan.name

    # one backend of one VIP goes down: the share of its slots that moved,
    # and of those the share whose second is the backend they had
    index = data.draw(st.integers(0, len(plans) - 1))
    changed = plans[index]
    down = data.draw(st.sampled_from(changed.backends))
    after = list(plans)
    after[index] = dataclasses.replace(changed, backends=tuple(
        dataclasses.replace(b, state=DOWN) if b is down else b for b in changed.backends))
    vip_id = programmer.vip_id(changed.key)
    first_before = np.array(maps.rings[vip_id])
    results = {r.name: r for r in programmer.apply(after)}
    first_after, second_after = np.array(maps.rings[vip_id]), np.array(maps.second_rings[vip_id])
    moved = first_before != first_after
    assert results[changed.name].moved_share == pytest.approx(moved.mean())
    if moved.any() and any(b.state == ACTIVE for b in after[index].backends if b is not down):
        assert results[changed.name].second_found_share == pytest.approx(
            (moved & (second_after == first_before)).sum() / moved.sum())
    assert by_address(first_after, maps) == reference_first(after[index])
    assert by_address(second_after, maps) == reference_second(after[index])
    for plan in plans:   # the others: unchanged, their tables as they were
        if plan is not changed:
            assert results[plan.name].action == "unchanged"
            assert by_address(maps.rings[programmer.vip_id(plan.key)], maps) == reference_first(plan)
