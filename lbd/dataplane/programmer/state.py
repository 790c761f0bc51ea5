"""What the Programmer keeps and reports: the backend states it writes, the
records of what it applied (AppliedVip, HeldBackend), its results and events
(VipResult, HoldEvent, ApplyError), and all its mutable bookkeeping in one
place (Books), so that an apply that fails half-way puts back a copy of it
rather than a hand-kept list of fields."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from lbd.dataplane import layout
from lbd.dataplane.maps import IPAddress

if TYPE_CHECKING:  # plans are built by lbd.plan; this layer only reads them
    from lbd.dataplane.programmer.stored import FirstTable, SecondTable
    from lbd.plan import VipKey, VipPlan

C = layout.constant

EMPTY = C("LBD_BACKEND_EMPTY")  # a backend slot no VIP uses
ACTIVE, DRAINING = C("LBD_BACKEND_ACTIVE"), C("LBD_BACKEND_DRAINING")
DOWN, HELD = C("LBD_BACKEND_DOWN"), C("LBD_BACKEND_HELD")
FOREVER = C("LBD_SECOND_FOREVER")  # second_until of an active or draining backend
NO_HOLD = 0                        # second_until of a backend that is no second choice
PENDING = C("LBD_VIP_SECOND_PENDING")  # in the VIP entry only: its second table is not yet built


@dataclass
class VipResult:
    """What one apply did to one VIP, for logs, status and `check --diff`."""
    name: str
    action: str               # added, changed, removed, unchanged
    moved_share: float = 0.0  # share of the table's slots that changed backend
    fingerprint: str = ""
    second_fingerprint: str = ""  # of the second-choice table; "" without second chance
    # second chance: of the moved slots, the share whose new second choice is
    # the backend they had (its connections are found); None: no second
    # chance, nothing moved, or the second table still waits to be built
    second_found_share: float | None = None
    # second chance: backends in the table now that were not before (added,
    # undrained, up again). More than one at once costs moved flows their
    # second choice (docs/second-chance.md "Several backends joining at once")
    joined: int = 0
    # QUIC VIPs: backends whose QUIC connections move (their server ID changed
    # or went away): address -> "old -> new" server ID in hex ("-" for none)
    quic_moved: dict[str, str] = field(default_factory=dict)


class ApplyError(Exception):
    pass


@dataclass
class HeldBackend:
    """A backend removed from a kept second-chance VIP: still a second choice
    (state HELD in its entry) until `until`, its id kept for it."""
    backend_id: int
    weight: int   # its configured weight, its share among the second table's candidates
    until: int    # unix seconds (second_until)


@dataclass(frozen=True)
class HoldEvent:
    """A hold that started or ended, for the daemon's log."""
    vip: str
    backend: IPAddress
    event: str       # "started" or "ended"
    state: str       # "down" or "held"
    until: int       # the hold's end, unix seconds
    released: bool = False  # ended: the backend's id was freed (it was held)


@dataclass
class AppliedVip:
    """One VIP as the programmer last wrote it: its plan, ids and tables.
    Its plan and tables are never changed in place (a new table is a new
    object; stored tables only drop the slots the kernel holds), so a copy
    of the record may share them."""
    plan: VipPlan
    vip_id: int
    backend_ids: dict[IPAddress, int]
    table: FirstTable | None           # its slots kept only until written (stored.py)
    fingerprint: str
    second: SecondTable | None = None  # second choices (second-chance VIPs only)
    second_fingerprint: str = ""
    # a digest of (table input, candidates) the second table is of (second.digest):
    # compared only, and 32 bytes where the tuples were ~25 MB at 1,000 x 100
    second_input: bytes | None = None


@dataclass
class Books:
    """Everything the Programmer knows about what it wrote, and nothing else:
    an apply that fails puts a copy of the whole back (Books.copy)."""
    applied: dict[VipKey, AppliedVip] = field(default_factory=dict)
    vip_ids: dict[VipKey, int] = field(default_factory=dict)
    backend_ids: dict[tuple[VipKey, IPAddress], int] = field(default_factory=dict)
    generations: dict[int, int] = field(default_factory=dict)  # backend id -> last generation used
    free_vip_ids: list[int] = field(default_factory=list)      # popped from the end: lowest first
    free_backend_ids: list[int] = field(default_factory=list)
    # backend id -> second_until as written (ids in use only)
    until: dict[int, int] = field(default_factory=dict)
    # VIP key -> address -> its held backend (removed from the config, hold running)
    held: dict[VipKey, dict[IPAddress, HeldBackend]] = field(default_factory=dict)
    # adopted backends not yet claimed by a plan: VIP key -> address -> id
    adopted: dict[VipKey, dict[IPAddress, int]] = field(default_factory=dict)
    # (address, proto) -> (flags, fragment VIP id, its flags) as last written
    addr_entries: dict[tuple[IPAddress, int], tuple[int, int, int]] = field(default_factory=dict)
    # the prefilter as written (word index -> bits, nonzero words only)
    prefilter: dict[int, int] = field(default_factory=dict)
    # quic_prefilter as written: the bits of QUIC VIPs' addresses (xdp/prefilter.h)
    quic_prefilter: dict[int, int] = field(default_factory=dict)
    # VIPs whose second table waits to be built; ordered: first in, first built
    second_pending: dict[VipKey, None] = field(default_factory=dict)

    @classmethod
    def empty(cls, max_vips: int, max_backends: int) -> Books:
        """Nothing written yet: every id free but 0 (no VIP, no backend)."""
        return cls(free_vip_ids=list(range(max_vips - 1, 0, -1)),
                   free_backend_ids=list(range(max_backends - 1, 0, -1)))

    def copy(self) -> Books:
        """A copy that an apply's changes to these books do not reach: every
        field's containers and records copied, whatever the fields are; the
        plans, addresses and tables inside (never changed in place) shared."""
        return dataclasses.replace(self, **{f.name: _copy(getattr(self, f.name))
                                            for f in dataclasses.fields(self)})


def _copy(value):
    """Containers copied down to their records (mutable dataclasses, copied
    field by field); everything else is immutable here and shared. A dict's
    values are all of one kind, so its first value says how to copy it: a
    dict of plain values at C speed (100,000 backend ids in a few ms: by
    dict.copy, which clones the table where dict() inserts key by key into
    a new one, 2-3 times slower at 100,000)."""
    if isinstance(value, dict):
        first = next(iter(value.values()), None)
        if _is_record(first):
            return {k: _copy_record(v) for k, v in value.items()}
        if isinstance(first, (dict, list)):
            return {k: _copy(v) for k, v in value.items()}
        return value.copy()
    if isinstance(value, list):
        return [_copy(v) for v in value] if value and _is_record(value[0]) else list(value)
    return _copy_record(value) if _is_record(value) else value


def _is_record(value) -> bool:
    return (dataclasses.is_dataclass(value) and not isinstance(value, type)
            and not value.__dataclass_params__.frozen)


def _copy_record(record):
    """A shallow copy of a record: what dataclasses.replace makes, without
    running __init__ again (an apply at 1,000 VIPs copies 1,000 of them)."""
    new = object.__new__(type(record))
    new.__dict__.update(record.__dict__)
    return new
