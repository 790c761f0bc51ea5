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
     there), each address's prefilter bit (and a QUIC VIP's address's
     quic_prefilter bit) set before its first VIP entry,
  4. removals last: VIP entries, then tables, then backend slots (a removed
     backend of a kept second-chance VIP is held instead), then the
     prefilter bits of addresses no VIP (no QUIC VIP) uses any more.

Ids: every VIP gets a stable id, every (VIP, backend address) a stable backend
id. A reused backend id gets a new generation, so connection-table entries
of the backend that had it before move on instead of reaching a stranger.
Ids are read back from the maps when the daemon adopts a running datapath,
so a restart keeps every flow where it is.

Second chance (docs/second-chance.md; the table's rule is in
lbd.dataplane.secondchoice): each backend entry says until when it may be
named as a second choice (second_until): for ever while active or draining;
for the hold (second_chance.hold, carried by each VipPlan as hold_s) once it
goes down, or once it is removed from a kept second-chance VIP, which then
keeps its id, address and generation in state HELD. `expire()` ends the
holds that are over (zeroes second_until, frees HELD ids) and rebuilds the
second tables they were part of. Holds live
in the pinned backends map, so `adopt()` takes them over too.

All checks and table builds happen before the first write; if a write still
fails (the kernel refusing memory), the bookkeeping is put back and the
previous plans are written again, every entry and table of them.

The package, by job: state (records, results, the Books: all bookkeeping in
one place, copied whole to undo a failed apply), ids (ids, generations,
adopt), holds (pure), second (the second-table queue, budget and interim
tables), tables (pure table math), stored (written tables kept as what makes
them, not as their slots), addrs (address entries and prefilter), preview
(pure). This module keeps the order of the writes.

Memory and pauses at 1,000 VIPs x 100 backends (bench/control.py's
second_chance_scale): the cycle collector waits until an apply is done
(lbd.dataplane.heap), and the heap the tables' slots freed is given back
after an apply or a background pass that wrote GIVE_BACK_AFTER_TABLES or more.

Length (over 450 lines, on purpose): the order of the writes (_apply) and
its undo (_restore) stay together in this one module: it is the order every
packet relies on, and reading it whole is how a change to it is checked.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Callable

from lbd.dataplane import heap
from lbd.dataplane.maps import BackendEntry, IPAddress, MapWriter
# by full name: a module of the package does not import the package itself
import lbd.dataplane.programmer.addrs as addrs
import lbd.dataplane.programmer.holds as holds
import lbd.dataplane.programmer.ids as ids
import lbd.dataplane.programmer.quic as quic
import lbd.dataplane.programmer.second as second
import lbd.dataplane.programmer.stored as stored
import lbd.dataplane.programmer.tables as tables
from lbd.dataplane.programmer.preview import preview as _preview
from lbd.dataplane.programmer.state import (  # noqa: F401  (re-exported: the package's names)
    ACTIVE, DOWN, DRAINING, EMPTY, FOREVER, HELD, NO_HOLD, PENDING, AppliedVip, ApplyError, Books,
    HeldBackend, HoldEvent, VipResult)

if TYPE_CHECKING:  # plans are built by lbd.plan; this layer only reads them
    from lbd.plan import VipKey, VipPlan

log = logging.getLogger("lbd.dataplane.programmer")
# an apply or background pass that wrote this many tables gives their freed
# memory back (malloc_trim walks the whole heap: 5-40 ms, more than a health
# change's own work, so not after every apply)
GIVE_BACK_AFTER_TABLES = 32


