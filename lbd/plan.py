"""The plans the programmer writes (VipPlan, BackendPlan, the backend states),
and how they are made from config, health and neighbour facts.

Backend states, in order of precedence:
  * drain: true or weight 0   -> DRAINING: keeps its established flows, no new ones
  * MAC unresolved (dsr)      -> DOWN: cannot be reached, flows move on
  * health check down         -> DOWN
  * otherwise                 -> ACTIVE, in the Maglev table by weight

All backends down: lbd fails open. When no backend of a VIP is usable and
some are down only because their health checks fail, those are put back
in the table as if healthy (and lbd_vip_fail_open says so): a health checker
that cannot reach anything (a firewall change, our own network trouble) must
not black-hole a VIP whose backends may well be serving. Backends that are
drained or unreachable at L2 stay out even then.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Callable

from lbd.dataplane import layout
from lbd.config import PROTOCOLS, Backend, Config, Vip
from lbd.neighbours import Resolved

C = layout.constant
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# --- what a plan says: the programmer's input (lbd.dataplane.programmer writes it) ------
# The states are the header's (enum lbd_backend_state).
ACTIVE = C("LBD_BACKEND_ACTIVE")
DRAINING = C("LBD_BACKEND_DRAINING")
DOWN = C("LBD_BACKEND_DOWN")
HELD = C("LBD_BACKEND_HELD")  # removed from the config, a second choice until its hold ends (lbd.dataplane.programmer)
STATE_NAMES = layout.enum_names("LBD_BACKEND_")  # active, draining, down, empty, held

VipKey = tuple[IPAddress, int, int]  # address, port, protocol number


@dataclass(frozen=True, slots=True)
class BackendPlan:
    """One backend of a VIP as it should be in the datapath. With slots, not
    a dict per record: a config of 1,000 VIPs x 100 backends holds 100,000
    (51 MB with a dict each, bench/control.py's second_chance_scale)."""
    address: IPAddress
    weight: int               # share of the Maglev table; 0 = no new flows
    state: int = ACTIVE       # ACTIVE (in table), DRAINING (keeps flows), DOWN (flows move)
    dst_mac: bytes = b"\0" * 6
    src_mac: bytes = b"\0" * 6
    ifindex: int = 0
    configured_weight: int | None = None  # the config's weight, also while drained (None: weight)
    server_id: bytes | None = None  # QUIC VIPs: the server ID in its CIDs (docs/quic.md)

    @property
    def in_table(self) -> bool:
        return self.state == ACTIVE and self.weight > 0

    @property
    def candidate_weight(self) -> int:
        """Its weight among a second table's candidates (lbd.dataplane.secondchoice):
        the configured one, so a drained backend keeps the share it had, and
        at least 1 (a backend configured with weight 0 may still hold flows)."""
        return max(1, self.weight if self.configured_weight is None else self.configured_weight)


@dataclass(frozen=True)
class QuicPlan:
    """A QUIC VIP's CID format, as quic_configs holds it (xdp/quic.h)."""
    config_id: int
    server_id_len: int
    cid_len: int


@dataclass(frozen=True)
class VipPlan:
    """One VIP as it should be in the datapath."""
    address: IPAddress
    port: int
    proto: int                # 6 or 17
    ipip: bool = False
    client_affinity: bool = False
    backends: tuple[BackendPlan, ...] = ()
    name: str = ""
    second_chance: bool = False  # ipip TCP: packets name their slot's second choice
    quic: QuicPlan | None = None  # UDP: QUIC placed by the server ID in its CIDs
    # second_chance.hold: how long a backend that goes down or leaves this VIP
    # stays a second choice. It rides in the plan, so an apply (or a reload's
    # restore) uses the hold of the config it was made from.
    hold_s: float = Config.second_chance_hold_s

    @property
    def key(self) -> VipKey:
        return (self.address, self.port, self.proto)

    @property
    def flags(self) -> int:
        return ((C("LBD_VIP_MODE_IPIP") if self.ipip else 0)
                | (C("LBD_VIP_CLIENT_AFFINITY") if self.client_affinity else 0)
                | (C("LBD_VIP_SECOND_CHANCE") if self.second_chance else 0)
                | (C("LBD_VIP_QUIC") if self.quic else 0))

    def server_ids(self) -> dict[bytes, IPAddress]:
        """Server ID -> backend address, every backend that has one."""
        return {b.server_id: b.address for b in self.backends if b.server_id is not None}

    def table_input(self) -> tuple:
        """What the Maglev table depends on (a change here means a new table)."""
        return tuple(sorted((b.address.packed, b.weight) for b in self.backends if b.in_table))


# --- building plans from the config, health and neighbours ---------------------
HealthUp = Callable[[Vip, Backend], bool]


@dataclass
class VipStatus:
    """What an operator needs to know about a VIP beyond its plan."""
    fail_open: bool = False
    notes: dict[str, str] = field(default_factory=dict)  # backend address -> why not active


def backend_plan(vip: Vip, backend: Backend, up: bool, resolved: Resolved | None) -> tuple[BackendPlan, str]:
    mac = src_mac = b"\0" * 6
    ifindex = 0
    note = ""
    if vip.mode == "dsr":
        if resolved is None or not resolved.ok:
            note = resolved.problem if resolved else "not resolved yet"
        else:
            mac, src_mac, ifindex = resolved.mac, resolved.our_mac, resolved.ifindex
    if backend.effective_weight == 0:
        state, note = DRAINING, "draining" + (f"; {note}" if note else "")
    elif note:
        state = DOWN
    elif not up:
        state, note = DOWN, "health check failing"
    else:
        state = ACTIVE
    server_id = bytes.fromhex(backend.server_id) if vip.quic and backend.server_id else None
    return BackendPlan(backend.address, backend.effective_weight, state, mac, src_mac, ifindex,
                       configured_weight=backend.weight, server_id=server_id), note


def vip_plan(vip: Vip, health_up: HealthUp, resolutions: dict,
             hold_s: float = Config.second_chance_hold_s) -> tuple[VipPlan, VipStatus]:
    status = VipStatus()
    planned = []
    for backend in vip.backends:
        up = health_up(vip, backend)
        plan, note = backend_plan(vip, backend, up, resolutions.get(backend.address))
        planned.append((backend, plan, note, up))
        if note:
            status.notes[str(backend.address)] = note
    if planned and not any(p.in_table for _, p, _, _ in planned):
        revived = []
        for backend, plan, note, up in planned:
            if plan.state == DOWN and not up and note == "health check failing":
                plan = dataclasses.replace(plan, state=ACTIVE)
                status.notes[str(backend.address)] = "health check failing (fail-open: kept in table)"
            revived.append((backend, plan, note, up))
        if any(p.in_table for _, p, _, _ in revived):
            status.fail_open = True
            planned = revived
    return VipPlan(vip.address, vip.port, PROTOCOLS[vip.protocol], ipip=vip.mode == "ipip",
                   client_affinity=vip.affinity == "client",
                   backends=tuple(p for _, p, _, _ in planned), name=vip.name,
                   second_chance=bool(vip.second_chance), hold_s=hold_s,
                   quic=QuicPlan(vip.quic.config_id, vip.quic.server_id_length, vip.quic.cid_length)
                   if vip.quic else None), status


def plans_for(config: Config, health_up: HealthUp, resolutions: dict) -> tuple[list[VipPlan], dict[str, VipStatus]]:
    plans, statuses = [], {}
    for vip in config.vips:
        plan, status = vip_plan(vip, health_up, resolutions, config.second_chance_hold_s)
        plans.append(plan)
        statuses[vip.name] = status
    return plans, statuses
