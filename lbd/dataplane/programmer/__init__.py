"""Turn the desired set of VIPs and backends into map writes, touching only what changed.

The daemon describes what it wants as `VipPlan`s (lbd.plan builds them from
the config, health states and resolved MACs); `Programmer.apply()` diffs them against what it
applied last and writes the difference in an order that keeps every packet
consistent:

  1. backend entries first (a new table may point at them),
  2. then each changed VIP's Maglev table, swapped in one update, and beside
     it (second-chance VIPs) its second-choice table; a kept second-chance
     VIP is marked pending in its VIP entry first (LBD_VIP_SECOND_PENDING),
     until its second table is written (here, or by build_second() in the
     background), so that the entries made in between read their second
     again once it is there,
  3. then VIP and address entries (a new VIP appears only once its table is
     there), each address's prefilter bit set before its first VIP entry,
  4. removals last: VIP entries, then tables, then backend slots (a removed
     backend of a kept second-chance VIP is held instead), then the
     prefilter bits of addresses no VIP uses any more.

Ids: every VIP gets a stable id, every (VIP, backend address) a stable backend
id. A reused backend id gets a new generation, so connection-table entries
of the backend that had it before move on instead of reaching a stranger.
Ids are read back from the maps when the daemon adopts a running datapath,
so a restart keeps every flow where it is.

Second chance (docs/second-chance.md; the table's rule is in
lbd.dataplane.secondchoice): each backend entry says until when it may be named as a
second choice (second_until): for ever while active or draining; for the
hold (second_chance.hold) once it goes down, or once it is removed from a
kept second-chance VIP, which then keeps its id, address and generation in
state HELD. `expire()` ends the holds that are over (zeroes second_until,
frees HELD ids) and rebuilds the second tables they were part of. Holds live
in the pinned backends map, so `adopt()` takes them over too.

All checks and table builds happen before the first write; if a write still
fails (the kernel refusing memory), the bookkeeping is put back and the
previous plans are written again, every entry and table of them.
"""
from __future__ import annotations

import array
import dataclasses
import ipaddress
import logging
import math
import time
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING, Callable

from lbd.dataplane import layout, maglev, secondchoice
from lbd.dataplane.maps import BackendEntry, Datapath, IPAddress, prefilter_bit

if TYPE_CHECKING:  # plans are built by lbd.plan; this layer only reads them
    from lbd.plan import VipKey, VipPlan

log = logging.getLogger("lbd.dataplane.programmer")
C = layout.constant

EMPTY = C("LBD_BACKEND_EMPTY")  # a backend slot no VIP uses
ACTIVE, DRAINING = C("LBD_BACKEND_ACTIVE"), C("LBD_BACKEND_DRAINING")
DOWN, HELD = C("LBD_BACKEND_DOWN"), C("LBD_BACKEND_HELD")
FOREVER = C("LBD_SECOND_FOREVER")  # second_until of an active or draining backend
NO_HOLD = 0                        # second_until of a backend that is no second choice
PENDING = C("LBD_VIP_SECOND_PENDING")  # in the VIP entry only: its second table is not yet built


@dataclass
class VipResult:
    """What one apply did to one VIP, for logs, status and `check --diff`."""
    name: str
    action: str               # added, changed, removed, unchanged
    moved_share: float = 0.0  # share of the table's slots that changed backend
    fingerprint: str = ""
    second_fingerprint: str = ""  # of the second-choice table; "" without second chance
    # second chance: of the moved slots, the share whose new second choice is
    # the backend they had (its connections are found); None: no second
    # chance, nothing moved, or the second table still waits to be built
    second_found_share: float | None = None
    # second chance: backends in the table now that were not before (added,
    # undrained, up again). More than one at once costs moved flows their
    # second choice (README "Several backends joining at once")
    joined: int = 0
    # QUIC VIPs: backends whose QUIC connections move (their server ID changed
    # or went away): address -> "old -> new" server ID in hex ("-" for none)
    quic_moved: dict[str, str] = dataclasses.field(default_factory=dict)


class ApplyError(Exception):
    pass


@dataclass
class HeldBackend:
    """A backend removed from a kept second-chance VIP: still a second choice
    (state HELD in its entry) until `until`, its id kept for it."""
    backend_id: int
    weight: int   # its configured weight, its share among the second table's candidates
    until: int    # unix seconds (second_until)


@dataclass(frozen=True)
class HoldEvent:
    """A hold that started or ended, for the daemon's log."""
    vip: str
    backend: IPAddress
    event: str       # "started" or "ended"
    state: str       # "down" or "held"
    until: int       # the hold's end, unix seconds
    released: bool = False  # ended: the backend's id was freed (it was held)


@dataclass
class AppliedVip:
    """One VIP as the programmer last wrote it: its plan, ids and tables."""
    plan: VipPlan
    vip_id: int
    backend_ids: dict[IPAddress, int]
    table: np.ndarray | None
    fingerprint: str
    second: np.ndarray | None = None   # second choices (second-chance VIPs only)
    second_fingerprint: str = ""
    second_input: tuple | None = None  # (table input, candidates) the second table is of


def canonical_fingerprint(table: np.ndarray, id_to_address: dict[int, IPAddress]) -> str:
    """Fingerprint of slot -> backend *address*: equal on every host with the
    same config, whatever ids each host happened to allocate."""
    ranked = sorted(id_to_address, key=lambda i: id_to_address[i].packed)
    lut = np.zeros(int(table.max(initial=0)) + 1, dtype=np.uint32)
    for rank, backend_id in enumerate(ranked, start=1):
        if backend_id < len(lut):
            lut[backend_id] = rank
    canonical = array.array("I")
    canonical.frombytes(lut[table].astype(np.uint32).tobytes())
    return maglev.fingerprint(canonical)


