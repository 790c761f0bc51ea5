"""A model of the connection table: what docs/design.md's "Packet and flow
rules" promise, checked against the real program (BPF_PROG_TEST_RUN) driven
through the real Programmer by random sequences of backend changes and flow
packets, for TCP and UDP, dsr and ipip, 5-tuple and client-address hashing.

The model knows nothing of ids, generations or maps. It keeps, per flow,
what docs/design.md says its entry holds: the backend (address and which
incarnation of it: a backend removed and added again is a new one, docs/design.md
"removed, or its id reused") that the flow's last entry-making packet went
to, or nothing; whether the client closed the connection (a FIN or an RST
that went by the entry, or a FIN that made it); and when the entry last saw
a packet. Time is the kernel's clock (jiffies), and a rule makes the entries'
latest packets lie far back, past the README's 120 s or well within them, as
time passing would. From that it says, per packet, which backend the packet
may go to and whether it must be the one before:

  * an established flow keeps its backend while that backend is active or
    draining (a SYN of it only while active and its connection is not
    finished: a retransmitted SYN must not move a live connection);
  * a new connection (a SYN without such an entry) goes by the VIP's table,
    so only to a backend that takes new flows, and makes no entry; a SYN
    whose entry's backend takes no new flows, or whose connection finished
    (its client sent FIN or RST, or the entry saw no packet for more than
    120 s: README "A SYN on a finished connection's 4-tuple"), removes it,
    so a port-reusing client's new connection meets a changed table;
  * a flow whose backend is down, removed or replaced moves to a live one;
  * where docs/design.md names the table's backend, it is the one the
    pure-Python reference picks (lbd/dataplane/flowhash.py, lbd/dataplane/maglev.py), and an
    empty slot drops;
  * the handshake's ACK, through an unchanged table, meets its SYN's backend;
  * UDP entries live in their own table;
  * time passing includes the daemon's settle walk (docs/design.md "What a
    SYN looks up"): a SYN in a slot the model knows settled (no entry of it
    disagrees with the table or was ended since) goes by the table and leaves
    its entry as it was, and the walk removes ended entries that agree once
    silent.

`explain` (lbd/explain.py) must agree with the model for every tracked flow
after every step, and the kernel must too: each tracked flow is probed with
a SYN and an ACK (a datagram for UDP), and a TCP flow with an entry also
with a SYN as if its client had paused past 120 s just then, and with a FIN
and then a SYN (a port-reusing client's next connection); its entry and
model are put back after each probe, so the probe changes nothing.

What docs/design.md leaves open is not asserted: whether an RST, or a packet
dropped for want of a backend, removes an entry it could not follow (either
is accepted, and the model takes what the kernel did).
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from lbd.dataplane import bpfsys, flowhash, maglev, settle
from lbd.explain import KEPT, LEFT, MADE, NONE_MADE, PACKET, REMOVED, REPLACED, RST, SYN, Flow, explain_flow
from lbd.plan import ACTIVE, DOWN, DRAINING, BackendPlan, VipPlan
from tests.bpf import flowkit as fk
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

ip = ipaddress.ip_address
TCP, UDP = fk.TCP, fk.UDP
FIN = "fin"
# README "A SYN on a finished connection's 4-tuple": a connection is finished
# once its entry has seen no packet for more than this
FINISHED_AFTER_S = 120


@dataclass(frozen=True)
class VipSpec:
    name: str
    address: str
    port: int
    proto: int
    ipip: bool
    client: bool
    pool: tuple[str, ...]   # the addresses its backends are drawn from


def _pool(prefix: str) -> tuple[str, ...]:
    return tuple(f"{prefix}{i}" for i in range(11, 15))


VIPS = {v.name: v for v in [
    VipSpec("tcp-dsr-v4", sc.DSR_V4, 80, TCP, False, False, _pool("198.18.0.")),
    VipSpec("tcp-ipip-v6-client", sc.IPIP_V6, 80, TCP, True, True, _pool("fd00:20::")),
    VipSpec("udp-dsr-v6", sc.DSR_V6, 53, UDP, False, False, _pool("fd00::")),
    VipSpec("udp-ipip-v4-client", sc.IPIP_V4, 53, UDP, True, True, _pool("198.18.20.")),
]}


def _flows() -> dict[str, tuple[str, Flow]]:
    """Two 4-tuples per VIP (few, so that a sequence often meets the same
    flow again), of one client: on a client-affinity VIP they share a slot."""
    flows = {}
    for spec in VIPS.values():
        client = "fd00:10::2" if ip(spec.address).version == 6 else "198.18.10.2"
        for i, sport in enumerate((40000, 40001)):
            flow = Flow(ip(client), ip(spec.address), sport, spec.port, spec.proto)
            flows[f"{spec.name}#{i}"] = (spec.name, flow)
    return flows


FLOWS = _flows()
TCP_FLOWS = sorted(n for n, (v, _) in FLOWS.items() if VIPS[v].proto == TCP)
UDP_FLOWS = sorted(n for n, (v, _) in FLOWS.items() if VIPS[v].proto == UDP)
BACKEND_SLOTS = range(len(next(iter(VIPS.values())).pool))


@dataclass
class Backend:
    weight: int
    incarnation: int
    drained: bool = False
    down: bool = False

    @property
    def state(self) -> str:
        # the daemon's precedence (lbd/plan.py): drain or weight 0 first, then down
        if self.drained or self.weight == 0:
            return "draining"
        return "down" if self.down else "active"


@dataclass
class FlowModel:
    vip: str
    flow: Flow
    tracked: bool = False
    # what docs/design.md says the flow's entry holds: (address, incarnation) or None
    pinned: tuple[str, int] | None = None
    # the backend its last table-placed SYN went to, and the table then
    syn_backend: str | None = None
    syn_table: tuple | None = None
    # the entry's connection: its client sent FIN or RST; its latest packet (jiffies)
    closed: bool = False
    last_seen: int = 0


# What a packet does to the flow's entry, as docs/design.md promises it.
KEEP = "keep"            # the entry stays (and led the packet)
NO_ENTRY = "no entry"    # none after the packet (a SYN: none made, or removed)
PLACE = "place"          # an entry for the packet's backend
UNSAID = "unsaid"        # no new entry; whether an unusable one stays, docs/design.md leaves open
LEAVE = "leave"          # a SYN of a settled slot: the entry, if any, not looked up and untouched

EXPLAIN_EFFECTS = {KEEP: {KEPT}, NO_ENTRY: {NONE_MADE, REMOVED}, PLACE: {MADE, REPLACED},
                   UNSAID: {LEFT, NONE_MADE}, LEAVE: {LEFT, NONE_MADE}}
# docs/design.md "What a SYN looks up": an entry its client ended is removed by
# the settle walk once it agrees and has been silent this long
ENDED_REMOVED_AFTER_S = 60


@dataclass
class Expect:
    to: str | None           # the backend (None: dropped, no backend in the table slot)
    promise: str             # which promise says so
    after: str               # KEEP, NO_ENTRY, PLACE, UNSAID
    stays: bool = False      # must be the flow's backend before
    new_connection: bool = False
    moved: bool = False
    finished: str | None = None  # why the entry's connection is finished (a SYN's), if it is


# (packet kind, state of the flow's entry's backend) each promise was checked
# in, over the whole run: the test fails if a state it is about was never met
MET: set[tuple] = set()
# reference tables by their input: a pure-Python build costs tens of ms and
# the same backend sets recur across steps and examples
_TABLES: dict[tuple, list] = {}


def reference_table(members: tuple) -> list:
    """slot -> backend address (None: empty), by the pure-Python Maglev over
    (packed address, weight) of the backends that take new flows."""
    if members not in _TABLES:
        addresses = [a for a, _ in members]
        table = maglev.build_table_reference(
            [(ip(a).packed, w, i + 1) for i, (a, w) in enumerate(members)], ring_size())
        _TABLES[members] = [addresses[x - 1] if x else None for x in table]
    return _TABLES[members]


def ring_size() -> int:
    return ConntrackModel.lb.dp.limits.ring_size


class ConntrackModel(RuleBasedStateMachine):
    lb = None  # the bpf-tier Harness, set by the test

    def __init__(self):
        super().__init__()
        self.dp = self.lb.dp
        self.lb.reset()
        fk.clear(self.dp)
        self.backends = fk.Backends([a for v in VIPS.values() for a in v.pool])
        self.incarnations = {(v, a): 0 for v in VIPS for a in VIPS[v].pool}
        self.members: dict[str, dict[str, Backend]] = {v: {} for v in VIPS}
        for name, spec in VIPS.items():
            for address in spec.pool[:3]:
                self._add(name, address, 1)
        self.flows = {n: FlowModel(v, f) for n, (v, f) in FLOWS.items()}
        # docs/design.md "What a SYN looks up": per TCP VIP judged by the last
        # settle walk, the slots it left unsettled (every other slot is settled)
        self.unsettled: dict[str, set[int]] = {}
        self._apply()

    # --- the backends, through the real Programmer ------------------------------
    def _add(self, vip: str, address: str, weight: int):
        self.incarnations[(vip, address)] += 1
        self.members[vip][address] = Backend(weight, self.incarnations[(vip, address)])

    def _plan(self, name: str) -> VipPlan:
        spec = VIPS[name]
        states = {"active": ACTIVE, "draining": DRAINING, "down": DOWN}
        members = tuple(BackendPlan(ip(a), b.weight, states[b.state], sc.backend_mac(a),
                                    bytes.fromhex(sc.LBD_MAC.replace(":", "")))
                        for a, b in self.members[name].items())
        return VipPlan(ip(spec.address), spec.port, spec.proto, ipip=spec.ipip,
                       client_affinity=spec.client, backends=members, name=name)

    def _apply(self):
        before = self._tables_in_kernel()
        self.lb.apply(self._plan(name) for name in VIPS)
        after = self._tables_in_kernel()
        for name in VIPS:  # a VIP whose table was swapped has no settled slot
            if before.get(name) != after.get(name):
                self.unsettled.pop(name, None)

    def _tables_in_kernel(self) -> dict[str, int]:
        """Each VIP's table as the kernel holds it: the inner map's id (a new
        one each time the daemon swaps a table in)."""
        applied = self.lb.programmer.applied()
        found = {}
        for name in VIPS:
            plan = applied.get(self._plan(name).key)
            if plan is not None:
                found[name] = bpfsys.lookup_u32(self.dp.rings.map_fd, plan.vip_id)
        return found

    def _slot(self, model: FlowModel) -> int:
        flow = model.flow
        hashed = (flowhash.client_hash(flow.src) if VIPS[model.vip].client
                  else flowhash.flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto))
        return flowhash.table_slot(hashed, ring_size())

    def _settled(self, model: FlowModel) -> bool:
        return model.vip in self.unsettled and self._slot(model) not in self.unsettled[model.vip]

    def _agrees(self, model: FlowModel) -> bool:
        """The flow's entry names its slot's backend, which takes new flows."""
        return self._pinned_state(model) == "active" and model.pinned[0] == self._table_pick(model)

    def _backend_of(self, flow: str) -> tuple[str, Backend | None]:
        """The backend a flow is on: its entry's, else its table slot's."""
        model = self.flows[flow]
        address = model.pinned[0] if model.pinned else self._table_pick(model)
        return model.vip, self.members[model.vip].get(address)

    def _change(self, flow: str, **changes) -> None:
        _, backend = self._backend_of(flow)
        if backend is not None:
            for key, value in changes.items():
                setattr(backend, key, value)
            self._apply()

    # Changes aimed at the backend a flow is on, since those are the ones a
    # promise is about; the others (adds, weights) change the tables around.
    @rule(vip=st.sampled_from(sorted(VIPS)), slot=st.sampled_from(BACKEND_SLOTS),
          weight=st.integers(1, 3))
    def add_backend(self, vip, slot, weight):
        """A backend added; one removed before comes back as a new one."""
        if VIPS[vip].pool[slot] not in self.members[vip]:
            self._add(vip, VIPS[vip].pool[slot], weight)
            self._apply()

    @rule(vip=st.sampled_from(sorted(VIPS)), slot=st.sampled_from(BACKEND_SLOTS),
          weight=st.integers(0, 3))
    def set_weight(self, vip, slot, weight):
        """0 drains it (lbd/plan.py)."""
        backend = self.members[vip].get(VIPS[vip].pool[slot])
        if backend is not None:
            backend.weight = weight
            self._apply()

    @rule(flow=st.sampled_from(TCP_FLOWS), weight=st.integers(1, 3))
    def change_table_around(self, flow, weight):
        """The flow's table changes while its own backend stays as it is
        (capacity added under load): a backend is added beside it (the first
        pool address not in the VIP) or, with the pool full, the next backend
        after its own gets `weight`."""
        vip, own = self._backend_of(flow)
        absent = [a for a in VIPS[vip].pool if a not in self.members[vip]]
        if absent:
            self._add(vip, absent[0], weight)
        else:
            others = [b for b in self.members[vip].values() if b is not own]
            others[0].weight = weight
        self._apply()

    @rule(flow=st.sampled_from(sorted(FLOWS)))
    def remove_backend_of(self, flow):
        vip, backend = self._backend_of(flow)
        if backend is not None:
            self.members[vip] = {a: b for a, b in self.members[vip].items() if b is not backend}
            self._apply()

    @rule(flow=st.sampled_from(sorted(FLOWS)), slot=st.sampled_from(BACKEND_SLOTS))
    def replace_backend_of(self, flow, slot):
        """Remove the flow's backend, then (a second apply) add one: the
        programmer gives it the freed id with a new generation. If the pool
        address is taken, the removed address itself comes back, as a new
        backend."""
        vip, backend = self._backend_of(flow)
        if backend is None:
            return
        removed = next(a for a, b in self.members[vip].items() if b is backend)
        del self.members[vip][removed]
        self._apply()
        address = VIPS[vip].pool[slot]
        self._add(vip, removed if address in self.members[vip] else address, backend.weight)
        self._apply()

    @rule(flow=st.sampled_from(sorted(FLOWS)))
    def drain_backend_of(self, flow):
        self._change(flow, drained=True)

    @rule(flow=st.sampled_from(sorted(FLOWS)))
    def fail_backend_of(self, flow):
        self._change(flow, down=True)

    @rule(vip=st.sampled_from(sorted(VIPS)))
    def undrain_all(self, vip):
        if any(b.drained for b in self.members[vip].values()):
            for backend in self.members[vip].values():
                backend.drained = False
            self._apply()

    @rule(vip=st.sampled_from(sorted(VIPS)))
    def recover_all(self, vip):
        if any(b.down for b in self.members[vip].values()):
            for backend in self.members[vip].values():
                backend.down = False
            self._apply()

    # --- flows ------------------------------------------------------------------
    @rule(flow=st.sampled_from(TCP_FLOWS))
    def open_or_reopen(self, flow):
        """A SYN: a new connection on the 4-tuple (or a retransmission)."""
        self._packet(flow, SYN)

    @rule(flow=st.sampled_from(TCP_FLOWS))
    def ack(self, flow):
        """The handshake's ACK, or any later segment of the connection."""
        self._packet(flow, PACKET)

    @rule(flow=st.sampled_from(TCP_FLOWS), how=st.sampled_from([FIN, RST]))
    def close(self, flow, how):
        """FIN is any other packet to the table; an RST makes no entry."""
        self._packet(flow, how)

    @rule(flow=st.sampled_from(UDP_FLOWS))
    def datagram(self, flow):
        self._packet(flow, PACKET)

    def _settle_walk(self):
        """The daemon's settle walk: an ended entry that agrees and has been
        silent goes, and every slot of which no entry disagrees or is ended
        becomes settled."""
        settle.settle(self.dp)
        for model in self.flows.values():
            if (model.flow.proto == TCP and model.pinned is not None and model.closed
                    and self._agrees(model) and self._silent_s(model) > ENDED_REMOVED_AFTER_S):
                model.pinned = None
        self.unsettled = {name: set() for name, spec in VIPS.items() if spec.proto == TCP}
        for model in self.flows.values():
            if model.flow.proto == TCP and model.pinned is not None and (model.closed or not self._agrees(model)):
                self.unsettled[model.vip].add(self._slot(model))

    @rule(long=st.booleans())
    def time_passes(self, long):
        """The clients pause: every TCP entry's latest packet comes to lie 30 s
        past the README's 120 s, or (long=False) 30 s within them."""
        seconds = FINISHED_AFTER_S + 30 if long else FINISHED_AFTER_S - 30
        for model in self.flows.values():
            if model.pinned is not None and model.flow.proto == TCP:
                model.last_seen = fk.silence(self.dp, model.flow, seconds)
        self._settle_walk()  # the daemon walks every 10 s: at least once meanwhile

    @rule(flow=st.sampled_from(sorted(FLOWS)))
    def evict(self, flow):
        """The LRU takes the entry (whatever the flow's state)."""
        model = self.flows[flow]
        fk.evict(self.dp, model.flow)
        model.pinned = None

    # --- the promises -------------------------------------------------------------
    def _table_key(self, vip: str) -> tuple:
        return tuple(sorted((a, b.weight) for a, b in self.members[vip].items() if b.state == "active"))

    def _table_pick(self, model: FlowModel) -> str | None:
        flow = model.flow
        hashed = (flowhash.client_hash(flow.src) if VIPS[model.vip].client
                  else flowhash.flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto))
        return reference_table(self._table_key(model.vip))[flowhash.table_slot(hashed, ring_size())]

    def _pinned_state(self, model: FlowModel) -> str | None:
        """The state of the backend the flow's entry holds: None (no entry),
        active, draining, down, or gone (removed, or added again since)."""
        if model.pinned is None:
            return None
        address, incarnation = model.pinned
        backend = self.members[model.vip].get(address)
        if backend is None or backend.incarnation != incarnation:
            return "gone"
        return backend.state

    def _silent_s(self, model: FlowModel) -> float:
        """How long ago the flow's entry saw its latest packet."""
        return (self.dp.jiffies() - model.last_seen) / self.dp.hz

    def _finished(self, model: FlowModel) -> str | None:
        """Why the README calls the entry's connection finished, or None."""
        if model.pinned is None:
            return None
        if model.closed:
            return "closed"
        return "silent" if self._silent_s(model) > FINISHED_AFTER_S else None

    def expect(self, model: FlowModel, kind: str) -> Expect:
        state = self._pinned_state(model)
        pinned = model.pinned[0] if model.pinned else None
        table = self._table_pick(model)
        if kind == SYN and self._settled(model):
            assert model.pinned is None or (self._agrees(model) and not model.closed), \
                "a settled slot holds an entry that disagrees with the table or was ended"
            return Expect(table, "a SYN in a settled slot goes by the table; no entry of the slot leads "
                          "elsewhere, and its own is not looked up", LEAVE, stays=model.pinned is not None,
                          new_connection=model.pinned is None or self._finished(model) is not None)
        if kind == SYN:
            finished = self._finished(model)
            if state == "active" and not finished:
                return Expect(pinned, "a SYN of a live connection on an active backend stays there",
                              KEEP, stays=True)
            why = ""
            if state in ("draining", "down", "gone"):
                why = "; the old entry, whose backend takes no new flows, goes"
            elif state == "active":
                why = f"; the old entry, whose connection finished ({finished}), goes"
            return Expect(table, "a new connection goes by the table and makes no entry" + why,
                          NO_ENTRY, new_connection=True, finished=finished if state else None)
        if state in ("active", "draining"):
            return Expect(pinned, f"an established flow keeps its backend while it is {state}", KEEP,
                          stays=True)
        if kind == RST:
            return Expect(table, "an RST without a usable entry goes by the table and makes no entry",
                          NO_ENTRY if state is None else UNSAID, moved=state is not None)
        if table is None:
            return Expect(None, "no backend takes new flows: dropped", NO_ENTRY if state is None else UNSAID,
                          moved=state is not None)
        if state is None:
            return Expect(table, "a flow without an entry goes by the table and gets one", PLACE)
        return Expect(table, f"a flow whose backend is {state} moves to a live one", PLACE, moved=True)

    def _context(self, name: str, kind: str, exp: Expect) -> str:
        model = self.flows[name]
        backends = {a: (b.state, b.weight, b.incarnation) for a, b in self.members[model.vip].items()}
        entry = (f"{model.pinned}, client closed {model.closed}, silent {self._silent_s(model):.0f} s"
                 if model.pinned else "none")
        return (f"{kind} of {name} {model.flow}: promise: {exp.promise}; model entry {entry}; "
                f"{model.vip} backends (state, weight, incarnation) {backends}")

    def _check_kernel(self, name: str, kind: str, exp: Expect, got, before, after) -> None:
        model = self.flows[name]
        MET.add((kind if kind in (SYN, RST) else PACKET, self._pinned_state(model)))
        if exp.to is None:
            MET.add(("dropped", None))
        if exp.finished and self._pinned_state(model) == "active":
            MET.add(("SYN on a finished connection's entry", exp.finished,
                     "its slot moved" if exp.to != model.pinned[0] else "its slot did not"))
        if kind == SYN and exp.stays and self._silent_s(model) > FINISHED_AFTER_S / 2:
            MET.add(("SYN on a quiet live connection's entry", "stays", None))
        active = {a for a, b in self.members[model.vip].items() if b.state == "active"}
        where = self._context(name, kind, exp)
        if exp.stays:
            assert got == exp.to, f"established flow moved from {exp.to} to {got}: {where}"
        if exp.new_connection and got is not None:
            assert got in active, f"new connection sent to {got}, which takes no new flows: {where}"
        if exp.moved and got is not None:
            assert got in active, f"flow moved to {got}, which is not live: {where}"
        assert got == exp.to, f"went to {got}, the promise says {exp.to}: {where}"
        if kind == PACKET and model.pinned is None and model.syn_backend is not None \
                and model.syn_table == self._table_key(model.vip):
            assert got == model.syn_backend, f"the handshake's ACK missed its SYN's backend: {where}"
        if kind == SYN and exp.after == LEAVE:
            MET.add(("SYN in a settled slot", "on an entry" if before else "without one"))
        if exp.after in (KEEP, LEAVE):
            assert after == before, f"entry changed from {before} to {after}: {where}"
        elif exp.after == NO_ENTRY:
            assert after is None, f"entry {after} after the packet, docs/design.md says none: {where}"
        elif exp.after == PLACE:
            assert after is not None and after != before, f"no new entry ({before} -> {after}): {where}"
        else:
            assert after in (before, None), f"entry {before} became {after}: {where}"

    def _send(self, name: str, kind: str):
        model = self.flows[name]
        before = fk.entry(self.dp, model.flow)
        result = self.lb.run(fk.frame(model.flow, kind))
        return self.backends.of(result), before, fk.entry(self.dp, model.flow)

    def _packet(self, name: str, kind: str) -> None:
        model = self.flows[name]
        exp = self.expect(model, kind)
        now = self.dp.jiffies()
        got, before, after = self._send(name, kind)
        self._check_kernel(name, kind, exp, got, before, after)
        model.tracked = True
        if exp.after == NO_ENTRY:
            model.pinned = None
        elif exp.after == PLACE:
            model.pinned = (got, self.members[model.vip][got].incarnation)
            model.closed, model.last_seen = kind == FIN, now  # an RST never makes one
        elif exp.after == KEEP:
            model.closed, model.last_seen = model.closed or kind in (FIN, RST), now
        elif exp.after == UNSAID and after is None:
            model.pinned = None  # the kernel removed it, which docs/design.md allows
        if kind in (FIN, RST) and model.pinned is not None and model.vip in self.unsettled:
            self.unsettled[model.vip].add(self._slot(model))  # the client ended it: its slot unsettles
        if kind == SYN and exp.new_connection:
            model.syn_backend, model.syn_table = got, self._table_key(model.vip)
        elif kind != SYN:
            model.syn_backend = model.syn_table = None

    @invariant()
    def explain_and_kernel_agree_with_the_model(self):
        applied = self.lb.programmer.applied()
        for name, model in self.flows.items():
            if not model.tracked:
                continue
            kinds = [("next_syn", SYN), ("next_packet", PACKET)] if model.flow.proto == TCP \
                else [("next_packet", PACKET)]
            self._probe(applied, name, kinds)
            if model.flow.proto == TCP and model.pinned is not None:
                # a new connection on the 4-tuple, had its client paused past
                # the README's 120 s just now, or closed it just now
                with self._what_if(name) as paused:
                    paused.last_seen = fk.silence(self.dp, model.flow, FINISHED_AFTER_S + 30)
                    self._probe(applied, name, [("next_syn", SYN)])
                with self._what_if(name):
                    self._packet(name, FIN)
                    self._probe(applied, name, [("next_syn", SYN)])
            if model.flow.proto == UDP:
                assert fk.entry(self.dp, model.flow, in_table_of=TCP) is None, \
                    f"{name}: a UDP flow's entry in the TCP table (a UDP flood could evict TCP entries)"

    @contextlib.contextmanager
    def _what_if(self, name: str):
        """Whatever happens to the flow inside (to its model: the copy this
        yields), its entry and its model are put back as they were."""
        saved, model = fk.snapshot(self.dp, self.flows[name].flow), self.flows[name]
        self.flows[name] = dataclasses.replace(model)
        try:
            yield self.flows[name]
        finally:
            fk.restore(self.dp, model.flow, saved)
            self.flows[name] = model

    def _probe(self, applied, name: str, kinds) -> None:
        """explain's answer and the kernel's for the flow's next packets of
        `kinds` ((explain's field, kind)), each on a copy of this moment: the
        entry is put back whole after each."""
        model = self.flows[name]
        said = explain_flow(applied, self.dp, model.flow)
        for field_name, kind in kinds:
            exp = self.expect(model, kind)
            where = self._context(name, kind, exp)
            predicted = said[field_name]
            action = "forward" if exp.to else "drop"
            assert predicted["backend"] == exp.to and predicted["action"] == action, \
                f"explain says {predicted['action']} to {predicted['backend']} ({predicted['why']}): {where}"
            assert predicted["entry"] in EXPLAIN_EFFECTS[exp.after], \
                f"explain says entry {predicted['entry']}, the promise is {exp.after}: {where}"
            saved = fk.snapshot(self.dp, model.flow)
            got, before, after = self._send(name, kind)
            fk.restore(self.dp, model.flow, saved)
            self._check_kernel(name, kind, exp, got, before, after)


