"""Second-chance forwarding, the control plane through the real program: the
second tables the Programmer computes are what packets carry (the GUE
private data of every packet names its slot's, or its entry's, second
choice; draft-ietf-intarea-gue variant 0 as lbd_shared.h lays it out), a
removed backend is named while its hold runs and never after, a down one
likewise, a restarted daemon keeps every hold and writes the same tables,
and `lbctl explain` names both choices as the kernel picks them.

Packets are run with BPF_PROG_TEST_RUN; which backend and which second
choice a frame names is read from its outer headers."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
import random
import shutil

import numpy as np
import pytest

from lbd.dataplane import flowhash, layout
from lbd.dataplane.maps import Datapath, Limits
from lbd.explain import PACKET, SYN, Flow, explain_flow
from lbd.plan import ACTIVE, DOWN, DRAINING, HELD
from lbd.dataplane.programmer import FOREVER, Programmer
from tests.bpf import flowkit as fk
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

C = layout.constant
ip = ipaddress.ip_address
HOLD = 60.0
VIP = {4: "198.18.100.70", 6: "fd00:100::70"}
MEMBERS = {4: "198.18.20.", 6: "fd00:20::"}   # routed via the namespace's resolved next hop


class Clock:
    """The programmer's unix clock, moved by the test (holds are in seconds)."""

    def __init__(self):
        self.now = 2_000_000_000.0

    def __call__(self):
        return self.now


def plan(version: int, count: int = 4, second_chance: bool = True, states=None):
    members = sc.backends(MEMBERS[version], count)
    if states:
        members = tuple(dataclasses.replace(m, state=states.get(i, m.state)) for i, m in enumerate(members))
    return dataclasses.replace(sc.vip(VIP[version], 80, sc.TCP_P, ipip=True, members=members),
                               second_chance=second_chance, hold_s=HOLD)


class Flows:
    def __init__(self, version: int, seed: int):
        self.version, self.rng = version, random.Random(seed)

    def new(self, count: int) -> list[Flow]:
        dst = ip(VIP[self.version])
        flows = set()
        while len(flows) < count:
            src = (ipaddress.IPv4Address((198 << 24) | (19 << 16) | self.rng.getrandbits(16))
                   if self.version == 4 else ipaddress.IPv6Address((0xfd00_0019 << 96) | self.rng.getrandbits(64)))
            flows.add(Flow(src, dst, self.rng.randrange(1024, 65536), 80, sc.TCP_P))
        return sorted(flows, key=lambda f: (f.src.packed, f.sport))


def names(lb, key) -> dict[int, str]:
    """backend id -> address, of the VIP's backends and held ones."""
    applied = lb.programmer.applied()[key]
    out = {i: str(a) for a, i in applied.backend_ids.items()}
    out.update({h.backend_id: str(a) for a, h in lb.programmer.held(key).items()})
    return out


def predicted(lb, key, flow: Flow) -> tuple[str, str | None]:
    """The slot's first and second choice in the programmer's tables."""
    applied = lb.programmer.applied()[key]
    slot = flowhash.table_slot(flowhash.flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto),
                               lb.dp.limits.ring_size)
    by_id = names(lb, key)
    second = int(applied.second[slot])
    return by_id[int(applied.table[slot])], by_id.get(second) if second else None


def send(lb, flow: Flow, kind=PACKET) -> tuple[str, str | None]:
    """The packet through the program, after checking that explain says what it does."""
    said = explain_flow(lb.programmer.applied(), lb.dp, flow)["next_syn" if kind == SYN else "next_packet"]
    got = fk.carried(lb.run(fk.frame(flow, kind)))
    assert (said["backend"], said["second"]) == got, (flow, said)
    return got


@pytest.fixture
def clocked(lb):
    clock = Clock()
    lb.programmer.clock = clock
    fk.clear(lb.dp)
    yield lb, clock
    fk.clear(lb.dp)


