"""How full the connection tables are, and how many flows each backend holds.

The kernel keeps no count of an LRU map's entries that userspace can read
cheaply, so the daemon samples: it walks both tables with batched lookups
(one bucket under its lock at a time, so the datapath never waits for the
walk) in a worker thread (so the event loop never does either), and counts
with numpy. An entry counts for a backend only while its generation is the
backend's current one: an entry left by a removed backend, or by an earlier
holder of a reused id, is no flow of the backend's.

What a sample costs at 1M entries is measured in bench/ (control plane).
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

import numpy as np

from lbd import bpfsys

SAMPLE_EVERY_S = 10.0  # a full table costs a fraction of a second of one core per walk


@dataclass(frozen=True)
class TableUsage:
    """One connection table at one moment."""
    table: str                  # "tcp" or "udp"
    entries: int                # entries in use (stale ones included: they hold room)
    capacity: int               # the map's max_entries
    by_backend: dict[int, int] = field(default_factory=dict)  # backend id -> its live entries
    walk_seconds: float = 0.0

    @property
    def used(self) -> float:
        return self.entries / self.capacity if self.capacity else 0.0


def _entries(table) -> np.ndarray:
    """(backend_id, generation) of every entry, from the map's own value type."""
    leaf = table.Leaf
    raw = bpfsys.lookup_hash_values(table.map_fd, ctypes.sizeof(table.Key), ctypes.sizeof(leaf))
    dtype = np.dtype({"names": ["backend_id", "generation"], "formats": ["<u4", "<u4"],
                      "offsets": [leaf.backend_id.offset, leaf.generation.offset],
                      "itemsize": ctypes.sizeof(leaf)})
    return np.frombuffer(raw, dtype=dtype)


def _generations(datapath) -> np.ndarray:
    """Each backend id's current generation (0 for an empty slot)."""
    table = datapath.backends
    leaf = table.Leaf
    raw = bpfsys.lookup_hash_values(table.map_fd, 4, ctypes.sizeof(leaf))
    dtype = np.dtype({"names": ["generation", "state"], "formats": ["<u4", "u1"],
                      "offsets": [leaf.generation.offset, leaf.state.offset],
                      "itemsize": ctypes.sizeof(leaf)})
    values = np.frombuffer(raw, dtype=dtype)
    # an empty slot (state 0) holds no flows whatever its generation says
    return np.where(values["state"] != 0, values["generation"], 0).astype(np.uint32)


def sample(datapath) -> dict[str, TableUsage]:
    """Both tables' usage now. Runs for a while at 1M entries: call it off
    the event loop (asyncio.to_thread)."""
    generations = _generations(datapath)
    usage = {}
    for name, table, capacity in (("tcp", datapath.conntrack, datapath.limits.conntrack_size),
                                  ("udp", datapath.conntrack_udp, datapath.limits.conntrack_udp_size)):
        started = time.monotonic()
        entries = _entries(table)
        ids = entries["backend_id"]
        in_range = ids < len(generations)
        live = np.zeros(len(ids), dtype=bool)
        live[in_range] = (generations[ids[in_range]] == entries["generation"][in_range]) & \
                         (entries["generation"][in_range] != 0)
        counts = np.bincount(ids[live], minlength=0)
        by_backend = {int(i): int(n) for i, n in enumerate(counts) if n}
        usage[name] = TableUsage(name, len(entries), capacity, by_backend,
                                 time.monotonic() - started)
    return usage
