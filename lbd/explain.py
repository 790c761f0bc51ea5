"""`lbctl explain`: which backend a flow's next packets get, and why.

The answer is the kernel's: `explain_flow` takes the steps the XDP program
takes (docs/design.md, "Packet and flow rules"), reading every value from the maps
the program reads — the prefilter bit, the connection-table entry of the
flow in its protocol's table, the entry's backend in the `backends` array
(its state and generation), the VIP entry and the VIP's Maglev table as
swapped into `rings`. The programmer's applied state is used only to name
things (the VIP, what the config says of a backend); it never decides. So
after a backend id is reused, or while the daemon's view and the maps
differ, explain still says what the program will do.

A flow's next packet is answered twice, since the program treats them
differently: as a SYN (a new connection on that 4-tuple, or a retransmitted
one) and as any other packet (for UDP, only the latter). Whether the entry's
connection is finished (its client sent FIN or RST, or it has been silent
longer than LBD_FLOW_FINISHED_IDLE_S) is read from the entry and the kernel's
clock at the moment of asking: a SYN a minute later may find it otherwise. `decide` also
answers for an RST, which the model test uses.

Both choices (second-chance VIPs, docs/second-chance.md): each
answer also names the second choice the packet carries in its GUE header,
if any: a packet that follows its entry names the entry's second_id; one the
table places, the same slot of the VIP's table in `second_rings`. It is
named only where the program names it: an ipip TCP packet of a VIP with the
flag, a second id that is not the first and whose backend is a second choice
of the same VIP (second_until not 0). Otherwise the packet is plain IP-in-IP.

Why explain reads the maps and mirrors the program's steps rather than ask
the program itself (a BPF_PROG_TEST_RUN of a crafted packet against the live
pinned maps, as Katran's simulator runs its balancer): the program writes as
it decides, and a test run writes the live maps. A test SYN deletes the
entry of a flow whose backend takes no new flows (a draining backend's live
connection would then be placed anew by the table); a test of any other
packet makes or replaces an entry for a flow that may not exist, taking LRU
room from real ones; every run counts in the per-CPU counters /metrics
reports as traffic, stamps the entry's last-seen time that idle-flow reports
read, and may refresh the next-hop cache. Saving and restoring all that
around the run races the packets other CPUs forward meanwhile, and a build
with the writes compiled out would be a second program, not the real one
(and a second compile per daemon, seconds with bcc). The run itself would be
cheap (well under a microsecond: bench/xdp_cost.py). Instead the mirror is
held to the program by tests/bpf/test_explain_kernel.py, which runs the real
program on the same packets and maps (second-chance VIPs included) and fails
on any difference in backend, named second choice or entry effect.

Two refinements, as the program makes them: a flow that moves off its entry's
backend while that backend is held (down or removed, its hold running, the
same generation) names that backend instead of its slot's second; and an
entry made while its VIP's second table was pending (provisional) names its
slot's second once the VIP is no longer pending.

Length (over 450 lines, on purpose): one job, the program's decision for one
flow, and the decision is one chain (QUIC connection ID, entry, finished
connection, table, second choice) whose steps read each other's results;
split across modules, the mirror of balancer.c would no longer read in the
program's order, which is what tests/bpf/test_explain_kernel.py holds it to.
"""
from __future__ import annotations

import ctypes
import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lbd.dataplane import flowhash, layout, settle
from lbd.dataplane.maps import addr_words, family_of, port_word, prefilter_bit
from lbd.config import PROTOCOLS
from lbd.plan import ACTIVE, DRAINING, STATE_NAMES

if TYPE_CHECKING:
    from lbd.daemon import Daemon
    from lbd.dataplane.maps import Datapath

C = layout.constant
TCP, UDP = PROTOCOLS["tcp"], PROTOCOLS["udp"]
NO_BACKEND = C("LBD_NO_BACKEND")
SECOND_CHANCE = C("LBD_VIP_SECOND_CHANCE")
QUIC = C("LBD_VIP_QUIC")
CLIENT_CLOSED = C("LBD_FLOW_CLIENT_CLOSED")
SECOND_PENDING = C("LBD_VIP_SECOND_PENDING")
PROVISIONAL = C("LBD_FLOW_SECOND_PROVISIONAL")