@pytest.mark.parametrize("version", [4, 6])
def test_packets_carry_the_second_choice_the_programmer_computed(clocked, version):
    lb, _ = clocked
    vip = plan(version)
    lb.apply([vip])
    for flow in Flows(version, seed=version).new(300):
        first, second = predicted(lb, vip.key, flow)
        assert second is not None and second != first  # four candidates: always another one
        assert send(lb, flow, SYN) == (first, second)       # placed, no entry made
        assert send(lb, flow) == (first, second)            # placed, entry made ...
        assert int(lb.dp.flow_entry(flow.src, flow.dst, flow.sport, flow.dport, flow.proto).second_id) \
            == next(i for i, a in names(lb, vip.key).items() if a == second)
        assert send(lb, flow) == (first, second)            # ... and followed


def test_without_second_chance_packets_are_plain_ipip(clocked):
    lb, _ = clocked
    vip = plan(4, second_chance=False)
    lb.apply([vip])
    assert lb.dp.read_second_ring(lb.programmer.vip_id(vip.key)) is None
    for flow in Flows(4, seed=9).new(50):
        assert send(lb, flow)[1] is None
    # turned on by a reload, off again: the table appears and goes
    lb.apply([plan(4)])
    assert lb.dp.read_second_ring(lb.programmer.vip_id(vip.key)) is not None
    lb.apply([vip])
    assert lb.dp.read_second_ring(lb.programmer.vip_id(vip.key)) is None


def flows_on(lb, key, flows, address: str) -> list[Flow]:
    """The flows (opened already) whose entry is on `address`."""
    by_id = names(lb, key)
    return [f for f in flows
            if by_id.get(int(lb.dp.flow_entry(f.src, f.dst, f.sport, f.dport, f.proto).backend_id)) == address]


@pytest.mark.parametrize("version", [4, 6])
def test_a_removed_backend_is_named_while_held_and_never_after(clocked, version):
    lb, clock = clocked
    vip = plan(version)
    lb.apply([vip])
    flows = Flows(version, seed=10 + version).new(600)
    for flow in flows:
        send(lb, flow)
    gone = vip.backends[0]
    on_gone = flows_on(lb, vip.key, flows, str(gone.address))
    gone_id = lb.programmer.backend_id(vip.key, gone.address)
    lb.apply([dataclasses.replace(vip, backends=vip.backends[1:])])
    entry = lb.dp.backend(gone_id)
    assert (entry.state, entry.second_until) == (HELD, int(clock.now + HOLD))
    # its flows move (the entry's backend is held, not active) and name it
    moved = [send(lb, flow) for flow in on_gone]
    assert all(first != str(gone.address) for first, _ in moved)
    assert on_gone and all(second == str(gone.address) for _, second in moved)  # their old backend
    for flow in flows:  # every packet as the programmer's tables (or the flow's entry) say
        send(lb, flow)
    clock.now += HOLD
    assert lb.programmer.expire() is None
    assert lb.dp.backend(gone_id).state == C("LBD_BACKEND_EMPTY")
    # the entries made while it was held still name it: no longer carried
    for flow in on_gone:
        assert send(lb, flow)[1] is None
    fresh = Flows(version, seed=20 + version).new(300)
    assert all(send(lb, flow)[1] not in (None, str(gone.address)) for flow in fresh)
    assert all(predicted(lb, vip.key, flow)[1] != str(gone.address) for flow in fresh)


