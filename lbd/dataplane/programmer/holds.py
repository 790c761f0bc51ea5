"""Holds, as pure functions of the books' second_until values and a plan
(docs/second-chance.md): a backend is a second choice for ever while active
or draining, and for the VIP's hold (second_chance.hold, in its plan) once
it goes down or leaves a kept second-chance VIP; the second table's
candidates are the backends whose hold still runs."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from lbd.dataplane import maglev
from lbd.dataplane.maps import IPAddress
from lbd.dataplane.programmer.state import ACTIVE, DRAINING, FOREVER, NO_HOLD, HeldBackend

if TYPE_CHECKING:
    from lbd.plan import VipPlan


def hold_end(now: float, plan: VipPlan) -> int:
    """When a hold that starts now ends (unix seconds, before for ever)."""
    return min(FOREVER - 1, math.ceil(now + plan.hold_s))


def next_until(last: int, state: int, plan: VipPlan, now: float) -> int:
    """A backend's second_until from its new state and its last one (`last`):
    for ever while active or draining; a hold that starts when it goes down
    from there, and otherwise goes on (or stays ended). Without second
    chance nothing reads it, and a down backend has none."""
    if state in (ACTIVE, DRAINING):
        return FOREVER
    if not plan.second_chance:
        return NO_HOLD
    return hold_end(now, plan) if last == FOREVER else last


def running(until: int) -> bool:
    """Whether a second_until is a hold (not for ever, not none)."""
    return until not in (FOREVER, NO_HOLD)


def ended(untils: dict[int, int], now: int) -> set[int]:
    """The backend ids whose hold is over at `now`."""
    return {backend_id for backend_id, until in untils.items() if running(until) and until <= now}


def next_deadline(untils: dict[int, int]) -> int | None:
    """The end of the hold that ends first; None when no hold runs."""
    return min((u for u in untils.values() if running(u)), default=None)


def candidate_weights(plan: VipPlan, until_of: dict[IPAddress, int],
                      held: dict[IPAddress, HeldBackend], now: int) -> dict[IPAddress, int]:
    """Address -> configured weight of every candidate: in the table,
    draining, and down or held with their hold running (until_of: each
    plan backend's second_until; active and draining ones have FOREVER)."""
    weights = {b.address: b.candidate_weight for b in plan.backends if until_of[b.address] > now}
    weights.update({a: h.weight for a, h in held.items() if h.until > now and a not in until_of})
    return weights


def candidates(plan: VipPlan, ids: dict[IPAddress, int], untils: dict[int, int],
               held: dict[IPAddress, HeldBackend], now: int) -> tuple[maglev.Backend, ...]:
    """The second table's candidates (lbd.dataplane.secondchoice's Cset) as
    written: the plan's backends by the untils they get, and the VIP's held ones."""
    weights = candidate_weights(plan, {b.address: untils[ids[b.address]] for b in plan.backends}, held, now)
    id_of = {**{address: h.backend_id for address, h in held.items()}, **ids}
    return tuple(sorted(maglev.Backend(a.packed, w, id_of[a]) for a, w in weights.items()))
