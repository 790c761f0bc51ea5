"""Maglev tables as the Programmer compares them (pure): a plan's table by
backend id or by address rank, its host-independent fingerprint, and what
changed between two tables (moved slots, the share of them a second table
still finds, backends that joined). Used by apply and by preview alike.

Tables by pool: Maglev stores ids but places by address and weight only, so
VIPs whose in-table backends have the same addresses and weights (a service
on several ports, or on an IPv4 and an IPv6 VIP) have the same table up to
the ids it stores. Built once with each backend's rank (its place by
address) as its id (`rank_first`), a table is given to each such VIP by
swapping ranks for its ids (`by_ids`); the rank table is also the canonical
form the fingerprints hash (`rank_fingerprint`)."""
from __future__ import annotations

import array
from typing import TYPE_CHECKING

import numpy as np

from lbd.dataplane import maglev
from lbd.dataplane.maps import IPAddress

if TYPE_CHECKING:
    from lbd.plan import VipPlan


def build_table(plan: VipPlan, number: dict[IPAddress, int], ring_size: int) -> np.ndarray:
    """The plan's table, each backend numbered by `number` (address -> its
    backend id, or its rank to compare two plans whatever ids they got)."""
    entries = [maglev.Backend(b.address.packed, b.weight, number[b.address])
               for b in plan.backends if b.in_table]
    # np.frombuffer shares the array's memory: no copy of 65537 slots
    return np.frombuffer(maglev.build_table(entries, ring_size), dtype=np.uint32)


def rank_first(table_input: tuple, ring_size: int) -> np.ndarray:
    """The Maglev table of a plan's table_input() ((packed address, weight),
    sorted by address), each backend stored as its rank there (1, 2, ...)."""
    entries = [maglev.Backend(packed, weight, rank) for rank, (packed, weight) in enumerate(table_input, start=1)]
    return np.frombuffer(maglev.build_table(entries, ring_size), dtype=np.uint32)


def by_ids(rank_table: np.ndarray, ids_by_rank) -> np.ndarray:
    """A rank table with each rank r swapped for ids_by_rank[r - 1] (0 stays 0)."""
    lut = np.zeros(len(ids_by_rank) + 1, dtype=np.uint32)
    lut[1:] = ids_by_rank
    return np.take(lut, rank_table)


def rank_fingerprint(rank_table: np.ndarray) -> str:
    """maglev.fingerprint of a rank table: the same as canonical_fingerprint
    of the table it gives by ids."""
    canonical = array.array("I")
    canonical.frombytes(np.ascontiguousarray(rank_table, dtype=np.uint32).tobytes())
    return maglev.fingerprint(canonical)


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


def moved(old, new) -> float:
    """The share of slots whose backend changed (all of them: no old table).
    Tables: arrays, or anything np.asarray takes (stored tables)."""
    if old is None or len(old) != len(new):
        return 1.0
    return float(np.count_nonzero(np.asarray(old) != np.asarray(new))) / len(new)


def found(before: np.ndarray, after: np.ndarray, second: np.ndarray | None) -> float | None:
    """Of the slots that moved from `before` to `after`, the share whose
    second choice is the backend they had; None if none moved (or no second)."""
    before, after = np.asarray(before), np.asarray(after)
    moved = before != after
    if second is None or len(before) != len(after) or not moved.any():
        return None
    return float(np.count_nonzero(moved & (np.asarray(second) == before))) / float(np.count_nonzero(moved))


def joined(before: VipPlan, after: VipPlan) -> int:
    """How many backends are in `after`'s table and were not in `before`'s."""
    was = {b.address for b in before.backends if b.in_table}
    return sum(1 for b in after.backends if b.in_table and b.address not in was)