def test_a_down_backend_is_named_until_its_hold_ends(clocked):
    lb, clock = clocked
    vip = plan(4)
    lb.apply([vip])
    flows = Flows(4, seed=30).new(600)
    for flow in flows:
        send(lb, flow)
    down = vip.backends[1]
    on_down = flows_on(lb, vip.key, flows, str(down.address))
    down_id = lb.programmer.backend_id(vip.key, down.address)
    lb.apply([plan(4, states={1: DOWN})])
    assert lb.dp.backend(down_id).second_until == int(clock.now + HOLD)
    assert on_down and all(send(lb, flow)[1] == str(down.address) for flow in on_down)
    clock.now += HOLD - 1
    assert lb.programmer.expire() == int(clock.now + 1)   # not yet
    clock.now += 1
    assert lb.programmer.expire() is None
    assert (lb.dp.backend(down_id).state, lb.dp.backend(down_id).second_until) == (DOWN, 0)
    assert all(send(lb, flow)[1] != str(down.address) for flow in on_down)
    # back up: a second choice for ever again, and in the table
    lb.apply([vip])
    assert (lb.dp.backend(down_id).state, lb.dp.backend(down_id).second_until) == (ACTIVE, FOREVER)


def test_a_restart_keeps_every_hold_and_writes_the_same_tables(fib_namespace):
    pin_dir = f"/sys/fs/bpf/lbdt-second-{os.getpid()}"
    limits = Limits(max_vips=16, max_backends=256, conntrack_size=4096, conntrack_udp_size=4096)
    clock = Clock()
    try:
        first = Datapath(limits, pin_dir)
        programmer = Programmer(first, clock=clock)
        v4, v6 = plan(4, count=5), plan(6, count=5)
        programmer.apply([v4, v6])
        clock.now += 10
        # one backend removed (held), one down (held as a second choice)
        kept = [dataclasses.replace(v4, backends=v4.backends[1:]), plan(6, count=5, states={2: DOWN})]
        programmer.apply(kept)
        before = {key: (first.read_ring(a.vip_id), first.read_second_ring(a.vip_id))
                  for key, a in programmer.applied().items()}
        held_before = {key: programmer.held(key) for key in before}
        deadline = programmer.next_deadline()
        assert deadline == int(clock.now + HOLD) and held_before[v4.key]
        del programmer, first  # the daemon dies; the pins stay

        clock.now += 20
        second = Datapath(limits, pin_dir)
        adopted = Programmer(second, clock=clock)
        assert adopted.adopt() == 2
        assert adopted.next_deadline() == deadline
        adopted.apply(kept)
        after = {key: (second.read_ring(a.vip_id), second.read_second_ring(a.vip_id))
                 for key, a in adopted.applied().items()}
        assert after == before
        assert {key: adopted.held(key) for key in after} == held_before
        clock.now = deadline
        assert adopted.expire() is None and not adopted.held(v4.key)
        gone_id = held_before[v4.key][v4.backends[0].address].backend_id
        assert second.backend(gone_id).state == C("LBD_BACKEND_EMPTY")
        assert not np.isin(np.asarray(second.read_second_ring(adopted.vip_id(v4.key))), [gone_id]).any()
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)


# --- a flow kept by its entry, then its backend fails or goes (issue 19, item 4) -------
def entry_backend(lb, key, flow: Flow) -> str:
    entry = lb.dp.flow_entry(flow.src, flow.dst, flow.sport, flow.dport, flow.proto)
    return names(lb, key)[int(entry.backend_id)]


