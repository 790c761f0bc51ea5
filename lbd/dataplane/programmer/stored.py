"""The tables the programmer wrote, kept as what makes them, not as their slots.

A VIP's first table is 65,537 u32 slots (256 KiB), its second table as many
again: at 1,000 VIPs, half a gigabyte kept in the daemon for tables the kernel
already holds. So a table's slots stay in memory only from its build until
it is written (`written()`); after that

  * a first table is built again when asked for (Maglev is a pure function of
    the plan's in-table backends, their weights and ids: the same bytes, a
    millisecond or two at 100 backends), the last few kept;
  * a second table is read back from the kernel's map it was written to (it
    may be an interim table, which nothing could rebuild), one slot at a
    time where one is asked for.

Only the programmer reads old tables, and rarely: the share of slots a change
moves, the interim second table of a VIP whose first table changed, and the
second table's build. Both kinds are numpy-like where that is what callers
use: `len()`, `table[slot]` and `np.asarray(table)`; identity (`is`) tells a
table kept from one built anew, as with arrays.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Callable

import numpy as np

from lbd.dataplane import maglev
from lbd.dataplane.maps import IPAddress, MapWriter
import lbd.dataplane.programmer.tables as tables

if TYPE_CHECKING:
    from lbd.plan import VipPlan


@functools.lru_cache(maxsize=4)
def _built(entries: tuple, ring_size: int) -> np.ndarray:
    table = np.frombuffer(maglev.build_table(entries, ring_size), dtype=np.uint32)
    table.flags.writeable = False
    return table


class StoredTable:
    """A table for the kernel; subclasses say how its slots come back once written."""

    def __init__(self, slots: np.ndarray, ring_size: int):
        self._slots: np.ndarray | None = slots
        self.ring_size = ring_size

    def written(self) -> None:
        """The kernel has it now: the slots need not stay in memory."""
        self._slots = None

    def slots(self) -> np.ndarray:
        """Every slot, as u32 backend ids."""
        return self._slots if self._slots is not None else self._again()

    def _again(self) -> np.ndarray:
        raise NotImplementedError

    def _slot_again(self, slot: int) -> int:
        return int(self._again()[slot])

    def __len__(self) -> int:
        return self.ring_size

    def __getitem__(self, slot):
        if self._slots is not None or not isinstance(slot, (int, np.integer)):
            return self.slots()[slot]
        return self._slot_again(int(slot))

    def __array__(self, dtype=None, copy=None):
        slots = self.slots()
        return slots if dtype is None else slots.astype(dtype, copy=False)


class FirstTable(StoredTable):
    """A VIP's Maglev table, built again from its entries when asked for.
    `entries` gives them (maglev.Backend with the VIP's ids), so that nothing
    beyond the plan and ids the programmer keeps anyway is held."""

    def __init__(self, entries: Callable[[], list[maglev.Backend]], slots: np.ndarray, ring_size: int):
        self.entries = entries
        super().__init__(slots, ring_size)

    def _again(self) -> np.ndarray:
        return _built(tuple(self.entries()), self.ring_size)


class SecondTable(StoredTable):
    """A VIP's second-choice table, read back from the kernel once written."""

    def __init__(self, slots, ring_size: int, datapath: MapWriter, vip_id: int):
        super().__init__(np.asarray(slots, dtype=np.uint32), ring_size)
        self.dp, self.vip_id = datapath, vip_id

    def _again(self) -> np.ndarray:
        table = self.dp.read_second_ring(self.vip_id)
        if table is None:
            return np.zeros(self.ring_size, dtype=np.uint32)
        return np.frombuffer(table, dtype=np.uint32)

    def _slot_again(self, slot: int) -> int:
        return int(self.dp.second_ring_slot(self.vip_id, slot))


def first(plan: VipPlan, backend_ids: dict[IPAddress, int], id_list: list[int], ring_size: int,
          by_pool: dict | None = None) -> tuple[FirstTable, str]:
    """The plan's first table (its backends by `backend_ids`, which id_list
    gives in the plan's order) and its fingerprint. `by_pool` (table input ->
    rank table, fingerprint) shares one build among VIPs of the same
    backends (tables.rank_first)."""
    pool = plan.table_input()
    found = by_pool.get(pool) if by_pool is not None else None
    if found is None:
        ranked = tables.rank_first(pool, ring_size)
        found = (ranked, tables.rank_fingerprint(ranked))
        if by_pool is not None:
            by_pool[pool] = found
    # ranks are places in the table input: the in-table backends by address
    by_rank = sorted((b.address.packed, i) for b, i in zip(plan.backends, id_list) if b.in_table)
    slots = tables.by_ids(found[0], [i for _, i in by_rank])
    return FirstTable(functools.partial(_entries, plan, backend_ids), slots, ring_size), found[1]


def _entries(plan: VipPlan, backend_ids: dict[IPAddress, int]) -> list[maglev.Backend]:
    """What the plan's first table is built from: its in-table backends, by id."""
    return [maglev.Backend(b.address.packed, b.weight, backend_ids[b.address])
            for b in plan.backends if b.in_table]