class Programmer:
    def __init__(self, datapath: Datapath, hold_s: float = 120.0,
                 clock: Callable[[], float] = time.time, second_budget_s: float | None = None):
        self.dp = datapath
        self.limits = datapath.limits
        self.hold_s = hold_s      # second_chance.hold: the daemon sets it from the config
        self.clock = clock        # unix time, the clock of second_until
        # how long an apply may spend on second tables (each costs one Maglev
        # build per backend: 0.13 s at 100); the rest wait in _second_pending
        # for build_second(). None: all of them, at once.
        self.second_budget_s = second_budget_s
        self._second_pending: dict[VipKey, None] = {}  # ordered: built first in, first out
        self._applied: dict[VipKey, AppliedVip] = {}
        self._vip_ids: dict[VipKey, int] = {}
        self._backend_ids: dict[tuple[VipKey, IPAddress], int] = {}
        self._generations: dict[int, int] = {}  # backend id -> last generation used
        self._free_vip_ids = list(range(self.limits.max_vips - 1, 0, -1))
        self._free_backend_ids = list(range(self.limits.max_backends - 1, 0, -1))
        # backend id -> second_until as written (ids in use only)
        self._until: dict[int, int] = {}
        # VIP key -> address -> its held backend (removed from the config, hold running)
        self._held: dict[VipKey, dict[IPAddress, HeldBackend]] = {}
        # adopted backends not yet claimed by a plan: VIP key -> address -> id
        self._adopted: dict[VipKey, dict[IPAddress, int]] = {}
        self._events: list[HoldEvent] = []
        # (address, proto) -> (flags, fragment VIP id, its flags) as last written
        self._addr_entries: dict[tuple[IPAddress, int], tuple[int, int, int]] = {}
        # the prefilter as written (word index -> bits, nonzero words only);
        # read back so bits left by an earlier daemon are cleared when unused
        self._prefilter = {i: bits for i, bits in enumerate(datapath.read_prefilter()) if bits}
        # the VIP keys and flags the address entries and prefilter were last
        # written for: when they are unchanged (a health change), neither is
        # recomputed, which at 1,000 VIPs is most of a health change's cost
        self._vip_shape: frozenset | None = None

    def now(self) -> int:
        return int(self.clock())

    def _hold_end(self) -> int:
        return min(FOREVER - 1, math.ceil(self.clock() + self.hold_s))

    # --- adoption of a running datapath ----------------------------------------
    def adopt(self) -> int:
        """Take over ids from maps written by an earlier daemon. Returns the
        number of VIPs found. The next apply rewrites every table with the same
        ids (identical tables for an identical config: no flow moves), and
        every hold goes on: second_until is read back, held backends too (a
        held entry keeps its configured weight in its ifindex, unused by ipip)."""
        id_to_key: dict[int, VipKey] = {}
        for key, leaf in self.dp.vips.items():
            raw = bytes(key.addr)
            family = key.family
            address = ipaddress.ip_address(raw[:4] if family == C("LBD_FAMILY_V4") else raw)
            port = int.from_bytes(int(key.port).to_bytes(2, "little"), "big")
            vip_key = (address, port, int(key.proto))
            self._vip_ids[vip_key] = leaf.vip_id
            id_to_key[leaf.vip_id] = vip_key
        for backend_id, entry in self.dp.backend_entries().items():
            if entry.generation:
                self._generations[backend_id] = entry.generation
            if entry.state == EMPTY or entry.vip_id not in id_to_key:
                continue
            raw = bytes(entry.addr)
            address = ipaddress.ip_address(raw[:4] if entry.family == C("LBD_FAMILY_V4") else raw)
            vip_key = id_to_key[entry.vip_id]
            self._backend_ids[(vip_key, address)] = backend_id
            self._until[backend_id] = int(entry.second_until)
            if entry.state == HELD:
                self._held.setdefault(vip_key, {})[address] = HeldBackend(
                    backend_id, max(1, int(entry.ifindex)), int(entry.second_until))
            else:
                self._adopted.setdefault(vip_key, {})[address] = backend_id
        used_vips = set(self._vip_ids.values())
        used_backends = set(self._backend_ids.values())
        self._free_vip_ids = [i for i in self._free_vip_ids if i not in used_vips]
        self._free_backend_ids = [i for i in self._free_backend_ids if i not in used_backends]
        return len(self._vip_ids)

    # --- planning ---------------------------------------------------------------
    def _check_capacity(self, plans: list[VipPlan]) -> None:
        keys = [p.key for p in plans]
        if len(set(keys)) != len(keys):
            raise ApplyError("duplicate VIP in plan")
        if len(plans) > self.limits.max_vips - 1:
            raise ApplyError(f"{len(plans)} VIPs, the program holds {self.limits.max_vips - 1} "
                             "(limits.max_vips, boot-only)")
        total = sum(len(p.backends) for p in plans)
        if total > self.limits.max_backends - 1:
            raise ApplyError(f"{total} backends, the program holds "
                             f"{self.limits.max_backends - 1} (limits.max_backends, boot-only)")

    def _backend_id(self, vip_key: VipKey, address: IPAddress, fresh: set[int]) -> int:
        existing = self._backend_ids.get((vip_key, address))
        if existing:
            # a held address back in the config takes its held id again, and
            # an adopted one is claimed
            self._held.get(vip_key, {}).pop(address, None)
            self._adopted.get(vip_key, {}).pop(address, None)
            return existing
        if not self._free_backend_ids:
            self._yield_held_id()
        backend_id = self._free_backend_ids.pop()
        self._generations[backend_id] = self._generations.get(backend_id, 0) + 1
        self._backend_ids[(vip_key, address)] = backend_id
        fresh.add(backend_id)
        return backend_id

    def _yield_held_id(self) -> None:
        """Out of ids (the config fills limits.max_backends): the held
        backend whose hold ends first gives its id up now. A configured
        backend always comes before a hold."""
        held = [(h.until, key, address) for key, by_address in self._held.items()
                for address, h in by_address.items()]
        if not held:
            return  # pop() fails: apply reports the write failure and restores
        _, key, address = min(held, key=lambda h: h[0])
        gone = self._held[key].pop(address)
        self._release_backend(key, address, gone.backend_id)
        if key in self._applied:  # its second table no longer has it
            self._second_pending[key] = None

    def _build_table(self, plan: VipPlan, ids: dict[IPAddress, int]) -> np.ndarray:
        entries = [maglev.Backend(b.address.packed, b.weight, ids[b.address])
                   for b in plan.backends if b.in_table]
        # np.frombuffer shares the array's memory: no copy of 65537 slots
        return np.frombuffer(maglev.build_table(entries, self.limits.ring_size), dtype=np.uint32)

    def _next_until(self, backend_id: int | None, state: int, second_chance: bool) -> int:
        """A backend's second_until from its new state and its last one: for
        ever while active or draining; a hold that starts when it goes down
        from there, and otherwise goes on (or stays ended). Without second
        chance nothing reads it, and a down backend has none."""
        if state in (ACTIVE, DRAINING):
            return FOREVER
        if not second_chance:
            return NO_HOLD
        last = self._until.get(backend_id, NO_HOLD)
        return self._hold_end() if last == FOREVER else last

    def _candidates(self, key: VipKey, plan: VipPlan, ids: dict[IPAddress, int],
                    untils: dict[int, int]) -> tuple[maglev.Backend, ...]:
        """The second table's candidates (lbd.dataplane.secondchoice's Cset) as written:
        the plan's backends by the untils they get, and the VIP's held ones."""
        held = self._held.get(key, {})
        weights = self._candidate_weights(plan, {b.address: untils[ids[b.address]] for b in plan.backends}, held)
        id_of = {**{address: h.backend_id for address, h in held.items()}, **ids}
        return tuple(sorted(maglev.Backend(a.packed, w, id_of[a]) for a, w in weights.items()))

    def _candidate_weights(self, plan: VipPlan, until_of: dict[IPAddress, int],
                           held: dict[IPAddress, HeldBackend]) -> dict[IPAddress, int]:
        """Address -> configured weight of every candidate: in the table,
        draining, and down or held with their hold running (until_of: each
        plan backend's second_until; active and draining ones have FOREVER)."""
        now = self.now()
        found = {b.address: b.candidate_weight for b in plan.backends if until_of[b.address] > now}
        found.update({a: h.weight for a, h in held.items() if h.until > now and a not in until_of})
        return found

    def _stage_second(self, key: VipKey, applied: AppliedVip, old: AppliedVip | None,
                      untils: dict[int, int]) -> None:
        """Carry the VIP's written second table over, and mark it pending when
        it is not the one its inputs (first table, candidates) make now."""
        if not applied.plan.second_chance:
            self._second_pending.pop(key, None)
            return
        if old is not None and old.second is not None:
            applied.second, applied.second_fingerprint = old.second, old.second_fingerprint
            applied.second_input = old.second_input
        inputs = (applied.plan.table_input(), self._candidates(key, applied.plan, applied.backend_ids, untils))
        if applied.second_input == inputs:
            self._second_pending.pop(key, None)
        else:
            self._second_pending[key] = None

    def _build_second(self, key: VipKey, applied: AppliedVip, untils: dict[int, int]) -> None:
        """Build the VIP's second table from what it is now (lbd.dataplane.secondchoice)."""
        candidates = self._candidates(key, applied.plan, applied.backend_ids, untils)
        applied.second = secondchoice.second_table(applied.table, candidates, self.limits.ring_size)
        by_id = {b.backend_id: ipaddress.ip_address(b.key) for b in candidates}
        applied.second_fingerprint = canonical_fingerprint(applied.second, by_id)
        applied.second_input = (applied.plan.table_input(), candidates)

    def _budget_left(self, budget_s: float | None) -> Callable[[], bool]:
        deadline = None if budget_s is None else time.monotonic() + budget_s
        return lambda: deadline is None or time.monotonic() < deadline

    def build_second(self, budget_s: float | None = None) -> int:
        """Build and write the pending second tables, for about budget_s at
        most (None: all). Returns how many are still pending.

        A pending VIP's packets name what its second ring holds meanwhile
        (the interim table apply wrote beside a changed first table: moved
        slots name the backend they had; or the table of its last inputs, or
        the one an earlier daemon pinned), or, with none, go as plain
        IP-in-IP: never a wrong first choice, and a stale second is at worst
        a backend of the VIP without the flow. Entries made meanwhile are
        provisional (the VIP entry's PENDING mark, cleared here)."""
        left = self._budget_left(budget_s)
        built: dict[VipKey, AppliedVip] = {}
        for key in list(self._second_pending):
            if not left():
                break
            built[key] = dataclasses.replace(self._applied[key])
            self._build_second(key, built[key], self._until)
        self.dp.write_second_rings({a.vip_id: a.second for a in built.values()})
        self._applied.update(built)
        for key, applied in built.items():
            del self._second_pending[key]
            self.dp.set_vip(key[0], key[1], key[2], applied.vip_id, self._vip_flags(key, applied))
        return len(self._second_pending)

    def _vip_flags(self, key: VipKey, applied: AppliedVip) -> int:
        """The VIP entry's flags: the plan's, and PENDING while its second
        table is not the one its first table and candidates make."""
        return applied.plan.flags | (PENDING if key in self._second_pending else 0)

    def second_pending(self, key: VipKey | None = None) -> bool:
        """Whether the VIP's (or any VIP's) second table waits to be built."""
        return bool(self._second_pending) if key is None else key in self._second_pending

    # --- applying ------------------------------------------------------------------
    def apply(self, plans: list[VipPlan]) -> list[VipResult]:
        """Make the datapath hold exactly `plans`."""
        self._check_capacity(plans)
        previous = [a.plan for a in self._applied.values()]
        saved, events = self._save(), len(self._events)
        try:
            return self._apply(plans)
        except Exception as err:
            log.error("apply_failed error=%s action=restoring_previous", err)
            del self._events[events:]  # holds of an apply that did not happen
            self._restore(saved, previous)
            raise ApplyError(f"writing the maps failed: {err}") from err

    def _save(self) -> tuple:
        """The bookkeeping as it is, to put back if an apply fails half-way."""
        return ({k: dataclasses.replace(a) for k, a in self._applied.items()}, dict(self._vip_ids),
                dict(self._backend_ids), dict(self._generations), list(self._free_vip_ids),
                list(self._free_backend_ids), dict(self._until),
                {k: {a: dataclasses.replace(h) for a, h in held.items()} for k, held in self._held.items()},
                {k: dict(v) for k, v in self._adopted.items()}, dict(self._addr_entries), dict(self._prefilter),
                dict(self._second_pending))

    def _restore(self, saved: tuple, previous: list[VipPlan]) -> None:
        """After a failed write: the bookkeeping as before, then every entry
        and table of the previous plans written again (whatever the failed
        apply had written already), and what it had added taken away."""
        vip_ids_tried, backend_ids_tried = dict(self._vip_ids), set(self._backend_ids.values())
        (self._applied, self._vip_ids, self._backend_ids, self._generations, self._free_vip_ids,
         self._free_backend_ids, self._until, self._held, self._adopted, self._addr_entries,
         self._prefilter, self._second_pending) = saved
        self._vip_shape = None  # what the failed apply wrote is unknown: rewrite all
        try:
            for key, vip_id in vip_ids_tried.items():
                if key not in self._vip_ids:
                    self.dp.delete_vip(*key)
                    self.dp.clear_ring(vip_id)
                    self.dp.clear_second_ring(vip_id)
            for backend_id in backend_ids_tried - set(self._backend_ids.values()):
                self.dp.clear_backend(backend_id)
            self._apply(previous, rewrite=True)
        except Exception as restore_err:  # the kernel refusing twice: say so loudly
            log.critical("restore_failed error=%s", restore_err)

    def _apply(self, plans: list[VipPlan], rewrite: bool = False) -> list[VipResult]:
        """Write the difference to `plans`; with rewrite, every entry and
        table of them whether it changed or not (the restore of a failed apply)."""
        wanted = {p.key: p for p in plans}
        results: list[VipResult] = []
        fresh_ids: set[int] = set()
        fresh_vip_ids: set[int] = set()
        untils: dict[int, int] = {}     # second_until of every backend of the staged VIPs
        to_hold: dict[VipKey, dict[IPAddress, int]] = {}     # removed, held: address -> id
        to_release: dict[VipKey, dict[IPAddress, int]] = {}  # removed, freed

        # Build everything first: ids, holds, tables, fingerprints.
        staged: dict[VipKey, AppliedVip] = {}
        for key, plan in wanted.items():
            old = self._applied.get(key)
            if old and old.plan is not plan and old.plan == plan:
                # keep the caller's equal object, so that its next apply (a
                # health change reuses the other VIPs' plan objects) finds it
                # by identity instead of comparing every backend again
                old.plan = plan
            if old and old.plan is plan and not rewrite:
                continue
            vip_id = self._vip_ids.get(key)
            if vip_id is None:
                vip_id = self._free_vip_ids.pop()
                fresh_vip_ids.add(vip_id)
            self._vip_ids[key] = vip_id
            ids = {b.address: self._backend_id(key, b.address, fresh_ids) for b in plan.backends}
            for b in plan.backends:
                untils[ids[b.address]] = self._next_until(ids[b.address], b.state, plan.second_chance)
            self._stage_removed(key, plan, ids, old, to_hold, to_release)
            if old and old.plan.table_input() == plan.table_input() and old.table is not None:
                table = old.table
                fingerprint = old.fingerprint
            else:
                table = self._build_table(plan, ids)
                fingerprint = canonical_fingerprint(
                    table, {ids[b.address]: b.address for b in plan.backends if b.in_table})
            staged[key] = AppliedVip(plan, vip_id, ids, table, fingerprint)
            self._stage_second(key, staged[key], old, untils)
        # the second tables now pending: those of the VIPs staged here first,
        # within the time budget (the daemon builds the rest in the background)
        left, now_untils = self._budget_left(self.second_budget_s), {**self._until, **untils}
        for key in [k for k in self._second_pending if k in staged]:
            if not left():
                break
            self._build_second(key, staged[key], now_untils)
            del self._second_pending[key]
        # the rest, until built: their moved slots name the backend they had
        for key in [k for k in self._second_pending if k in staged]:
            old, applied = self._applied.get(key), staged[key]
            if old is not None and old.table is not None and applied.second is not None \
                    and applied.table is not old.table:
                applied.second = _interim_second(old.table, applied.table, applied.second)

        # 0. an id taken anew starts its counters at zero: a VIP or backend
        # must not inherit the packets of the one that had the id before
        # (Prometheus would see its counter jump); adopted ids keep theirs
        for vip_id in fresh_vip_ids:
            self.dp.clear_vip_counters(vip_id)
        for backend_id in fresh_ids:
            self.dp.clear_backend_counters(backend_id)
            self.dp.clear_quic_routed(backend_id)
        # 1. backend entries of new and changed VIPs (only the backends that
        # changed; all of a VIP's when its flags changed: each entry holds them)
        for key, applied in staged.items():
            old = self._applied.get(key)
            before = ({b.address: (b, old.backend_ids[b.address], self._until.get(old.backend_ids[b.address]))
                       for b in old.plan.backends}
                      if old and old.plan.flags == applied.plan.flags and not rewrite else {})
            for b in applied.plan.backends:
                backend_id = applied.backend_ids[b.address]
                until = untils[backend_id]
                if before.get(b.address) == (b, backend_id, until):
                    continue
                self._note_hold(applied.plan.name, b.address, backend_id, until, "down")
                self.dp.set_backend(backend_id, BackendEntry(
                    vip_id=applied.vip_id, address=b.address, state=b.state,
                    generation=self._generations[backend_id], dst_mac=b.dst_mac,
                    src_mac=b.src_mac, ifindex=b.ifindex, vip_flags=applied.plan.flags,
                    second_until=until))
                self._until[backend_id] = until
        # 1b. QUIC VIPs: their CID format and server IDs, which name the
        # backend entries written just above (xdp/quic.h)
        for key, applied in staged.items():
            self._write_quic(applied, self._applied.get(key), rewrite)
        if rewrite:  # the held entries as they were
            for key, held in self._held.items():
                if key in staged:
                    for address, h in held.items():
                        self._write_held(staged[key], address, h)
        # 2. tables, each swapped atomically (in batches); the second choices beside
        changed = {key: applied for key, applied in staged.items()
                   if rewrite or key not in self._applied or self._applied[key].table is not applied.table}
        # a kept second-chance VIP whose first table changes is marked pending
        # first: between the two swaps (and while its second table waits in the
        # background) the entries it makes read a second of the table before,
        # and must read it again once the new one is in place (xdp/balancer.c
        # lbd_entry_second). Step 3 or build_second() clears the mark.
        for key, applied in changed.items():
            if applied.plan.second_chance and applied.vip_id not in fresh_vip_ids:  # its entry is there
                old = self._applied.get(key)
                self.dp.set_vip(key[0], key[1], key[2], applied.vip_id,
                                (old or applied).plan.flags | PENDING)
        self.dp.write_rings({applied.vip_id: applied.table for applied in changed.values()})
        self.dp.write_second_rings({
            applied.vip_id: applied.second for key, applied in staged.items()
            if applied.second is not None and (rewrite or key not in self._applied
                                               or self._applied[key].second is not applied.second)})
        # 3. VIP entries and the address entries derived from them, behind
        # prefilter bits for every wanted address (old ones stay set for now)
        shape = frozenset((key, plan.flags) for key, plan in wanted.items())
        same_vips = shape == self._vip_shape
        if not same_vips:
            wanted_bits = _prefilter_words(plan.address for plan in wanted.values())
            self._write_prefilter({i: bits | self._prefilter.get(i, 0) for i, bits in wanted_bits.items()})
        for key, applied in staged.items():
            self.dp.set_vip(key[0], key[1], key[2], applied.vip_id, self._vip_flags(key, applied))
        if not same_vips:
            self._write_addrs(wanted, staged)

        # 4. removals: VIPs gone entirely, then backends gone from kept VIPs
        # (held or freed), then the second tables of VIPs that lost the flag
        for key in [k for k in self._applied if k not in wanted]:
            gone = self._applied.pop(key)
            self.dp.delete_vip(*key)
            self._clear_quic(gone.vip_id)
            self.dp.clear_ring(gone.vip_id)
            self.dp.clear_second_ring(gone.vip_id)
            for address, backend_id in gone.backend_ids.items():
                self._release_backend(key, address, backend_id)
            for address, held in self._held.pop(key, {}).items():
                self._release_backend(key, address, held.backend_id)
            del self._vip_ids[key]
            self._second_pending.pop(key, None)
            self._free_vip_ids.append(gone.vip_id)
            results.append(VipResult(gone.plan.name, "removed", 1.0, ""))
        for key in [k for k in self._vip_ids if k not in wanted and k not in self._applied]:
            self._remove_adopted_vip(key)
        for key, applied in staged.items():
            for address, backend_id in to_hold.get(key, {}).items():
                self._write_held(applied, address, self._held[key][address])
            for address, backend_id in to_release.get(key, {}).items():
                self._release_backend(key, address, backend_id)
            if not applied.plan.second_chance:
                old = self._applied.get(key)
                if old is None or old.plan.second_chance or rewrite:
                    self.dp.clear_second_ring(applied.vip_id)
            old = self._applied.get(key)
            moved = 1.0 if old is None else _moved(old.table, applied.table)
            # ids are stable per (VIP, address), and none freed here is reused in
            # the same apply: the tables compare by id
            found = None if old is None or old.table is None or key in self._second_pending \
                or not applied.plan.second_chance else _found(old.table, applied.table, applied.second)
            results.append(VipResult(applied.plan.name, "changed" if old else "added",
                                     0.0 if old is None else moved, applied.fingerprint,
                                     applied.second_fingerprint, found,
                                     _joined(old.plan, applied.plan)
                                     if old is not None and applied.plan.second_chance else 0,
                                     _quic_moved(old.plan, applied.plan) if old else {}))
            self._applied[key] = applied
        for key in wanted:
            if key not in staged:
                results.append(VipResult(wanted[key].name, "unchanged", 0.0,
                                         self._applied[key].fingerprint,
                                         self._applied[key].second_fingerprint))
        # 5. now that removed VIPs are gone: exactly the wanted addresses' bits
        if not same_vips:
            self._write_prefilter(wanted_bits, exact=True)
            self._vip_shape = shape
        return results

    def _remove_adopted_vip(self, key: VipKey) -> None:
        """A VIP of the adopted maps that the config no longer has (removed
        while lbd was stopped): gone with its tables, backends and holds."""
        vip_id = self._vip_ids.pop(key)
        self.dp.delete_vip(*key)
        self._clear_quic(vip_id)
        self.dp.clear_ring(vip_id)
        self.dp.clear_second_ring(vip_id)
        for address, backend_id in self._adopted.pop(key, {}).items():
            self._release_backend(key, address, backend_id)
        for address, held in self._held.pop(key, {}).items():
            self._release_backend(key, address, held.backend_id)
        self._free_vip_ids.append(vip_id)

    # --- QUIC by connection ID ----------------------------------------------------
    def _write_quic(self, applied: AppliedVip, old: AppliedVip | None, rewrite: bool) -> None:
        """The VIP's CID format and (server ID -> backend id) entries, writing
        only what differs from what is there: from the old plan, or, on the
        first apply after an adopt and on a restore, from the map itself."""
        plan, vip_id = applied.plan, applied.vip_id
        wanted = {_sid_key(sid): applied.backend_ids[address] for sid, address in plan.server_ids().items()}
        if old is None or rewrite:
            there = self.dp.quic_servers_of(vip_id)
        else:
            there = {_sid_key(sid): old.backend_ids[address] for sid, address in old.plan.server_ids().items()}
        if plan.quic:
            if rewrite or old is None or old.plan.quic != plan.quic:
                self.dp.set_quic_config(vip_id, plan.quic.config_id, plan.quic.server_id_len,
                                        plan.quic.cid_len)
        elif old is None or rewrite or old.plan.quic:
            self.dp.clear_quic_config(vip_id)
        for sid in there.keys() - wanted.keys():
            self.dp.delete_quic_server(vip_id, sid)
        for sid, backend_id in wanted.items():
            if there.get(sid) != backend_id:
                self.dp.set_quic_server(vip_id, sid, backend_id)

    def _clear_quic(self, vip_id: int) -> None:
        """A removed VIP's CID format and server IDs (its id may be reused)."""
        self.dp.clear_quic_config(vip_id)
        for sid in self.dp.quic_servers_of(vip_id):
            self.dp.delete_quic_server(vip_id, sid)

    def _stage_removed(self, key: VipKey, plan: VipPlan, ids: dict[IPAddress, int],
                       old: AppliedVip | None, to_hold: dict, to_release: dict) -> None:
        """Sort the VIP's backends that left its plan (since the last apply,
        or since the maps were adopted) into held and freed. Only a kept
        second-chance VIP holds them: a removed backend's connections may
        live on, and its slots' new owners name it while the hold runs."""
        gone = {a: i for a, i in (old.backend_ids if old else {}).items() if a not in ids}
        gone.update(self._adopted.pop(key, {}))
        weights = {b.address: b.candidate_weight for b in old.plan.backends} if old else {}
        for address, backend_id in gone.items():
            until = self._next_until(backend_id, HELD, plan.second_chance)
            # an adopted backend left the config while lbd was stopped: its
            # weight is unknown (the maps have none of an active backend), so it is freed
            if plan.second_chance and until > self.now() and address in weights:
                self._held.setdefault(key, {})[address] = HeldBackend(backend_id, weights[address], until)
                to_hold.setdefault(key, {})[address] = backend_id
            else:
                to_release.setdefault(key, {})[address] = backend_id
        if not plan.second_chance:  # a VIP that lost the flag lets its held backends go
            for address, held in self._held.pop(key, {}).items():
                to_release.setdefault(key, {})[address] = held.backend_id

    def _write_held(self, applied: AppliedVip, address: IPAddress, held: HeldBackend) -> None:
        """A removed backend's entry in state HELD: its id, address and
        generation kept, a second choice until its hold ends; never forwarded
        to (only ACTIVE and DRAINING entries are). Its configured weight goes
        in ifindex (unused by ipip, the only mode with second chance), so a
        restarted daemon builds the same second table (adopt)."""
        self._note_hold(applied.plan.name, address, held.backend_id, held.until, "held")
        self.dp.set_backend(held.backend_id, BackendEntry(
            vip_id=applied.vip_id, address=address, state=HELD,
            generation=self._generations[held.backend_id], ifindex=held.weight,
            vip_flags=applied.plan.flags, second_until=held.until))
        self._until[held.backend_id] = held.until

    def _note_hold(self, vip: str, address: IPAddress, backend_id: int, until: int, state: str) -> None:
        """A hold starts when second_until goes from for ever to a time."""
        if self._until.get(backend_id) == FOREVER and until not in (FOREVER, NO_HOLD):
            self._events.append(HoldEvent(vip, address, "started", state, until))

    # --- holds ---------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int | None:
        """End the holds that are over at `now` (default: the clock): their
        VIPs' second tables are rebuilt without them first, then their
        second_until is zeroed and held ids are freed. Returns the next
        hold's end (unix seconds), or None when no hold runs."""
        now = self.now() if now is None else int(now)
        ended = {backend_id for backend_id, until in self._until.items()
                 if until not in (FOREVER, NO_HOLD) and until <= now}
        if ended:
            self._end_holds(ended, now)
        return self.next_deadline()

    def next_deadline(self) -> int | None:
        running = [u for u in self._until.values() if u not in (FOREVER, NO_HOLD)]
        return min(running, default=None)

    def _end_holds(self, ended: set[int], now: int) -> None:
        owners = {backend_id: key for (key, _), backend_id in self._backend_ids.items()}
        affected = {owners[i] for i in ended if i in owners}
        for backend_id in ended:  # no longer candidates (_candidates: hold running)
            self._until[backend_id] = NO_HOLD
            for held in self._held.get(owners.get(backend_id), {}).values():
                if held.backend_id == backend_id:
                    held.until = NO_HOLD
        for key in affected:  # their second tables rebuilt without them, first
            applied = self._applied.get(key)
            if applied is not None and applied.plan.second_chance:
                self._second_pending[key] = None
        self.build_second(self.second_budget_s)
        for key in affected:
            name = self._applied[key].plan.name if key in self._applied else ""
            for address, held in list(self._held.get(key, {}).items()):
                if held.backend_id in ended:
                    del self._held[key][address]
                    self._release_backend(key, address, held.backend_id)
                    self._events.append(HoldEvent(name, address, "ended", "held", now, released=True))
            applied = self._applied.get(key)
            for address, backend_id in (applied.backend_ids.items() if applied else ()):
                if backend_id in ended:
                    self.dp.set_second_until(backend_id, NO_HOLD)
                    self._events.append(HoldEvent(name, address, "ended", "down", now))

    def take_events(self) -> list[HoldEvent]:
        """The holds that started or ended since the last call (for the log)."""
        events, self._events = self._events, []
        return events

    def _write_prefilter(self, words: dict[int, int], exact: bool = False) -> None:
        """Write the prefilter words that differ from what is written; with
        exact, every word not in `words` becomes zero as well."""
        target = dict(self._prefilter)
        if exact:
            target = {i: 0 for i in target}
        target.update(words)
        changed = {i: bits for i, bits in target.items() if bits != self._prefilter.get(i, 0)}
        self.dp.write_prefilter(changed)
        self._prefilter = {i: bits for i, bits in target.items() if bits}

    def _release_backend(self, vip_key: VipKey, address: IPAddress, backend_id: int) -> None:
        self.dp.clear_backend(backend_id)
        self._backend_ids.pop((vip_key, address), None)
        self._until.pop(backend_id, None)
        self._free_backend_ids.append(backend_id)

    def _write_addrs(self, wanted: dict[VipKey, VipPlan], staged: dict[VipKey, AppliedVip]) -> None:
        """Rewrite the per-address entries (ports, wildcard, fragment VIP)."""
        by_addr: dict[tuple[IPAddress, int], list[VipPlan]] = {}
        for plan in wanted.values():
            by_addr.setdefault((plan.address, plan.proto), []).append(plan)
        entries = {key: self._addr_entry(vips) for key, vips in by_addr.items()}
        # only entries that changed: a health change must not rewrite 1,000 addresses
        for (address, proto), entry in entries.items():
            if self._addr_entries.get((address, proto)) != entry:
                self.dp.set_addr(address, proto, *entry)
        for (address, proto) in set(self._addr_entries) - set(entries):
            self.dp.delete_addr(address, proto)
        self._addr_entries = entries

    def _addr_entry(self, vips: list[VipPlan]) -> tuple[int, int, int]:
        """(flags, fragment VIP id, its flags) of one address: fragments follow
        its first client-affinity VIP."""
        flags, frag_vip = 0, None
        for plan in sorted(vips, key=lambda p: p.port):
            flags |= C("LBD_ADDR_HAS_WILDCARD") if plan.port == 0 else C("LBD_ADDR_HAS_PORTS")
            if plan.client_affinity and frag_vip is None:
                frag_vip = plan
        if frag_vip:
            return (flags | C("LBD_ADDR_FRAG_VIP"), self._vip_ids[frag_vip.key], frag_vip.flags)
        return (flags, 0, 0)

    def preview(self, plans: list[VipPlan]) -> list[VipResult]:
        """What apply(plans) would do to each VIP, writing nothing: the share
        of flows (table slots) that would move to another backend address
        and, with second chance, the share of those its second choice would
        still find."""
        results = []
        wanted = {p.key: p for p in plans}
        for key, plan in wanted.items():
            old = self._applied.get(key)
            if old is None:
                results.append(VipResult(plan.name, "added", 0.0))
            elif old.plan.table_input() == plan.table_input():
                results.append(VipResult(plan.name, "unchanged" if old.plan == plan else "changed",
                                         0.0, old.fingerprint, quic_moved=_quic_moved(old.plan, plan)))
            else:
                result = self._preview_change(key, old, plan)
                result.quic_moved = _quic_moved(old.plan, plan)
                results.append(result)
        for key, old in self._applied.items():
            if key not in wanted:
                results.append(VipResult(old.plan.name, "removed", 1.0))
        return results

    def _preview_change(self, key: VipKey, old: AppliedVip, plan: VipPlan) -> VipResult:
        """A VIP whose table would change. Both tables (and the second one)
        number the backends by address, the same numbers on both sides, so
        that a slot counts as moved only if its backend's address changes."""
        candidates = self._preview_candidates(key, old, plan) if plan.second_chance else {}
        addresses = {b.address for b in (*old.plan.backends, *plan.backends)} | set(candidates)
        ranks = {a: rank for rank, a in enumerate(sorted(addresses, key=lambda a: a.packed), start=1)}
        size = self.limits.ring_size
        before, after = _by_address(old.plan, ranks, size), _by_address(plan, ranks, size)
        result = VipResult(plan.name, "changed", _moved(before, after))
        if candidates:
            second = secondchoice.second_table(
                after, [maglev.Backend(a.packed, w, ranks[a]) for a, w in candidates.items()], size)
            result.second_found_share = _found(before, after, second)
            result.joined = _joined(old.plan, plan)
        return result

    def _preview_candidates(self, key: VipKey, old: AppliedVip, plan: VipPlan) -> dict[IPAddress, int]:
        """The candidates right after apply(plan): the untils it would give,
        and the holds it would start for the backends it removes."""
        until_of = {b.address: self._next_until(old.backend_ids.get(b.address), b.state, True)
                    for b in plan.backends}
        held = dict(self._held.get(key, {}))
        for b in old.plan.backends:
            if b.address not in until_of:
                until = self._next_until(old.backend_ids[b.address], HELD, True)
                held[b.address] = HeldBackend(old.backend_ids[b.address], b.candidate_weight, until)
        return self._candidate_weights(plan, until_of, held)

    # --- queries ----------------------------------------------------------------
    def vip_id(self, key: VipKey) -> int | None:
        return self._vip_ids.get(key)

    def applied(self) -> dict[VipKey, AppliedVip]:
        return dict(self._applied)

    def backend_id(self, key: VipKey, address: IPAddress) -> int | None:
        return self._backend_ids.get((key, address))

    def held(self, key: VipKey) -> dict[IPAddress, HeldBackend]:
        """The VIP's held backends: removed from the config, hold running."""
        return dict(self._held.get(key, {}))

    def second_until(self, backend_id: int) -> int:
        """A backend id's second_until as written (0: no second choice)."""
        return self._until.get(backend_id, NO_HOLD)