# The kinds of packet explain answers for.
SYN = "syn"        # TCP, SYN set and ACK clear
RST = "rst"        # TCP, RST set
PACKET = "packet"  # any other TCP segment (the handshake's ACK, data, FIN), any UDP datagram

# What a packet does to the flow's connection-table entry.
KEPT = "kept"            # the entry stays and is what the packet followed
MADE = "made"            # no entry before; the packet makes one
REPLACED = "replaced"    # an entry the packet cannot follow is overwritten with the new backend
REMOVED = "removed"      # a SYN deletes an entry whose backend takes no new flows
NONE_MADE = "none made"  # no entry before, none after (SYN, RST)
LEFT = "left"            # an entry the packet cannot follow stays as it is, none made


@dataclass(frozen=True)
class Flow:
    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    proto: int


@dataclass(frozen=True)
class MapBackend:
    """One slot of the `backends` array as the program reads it."""
    backend_id: int
    address: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    state: int
    generation: int
    vip_id: int
    vip_flags: int
    second_until: int = 0


@dataclass(frozen=True)
class FlowView:
    """Everything the program reads for one flow, read once."""
    flow: Flow
    maybe_vip: bool                       # the prefilter bit of the destination
    entry: tuple[int, int] | None         # (backend id, generation) in the flow's table
    entry_backend: MapBackend | None      # backends[entry's id]
    vip_id: int | None                    # from vips (the port's VIP, else port 0)
    vip_flags: int
    hash_value: int | None
    slot: int | None
    table_backend: MapBackend | None      # backends[rings[vip_id][slot]]
    entry_second: MapBackend | None = None  # backends[the entry's second_id]
    entry_second_id: int = 0
    table_second: MapBackend | None = None  # backends[second_rings[vip_id][slot]], second-chance VIPs
    table_second_id: int = 0
    entry_finished: bool = False            # its client closed it, or it has been silent too long
    entry_flags: int = 0                    # the entry's lbd_flow_flags
    quic: "QuicView | None" = None          # a QUIC VIP's CID step for the asked CID (--quic-cid)
    slot_settled: bool = False              # a SYN here skips its entry (docs/design.md "What a SYN looks up")

    @property
    def entry_usable(self) -> bool:
        """The entry leads somewhere: same generation, backend active or draining."""
        be = self.entry_backend
        return (self.entry is not None and be is not None and be.generation == self.entry[1]
                and be.state in (ACTIVE, DRAINING))

    @property
    def entry_takes_new_flows(self) -> bool:
        return self.entry_usable and self.entry_backend.state == ACTIVE

    @property
    def syn_follows_entry(self) -> bool:
        """A SYN follows a live connection's entry to a backend that takes new
        flows (README, "A SYN on a finished connection's 4-tuple")."""
        return self.entry_takes_new_flows and not self.entry_finished


@dataclass(frozen=True)
class QuicView:
    """A 1-RTT (short-header) datagram carrying the asked CID to a QUIC VIP, as
    the program reads it (xdp/quic.h): the slot it takes and, routed, the
    backend quic_servers names for the CID's server ID."""
    cid: bytes
    slot: str                        # an lbd_quic_slot name: routed_short, fb_unknown_server, ...
    server_id: bytes | None
    backend: MapBackend | None       # backends[quic_servers[(vip, server ID)]]

    @property
    def routed(self) -> bool:
        return self.slot == "routed_short"

    @property
    def makes_no_entry(self) -> bool:
        return self.slot in QUIC_NO_ENTRY


# the fallbacks that make no entry (xdp/quic.h LBD_QUIC_STATELESS); a short
# header reaches only fb_short_cid of them here
QUIC_NO_ENTRY = {"fb_unknown_version", "fb_client_cid", "fb_retry", "fb_short_cid",
                 "fb_unknown_server", "fb_unusable_server"}


