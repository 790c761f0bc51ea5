"""`lbctl explain` gives the kernel's answer: for more than 10,000 flows, in
connection-table states made by adding, draining, failing, removing
backends, reusing their ids and removing a VIP, the backend explain names
for a flow's next SYN and its next other packet (UDP: its next datagram)
is the one the program
picks when that packet is run through BPF_PROG_TEST_RUN, and the entry does
what explain said (kept, made, replaced, removed, none made, left). A third
of the TCP connections are closed by their client (a FIN), so a SYN also
meets entries of finished connections.

Each flow is explained first and its packets run after, each on the table
explain read (the entry as it was is written back between the SYN and the
ACK, since the SYN may remove it). The backends are read from the output
frames (ipip: the outer destination; dsr: the MAC derived from the address).
"""
from __future__ import annotations

import collections
import ipaddress
import json
import random
import types

import pytest

from lbd.explain import (KEPT, LEFT, MADE, NONE_MADE, PACKET, REMOVED, REPLACED, SYN, Flow, explain,
                         explain_flow)
from lbd.plan import ACTIVE, DOWN, DRAINING, BackendPlan, VipPlan
from lbd.programmer import EMPTY
from tests.bpf import flowkit as fk
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

ip = ipaddress.ip_address
TCP, UDP = fk.TCP, fk.UDP
POOL = 8  # candidate backend addresses per VIP
# name, address, port, proto, ipip, client affinity, backend prefix
VIPS = [
    ("tcp-dsr-v4", sc.DSR_V4, 80, TCP, False, False, "198.18.0."),
    ("tcp-ipip-v6", sc.IPIP_V6, 80, TCP, True, False, "fd00:20::"),
    ("tcp-affinity-v4", sc.AFFINITY_V4, 80, TCP, False, True, "198.18.2."),
    ("tcp-dsr-v6", sc.DSR_V6, 80, TCP, False, False, "fd00::1:"),
    ("udp-dsr-v6", sc.DSR_V6, 53, UDP, False, False, "fd00::"),
    ("udp-ipip-v4", sc.IPIP_V4, 53, UDP, True, False, "198.18.20."),
]
ESTABLISHED_PER_VIP = 200  # flows opened before each change, checked after it
NEW_PER_PHASE = 200        # flows never seen before, checked after each change
OLDER_PER_PHASE = 300      # flows opened in earlier phases, checked again


def pool(prefix: str) -> list[str]:
    return [f"{prefix}{11 + i}" for i in range(POOL)]


class Setup:
    """The VIPs and their backends as the test changes them; applied through
    the real Programmer (ids, generations and tables as the daemon gets them)."""

    def __init__(self, lb):
        self.lb = lb
        # VIP name -> backend address -> (weight, state); absent VIP: removed
        self.members = {v[0]: {a: (w, ACTIVE) for a, w in zip(pool(v[6])[:4], (1, 2, 3, 2))}
                        for v in VIPS}

    def plan(self, name: str) -> VipPlan:
        _, address, port, proto, ipip, client, _ = next(v for v in VIPS if v[0] == name)
        our_mac = bytes.fromhex(sc.LBD_MAC.replace(":", ""))
        members = tuple(BackendPlan(ip(a), w, s, sc.backend_mac(a), our_mac)
                        for a, (w, s) in self.members[name].items())
        return VipPlan(ip(address), port, proto, ipip=ipip, client_affinity=client, backends=members,
                       name=name)

    def apply(self):
        self.lb.apply(self.plan(name) for name in self.members)

    def backend_id(self, name: str, address: str) -> int | None:
        return self.lb.programmer.backend_id(self.plan(name).key, ip(address))

    def each(self, position: int, state=None, weight=None, remove=False, add=False):
        """Change the backend at `position` of every VIP's pool."""
        for name, prefix in ((v[0], v[6]) for v in VIPS):
            if name not in self.members:
                continue
            address = pool(prefix)[position]
            if remove:
                self.members[name].pop(address, None)
            elif add:
                self.members[name][address] = (weight or 1, state or ACTIVE)
            else:
                old_weight, old_state = self.members[name][address]
                self.members[name][address] = (old_weight if weight is None else weight,
                                               old_state if state is None else state)


