"""What an apply would do to each VIP, writing nothing and changing no books
(pure): the share of flows (table slots) that would move to another backend
address and, with second chance, the share of those its second choice would
still find (`lbd check --diff`, the reload log)."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.dataplane import maglev, secondchoice
from lbd.dataplane.maps import IPAddress
import lbd.dataplane.programmer.holds as holds
import lbd.dataplane.programmer.quic as quic
import lbd.dataplane.programmer.tables as tables
from lbd.dataplane.programmer.state import HELD, NO_HOLD, AppliedVip, Books, HeldBackend, VipResult

if TYPE_CHECKING:
    from lbd.plan import VipKey, VipPlan


def preview(books: Books, plans: list[VipPlan], ring_size: int, now: float) -> list[VipResult]:
    """What apply(plans) would do to each VIP, at unix time `now`."""
    results = []
    wanted = {p.key: p for p in plans}
    for key, plan in wanted.items():
        old = books.applied.get(key)
        if old is None:
            results.append(VipResult(plan.name, "added", 0.0))
        elif old.plan.table_input() == plan.table_input():
            results.append(VipResult(plan.name, "unchanged" if old.plan == plan else "changed",
                                     0.0, old.fingerprint, quic_moved=quic.moved(old.plan, plan)))
        else:
            result = _change(books, key, old, plan, ring_size, now)
            result.quic_moved = quic.moved(old.plan, plan)
            results.append(result)
    for key, old in books.applied.items():
        if key not in wanted:
            results.append(VipResult(old.plan.name, "removed", 1.0))
    return results


def _change(books: Books, key: VipKey, old: AppliedVip, plan: VipPlan,
            ring_size: int, now: float) -> VipResult:
    """A VIP whose table would change. Both tables (and the second one)
    number the backends by address, the same numbers on both sides, so
    that a slot counts as moved only if its backend's address changes."""
    candidates = _candidates(books, key, old, plan, now) if plan.second_chance else {}
    addresses = {b.address for b in (*old.plan.backends, *plan.backends)} | set(candidates)
    ranks = {a: rank for rank, a in enumerate(sorted(addresses, key=lambda a: a.packed), start=1)}
    before = tables.build_table(old.plan, ranks, ring_size)
    after = tables.build_table(plan, ranks, ring_size)
    result = VipResult(plan.name, "changed", tables.moved(before, after))
    if candidates:
        second = secondchoice.second_table(
            after, [maglev.Backend(a.packed, w, ranks[a]) for a, w in candidates.items()], ring_size)
        result.second_found_share = tables.found(before, after, second)
        result.joined = tables.joined(old.plan, plan)
    return result


def _candidates(books: Books, key: VipKey, old: AppliedVip, plan: VipPlan, now: float) -> dict[IPAddress, int]:
    """The candidates right after apply(plan): the untils it would give,
    and the holds it would start for the backends it removes."""
    def until(address: IPAddress, state: int) -> int:
        last = books.until.get(old.backend_ids.get(address), NO_HOLD)
        return holds.next_until(last, state, plan, now)

    until_of = {b.address: until(b.address, b.state) for b in plan.backends}
    held = dict(books.held.get(key, {}))
    for b in old.plan.backends:
        if b.address not in until_of:
            held[b.address] = HeldBackend(old.backend_ids[b.address], b.candidate_weight,
                                          until(b.address, HELD))
    return holds.candidate_weights(plan, until_of, held, int(now))
