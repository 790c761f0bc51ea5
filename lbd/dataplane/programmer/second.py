"""The second-choice tables of second-chance VIPs (docs/second-chance.md;
the rule is lbd.dataplane.secondchoice): which VIPs' second table is
pending (books.second_pending, first in first built), building one within
a time budget (each costs one Maglev build per backend: 0.13 s at 100;
VIPs of the same backends share one build), and the interim table written
beside a changed first table meanwhile."""
from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from lbd.dataplane import maglev, secondchoice
from lbd.dataplane.maps import MapWriter
from lbd.dataplane.programmer.state import AppliedVip, ApplyError, Books
from lbd.dataplane.programmer.stored import SecondTable
from lbd.dataplane.programmer.tables import by_ids, rank_fingerprint

if TYPE_CHECKING:
    from lbd.plan import VipKey

# second tables by pool kept (rank form): the last few built, for the VIPs of
# the same backends that build() takes next (build order: lbd.dataplane.programmer)
BY_POOL_KEPT = 4


def budget_left(budget_s: float | None) -> Callable[[], bool]:
    """A test of whether time is left of budget_s from now (None: always)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    return lambda: deadline is None or time.monotonic() < deadline


def digest(applied: AppliedVip, candidates: tuple[maglev.Backend, ...] | None) -> bytes:
    """What a second table is of (the plan's table input, the candidates:
    bytes and ints only, whose repr is exact), as a digest to compare."""
    return hashlib.sha256(repr((applied.plan.table_input(), candidates)).encode()).digest()


def stage(books: Books, key: VipKey, applied: AppliedVip, old: AppliedVip | None,
          candidates: Callable[[], tuple[maglev.Backend, ...]] | None) -> None:
    """Carry the VIP's written second table over, and mark it pending when
    it is not the one its inputs (first table, candidates) make now
    (candidates: a function giving them, asked only where there is a table
    to compare with; None for a VIP without second chance)."""
    if not applied.plan.second_chance:
        books.second_pending.pop(key, None)
        return
    if old is not None and old.second is not None:
        applied.second, applied.second_fingerprint = old.second, old.second_fingerprint
        applied.second_input = old.second_input
    if applied.second_input is not None and applied.second_input == digest(applied, candidates()):
        books.second_pending.pop(key, None)
    else:
        books.second_pending[key] = None


def build(applied: AppliedVip, candidates: tuple[maglev.Backend, ...], ring_size: int,
          dp: MapWriter, by_pool: dict) -> None:
    """Build the VIP's second table from what it is now, into `applied`. By
    pool: the rule is of addresses and weights, so VIPs of the same
    first-table backends and candidates share one build, made with ranks
    for ids and kept in `by_pool` (the last BY_POOL_KEPT)."""
    pool = (applied.plan.table_input(), tuple((b.key, b.weight) for b in candidates))
    ranked = by_pool.get(pool)
    if ranked is None:
        rank_of = np.zeros(max((b.backend_id for b in candidates), default=0) + 1, dtype=np.uint32)
        for rank, b in enumerate(candidates, start=1):
            rank_of[b.backend_id] = rank
        first = np.asarray(applied.table)
        if int(first.max(initial=0)) >= len(rank_of) or np.any(rank_of[first][first != 0] == 0):
            raise ApplyError(f"{applied.plan.name}: a first-table backend is no candidate")
        rank_second = secondchoice.second_table(
            rank_of[first], [maglev.Backend(b.key, b.weight, rank) for rank, b in enumerate(candidates, start=1)],
            ring_size)
        ranked = (rank_second.astype(np.uint8 if len(candidates) < 256 else np.uint32),
                  rank_fingerprint(rank_second))
        by_pool[pool] = ranked
        while len(by_pool) > BY_POOL_KEPT:
            del by_pool[next(iter(by_pool))]
    applied.second = SecondTable(by_ids(ranked[0], [b.backend_id for b in candidates]), ring_size, dp,
                                 applied.vip_id)
    applied.second_fingerprint = ranked[1]
    applied.second_input = digest(applied, candidates)


def interim(before, after, second) -> np.ndarray:
    """A VIP's second table while the rule's one waits to be built: a slot
    whose first choice changed names the backend it had (the rule's answer
    there but for Maglev's collateral and overlapping changes: an added
    backend's slots name their old owner, a failed or removed backend's name
    it), any other slot the second it had. Entries made meanwhile are
    provisional and take the rule's second once it is written. Tables:
    arrays or stored tables."""
    before, after = np.asarray(before), np.asarray(after)
    table = np.array(second, dtype=np.uint32)
    changed = before != after
    table[changed] = before[changed]
    table[after == maglev.NO_BACKEND] = maglev.NO_BACKEND
    return table
