"""Turn the desired set of VIPs and backends into map writes, touching only what changed.

The daemon describes what it wants as `VipPlan`s (lbd.plan builds them from
the config, health states and resolved MACs); `Programmer.apply()` diffs them against what it
applied last and writes the difference in an order that keeps every packet
consistent:

  1. backend entries first (a new table may point at them),
  2. then each changed VIP's Maglev table, swapped in one update,
  3. then VIP and address entries (a new VIP appears only once its table is
     there), each address's prefilter bit set before its first VIP entry,
  4. removals last: VIP entries, then tables, then backend slots, then the
     prefilter bits of addresses no VIP uses any more.

Ids: every VIP gets a stable id, every (VIP, backend address) a stable backend
id. A reused backend id gets a new generation, so connection-table entries
of the backend that had it before move on instead of reaching a stranger.
Ids are read back from the maps when the daemon adopts a running datapath,
so a restart keeps every flow where it is.

All checks and table builds happen before the first write; if a write still
fails (the kernel refusing memory), the previous plans are written back.
"""
from __future__ import annotations

import array
import ipaddress
import logging
from dataclasses import dataclass

import numpy as np

from typing import TYPE_CHECKING

from lbd import layout, maglev
from lbd.datapath import BackendEntry, Datapath, IPAddress, prefilter_bit

if TYPE_CHECKING:  # plans are built by lbd.plan; this layer only reads them
    from lbd.plan import VipKey, VipPlan

log = logging.getLogger("lbd.programmer")
C = layout.constant

EMPTY = C("LBD_BACKEND_EMPTY")  # a backend slot no VIP uses


@dataclass
class VipResult:
    """What one apply did to one VIP, for logs, status and `check --diff`."""
    name: str
    action: str               # added, changed, removed, unchanged
    moved_share: float = 0.0  # share of the table's slots that changed backend
    fingerprint: str = ""


class ApplyError(Exception):
    pass


