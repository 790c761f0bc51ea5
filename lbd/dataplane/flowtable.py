"""How full the connection tables are, and how many flows each backend holds.

The kernel keeps no count of an LRU map's entries that userspace can read
cheaply, so the daemon samples: it walks both tables with batched lookups
(one bucket under its lock at a time, so the datapath never waits for the
walk) in a worker thread (so the event loop never does either), and counts
with numpy. An entry counts for a backend only while its generation is the
backend's current one: an entry left by a removed backend, or by an earlier
holder of a reused id, is no flow of the backend's.

Live or idle. An entry stays until the LRU needs its room, long after its
connection closed, so a backend's entries are split by what the program
keeps in each (xdp/balancer.c, lbd_flow_seen): the time of the flow's latest
packet and whether its client sent a FIN or an RST. A flow is **live** while
its latest packet is at most `idle_after_s` old (IDLE_AFTER_S, 30 s, for the
sample; `lbctl wait-drained --idle`); once its client sent FIN or RST, only
while its latest packet is at most CLOSED_AFTER_S old (2 s: a close's last
ACK comes a round trip after the FIN; a half-closed connection whose server
still sends stays live while the client's ACKs keep coming). Every other
entry of the backend is **idle**.

What a sample costs at 1M entries: bench/flowcount.py.
"""
from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass, field

import numpy as np

from lbd.dataplane import bpfsys, layout

SAMPLE_EVERY_S = 10.0  # a full table costs a fraction of a second of one core per walk
IDLE_AFTER_S = 30.0    # a flow whose latest packet is older than this is idle
CLOSED_AFTER_S = 2.0   # ... and one whose client sent FIN or RST, once its latest packet is older than this
CLIENT_CLOSED = layout.constant("LBD_FLOW_CLIENT_CLOSED")
TABLES = ("tcp", "udp")


@dataclass(frozen=True)
class TableUsage:
    """One connection table at one moment."""
    table: str                  # "tcp" or "udp"
    entries: int                # entries in use (stale ones included: they hold room)
    capacity: int               # the map's max_entries
    by_backend: dict[int, int] = field(default_factory=dict)       # backend id -> its live flows
    idle_by_backend: dict[int, int] = field(default_factory=dict)  # backend id -> its idle entries
    walk_seconds: float = 0.0
    idle_after_s: float = IDLE_AFTER_S

    @property
    def used(self) -> float:
        return self.entries / self.capacity if self.capacity else 0.0


def _table(datapath, name: str):
    return datapath.conntrack if name == "tcp" else datapath.conntrack_udp


def _capacity(datapath, name: str) -> int:
    return datapath.limits.conntrack_size if name == "tcp" else datapath.limits.conntrack_udp_size


def _entries(table) -> np.ndarray:
    """backend_id, generation, seen and flags of every entry, from the map's
    own value type."""
    leaf = table.Leaf
    raw = bpfsys.lookup_hash_values(table.map_fd, ctypes.sizeof(table.Key), ctypes.sizeof(leaf))
    names = ["backend_id", "generation", "seen", "flags"]
    dtype = np.dtype({"names": names, "formats": ["<u4"] * 4,
                      "offsets": [getattr(leaf, n).offset for n in names],
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


def _current(entries: np.ndarray, generations: np.ndarray) -> np.ndarray:
    """Which entries still count for their backend (its current generation)."""
    ids = entries["backend_id"]
    in_range = ids < len(generations)
    current = np.zeros(len(ids), dtype=bool)
    current[in_range] = (generations[ids[in_range]] == entries["generation"][in_range]) & \
                        (entries["generation"][in_range] != 0)
    return current


def live_mask(entries: np.ndarray, now_jiffies: int, hz: int, idle_after_s: float) -> np.ndarray:
    """The module's rule, per entry. Ages are taken modulo 2^32 (seen holds
    the low 32 bits of jiffies), so the clock's wrap costs nothing; `now`
    must be read after the walk, so no entry is younger than it."""
    age = np.uint32(now_jiffies & 0xFFFFFFFF) - entries["seen"]  # uint32: wraps as the kernel's does
    idle_after = int(idle_after_s * hz)
    closed_after = int(min(idle_after_s, CLOSED_AFTER_S) * hz)
    closed = (entries["flags"] & CLIENT_CLOSED) != 0
    return np.where(closed, age <= closed_after, age <= idle_after)


def _count(entries: np.ndarray, counted: np.ndarray, live: np.ndarray) -> tuple[dict, dict]:
    ids = entries["backend_id"]
    live_counts = np.bincount(ids[counted & live])
    idle_counts = np.bincount(ids[counted & ~live])
    return ({int(i): int(live_counts[i]) for i in np.flatnonzero(live_counts)},
            {int(i): int(idle_counts[i]) for i in np.flatnonzero(idle_counts)})


def sample(datapath, idle_after_s: float = IDLE_AFTER_S) -> dict[str, TableUsage]:
    """Both tables' usage now. Runs for a while at 1M entries: call it off
    the event loop (asyncio.to_thread)."""
    generations = _generations(datapath)
    usage = {}
    for name in TABLES:
        started = time.monotonic()
        entries = _entries(_table(datapath, name))
        live = live_mask(entries, datapath.jiffies(), datapath.hz, idle_after_s)
        by_backend, idle = _count(entries, _current(entries, generations), live)
        usage[name] = TableUsage(name, len(entries), _capacity(datapath, name), by_backend, idle,
                                 time.monotonic() - started, idle_after_s)
    return usage


@dataclass(frozen=True)
class BackendFlows:
    """One backend's flows in its VIP's table, walked fresh."""
    live: int
    idle: int
    walk_seconds: float


def backend_flows(datapath, table: str, backend_id: int, idle_after_s: float) -> BackendFlows:
    """The flows of one backend now (`lbctl wait-drained`): one table's walk,
    off the event loop."""
    started = time.monotonic()
    slot = datapath.backend(backend_id)
    if not slot.state:  # an empty slot holds no flows
        return BackendFlows(0, 0, time.monotonic() - started)
    generation = int(slot.generation)
    entries = _entries(_table(datapath, table))
    now = datapath.jiffies()
    mine = (entries["backend_id"] == backend_id) & (entries["generation"] == generation)
    live = live_mask(entries[mine], now, datapath.hz, idle_after_s)
    n_live = int(np.count_nonzero(live))
    return BackendFlows(n_live, int(live.size) - n_live, time.monotonic() - started)