class Programmer:
    def __init__(self, datapath: MapWriter, clock: Callable[[], float] = time.time,
                 second_budget_s: float | None = None):
        self.dp = datapath
        self.limits = datapath.limits
        self.clock = clock        # unix time, the clock of second_until
        # how long an apply may spend on second tables (each costs one Maglev
        # build per backend: 0.13 s at 100); the rest wait in books.second_pending
        # for build_second(). None: all of them, at once.
        self.second_budget_s = second_budget_s
        self.books = Books.empty(self.limits.max_vips, self.limits.max_backends)
        # read back so bits left by an earlier daemon are cleared when unused
        self.books.prefilter = {i: bits for i, bits in enumerate(datapath.read_prefilter()) if bits}
        self.books.quic_prefilter = {i: bits for i, bits in enumerate(datapath.read_prefilter(quic=True))
                                     if bits}
        self._events: list[HoldEvent] = []
        # the VIP keys and flags the address entries and prefilter were last
        # written for: when they are unchanged (a health change), neither is
        # recomputed, which at 1,000 VIPs is most of a health change's cost
        self._vip_shape: frozenset | None = None
        self._tables_written = 0  # by the last apply
        # second tables by pool (second.build), the last few built: a cache, not books
        self._second_by_pool: dict[tuple, tuple] = {}

    def now(self) -> int:
        return int(self.clock())

    def adopt(self) -> int:
        """Take over ids and holds from maps written by an earlier daemon
        (ids.adopt). Returns the number of VIPs found."""
        return ids.adopt(self.books, self.dp)

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

    def _next_until(self, backend_id: int | None, state: int, plan: VipPlan) -> int:
        return holds.next_until(self.books.until.get(backend_id, NO_HOLD), state, plan, self.clock())

    def _candidates(self, key: VipKey, applied: AppliedVip, untils: dict[int, int]):
        return holds.candidates(applied.plan, applied.backend_ids, untils,
                                self.books.held.get(key, {}), self.now())

    def _stage_removed(self, key: VipKey, plan: VipPlan, backend_ids: dict[IPAddress, int],
                       old: AppliedVip | None, to_hold: dict, to_release: dict) -> None:
        """Sort the VIP's backends that left its plan (since the last apply,
        or since the maps were adopted) into held and freed. Only a kept
        second-chance VIP holds them: a removed backend's connections may
        live on, and its slots' new owners name it while the hold runs."""
        books = self.books
        gone = {a: i for a, i in (old.backend_ids if old else {}).items() if a not in backend_ids}
        gone.update(books.adopted.pop(key, {}))
        weights = {b.address: b.candidate_weight for b in old.plan.backends} if old else {}
        for address, backend_id in gone.items():
            until = self._next_until(backend_id, HELD, plan)
            # an adopted backend left the config while lbd was stopped: its
            # weight is unknown (the maps have none of an active backend), so it is freed
            if plan.second_chance and until > self.now() and address in weights:
                books.held.setdefault(key, {})[address] = HeldBackend(backend_id, weights[address], until)
                to_hold.setdefault(key, {})[address] = backend_id
            else:
                to_release.setdefault(key, {})[address] = backend_id
        if not plan.second_chance:  # a VIP that lost the flag lets its held backends go
            for address, held in books.held.pop(key, {}).items():
                to_release.setdefault(key, {})[address] = held.backend_id

    # --- second tables ------------------------------------------------------------
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
        books = self.books
        left = second.budget_left(budget_s)
        built: dict[VipKey, AppliedVip] = {}
        # VIPs of the same backends one after the other: they share one build
        for key in sorted(books.second_pending, key=lambda k: hash(books.applied[k].plan.table_input())):
            if not left():
                break
            built[key] = dataclasses.replace(books.applied[key])
            self._build_second(key, built[key], books.until)
        self.dp.write_second_rings({a.vip_id: a.second.slots() for a in built.values()})
        for applied in built.values():
            applied.second.written()
        books.applied.update(built)
        for key, applied in built.items():
            del books.second_pending[key]
            self.dp.set_vip(key[0], key[1], key[2], applied.vip_id, self._vip_flags(key, applied))
        # once a pass is large, and once the queue is done (the daemon then idles)
        if len(built) >= GIVE_BACK_AFTER_TABLES or (built and not books.second_pending):
            heap.give_back()
        return len(books.second_pending)

    def _build_second(self, key: VipKey, applied: AppliedVip, untils: dict[int, int]) -> None:
        second.build(applied, self._candidates(key, applied, untils), self.limits.ring_size,
                     self.dp, self._second_by_pool)

    def _vip_flags(self, key: VipKey, applied: AppliedVip) -> int:
        """The VIP entry's flags: the plan's, and PENDING while its second
        table is not the one its first table and candidates make."""
        return applied.plan.flags | (PENDING if key in self.books.second_pending else 0)

    def second_pending(self, key: VipKey | None = None) -> bool:
        """Whether the VIP's (or any VIP's) second table waits to be built."""
        pending = self.books.second_pending
        return bool(pending) if key is None else key in pending

    # --- applying ------------------------------------------------------------------
    def apply(self, plans: list[VipPlan]) -> list[VipResult]:
        """Make the datapath hold exactly `plans`."""
        self._check_capacity(plans)
        previous = [a.plan for a in self.books.applied.values()]
        self._tables_written = 0
        with heap.collector_paused():
            saved, events = self.books.copy(), len(self._events)
            try:
                results = self._apply(plans)
            except Exception as err:
                log.error("apply_failed error=%s action=restoring_previous", err)
                del self._events[events:]  # holds of an apply that did not happen
                self._restore(saved, previous)
                raise ApplyError(f"writing the maps failed: {err}") from err
        del saved, previous
        if self._tables_written >= GIVE_BACK_AFTER_TABLES:
            heap.give_back()  # the tables' slots and the books' copy, freed now
        return results

    def _restore(self, saved: Books, previous: list[VipPlan]) -> None:
        """After a failed write: the books as before, then every entry and
        table of the previous plans written again (whatever the failed apply
        had written already), and what it had added taken away."""
        vip_ids_tried, backend_ids_tried = dict(self.books.vip_ids), set(self.books.backend_ids.values())
        self.books = saved
        self._vip_shape = None  # what the failed apply wrote is unknown: rewrite all
        # a written second table is read back from the kernel (stored.py), where
        # the failed apply may have written its own: build every one again
        for key, applied in saved.applied.items():
            if applied.plan.second_chance:
                applied.second = None
                saved.second_pending[key] = None
        try:
            for key, vip_id in vip_ids_tried.items():
                if key not in saved.vip_ids:
                    self.dp.delete_vip(*key)
                    self.dp.clear_ring(vip_id)
                    self.dp.clear_second_ring(vip_id)
            for backend_id in backend_ids_tried - set(saved.backend_ids.values()):
                self.dp.clear_backend(backend_id)
            self._apply(previous, rewrite=True)
        except Exception as restore_err:  # the kernel refusing twice: say so loudly
            log.critical("restore_failed error=%s", restore_err)

    def _apply(self, plans: list[VipPlan], rewrite: bool = False) -> list[VipResult]:
        """Write the difference to `plans`; with rewrite, every entry and
        table of them whether it changed or not (the restore of a failed apply)."""
        books = self.books
        wanted = {p.key: p for p in plans}
        results: list[VipResult] = []
        fresh_ids: set[int] = set()
        fresh_vip_ids: set[int] = set()
        untils: dict[int, int] = {}     # second_until of every backend of the staged VIPs
        to_hold: dict[VipKey, dict[IPAddress, int]] = {}     # removed, held: address -> id
        to_release: dict[VipKey, dict[IPAddress, int]] = {}  # removed, freed

        # Build everything first: ids, holds, tables, fingerprints.
        staged: dict[VipKey, AppliedVip] = {}
        by_pool: dict = {}  # VIPs of the same backends share their first table's build
        for key, plan in wanted.items():
            old = books.applied.get(key)
            if old and old.plan is not plan and old.plan == plan:
                # keep the caller's equal object, so that its next apply (a
                # health change reuses the other VIPs' plan objects) finds it
                # by identity instead of comparing every backend again
                old.plan = plan
            if old and old.plan is plan and not rewrite:
                continue
            vip_id = books.vip_ids.get(key)
            if vip_id is None:
                vip_id = books.free_vip_ids.pop()
                fresh_vip_ids.add(vip_id)
            books.vip_ids[key] = vip_id
            # ids in the plan's order, so that what follows walks them beside the
            # plan's backends (an address lookup hashes it: 15 per backend cost
            # a third of a cold apply at 1,000 x 100)
            id_list = [ids.backend_id(books, self.dp, key, b.address, fresh_ids) for b in plan.backends]
            backend_ids = dict(zip([b.address for b in plan.backends], id_list))
            now = self.clock()
            for b, backend_id in zip(plan.backends, id_list):
                untils[backend_id] = holds.next_until(books.until.get(backend_id, NO_HOLD), b.state, plan, now)
            self._stage_removed(key, plan, backend_ids, old, to_hold, to_release)
            if old and old.plan.table_input() == plan.table_input() and old.table is not None:
                table = old.table
                fingerprint = old.fingerprint
            else:
                table, fingerprint = stored.first(plan, backend_ids, id_list, self.limits.ring_size, by_pool)
            staged[key] = AppliedVip(plan, vip_id, backend_ids, table, fingerprint)
            second.stage(books, key, staged[key], old,
                         (lambda key=key: self._candidates(key, staged[key], untils))
                         if plan.second_chance else None)
        # the second tables now pending: those of the VIPs staged here first,
        # within the time budget (the daemon builds the rest in the background)
        left, now_untils = second.budget_left(self.second_budget_s), None
        for key in [k for k in books.second_pending if k in staged]:
            if not left():
                break
            if now_untils is None:  # a copy of 100,000 entries: only when a table is built
                now_untils = {**books.until, **untils}
            self._build_second(key, staged[key], now_untils)
            del books.second_pending[key]
        # the rest, until built: their moved slots name the backend they had
        for key in [k for k in books.second_pending if k in staged]:
            old, applied = books.applied.get(key), staged[key]
            if old is not None and old.table is not None and applied.second is not None \
                    and applied.table is not old.table:
                applied.second = stored.SecondTable(second.interim(old.table, applied.table, applied.second),
                                                    self.limits.ring_size, self.dp, applied.vip_id)

        # 0. an id taken anew starts its counters at zero: a VIP or backend
        # must not inherit the packets of the one that had the id before
        # (Prometheus would see its counter jump); adopted ids keep theirs
        self.dp.clear_counters(fresh_vip_ids, fresh_ids)
        # 1. backend entries of new and changed VIPs (only the backends that
        # changed; all of a VIP's when its flags changed: each entry holds
        # them), in one batched write
        entries: dict[int, BackendEntry] = {}
        for key, applied in staged.items():
            old = books.applied.get(key)
            before = ({b.address: (b, old.backend_ids[b.address], books.until.get(old.backend_ids[b.address]))
                       for b in old.plan.backends}
                      if old and old.plan.flags == applied.plan.flags and not rewrite else {})
            flags = applied.plan.flags
            # backend_ids: in the plan's order (made so above)
            for b, backend_id in zip(applied.plan.backends, applied.backend_ids.values()):
                until = untils[backend_id]
                if before.get(b.address) == (b, backend_id, until):
                    continue
                self._note_hold(applied.plan.name, b.address, backend_id, until, "down")
                entries[backend_id] = BackendEntry(
                    vip_id=applied.vip_id, address=b.address, state=b.state,
                    generation=books.generations[backend_id], dst_mac=b.dst_mac,
                    src_mac=b.src_mac, ifindex=b.ifindex, vip_flags=flags,
                    second_until=until)
                books.until[backend_id] = until
        self.dp.set_backends(entries)
        # 1b. QUIC VIPs: their CID format and server IDs, which name the
        # backend entries written just above (xdp/quic.h)
        for key, applied in staged.items():
            quic.write(self.dp, applied, books.applied.get(key), rewrite)
        if rewrite:  # the held entries as they were
            for key, held in books.held.items():
                if key in staged:
                    for address, h in held.items():
                        self._write_held(staged[key], address, h)
        # 2. tables, each swapped atomically (in batches); the second choices beside
        changed = {key: applied for key, applied in staged.items()
                   if rewrite or key not in books.applied or books.applied[key].table is not applied.table}
        # a kept second-chance VIP whose first table changes is marked pending
        # first: between the two swaps (and while its second table waits in the
        # background) the entries it makes read a second of the table before,
        # and must read it again once the new one is in place (xdp/balancer.c
        # lbd_entry_second). Step 3 or build_second() clears the mark.
        for key, applied in changed.items():
            if applied.plan.second_chance and applied.vip_id not in fresh_vip_ids:  # its entry is there
                old = books.applied.get(key)
                self.dp.set_vip(key[0], key[1], key[2], applied.vip_id,
                                (old or applied).plan.flags | PENDING)
        self.dp.write_rings({applied.vip_id: applied.table.slots() for applied in changed.values()})
        seconds = {key: applied.second for key, applied in staged.items()
                   if applied.second is not None and (rewrite or key not in books.applied
                                                      or books.applied[key].second is not applied.second)}
        self.dp.write_second_rings({staged[key].vip_id: table.slots() for key, table in seconds.items()})
        # 3. VIP entries and the address entries derived from them, behind
        # prefilter bits for every wanted address (old ones stay set for now)
        shape = frozenset((key, plan.flags) for key, plan in wanted.items())
        same_vips = shape == self._vip_shape
        # (and QUIC VIPs' quic_prefilter bits: without its bit, a QUIC VIP's
        # datagram would be taken for plain UDP and make an entry)
        if not same_vips:
            wanted_bits = addrs.prefilter_words(plan.address for plan in wanted.values())
            addrs.write_prefilter(books, self.dp, {i: bits | books.prefilter.get(i, 0)
                                                   for i, bits in wanted_bits.items()})
            quic_bits = addrs.prefilter_words(plan.address for plan in wanted.values() if plan.quic)
            addrs.write_prefilter(books, self.dp, {i: bits | books.quic_prefilter.get(i, 0)
                                                   for i, bits in quic_bits.items()}, quic=True)
        for key, applied in staged.items():
            self.dp.set_vip(key[0], key[1], key[2], applied.vip_id, self._vip_flags(key, applied))
        if not same_vips:
            addrs.write_addrs(books, self.dp, wanted)

        # 4. removals: VIPs gone entirely, then backends gone from kept VIPs
        # (held or freed), then the second tables of VIPs that lost the flag
        for key in [k for k in books.applied if k not in wanted]:
            gone = books.applied.pop(key)
            self.dp.delete_vip(*key)
            quic.clear(self.dp, gone.vip_id)
            self.dp.clear_ring(gone.vip_id)
            self.dp.clear_second_ring(gone.vip_id)
            for address, backend_id in gone.backend_ids.items():
                ids.release_backend(books, self.dp, key, address, backend_id)
            for address, held in books.held.pop(key, {}).items():
                ids.release_backend(books, self.dp, key, address, held.backend_id)
            del books.vip_ids[key]
            books.second_pending.pop(key, None)
            books.free_vip_ids.append(gone.vip_id)
            results.append(VipResult(gone.plan.name, "removed", 1.0, ""))
        for key in [k for k in books.vip_ids if k not in wanted and k not in books.applied]:
            self._remove_adopted_vip(key)
        for key, applied in staged.items():
            for address, backend_id in to_hold.get(key, {}).items():
                self._write_held(applied, address, books.held[key][address])
            for address, backend_id in to_release.get(key, {}).items():
                ids.release_backend(books, self.dp, key, address, backend_id)
            if not applied.plan.second_chance:
                old = books.applied.get(key)
                if old is None or old.plan.second_chance or rewrite:
                    self.dp.clear_second_ring(applied.vip_id)
            old = books.applied.get(key)
            moved = 1.0 if old is None else tables.moved(old.table, applied.table)
            # ids are stable per (VIP, address), and none freed here is reused in
            # the same apply: the tables compare by id
            found = None if old is None or old.table is None or key in books.second_pending \
                or not applied.plan.second_chance else tables.found(old.table, applied.table, applied.second)
            results.append(VipResult(applied.plan.name, "changed" if old else "added",
                                     0.0 if old is None else moved, applied.fingerprint,
                                     applied.second_fingerprint, found,
                                     tables.joined(old.plan, applied.plan)
                                     if old is not None and applied.plan.second_chance else 0,
                                     quic.moved(old.plan, applied.plan) if old else {}))
            books.applied[key] = applied
        for key in wanted:
            if key not in staged:
                results.append(VipResult(wanted[key].name, "unchanged", 0.0,
                                         books.applied[key].fingerprint,
                                         books.applied[key].second_fingerprint))
        # 5. now that removed VIPs are gone: exactly the wanted addresses' bits
        if not same_vips:
            addrs.write_prefilter(books, self.dp, wanted_bits, exact=True)
            addrs.write_prefilter(books, self.dp, quic_bits, exact=True, quic=True)
            self._vip_shape = shape
        # the kernel holds the tables now: their slots need not stay here
        self._tables_written = len(changed) + len(seconds)
        for applied in changed.values():
            applied.table.written()
        for table in seconds.values():
            table.written()
        return results

    def _remove_adopted_vip(self, key: VipKey) -> None:
        """A VIP of the adopted maps that the config no longer has (removed
        while lbd was stopped): gone with its tables, backends and holds."""
        books = self.books
        vip_id = books.vip_ids.pop(key)
        self.dp.delete_vip(*key)
        quic.clear(self.dp, vip_id)
        self.dp.clear_ring(vip_id)
        self.dp.clear_second_ring(vip_id)
        for address, backend_id in books.adopted.pop(key, {}).items():
            ids.release_backend(books, self.dp, key, address, backend_id)
        for address, held in books.held.pop(key, {}).items():
            ids.release_backend(books, self.dp, key, address, held.backend_id)
        books.free_vip_ids.append(vip_id)

    def _write_held(self, applied: AppliedVip, address: IPAddress, held: HeldBackend) -> None:
        """A removed backend's entry in state HELD: its id, address and
        generation kept, a second choice until its hold ends; never forwarded
        to (only ACTIVE and DRAINING entries are). Its configured weight goes
        in ifindex (unused by ipip, the only mode with second chance), so a
        restarted daemon builds the same second table (adopt)."""
        self._note_hold(applied.plan.name, address, held.backend_id, held.until, "held")
        self.dp.set_backend(held.backend_id, BackendEntry(
            vip_id=applied.vip_id, address=address, state=HELD,
            generation=self.books.generations[held.backend_id], ifindex=held.weight,
            vip_flags=applied.plan.flags, second_until=held.until))
        self.books.until[held.backend_id] = held.until

    def _note_hold(self, vip: str, address: IPAddress, backend_id: int, until: int, state: str) -> None:
        """A hold starts when second_until goes from for ever to a time."""
        if self.books.until.get(backend_id) == FOREVER and holds.running(until):
            self._events.append(HoldEvent(vip, address, "started", state, until))

    # --- holds ---------------------------------------------------------------------
    def expire(self, now: float | None = None) -> int | None:
        """End the holds that are over at `now` (default: the clock): their
        VIPs' second tables are rebuilt without them first, then their
        second_until is zeroed and held ids are freed. Returns the next
        hold's end (unix seconds), or None when no hold runs."""
        now = self.now() if now is None else int(now)
        ended = holds.ended(self.books.until, now)
        if ended:
            self._end_holds(ended, now)
        return self.next_deadline()

    def next_deadline(self) -> int | None:
        return holds.next_deadline(self.books.until)

    def _end_holds(self, ended: set[int], now: int) -> None:
        books = self.books
        owners = {backend_id: key for (key, _), backend_id in books.backend_ids.items()}
        affected = {owners[i] for i in ended if i in owners}
        for backend_id in ended:  # no longer candidates (holds.candidates: hold running)
            books.until[backend_id] = NO_HOLD
            for held in books.held.get(owners.get(backend_id), {}).values():
                if held.backend_id == backend_id:
                    held.until = NO_HOLD
        for key in affected:  # their second tables rebuilt without them, first
            applied = books.applied.get(key)
            if applied is not None and applied.plan.second_chance:
                books.second_pending[key] = None
        self.build_second(self.second_budget_s)
        for key in affected:
            name = books.applied[key].plan.name if key in books.applied else ""
            for address, held in list(books.held.get(key, {}).items()):
                if held.backend_id in ended:
                    del books.held[key][address]
                    ids.release_backend(books, self.dp, key, address, held.backend_id)
                    self._events.append(HoldEvent(name, address, "ended", "held", now, released=True))
            applied = books.applied.get(key)
            for address, backend_id in (applied.backend_ids.items() if applied else ()):
                if backend_id in ended:
                    self.dp.set_second_until(backend_id, NO_HOLD)
                    self._events.append(HoldEvent(name, address, "ended", "down", now))

    def take_events(self) -> list[HoldEvent]:
        """The holds that started or ended since the last call (for the log)."""
        events, self._events = self._events, []
        return events

    def preview(self, plans: list[VipPlan]) -> list[VipResult]:
        """What apply(plans) would do to each VIP, writing nothing (preview.preview)."""
        return _preview(self.books, plans, self.limits.ring_size, self.clock())

    # --- queries ----------------------------------------------------------------
    def vip_id(self, key: VipKey) -> int | None:
        return self.books.vip_ids.get(key)

    def applied(self) -> dict[VipKey, AppliedVip]:
        return dict(self.books.applied)

    def backend_id(self, key: VipKey, address: IPAddress) -> int | None:
        return self.books.backend_ids.get((key, address))

    def held(self, key: VipKey) -> dict[IPAddress, HeldBackend]:
        """The VIP's held backends: removed from the config, hold running."""
        return dict(self.books.held.get(key, {}))

    def second_until(self, backend_id: int) -> int:
        """A backend id's second_until as written (0: no second choice)."""
        return self.books.until.get(backend_id, NO_HOLD)
