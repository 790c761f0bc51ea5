"""The second-choice tables of second-chance VIPs (docs/second-chance.md;
the rule is lbd.dataplane.secondchoice): which VIPs' second table is
pending (books.second_pending, first in first built), building one within
a time budget (each costs one Maglev build per backend: 0.13 s at 100), and
the interim table written beside a changed first table meanwhile."""
from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Callable

import numpy as np

from lbd.dataplane import maglev, secondchoice
from lbd.dataplane.programmer.state import AppliedVip, Books
from lbd.dataplane.programmer.tables import canonical_fingerprint

if TYPE_CHECKING:
    from lbd.plan import VipKey


def budget_left(budget_s: float | None) -> Callable[[], bool]:
    """A test of whether time is left of budget_s from now (None: always)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    return lambda: deadline is None or time.monotonic() < deadline


def stage(books: Books, key: VipKey, applied: AppliedVip, old: AppliedVip | None,
          candidates: tuple[maglev.Backend, ...] | None) -> None:
    """Carry the VIP's written second table over, and mark it pending when
    it is not the one its inputs (first table, candidates) make now
    (candidates: None for a VIP without second chance)."""
    if not applied.plan.second_chance:
        books.second_pending.pop(key, None)
        return
    if old is not None and old.second is not None:
        applied.second, applied.second_fingerprint = old.second, old.second_fingerprint
        applied.second_input = old.second_input
    if applied.second_input == (applied.plan.table_input(), candidates):
        books.second_pending.pop(key, None)
    else:
        books.second_pending[key] = None


def build(applied: AppliedVip, candidates: tuple[maglev.Backend, ...], ring_size: int) -> None:
    """Build the VIP's second table from what it is now, into `applied`."""
    applied.second = secondchoice.second_table(applied.table, candidates, ring_size)
    by_id = {b.backend_id: ipaddress.ip_address(b.key) for b in candidates}
    applied.second_fingerprint = canonical_fingerprint(applied.second, by_id)
    applied.second_input = (applied.plan.table_input(), candidates)


def interim(before: np.ndarray, after: np.ndarray, second: np.ndarray) -> np.ndarray:
    """A VIP's second table while the rule's one waits to be built: a slot
    whose first choice changed names the backend it had (the rule's answer
    there but for Maglev's collateral and overlapping changes: an added
    backend's slots name their old owner, a failed or removed backend's name
    it), any other slot the second it had. Entries made meanwhile are
    provisional and take the rule's second once it is written."""
    table = np.array(second, dtype=np.uint32)
    changed = before != after
    table[changed] = before[changed]
    table[after == maglev.NO_BACKEND] = maglev.NO_BACKEND
    return table