def read_quic(datapath: "Datapath", vip_id: int, cid: bytes) -> QuicView:
    """The program's CID step for a full-sized short-header datagram whose
    destination CID starts with `cid` (only its first 1 + server-ID octets
    matter): the VIP's format from quic_configs, the owner from quic_servers."""
    config_id, sid_len, cid_len = datapath.quic_config(vip_id)
    if sid_len == 0:
        return QuicView(cid, "fb_not_quic", None, None)
    if len(cid) < 1 + sid_len:
        raise ValueError(f"the CID has {len(cid)} octets; this VIP's carry 1 + {sid_len} (server ID) "
                         f"+ nonce = {cid_len}")
    if cid[0] >> 5 == C("LBD_QUIC_UNROUTABLE"):
        return QuicView(cid, "fb_unroutable", None, None)
    if cid[0] >> 5 != config_id:
        return QuicView(cid, "fb_other_config", None, None)
    server_id = cid[1:1 + sid_len]
    backend_id = datapath.quic_server(vip_id, server_id)
    if backend_id is None:
        return QuicView(cid, "fb_unknown_server", server_id, None)
    be = _map_backend(datapath, backend_id)
    if be is None or be.vip_id != vip_id or be.state not in (ACTIVE, DRAINING):
        return QuicView(cid, "fb_unusable_server", server_id, be)
    return QuicView(cid, "routed_short", server_id, be)


@dataclass(frozen=True)
class Decision:
    """What the program does with one packet of the flow."""
    kind: str                  # SYN, RST, PACKET
    action: str                # forward, drop, pass
    backend_id: int            # 0 unless forwarded
    backend: str | None        # address from the backends map, None unless forwarded
    why: str                   # entry kept, table slot, entry removed, moved; no VIP, no backend,
                               # not a VIP address
    entry: str                 # KEPT, MADE, REPLACED, REMOVED, NONE_MADE, LEFT
    second_id: int = 0         # the second choice the packet names in GUE; 0: plain IP-in-IP or none
    second: str | None = None  # its address


def _map_backend(datapath: "Datapath", backend_id: int) -> MapBackend | None:
    if not 0 < backend_id < datapath.limits.max_backends:
        return None
    leaf = datapath.backend(backend_id)
    raw = bytes(leaf.addr)
    address = None
    if leaf.family == C("LBD_FAMILY_V4"):
        address = ipaddress.IPv4Address(raw[:4])
    elif leaf.family == C("LBD_FAMILY_V6"):
        address = ipaddress.IPv6Address(raw)
    return MapBackend(backend_id, address, int(leaf.state), int(leaf.generation),
                      int(leaf.vip_id), int(leaf.vip_flags), int(leaf.second_until))