def _by_address(plan: VipPlan, ranks: dict[IPAddress, int], ring_size: int) -> np.ndarray:
    """The plan's table with backends numbered by `ranks` (address -> number):
    comparable between two plans whatever ids the backends were given."""
    entries = [maglev.Backend(b.address.packed, b.weight, ranks[b.address])
               for b in plan.backends if b.in_table]
    return np.frombuffer(maglev.build_table(entries, ring_size), dtype=np.uint32)


def _sid_key(server_id: bytes) -> bytes:
    """A server ID as quic_servers' key holds it: zero-padded to 16 octets."""
    return server_id.ljust(16, b"\0")


def _quic_moved(old: VipPlan, new: VipPlan) -> dict[str, str]:
    """Kept backends whose QUIC connections move once `new` is applied: the
    server ID their clients' CIDs carry is no longer theirs (changed, or the
    VIP's CID format or quic: section changed, which moves every one)."""
    if old.quic is None:
        return {}
    after = {b.address: b.server_id for b in new.backends} if new.quic == old.quic else {}
    kept = {b.address for b in new.backends}
    return {str(b.address): f"{b.server_id.hex()} -> {after[b.address].hex() if after.get(b.address) else '-'}"
            for b in old.backends
            if b.server_id is not None and b.address in kept and after.get(b.address) != b.server_id}