def phase_reuse(setup: Setup):
    """Remove one backend per VIP, then (a second apply) add a new one: the
    programmer hands the new ones the freed ids with a new generation."""
    freed = {setup.backend_id(v[0], pool(v[6])[3]) for v in VIPS}
    generations = {i: setup.lb.dp.backend(i).generation for i in freed}
    setup.each(3, remove=True)
    setup.apply()
    setup.each(5, add=True, weight=2)
    setup.apply()
    reused = {setup.backend_id(v[0], pool(v[6])[5]) for v in VIPS}
    assert reused == freed, "the new backends did not get the freed ids: the test would not cover reuse"
    assert all(setup.lb.dp.backend(i).generation > generations[i] for i in reused)


def phase_drain_weight0(setup: Setup):
    setup.each(0, state=DRAINING)
    # weight 0 is a drain too (lbd/plan.py): on one VIP, that way
    setup.members["tcp-affinity-v4"][pool("198.18.2.")[0]] = (0, DRAINING)
    setup.apply()


def phase_empty_and_remove(setup: Setup):
    # every backend of one VIP drained: its table is empty, new flows dropped
    members = setup.members["tcp-dsr-v4"]
    setup.saved_dsr = dict(members)
    for address, (weight, _) in list(members.items()):
        members[address] = (weight, DRAINING)
    # two VIPs removed: their packets pass, their entries lead nowhere; one
    # shares its address with a VIP that stays (the VIP lookup fails), the
    # other's address leaves the prefilter
    setup.saved = {name: setup.members.pop(name) for name in ("tcp-dsr-v6", "udp-ipip-v4")}
    setup.apply()


def phase_restore(setup: Setup):
    setup.members["tcp-dsr-v4"] = setup.saved_dsr
    setup.members.update(setup.saved)
    setup.apply()


PHASES = [
    ("unchanged", lambda s: s.apply()),
    ("backend added", lambda s: (s.each(4, add=True, weight=3), s.apply())),
    ("backend drained", phase_drain_weight0),
    ("backend down", lambda s: (s.each(1, state=DOWN), s.apply())),
    ("backend removed", lambda s: (s.each(2, remove=True), s.apply())),
    ("id reused", phase_reuse),
    ("recovered and undrained", lambda s: (s.each(1, state=ACTIVE), s.each(0, state=ACTIVE, weight=1),
                                           s.apply())),
    ("table emptied, VIP removed", phase_empty_and_remove),
    ("VIP and backends back", phase_restore),
]


class Flows:
    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.seen: set[Flow] = set()

    def new(self, vip) -> Flow:
        _, address, port, proto, _, _, _ = vip
        while True:
            dst = ip(address)
            if dst.version == 4:
                src = ipaddress.IPv4Address((198 << 24) | (19 << 16) | self.rng.getrandbits(16))
            else:
                src = ipaddress.IPv6Address((0xfd00_0010 << 96) | self.rng.getrandbits(64))
            flow = Flow(src, dst, self.rng.randrange(1024, 65536), port, proto)
            if flow not in self.seen:
                self.seen.add(flow)
                return flow


def effect_holds(effect: str, before, after, backend_id: int, dp) -> bool:
    """Did the entry do what explain said?"""
    if effect in (KEPT, LEFT):
        return after == before
    if effect in (REMOVED, NONE_MADE):
        return after is None
    if effect in (MADE, REPLACED):
        return after == (backend_id, dp.backend(backend_id).generation)
    raise AssertionError(f"unknown entry effect {effect!r}")