@dataclass
class AppliedVip:
    """One VIP as the programmer last wrote it: its plan, ids and table."""
    plan: VipPlan
    vip_id: int
    backend_ids: dict[IPAddress, int]
    table: np.ndarray | None
    fingerprint: str


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
    def __init__(self, datapath: Datapath):
        self.dp = datapath
        self.limits = datapath.limits
        self._applied: dict[VipKey, AppliedVip] = {}
        self._vip_ids: dict[VipKey, int] = {}
        self._backend_ids: dict[tuple[VipKey, IPAddress], int] = {}
        self._generations: dict[int, int] = {}  # backend id -> last generation used
        self._free_vip_ids = list(range(self.limits.max_vips - 1, 0, -1))
        self._free_backend_ids = list(range(self.limits.max_backends - 1, 0, -1))
        # (address, proto) -> (flags, fragment VIP id, its flags) as last written
        self._addr_entries: dict[tuple[IPAddress, int], tuple[int, int, int]] = {}
        # the prefilter as written (word index -> bits, nonzero words only);
        # read back so bits left by an earlier daemon are cleared when unused
        self._prefilter = {i: bits for i, bits in enumerate(datapath.read_prefilter()) if bits}
        # the VIP keys and flags the address entries and prefilter were last
        # written for: when they are unchanged (a health change), neither is
        # recomputed, which at 1,000 VIPs is most of a health change's cost
        self._vip_shape: frozenset | None = None

    # --- adoption of a running datapath ----------------------------------------
    def adopt(self) -> int:
        """Take over ids from maps written by an earlier daemon. Returns the
        number of VIPs found. The next apply rewrites every table with the same
        ids (identical tables for an identical config: no flow moves)."""
        id_to_key: dict[int, VipKey] = {}
        for key, leaf in self.dp.vips.items():
            raw = bytes(key.addr)
            family = key.family
            address = ipaddress.ip_address(raw[:4] if family == C("LBD_FAMILY_V4") else raw)
            port = int.from_bytes(int(key.port).to_bytes(2, "little"), "big")
            vip_key = (address, port, int(key.proto))
            self._vip_ids[vip_key] = leaf.vip_id
            id_to_key[leaf.vip_id] = vip_key
        for backend_id in range(1, self.limits.max_backends):
            entry = self.dp.backend(backend_id)
            if entry.generation:
                self._generations[backend_id] = entry.generation
            if entry.state == EMPTY or entry.vip_id not in id_to_key:
                continue
            raw = bytes(entry.addr)
            address = ipaddress.ip_address(raw[:4] if entry.family == C("LBD_FAMILY_V4") else raw)
            self._backend_ids[(id_to_key[entry.vip_id], address)] = backend_id
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
            return existing
        backend_id = self._free_backend_ids.pop()
        self._generations[backend_id] = self._generations.get(backend_id, 0) + 1
        self._backend_ids[(vip_key, address)] = backend_id
        fresh.add(backend_id)
        return backend_id

    def _build_table(self, plan: VipPlan, ids: dict[IPAddress, int]) -> np.ndarray:
        entries = [maglev.Backend(b.address.packed, b.weight, ids[b.address])
                   for b in plan.backends if b.in_table]
        # np.frombuffer shares the array's memory: no copy of 65537 slots
        return np.frombuffer(maglev.build_table(entries, self.limits.ring_size), dtype=np.uint32)

    # --- applying ------------------------------------------------------------------
    def apply(self, plans: list[VipPlan]) -> list[VipResult]:
        """Make the datapath hold exactly `plans`."""
        self._check_capacity(plans)
        previous = [a.plan for a in self._applied.values()]
        try:
            return self._apply(plans)
        except Exception as err:
            log.error("apply_failed error=%s action=restoring_previous", err)
            self._vip_shape = None  # what the failed apply wrote is unknown: rewrite all
            try:
                self._apply(previous)
            except Exception as restore_err:  # the kernel refusing twice: say so loudly
                log.critical("restore_failed error=%s", restore_err)
            raise ApplyError(f"writing the maps failed: {err}") from err

    def _apply(self, plans: list[VipPlan]) -> list[VipResult]:
        wanted = {p.key: p for p in plans}
        results: list[VipResult] = []
        fresh_ids: set[int] = set()
        fresh_vip_ids: set[int] = set()

        # Build everything first: ids, tables, fingerprints.
        staged: dict[VipKey, AppliedVip] = {}
        for key, plan in wanted.items():
            old = self._applied.get(key)
            if old and old.plan is not plan and old.plan == plan:
                # keep the caller's equal object, so that its next apply (a
                # health change reuses the other VIPs' plan objects) finds it
                # by identity instead of comparing every backend again
                old.plan = plan
            if old and old.plan is plan:
                continue
            vip_id = self._vip_ids.get(key)
            if vip_id is None:
                vip_id = self._free_vip_ids.pop()
                fresh_vip_ids.add(vip_id)
            self._vip_ids[key] = vip_id
            ids = {b.address: self._backend_id(key, b.address, fresh_ids) for b in plan.backends}
            if old and old.plan.table_input() == plan.table_input() and old.table is not None:
                table = old.table
                fingerprint = old.fingerprint
            else:
                table = self._build_table(plan, ids)
                fingerprint = canonical_fingerprint(
                    table, {ids[b.address]: b.address for b in plan.backends if b.in_table})
            staged[key] = AppliedVip(plan, vip_id, ids, table, fingerprint)

        # 0. an id taken anew starts its counters at zero: a VIP or backend
        # must not inherit the packets of the one that had the id before
        # (Prometheus would see its counter jump); adopted ids keep theirs
        for vip_id in fresh_vip_ids:
            self.dp.clear_vip_counters(vip_id)
        for backend_id in fresh_ids:
            self.dp.clear_backend_counters(backend_id)
        # 1. backend entries of new and changed VIPs (only the backends that
        # changed; all of a VIP's when its flags changed: each entry holds them)
        for key, applied in staged.items():
            old = self._applied.get(key)
            before = ({b.address: (b, old.backend_ids[b.address]) for b in old.plan.backends}
                      if old and old.plan.flags == applied.plan.flags else {})
            for b in applied.plan.backends:
                backend_id = applied.backend_ids[b.address]
                if before.get(b.address) == (b, backend_id):
                    continue
                self.dp.set_backend(backend_id, BackendEntry(
                    vip_id=applied.vip_id, address=b.address, state=b.state,
                    generation=self._generations[backend_id], dst_mac=b.dst_mac,
                    src_mac=b.src_mac, ifindex=b.ifindex, vip_flags=applied.plan.flags))
        # 2. tables, each swapped atomically (in batches)
        self.dp.write_rings({applied.vip_id: applied.table for key, applied in staged.items()
                             if key not in self._applied or self._applied[key].table is not applied.table})
        # 3. VIP entries and the address entries derived from them, behind
        # prefilter bits for every wanted address (old ones stay set for now)
        shape = frozenset((key, plan.flags) for key, plan in wanted.items())
        same_vips = shape == self._vip_shape
        if not same_vips:
            wanted_bits = _prefilter_words(plan.address for plan in wanted.values())
            self._write_prefilter({i: bits | self._prefilter.get(i, 0) for i, bits in wanted_bits.items()})
        for key, applied in staged.items():
            self.dp.set_vip(key[0], key[1], key[2], applied.vip_id, applied.plan.flags)
        if not same_vips:
            self._write_addrs(wanted, staged)

        # 4. removals: VIPs gone entirely, then backends gone from kept VIPs
        for key in [k for k in self._applied if k not in wanted]:
            gone = self._applied.pop(key)
            self.dp.delete_vip(*key)
            self.dp.clear_ring(gone.vip_id)
            for address, backend_id in gone.backend_ids.items():
                self._release_backend(key, address, backend_id)
            del self._vip_ids[key]
            self._free_vip_ids.append(gone.vip_id)
            results.append(VipResult(gone.plan.name, "removed", 1.0, ""))
        for key, applied in staged.items():
            old = self._applied.get(key)
            if old:
                for address, backend_id in old.backend_ids.items():
                    if address not in applied.backend_ids:
                        self._release_backend(key, address, backend_id)
            moved = 1.0 if old is None else _moved(old.table, applied.table)
            results.append(VipResult(applied.plan.name, "changed" if old else "added",
                                     0.0 if old is None else moved, applied.fingerprint))
            self._applied[key] = applied
        for key in wanted:
            if key not in staged:
                results.append(VipResult(wanted[key].name, "unchanged", 0.0,
                                         self._applied[key].fingerprint))
        # 5. now that removed VIPs are gone: exactly the wanted addresses' bits
        if not same_vips:
            self._write_prefilter(wanted_bits, exact=True)
            self._vip_shape = shape
        return results

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
        of flows (table slots) that would move to another backend address."""
        results = []
        wanted = {p.key: p for p in plans}
        for key, plan in wanted.items():
            old = self._applied.get(key)
            new_table = _by_address(plan, self.limits.ring_size)
            if old is None:
                results.append(VipResult(plan.name, "added", 0.0))
            elif old.plan.table_input() == plan.table_input():
                results.append(VipResult(plan.name, "unchanged" if old.plan == plan else "changed",
                                         0.0, old.fingerprint))
            else:
                results.append(VipResult(plan.name, "changed",
                                         _moved(_by_address(old.plan, self.limits.ring_size), new_table)))
        for key, old in self._applied.items():
            if key not in wanted:
                results.append(VipResult(old.plan.name, "removed", 1.0))
        return results

    # --- queries ----------------------------------------------------------------
    def vip_id(self, key: VipKey) -> int | None:
        return self._vip_ids.get(key)

    def applied(self) -> dict[VipKey, AppliedVip]:
        return dict(self._applied)

    def backend_id(self, key: VipKey, address: IPAddress) -> int | None:
        return self._backend_ids.get((key, address))


def _by_address(plan: VipPlan, ring_size: int) -> np.ndarray:
    """The plan's table with backends numbered by address order: comparable
    between two plans whatever ids the backends were given."""
    ranks = {address: rank for rank, address in
             enumerate(sorted((b.address for b in plan.backends), key=lambda a: a.packed), start=1)}
    entries = [maglev.Backend(b.address.packed, b.weight, ranks[b.address])
               for b in plan.backends if b.in_table]
    return np.frombuffer(maglev.build_table(entries, ring_size), dtype=np.uint32)


def _prefilter_words(addresses) -> dict[int, int]:
    """Prefilter words (index -> bits) with the bit of every address set."""
    words: dict[int, int] = {}
    for address in addresses:
        bit = prefilter_bit(address)
        words[bit // 64] = words.get(bit // 64, 0) | 1 << (bit % 64)
    return words


def _moved(old: np.ndarray | None, new: np.ndarray) -> float:
    if old is None or len(old) != len(new):
        return 1.0
    return float(np.count_nonzero(old != new)) / len(new)
