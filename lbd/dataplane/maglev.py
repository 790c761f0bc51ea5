"""Weighted Maglev lookup tables for the VIPs' backends.

Each VIP has a table of `ring_size` slots (a prime, LBD_RING_SIZE by default)
holding backend ids; the XDP program sends a new flow to
table[flow_hash % ring_size] (lbd/dataplane/flowhash.py). This module fills the tables.

The table depends only on the backends' keys (their packed addresses),
weights, ids and the ring size: no host-local seed, no input order, so every
lbd host given the same configuration builds a byte-identical table and sends
a flow to the same backend. `fingerprint()` lets operators check that.

Algorithm (Maglev, Eisenbud et al., NSDI 2016, with weights):
  * backends sorted by key; weight-0 backends take no slots;
  * backend i's permutation of the slots is
        perm_i(j) = (offset_i + j * skip_i) % M,
        offset_i = murmur3(key, SEED_OFFSET) % M,
        skip_i   = murmur3(key, SEED_SKIP) % (M - 1) + 1
    (M prime, so every skip walks all M slots);
  * in rounds, each backend in turn adds its weight to its credit, and while
    its credit is at least the largest weight it takes the next free slot of
    its permutation and pays the largest weight; this stops when the table
    is full. The heaviest backend takes one slot per round, the others in
    proportion to their weights.

`build_table_reference` is that specification in plain Python;
`build_table` runs the same algorithm in the C extension lbd.dataplane._maglev and is
what the daemon uses. Tests hold the two byte-identical.
"""
from __future__ import annotations

import array
import hashlib
import sys
from typing import Iterable, NamedTuple, Sequence

from lbd.dataplane import layout
from lbd.dataplane.flowhash import murmur3_x86_32

RING_SIZE = layout.constant("LBD_RING_SIZE")
NO_BACKEND = layout.constant("LBD_NO_BACKEND")
MAX_WEIGHT = 0xFFFF
MAX_BACKEND_ID = 0xFFFFFFFF

# Seeds of the two permutation hashes. Part of the table format: changing
# either reshuffles every table, so hosts running different versions would
# disagree about where flows go.
SEED_OFFSET = 0x6D676C6F  # "mglo"
SEED_SKIP = 0x6D676C73  # "mgls"


class Backend(NamedTuple):
    key: bytes  # identity: the backend's packed address
    weight: int  # 0..65535; 0 = in the VIP but takes no new flows
    backend_id: int  # 1..2**32-1, the value stored in the table


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    i = 2
    while i * i <= n:
        if n % i == 0:
            return False
        i += 1
    return True


def _prepare(backends: Iterable[Sequence], size: int) -> list[tuple[bytes, int, int]]:
    """Validated (key, weight, id) tuples that take slots, in table order."""
    if not isinstance(size, int) or not is_prime(size) or size >= 2**31:
        # A composite size would leave some permutations short of a full
        # cycle (and the walk for a free slot endless).
        raise ValueError(f"ring size must be a prime below 2**31, not {size!r}")
    entries = []
    for key, weight, backend_id in backends:
        if not isinstance(key, bytes):
            raise TypeError(f"backend key must be bytes, not {type(key).__name__}")
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"backend weight {weight} outside 0..{MAX_WEIGHT}")
        if not 0 < backend_id <= MAX_BACKEND_ID:
            raise ValueError(f"backend id {backend_id} outside 1..{MAX_BACKEND_ID}")
        if weight:
            entries.append((key, int(weight), int(backend_id)))
    # Sorting by key makes the table independent of configuration order; id
    # and weight only break ties between (invalid) duplicate keys so that even
    # then the order is total.
    entries.sort()
    return entries


def build_table_reference(backends: Iterable[Sequence], size: int = RING_SIZE) -> array.array:
    """The Maglev table of `backends`: the specification, in plain Python."""
    entries = _prepare(backends, size)
    table = array.array("I", [NO_BACKEND]) * size
    if not entries:
        return table
    offsets = [murmur3_x86_32(key, SEED_OFFSET) % size for key, _, _ in entries]
    skips = [murmur3_x86_32(key, SEED_SKIP) % (size - 1) + 1 for key, _, _ in entries]
    nexts = [0] * len(entries)  # j: how far each backend is along its permutation
    credits = [0] * len(entries)
    max_weight = max(weight for _, weight, _ in entries)
    filled = 0
    while True:
        for i, (_, weight, backend_id) in enumerate(entries):
            credits[i] += weight
            while credits[i] >= max_weight:
                credits[i] -= max_weight
                slot = (offsets[i] + nexts[i] * skips[i]) % size
                while table[slot] != NO_BACKEND:
                    nexts[i] += 1
                    slot = (offsets[i] + nexts[i] * skips[i]) % size
                table[slot] = backend_id
                nexts[i] += 1
                filled += 1
                if filled == size:
                    return table


def build_table(backends: Iterable[Sequence], size: int = RING_SIZE) -> array.array:
    """The Maglev table of `backends` (same bytes as the reference, in C)."""
    from lbd.dataplane import _maglev  # built by `pip install -e .` / `make venv`

    entries = _prepare(backends, size)
    table = array.array("I")
    table.frombytes(_maglev.build(entries, size, SEED_OFFSET, SEED_SKIP))
    return table


def _le_bytes(table: Sequence[int]) -> bytes:
    a = table if isinstance(table, array.array) and table.typecode == "I" else array.array("I", table)
    if sys.byteorder != "little":
        a = array.array("I", a)
        a.byteswap()
    return a.tobytes()


def fingerprint(table: Sequence[int]) -> str:
    """Short digest of a table (sha256 of its little-endian u32s, 16 hex
    digits), the same on every host that built the same table."""
    return hashlib.sha256(_le_bytes(table)).hexdigest()[:16]


def moved_share(old_table: Sequence[int], new_table: Sequence[int]) -> float:
    """Share (0..1) of slots whose backend differs between two tables."""
    if len(old_table) != len(new_table) or not old_table:
        raise ValueError("tables must be non-empty and of the same size")
    moved = sum(1 for a, b in zip(old_table, new_table) if a != b)
    return moved / len(old_table)


assert array.array("I").itemsize == 4, "lbd needs a 32-bit array('I')"
