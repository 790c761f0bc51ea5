"""Second-chance tables: for every slot of a VIP's Maglev table, the backend
that may hold the slot's connections when its first choice does not.

The balancer sends a packet to its slot's first choice and, for a VIP with
second chance, names the slot's second choice in the GUE header, so that a
backend without the flow's connection hands the packet on to the one that
may have it (docs/second-chance.md). The rule, history-free:

    Cset  = the VIP's backends that may hold connections: in the table, draining,
            and down or removed ones whose hold is running, each with its
            configured weight (at least 1)
    first = Maglev(backends in the table)            (the VIP's table, unchanged)
    full  = Maglev(Cset)                              (as if every candidate were in)
    second[s] = full[s]                               where that is a candidate out of
                                                      the table: the slot it would have back
              = Maglev(in the table minus first[s])[s] elsewhere: who would own the slot
                                                      if its first choice were gone
              = 0 where first[s] is 0 or nothing is left

Why it names the backend a flow was on (lbd.dataplane.maglev is what decides):
  * a backend n added: Maglev(table minus n) is the table before, so every
    slot that moved to n names its old owner (and nearly every collateral
    move too);
  * a backend b drained, down or removed (held in Cset): full is the table
    from before, so each of b's old slots names b, exactly;
  * two hosts disagreeing on b's health: the host that sees b up names
    Maglev(table minus b), exactly the other host's first choice on b's
    slots, and the other host names b there, exactly.
A backend added while another one's hold runs (or while one is drained) is
where the two meet: a slot of the new backend that the held one would have
back names the held one, not the slot's owner before the addition (measured:
about 9% of those slots; with Maglev(Cset minus first[s]) everywhere instead,
the design's first rule, 19%, and 0.02% of a held backend's own slots lost).

Nothing here depends on ids, input order or history: the tables take ids from
the Backend entries only as the values they store, so hosts that allocated
other ids still agree slot by slot on the backends' addresses.

Cost: one Maglev build per backend that is first somewhere, run in threads
(the C fill releases the GIL). Measured on the test VM (2 cores, 65,537
slots, equal weights): 4 backends 6 ms per VIP, 10: 13 ms, 50: 63 ms,
100: 128 ms. 1,000 VIPs of 100 backends, each of its own backends: about
130-180 s in all, so the daemon does not wait for them: an apply builds none
and the background builds them right after (lbd.dataplane.programmer
second_budget_s, lbd.daemon SECOND_BUDGET_S). VIPs of the same backends share
one build (the programmer builds by pool, with ranks for ids: nothing here
depends on ids), so a config whose VIPs share backend sets pays per set.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import numpy as np

from lbd.dataplane import maglev

NO_BACKEND = maglev.NO_BACKEND

# One pool for the daemon's life: building a table is the C fill without the
# GIL, so the VM's cores build a VIP's tables side by side.
_POOL = ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="lbd-second")


def _without(cset: Sequence[maglev.Backend], backend_id: int) -> list[maglev.Backend]:
    return [b for b in cset if b.backend_id != backend_id]


def _owners(first: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """(backend id, the slots it is first in) for every id in the table but 0."""
    order = np.argsort(first, kind="stable")
    ids, starts = np.unique(first[order], return_index=True)
    bounds = list(starts[1:]) + [len(first)]
    return [(int(i), order[s:e]) for i, s, e in zip(ids, starts, bounds) if i != NO_BACKEND]


def second_table(first: np.ndarray, cset: Sequence[maglev.Backend], ring_size: int) -> np.ndarray:
    """The second choices (uint32 ids, 0 = none) of the table `first`.

    first: the VIP's table (Maglev of its in-table backends, ids as in cset:
    the backends it names are the ones in the table); cset: every candidate
    with its configured weight (maglev.Backend: packed address, weight >= 1,
    id). Cost (two cores): about 1.3 ms per backend that is first somewhere,
    plus one build when a candidate is out of the table."""
    first = np.asarray(first, dtype=np.uint32)
    if len(first) != ring_size:
        raise ValueError(f"first table has {len(first)} slots, not {ring_size}")
    owners = _owners(first)
    in_table = {owner for owner, _ in owners}
    members = [b for b in cset if b.backend_id in in_table and b.weight > 0]
    out_of_table = [b.backend_id for b in cset if b.backend_id not in in_table and b.weight > 0]
    second = np.zeros(ring_size, dtype=np.uint32)

    def build(entries: list[maglev.Backend]) -> np.ndarray | None:
        return np.frombuffer(maglev.build_table(entries, ring_size), dtype=np.uint32) if entries else None

    rests = [_without(members, owner) for owner, _ in owners]
    for (owner, slots), table in zip(owners, _POOL.map(build, rests)):
        if table is not None:
            second[slots] = table[slots]
    if out_of_table:
        full = build([b for b in cset if b.weight > 0])
        back = np.isin(full, out_of_table) & (first != NO_BACKEND)
        second[back] = full[back]
    return second


def second_table_reference(first: Sequence[int], cset: Sequence[maglev.Backend],
                           ring_size: int) -> list[int]:
    """The rule in plain Python on maglev's pure-Python reference: what the
    tests hold second_table to."""
    in_table = {owner for owner in first if owner != NO_BACKEND}
    members = [b for b in cset if b.backend_id in in_table and b.weight > 0]
    out_of_table = {b.backend_id for b in cset if b.backend_id not in in_table and b.weight > 0}
    full = maglev.build_table_reference([b for b in cset if b.weight > 0], ring_size) if out_of_table else None
    rest_tables: dict[int, Sequence[int] | None] = {}
    second = []
    for slot, owner in enumerate(first):
        if owner == NO_BACKEND:
            second.append(NO_BACKEND)
        elif full is not None and full[slot] in out_of_table:
            second.append(full[slot])
        else:
            if owner not in rest_tables:
                rest = [b for b in members if b.backend_id != owner]
                rest_tables[owner] = maglev.build_table_reference(rest, ring_size) if rest else None
            table = rest_tables[owner]
            second.append(NO_BACKEND if table is None else table[slot])
    return second