def _maybe_vip(datapath: "Datapath", address) -> bool:
    bit = prefilter_bit(address)
    word = datapath.prefilter[ctypes.c_uint32(bit // 64)].value
    return bool((word >> (bit % 64)) & 1)


def _vip_entry(datapath: "Datapath", flow: Flow):
    """The program's VIP lookup: the flow's port, else the address's port 0."""
    for port in (flow.dport, 0):
        key = datapath.vips.Key()
        key.addr[:] = addr_words(flow.dst)
        key.port = port_word(port)
        key.proto = flow.proto
        key.family = family_of(flow.dst)
        leaf = datapath.vips.get(key)
        if leaf is not None:
            return int(leaf.vip_id), int(leaf.flags)
    return None


def read_flow(datapath: "Datapath", flow: Flow, quic_cid: bytes | None = None) -> FlowView:
    """Read what the program reads for `flow`, from the maps (with quic_cid:
    for a short-header datagram carrying that CID, if the VIP is a QUIC VIP)."""
    maybe_vip = _maybe_vip(datapath, flow.dst)
    entry_backend = vip_id = hashed = slot = table_backend = entry_second = table_second = None
    vip_flags = entry_second_id = table_second_id = entry_flags = 0
    entry_finished = False
    # the program reads no entry without the prefilter bit; explain does, to
    # say that the packet leaves it as it is
    raw = datapath.flow_entry(flow.src, flow.dst, flow.sport, flow.dport, flow.proto)
    entry = None
    if raw is not None:  # flow_entry reads the flow's own protocol's table
        entry = (int(raw.backend_id), int(raw.generation))
        entry_backend = _map_backend(datapath, entry[0])
        entry_second_id = int(raw.second_id)
        entry_flags = int(raw.flags)
        entry_second = _map_backend(datapath, entry_second_id) if entry_second_id else None
        idle = (datapath.jiffies() - int(raw.seen)) & 0xFFFFFFFF  # seen: jiffies' low 32 bits
        entry_finished = bool(raw.flags & CLIENT_CLOSED) or idle > datapath.finished_idle_jiffies
    if maybe_vip:
        vip = _vip_entry(datapath, flow)
        if vip is not None:
            vip_id, vip_flags = vip
            hashed = (flowhash.client_hash(flow.src) if vip_flags & C("LBD_VIP_CLIENT_AFFINITY")
                      else flowhash.flow_hash(flow.src, flow.dst, flow.sport, flow.dport, flow.proto))
            slot = flowhash.table_slot(hashed, datapath.limits.ring_size)
            table_id = datapath.ring_slot(vip_id, slot)
            table_backend = _map_backend(datapath, table_id) if table_id != NO_BACKEND else None
            if vip_flags & SECOND_CHANCE:  # the program looks second_rings up for these only
                table_second_id = datapath.second_ring_slot(vip_id, slot)
                table_second = _map_backend(datapath, table_second_id) if table_second_id else None
    quic = None
    if quic_cid is not None and vip_id is not None and vip_flags & QUIC and flow.proto == UDP:
        quic = read_quic(datapath, vip_id, quic_cid)
    slot_settled = (vip_id is not None and flow.proto == TCP
                    and settle.slot_state(datapath, vip_id, slot) == settle.SLOT_SETTLED)
    return FlowView(flow, maybe_vip, entry, entry_backend, vip_id, vip_flags, hashed, slot,
                    table_backend, entry_second, entry_second_id, table_second, table_second_id,
                    entry_finished, entry_flags, quic, slot_settled)


def named_second(flow: Flow, first: MapBackend, vip_flags: int, second_id: int,
                 second: MapBackend | None) -> MapBackend | None:
    """The second choice a packet forwarded to `first` names in GUE, or None
    (plain IP-in-IP): the program's rule (xdp/balancer.c lbd_second_choice)."""
    if not (vip_flags & C("LBD_VIP_MODE_IPIP") and vip_flags & SECOND_CHANCE and flow.proto == TCP):
        return None
    if second_id == NO_BACKEND or second_id == first.backend_id or second is None:
        return None
    if second.second_until == 0 or second.vip_id != first.vip_id:
        return None
    return second


def decide(view: FlowView, kind: str) -> Decision:
    """The program's steps for one packet of kind SYN, RST or PACKET (docs/design.md,
    table "Which backend"), on the values in `view`."""
    if kind != PACKET and view.flow.proto != TCP:
        raise ValueError(f"{kind} is a TCP packet; {view.flow.proto} flows have only PACKET")
    entry, be = view.entry, view.entry_backend
    if not view.maybe_vip:
        return Decision(kind, "pass", 0, None, "not a VIP address", NONE_MADE if entry is None else LEFT)
    # 1. a QUIC VIP's datagram whose CID names a usable server: by that server
    # ID, whatever its entry says; read before any entry (docs/design.md), so
    # an entry there is neither followed nor changed, and none is made
    if view.quic is not None and view.quic.routed:
        be = view.quic.backend
        return Decision(kind, "forward", be.backend_id, str(be.address), "quic server id",
                        LEFT if entry is not None else NONE_MADE)
    if kind == SYN and view.slot_settled:
        # 2. a SYN in a settled slot: the table, its entry not looked up (and
        # so left), which in a settled slot is where the entry would lead
        return _by_settled_slot(view)
    # 3. the flow's entry, if the packet may follow it: a SYN only a live
    # connection's, to a backend that takes new flows; anything else while
    # its backend is active or draining
    if view.entry_usable and (kind != SYN or view.syn_follows_entry):
        second = named_second(view.flow, be, be.vip_flags, *_entry_second(view))
        return Decision(kind, "forward", be.backend_id, str(be.address), "entry kept", KEPT,
                        *_second_fields(second))
    # 4. otherwise the VIP's table. A SYN removes the entry it did not follow
    # (a new connection on an old 4-tuple, its backend closed to new flows or
    # its connection finished: its ACK must meet the SYN's
    # backend); any other packet overwrites it once placed; an RST makes none.
    # (the SYN's removal comes before the VIP lookup: it holds even when the
    # packet then passes or is dropped)
    if entry is None:
        unplaced = NONE_MADE
    else:
        unplaced = REMOVED if kind == SYN else LEFT
    if view.vip_id is None:
        return Decision(kind, "pass", 0, None, "no VIP", unplaced)
    table = view.table_backend
    if table is None or table.state != ACTIVE:
        return Decision(kind, "drop", 0, None, "no backend", unplaced)
    # a QUIC fallback makes no entry only where there was none (docs/design.md)
    stateless_quic = view.quic is not None and view.quic.makes_no_entry and entry is None
    if entry is None:
        why, effect = "table slot", MADE if kind == PACKET and not stateless_quic else NONE_MADE
    elif stateless_quic:
        why, effect = "moved", LEFT
    elif kind == SYN:
        why, effect = "entry removed", REMOVED
    else:
        why, effect = "moved", REPLACED if kind == PACKET else LEFT
    moved_off = _held_entry_backend(view) if entry is not None and kind != SYN else None
    second = (named_second(view.flow, table, view.vip_flags, moved_off.backend_id, moved_off) if moved_off
              else named_second(view.flow, table, view.vip_flags, view.table_second_id, view.table_second))
    return Decision(kind, "forward", table.backend_id, str(table.address), why, effect,
                    *_second_fields(second))


def _by_settled_slot(view: FlowView) -> Decision:
    table = view.table_backend
    untouched = NONE_MADE if view.entry is None else LEFT
    if table is None or table.state != ACTIVE:
        return Decision(SYN, "drop", 0, None, "no backend", untouched)
    second = named_second(view.flow, table, view.vip_flags, view.table_second_id, view.table_second)
    return Decision(SYN, "forward", table.backend_id, str(table.address), "settled slot", untouched,
                    *_second_fields(second))


def _entry_second(view: FlowView) -> tuple[int, MapBackend | None]:
    """The second an established flow's packet takes from its entry
    (xdp/balancer.c lbd_entry_second): the stored one, unless the entry is
    provisional and its VIP's second table is in place by now, when it is the
    slot's (which the packet then stores)."""
    stored = (view.entry_second_id, view.entry_second)
    if not view.entry_flags & PROVISIONAL or view.vip_id != view.entry_backend.vip_id:
        return stored
    if view.vip_flags & SECOND_PENDING:
        return stored
    return view.table_second_id, view.table_second


def _held_entry_backend(view: FlowView) -> MapBackend | None:
    """The entry's backend if a flow moving off it names it as its second
    choice: the same backend as when the flow was placed (generation), still a
    second choice (down or removed, its hold running), of the VIP that places
    the flow now, which has second chance."""
    be = view.entry_backend
    if be is None or be.generation != view.entry[1] or be.second_until == 0:
        return None
    if be.vip_id != view.vip_id or not view.vip_flags & SECOND_CHANCE:
        return None
    return be


def _second_fields(second: MapBackend | None) -> tuple[int, str | None]:
    return (0, None) if second is None else (second.backend_id, str(second.address))


def _names(applied: dict) -> tuple[dict, dict]:
    """vip id -> applied VIP; backend id -> (applied VIP, its backend plan)."""
    vips, backends = {}, {}
    for entry in applied.values():
        vips[entry.vip_id] = entry
        plans = {b.address: b for b in entry.plan.backends}
        for address, backend_id in entry.backend_ids.items():
            backends[backend_id] = (entry, plans.get(address))
    return vips, backends


_EFFECT_PHRASES = {KEPT: "", MADE: ", making its entry", REPLACED: ", replacing the entry",
                   REMOVED: ", removing the entry", NONE_MADE: ", no entry made",
                   LEFT: ", the entry left as it is"}


def _sentence(decision: Decision, label: str, slot: int | None) -> str:
    second = f", naming {decision.second} as its second choice (GUE)" if decision.second else ""
    return _first_sentence(decision, label, slot) + second


def _first_sentence(decision: Decision, label: str, slot: int | None) -> str:
    effect = _EFFECT_PHRASES[decision.entry]
    if decision.action == "pass":
        return f"{label} passes to the host untouched ({decision.why}){effect}"
    if decision.action == "drop":
        return f"{label} is dropped: table slot {slot} holds no backend that takes new flows{effect}"
    if decision.why == "entry kept":
        return f"{label} -> {decision.backend}, by its entry"
    if decision.why == "quic server id":
        return f"{label} -> {decision.backend}, by the server ID in its connection ID{effect}"
    verb = "moves to" if decision.why == "moved" else "->"
    new = " (a new connection)" if decision.why == "entry removed" else ""
    settled = " (settled: its entry is not looked up, no entry of the slot leads elsewhere)" \
        if decision.why == "settled slot" else ""
    return f"{label} {verb} {decision.backend} by table slot {slot}{new}{settled}{effect}"


def explain_flow(applied: dict, datapath: "Datapath", flow: Flow,
                 health: dict | None = None, quic_cid: bytes | None = None) -> dict:
    """What the program does with `flow`'s next SYN and next other packet.

    applied: the programmer's applied state (Programmer.applied()), for
    names only; datapath: the loaded program, whose maps decide. quic_cid:
    the next datagram is a short-header QUIC packet carrying that CID."""
    view = read_flow(datapath, flow, quic_cid)
    vips_by_id, backends_by_id = _names(applied)
    health = health or {}

    def describe(be: MapBackend | None, backend_id: int | None = None) -> dict:
        if be is None:
            return {"backend": None, "backend_id": backend_id or 0, "state": "none"}
        owner, plan = backends_by_id.get(be.backend_id, (None, None))
        config = ("not in config" if plan is None or plan.address != be.address
                  else STATE_NAMES.get(plan.state, "?"))
        name = owner.plan.name if owner else None
        return {"backend": str(be.address) if be.address else None, "backend_id": be.backend_id,
                "state": STATE_NAMES.get(be.state, str(be.state)), "generation": be.generation,
                "config": config,
                "health": str(health.get((name, str(be.address)), {}).get("state", "no check"))}

    result: dict[str, Any] = {
        "flow": {"client": f"{_host(flow.src)}:{flow.sport}", "vip": f"{_host(flow.dst)}:{flow.dport}",
                 "protocol": "tcp" if flow.proto == TCP else "udp"},
        "vip": None, "vip_id": view.vip_id, "mode": None, "hash": None, "hash_value": view.hash_value,
        "table_slot": view.slot, "table_backend": describe(view.table_backend), "connection_table": None,
        # the slot's second choice (second-chance VIPs; what the packet names is in next_*)
        "second_chance": bool(view.vip_flags & SECOND_CHANCE) if view.vip_id is not None else None,
        "table_second": describe(view.table_second, view.table_second_id) if view.table_second_id else None,
    }
    if view.vip_id is not None:
        owner = vips_by_id.get(view.vip_id)
        result["vip"] = owner.plan.name if owner else f"vip id {view.vip_id}"
        result["mode"] = "ipip" if view.vip_flags & C("LBD_VIP_MODE_IPIP") else "dsr"
        result["hash"] = ("client address" if view.vip_flags & C("LBD_VIP_CLIENT_AFFINITY")
                          else "5-tuple")
    if view.entry is not None:
        backend_id, generation = view.entry
        result["connection_table"] = {
            **describe(view.entry_backend, backend_id), "entry_generation": generation,
            "usable": view.entry_usable, "takes_new_flows": view.entry_takes_new_flows,
            "finished": view.entry_finished,
            "second": (describe(view.entry_second, view.entry_second_id) if view.entry_second_id
                       else None)}
        if result["vip"] is None and view.entry_usable:
            # an established flow is forwarded by its backend's VIP
            owner = vips_by_id.get(view.entry_backend.vip_id)
            result["vip"] = owner.plan.name if owner else f"vip id {view.entry_backend.vip_id}"
    result["quic"] = None
    if view.quic is not None:
        q = view.quic
        result["quic"] = {"cid": q.cid.hex(), "rule": q.slot,
                          "server_id": q.server_id.hex() if q.server_id is not None else None,
                          "backend": describe(q.backend) if q.backend else None}
    elif quic_cid is not None:
        result["quic"] = {"cid": quic_cid.hex(), "rule": "not a QUIC VIP: the CID plays no part"}
    sentences = []
    result["next_syn"] = None  # UDP has no SYN
    if flow.proto == TCP:
        syn = decide(view, SYN)
        result["next_syn"] = syn.__dict__
        sentences.append(_sentence(syn, "next SYN", view.slot))
    packet = decide(view, PACKET)
    result["next_packet"] = packet.__dict__
    label = "next packet" if flow.proto == TCP else "next datagram"
    if view.quic is not None and not view.quic.routed and view.entry is None:
        label += f" (QUIC {view.quic.slot.removeprefix('fb_').replace('_', ' ')}: the table)"
    sentences.append(_sentence(packet, label, view.slot))
    if not view.maybe_vip or (view.vip_id is None and not view.entry_usable):
        lead = "no VIP matches"
    elif view.entry is None:
        lead = "new flow"
    elif view.entry_usable:
        lead = f"known flow on {view.entry_backend.address} ({STATE_NAMES[view.entry_backend.state]})"
        if view.entry_finished:
            lead += ", its connection finished"
    else:
        gone = view.entry_backend
        why = ("its backend id was reused" if gone and gone.state != C("LBD_BACKEND_EMPTY")
               and gone.generation != view.entry[1]
               else f"its backend is {STATE_NAMES.get(gone.state, '?')}" if gone else "its backend is gone")
        lead = f"known flow, but {why}"
    # the sentence first: it is what a reader of `lbctl explain` wants
    return {"verdict": f"{lead}: " + "; ".join(sentences), **result}


def _host(address) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def parse_flow_end(text: str) -> tuple[ipaddress._BaseAddress, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def parse_flow(client: str, vip_spec: str) -> Flow:
    """client: ADDR:PORT; vip_spec: ADDR:PORT/PROTO (PROTO tcp or udp)."""
    endpoint, _, proto_name = vip_spec.partition("/")
    proto = PROTOCOLS.get(proto_name or "tcp")
    if proto is None:
        raise ValueError(f"protocol must be tcp or udp, got {proto_name!r}")
    src, sport = parse_flow_end(client)
    dst, dport = parse_flow_end(endpoint)
    if src.version != dst.version:
        raise ValueError("client and VIP must be the same address family")
    return Flow(src, dst, sport, dport, proto)


def explain(daemon: "Daemon", client: str, vip_spec: str, quic_cid: str | None = None) -> dict:
    """client: ADDR:PORT; vip_spec: ADDR:PORT/PROTO (PROTO tcp or udp);
    quic_cid: the CID in hex of the datagram asked about (QUIC VIPs)."""
    flow = parse_flow(client, vip_spec)
    cid = None
    if quic_cid:
        try:
            cid = bytes.fromhex(quic_cid)
        except ValueError:
            raise ValueError(f"--quic-cid must be hex, got {quic_cid!r}") from None
        if not 1 <= len(cid) <= 20:
            raise ValueError(f"--quic-cid must be 1..20 octets (RFC 9000), got {len(cid)}")
    health = daemon.health.snapshot() if daemon.health else {}
    return explain_flow(daemon.programmer.applied(), daemon.datapath, flow, health, cid)