def _interim_second(before: np.ndarray, after: np.ndarray, second: np.ndarray) -> np.ndarray:
    """A VIP's second table while the rule's one waits to be built: a slot
    whose first choice changed names the backend it had (the rule's answer
    there but for Maglev's collateral and overlapping changes: an added
    backend's slots name their old owner, a failed or removed backend's name
    it), any other slot the second it had. Entries made meanwhile are
    provisional and take the rule's second once it is written."""
    interim = np.array(second, dtype=np.uint32)
    moved = before != after
    interim[moved] = before[moved]
    interim[after == maglev.NO_BACKEND] = maglev.NO_BACKEND
    return interim


def _joined(before: VipPlan, after: VipPlan) -> int:
    """How many backends are in `after`'s table and were not in `before`'s."""
    was = {b.address for b in before.backends if b.in_table}
    return sum(1 for b in after.backends if b.in_table and b.address not in was)


def _prefilter_words(addresses) -> dict[int, int]:
    """Prefilter words (index -> bits) with the bit of every address set."""
    words: dict[int, int] = {}
    for address in addresses:
        bit = prefilter_bit(address)
        words[bit // 64] = words.get(bit // 64, 0) | 1 << (bit % 64)
    return words


def _found(before: np.ndarray, after: np.ndarray, second: np.ndarray | None) -> float | None:
    """Of the slots that moved from `before` to `after`, the share whose
    second choice is the backend they had; None if none moved (or no second)."""
    moved = np.asarray(before) != np.asarray(after)
    if second is None or len(before) != len(after) or not moved.any():
        return None
    return float(np.count_nonzero(moved & (np.asarray(second) == before))) / float(np.count_nonzero(moved))


def _moved(old: np.ndarray | None, new: np.ndarray) -> float:
    if old is None or len(old) != len(new):
        return 1.0
    return float(np.count_nonzero(old != new)) / len(new)