def test_explain_names_the_backend_the_kernel_picks(lb):
    fk.clear(lb.dp)
    setup = Setup(lb)
    setup.apply()
    backends = fk.Backends([a for v in VIPS for a in pool(v[6])])
    flows = Flows(seed=20260511)
    opened: list[Flow] = []
    mismatches = collections.Counter()  # (phase, kind, why, entry effect, what differed) -> flows
    examples: dict[tuple, str] = {}
    seen = collections.Counter()   # (kind, why, entry effect) explain gave
    checked: set[Flow] = set()
    reused_entries = 0
    finished_on_active = 0  # entries of closed connections whose backend takes new flows

    def open_flow(flow: Flow):
        if flow.proto == TCP:
            lb.run(fk.frame(flow, SYN))
        lb.run(fk.frame(flow, PACKET))  # the handshake's ACK / the first datagram
        if flow.proto == TCP and flow.sport % 3 == 0:
            lb.run(fk.frame(flow, "fin"))  # the client closes it

    def check(flow: Flow, phase: str):
        nonlocal reused_entries, finished_on_active
        before = fk.entry(lb.dp, flow)
        saved = fk.snapshot(lb.dp, flow)
        if before is not None:
            held = lb.dp.backend(before[0])
            reused_entries += held.state != EMPTY and held.generation != before[1]
        said = explain_flow(applied, lb.dp, flow)
        entry = said["connection_table"]
        finished_on_active += bool(entry and entry["finished"] and entry["takes_new_flows"])
        kinds = [("next_packet", PACKET)]
        if flow.proto == TCP:
            kinds.insert(0, ("next_syn", SYN))
        for field, kind in kinds:
            fk.restore(lb.dp, flow, saved)  # the table explain read
            predicted = said[field]
            result = lb.run(fk.frame(flow, kind))
            got = backends.of(result)
            want = {"forward": predicted["backend"], "drop": None, "pass": "pass"}[predicted["action"]]
            after = fk.entry(lb.dp, flow)
            seen[(kind, predicted["why"], predicted["entry"])] += 1
            if got != want:
                wrong = "backend"
            elif not effect_holds(predicted["entry"], before, after, predicted["backend_id"], lb.dp):
                wrong = "entry"
            else:
                continue
            category = (phase, kind, predicted["why"], predicted["entry"], wrong)
            if not mismatches[category]:
                examples[category] = (f"{flow}: explain says {want} (entry {predicted['entry']}), the kernel "
                                      f"sent it to {got}, entry {before} -> {after}")
            mismatches[category] += 1
        checked.add(flow)

    for phase, change in PHASES:
        fresh = [flows.new(v) for v in VIPS for _ in range(ESTABLISHED_PER_VIP)]
        for flow in fresh:
            open_flow(flow)
        older = flows.rng.sample(opened, min(OLDER_PER_PHASE, len(opened)))
        opened.extend(fresh)
        change(setup)
        applied = lb.programmer.applied()
        never_seen = [flows.new(VIPS[i % len(VIPS)]) for i in range(NEW_PER_PHASE)]
        for flow in fresh + older + never_seen:
            check(flow, phase)

    assert len(checked) >= 10_000
    assert not mismatches, (
        f"{sum(mismatches.values())} predictions of explain differ from the kernel; by (phase, packet, "
        "explain's why, explain's entry effect, what differed):\n"
        + "\n".join(f"  {n} x {c}, e.g. {examples[c]}" for c, n in sorted(mismatches.items())))
    # the states the test claims to cover were met
    whys = {(kind, why) for kind, why, _ in seen}
    for needed in [(SYN, "table slot"), (SYN, "entry kept"), (SYN, "entry removed"), (SYN, "no backend"),
                   (SYN, "no VIP"), (PACKET, "table slot"), (PACKET, "entry kept"), (PACKET, "moved"),
                   (PACKET, "no backend"), (PACKET, "no VIP"), (PACKET, "not a VIP address")]:
        assert needed in whys, f"no flow met {needed}: {sorted(seen.items())}"
    assert reused_entries > 0, "no entry pointed at a reused backend id"
    assert finished_on_active > 0, "no SYN met a finished connection's entry on an active backend"
    fk.clear(lb.dp)


def test_the_daemons_entry_point_answers_in_json(lb):
    """explain(daemon, client, vip) as lbd/http.py calls it: parses both
    ends, answers what explain_flow answers, and the answer is JSON."""
    lb.apply([sc.vip(sc.DSR_V4, 80, TCP), sc.vip(sc.DSR_V6, 53, UDP)])
    daemon = types.SimpleNamespace(programmer=lb.programmer, datapath=lb.dp, health=None)
    tcp = explain(daemon, "198.18.10.5:4000", f"{sc.DSR_V4}:80/tcp")
    flow = Flow(ip("198.18.10.5"), ip(sc.DSR_V4), 4000, 80, TCP)
    assert tcp == explain_flow(lb.programmer.applied(), lb.dp, flow)
    assert tcp["verdict"].startswith("new flow") and tcp["connection_table"] is None
    lb.run(fk.frame(flow, PACKET))
    again = explain(daemon, "198.18.10.5:4000", f"{sc.DSR_V4}:80/tcp")
    assert again["connection_table"]["backend"] == again["next_packet"]["backend"]
    assert again["next_packet"]["why"] == "entry kept"
    udp = json.loads(json.dumps(explain(daemon, "[fd00:10::5]:4000", f"[{sc.DSR_V6}]:53/udp")))
    assert udp["next_syn"] is None and udp["next_packet"]["entry"] == MADE
    with pytest.raises(ValueError):
        explain(daemon, "198.18.10.5:4000", f"{sc.DSR_V4}:80/sctp")
    with pytest.raises(ValueError):
        explain(daemon, "[fd00:10::5]:4000", f"{sc.DSR_V4}:80/tcp")