def test_connection_table_keeps_the_readme_promises(lb):
    ConntrackModel.lb = lb
    MET.clear()
    try:
        # derandomized: the same sequences every run, so a failure is
        # reproducible; a failing run shrinks and prints the shortest sequence
        run_state_machine_as_test(ConntrackModel, settings=settings(
            max_examples=150, stateful_step_count=30, derandomize=True, database=None,
            deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=False))
    finally:
        ConntrackModel.lb = None
        fk.clear(lb.dp)
    states = [None, "active", "draining", "down", "gone"]
    wanted = ({(SYN, s) for s in states} | {(PACKET, s) for s in states}
              | {(RST, None), (RST, "active"), ("dropped", None)})
    assert wanted <= MET, f"promises never checked in these states: {sorted(wanted - MET, key=str)}"
    assert {(RST, "down"), (RST, "gone")} & MET, "no RST met an entry it could not follow"
    # a port-reusing client: a closed (or long silent) connection's 4-tuple reused after the table changed
    finished = {("SYN on a finished connection's entry", why, "its slot moved") for why in ("closed", "silent")}
    finished.add(("SYN on a quiet live connection's entry", "stays", None))
    assert finished <= MET, f"never checked: {sorted(finished - MET, key=str)}"
    settled = {("SYN in a settled slot", "on an entry"), ("SYN in a settled slot", "without one")}
    assert settled <= MET, f"never checked: {sorted(settled - MET, key=str)}"