@pytest.mark.parametrize("how", ["down", "removed"])
@pytest.mark.parametrize("version", [4, 6])
def test_a_flow_kept_by_its_entry_names_its_backend_when_it_must_move(clocked, version, how):
    """README: a flow whose backend failed or was removed moves to its slot's
    first choice, naming the backend its entry had while that backend is held.
    The case the slot's rule cannot see: a fifth backend takes the slot, the
    entry keeps the flow on its old backend X, then X fails or is removed.
    The slot's second is then the owner without the new backend, not X; the
    entry knows X has the connection."""
    lb, clock = clocked
    four = plan(version, count=4)
    lb.apply([four])
    flows = Flows(version, seed=40 + version).new(800)
    for flow in flows:
        send(lb, flow)                                # every flow has its entry
    five = plan(version, count=5)
    lb.apply([five])
    newcomer = str(five.backends[4].address)
    kept = [f for f in flows if predicted(lb, five.key, f)[0] == newcomer]
    assert kept and all(send(lb, f)[0] != newcomer for f in kept)    # kept by their entries
    victim = max((b for b in five.backends[:4]),
                 key=lambda b: sum(entry_backend(lb, five.key, f) == str(b.address) for f in kept))
    on_victim = [f for f in kept if entry_backend(lb, five.key, f) == str(victim.address)]
    index = five.backends.index(victim)
    if how == "down":
        after = plan(version, count=5, states={index: DOWN})
    else:
        after = dataclasses.replace(five, backends=tuple(b for b in five.backends if b is not victim))
    lb.apply([after])
    slot_names_it = sum(predicted(lb, after.key, f)[1] == str(victim.address) for f in on_victim)
    moved = [send(lb, f) for f in on_victim]
    print(f"{len(on_victim)} flows kept by their entry on {victim.address} ({how}); "
          f"their slot names it for {slot_names_it}, their packets name it for "
          f"{sum(s == str(victim.address) for _, s in moved)}")
    assert all(first == newcomer for first, _ in moved)
    assert all(second == str(victim.address) for _, second in moved), moved
    # their new entries go on naming it while the hold runs, and not after
    assert all(send(lb, f) == (newcomer, str(victim.address)) for f in on_victim)
    clock.now += HOLD
    assert lb.programmer.expire() is None
    assert all(send(lb, f)[1] != str(victim.address) for f in on_victim)


def test_a_flow_on_a_drained_backend_stays_and_a_syn_does_not_name_it(clocked):
    """Drained: the entry is still followed (no move). A SYN on the 4-tuple of
    a flow whose backend is down starts a new connection: it names its slot's
    second, not the old entry's backend."""
    lb, _ = clocked
    four = plan(4, count=4)
    lb.apply([four])
    flows = Flows(4, seed=47).new(200)
    for flow in flows:
        send(lb, flow)
    on_first = flows_on(lb, four.key, flows, str(four.backends[0].address))
    lb.apply([plan(4, count=4, states={0: DRAINING})])
    assert all(send(lb, f)[0] == str(four.backends[0].address) for f in on_first)
    lb.apply([plan(4, count=4, states={0: DOWN})])
    assert all(send(lb, f, SYN) == predicted(lb, four.key, f) for f in on_first)


@pytest.mark.parametrize("version", [4, 6])
def test_a_flow_placed_while_the_second_table_is_pending_names_it_once_built(clocked, version):
    """README: the first table is never delayed; the second one may be built
    in the background. Meanwhile the slots that moved name the backend they
    had; and a flow placed in between (no entry here: it crossed from another
    host, or its entry was evicted) must not keep that interim second (or the
    table before's) for ever: once the second table is built, its packets
    name the slot's second, as every host's do."""
    lb, _ = clocked
    four = plan(version, count=4)
    lb.apply([four])
    flows = Flows(version, seed=60 + version).new(600)
    before = {f: predicted(lb, four.key, f)[0] for f in flows}
    lb.programmer.second_budget_s = 0.0       # the daemon's background queue, held
    failed = plan(version, count=4, states={3: DOWN})
    lb.apply([failed])
    assert lb.programmer.second_pending(failed.key)
    during = [send(lb, f) for f in flows]      # entries made while the second table is pending
    assert all(first == predicted(lb, failed.key, f)[0] for f, (first, _) in zip(flows, during))
    # meanwhile a slot that moved names the backend it had (the rule's answer there)
    down = str(four.backends[3].address)
    assert all(second == down for f, (_, second) in zip(flows, during) if before[f] == down)
    assert lb.programmer.build_second() == 0    # the queue runs
    after = [send(lb, f) for f in flows]
    wrong = [f for f, got in zip(flows, after) if got != predicted(lb, failed.key, f)]
    print(f"{len(wrong)} of {len(flows)} flows placed while pending name another second than "
          f"their slot's once it is built")
    assert not wrong
    on_down = [f for f in flows if before[f] == down]
    assert on_down and all(send(lb, f)[1] == down for f in on_down)   # and it sticks
