"""Maglev tables as the Programmer compares them (pure): a plan's table by
backend id or by address rank, its host-independent fingerprint, and what
changed between two tables (moved slots, the share of them a second table
still finds, backends that joined). Used by apply and by preview alike."""
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


def moved(old: np.ndarray | None, new: np.ndarray) -> float:
    """The share of slots whose backend changed (all of them: no old table)."""
    if old is None or len(old) != len(new):
        return 1.0
    return float(np.count_nonzero(old != new)) / len(new)


def found(before: np.ndarray, after: np.ndarray, second: np.ndarray | None) -> float | None:
    """Of the slots that moved from `before` to `after`, the share whose
    second choice is the backend they had; None if none moved (or no second)."""
    moved = np.asarray(before) != np.asarray(after)
    if second is None or len(before) != len(after) or not moved.any():
        return None
    return float(np.count_nonzero(moved & (np.asarray(second) == before))) / float(np.count_nonzero(moved))


def joined(before: VipPlan, after: VipPlan) -> int:
    """How many backends are in `after`'s table and were not in `before`'s."""
    was = {b.address for b in before.backends if b.in_table}
    return sum(1 for b in after.backends if b.in_table and b.address not in was)
