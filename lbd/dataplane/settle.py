"""Settled slots: where a SYN may go to the table without its entry lookup.

A SYN's connection-table lookup reads a random bucket of a 16 MiB array, a
cache and TLB miss that is most of a new connection's cost, and its answer
changes where the SYN goes only when its 4-tuple has an entry that disagrees
with the table (docs/design.md, "What a SYN looks up"). This module's walk
finds the Maglev slots of which no entry disagrees and marks them SETTLED in
the top bits of the slot itself (xdp/lbd_shared.h, xdp/settle.h), so a SYN
reads its backend and the mark in one load; a SYN in a settled slot skips
the lookup.

An entry **agrees** with its slot when it names the slot's backend, at that
backend's generation, the backend takes new flows, its second choice is the
slot's (a provisional one reads the slot's), and its client has not ended
it (FIN or RST). Then a SYN on its 4-tuple goes where the table sends it,
with the slot's second choice, whether it looks the entry up or not; only
the entry's own state would differ (the stamp a followed SYN writes, which
no rule of a settled slot reads). An entry its client ended would be removed
by a SYN, so that the new connection's entry starts unmarked: the walk
removes such an entry itself once it agrees and has been silent for
ENDED_KEPT_S, and until then the slot stays unsettled.

Who unsettles: a new table comes without marks; the daemon clears a VIP's
marks before it swaps in its new second table (lbd/dataplane/maps.py, under
settle_lock); the program clears a slot's when a client's FIN or RST marks
an entry. Every other entry a packet makes takes the slot's backend and
second choice, and so agrees.

The walk (after each table sample, every 10 s, or less often where a walk
takes more than a tenth of that; off the event loop):
1. under settle_lock: the TCP VIPs' tables are read, and every unsettled
   slot becomes a CANDIDATE;
2. the connection table is walked (batched, a bucket at a time);
3. each entry's slot is computed (the program's hash, in the C extension)
   and judged against the tables read in 1;
4. under settle_lock, for each VIP whose tables are still those of 1: the
   agreeing finished entries are removed, and every candidate slot no entry
   blocks becomes SETTLED by compare and swap, so a slot the program
   unsettled meanwhile (a FIN) stays unsettled.
A VIP whose second table is pending is not judged (its entries' second
choices are about to change). Marks survive a restart with the pinned
tables, and stay true meanwhile: the program keeps clearing them.
"""
from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass

import numpy as np

from lbd.dataplane import _maglev, bpfsys, layout

# The daemon walks after each table sample (every 10 s), but never more often
# than once per CPU_SHARE_INVERSE times the last walk's duration.
CPU_SHARE_INVERSE = 10
# An entry its client ended stays this long after its last packet before the
# walk removes it (it agrees with the table, so its flow's next packet, if
# any, would make the same entry): its close's last ACKs have long come, and
# `lbctl explain` still shows a connection that just closed. Shorter settles
# the slots of busy VIPs sooner (a slot with a recent close stays unsettled).
ENDED_KEPT_S = 60
ACTIVE = layout.constant("LBD_BACKEND_ACTIVE")
CLIENT_CLOSED = layout.constant("LBD_FLOW_CLIENT_CLOSED")
PROVISIONAL = layout.constant("LBD_FLOW_SECOND_PROVISIONAL")
CLIENT_AFFINITY = layout.constant("LBD_VIP_CLIENT_AFFINITY")
SECOND_PENDING = layout.constant("LBD_VIP_SECOND_PENDING")
SLOT_UNSETTLED = 0
SLOT_CANDIDATE = layout.constant("LBD_SLOT_CANDIDATE")
SLOT_SETTLED = layout.constant("LBD_SLOT_SETTLED")
SLOT_MARKS = layout.constant("LBD_SLOT_MARKS")
SLOT_BACKEND = layout.constant("LBD_SLOT_BACKEND")  # a slot without its marks
TCP = 6


@dataclass(frozen=True)
class SettleResult:
    """One walk: what it judged and what it settled."""
    vips: int = 0           # VIPs judged
    slots: int = 0          # their slots
    settled: int = 0        # of those, settled after the walk
    newly_settled: int = 0  # settled by this walk
    blocked: int = 0        # held unsettled by an entry that disagrees (or ended, not yet silent)
    removed: int = 0        # ended entries that agreed, removed
    entries: int = 0        # connection-table entries walked
    seconds: float = 0.0


@dataclass
class _Judged:
    """A VIP as step 1 read it."""
    vip_id: int
    client_only: bool
    first_map: int
    second_map: int
    first: np.ndarray   # slot -> backend id
    second: np.ndarray  # slot -> second choice (0: none)


def _with_memory(map_id: int, value_size: int, entries: int, use):
    fd = bpfsys.map_fd_by_id(map_id)
    try:
        with bpfsys.mmap_array(fd, value_size, entries) as memory:
            return use(memory)
    finally:
        os.close(fd)


def _read_table(map_id: int, size: int) -> np.ndarray:
    """A Maglev table's backend ids (u32 values in 8-byte slots of a mmapable
    array), without marks."""
    def copy(memory):
        values = np.frombuffer(memory, dtype=np.uint32, count=2 * size)
        table = values[0::2] & np.uint32(SLOT_BACKEND)
        del values  # the mapping cannot close while a view holds it
        return table
    return _with_memory(map_id, 4, size, copy)


def clear(datapath, vip_ids) -> None:
    """Every slot of these VIPs' tables unsettled, in place (before their
    second tables change). The caller holds datapath.settle_lock, so no walk
    settles a slot meanwhile; the program only ever clears marks."""
    size = datapath.limits.ring_size
    for vip_id in vip_ids:
        map_id = bpfsys.lookup_u32(datapath.rings.map_fd, vip_id)
        if map_id:
            _with_memory(map_id, 4, size, lambda memory: _unmark(memory, size))


def _unmark(memory, size: int) -> None:
    values = np.frombuffer(memory, dtype=np.uint32, count=2 * size)[0::2]
    marked = np.flatnonzero(values & np.uint32(SLOT_MARKS))
    values[marked] &= np.uint32(SLOT_BACKEND)  # each a 4-byte store of the slot's own value
    del values


def slot_state(datapath, vip_id: int, slot: int) -> int:
    """One slot's marks (SLOT_SETTLED, SLOT_CANDIDATE or 0)."""
    map_id = bpfsys.lookup_u32(datapath.rings.map_fd, vip_id)
    if not map_id:
        return SLOT_UNSETTLED
    value = _with_memory(map_id, 4, datapath.limits.ring_size,
                         lambda memory: int.from_bytes(memory[8 * slot:8 * slot + 4], "little"))
    return value & SLOT_MARKS


def _tcp_vips(datapath) -> list[tuple[int, int, bytes, bytes]]:
    """(vip id, flags, family + address bytes, port in network order) of every TCP VIP."""
    found = []
    for key, leaf in datapath.vips.items():
        if int(key.proto) != TCP:
            continue
        found.append((int(leaf.vip_id), int(leaf.flags), bytes([int(key.family)]) + bytes(key.addr),
                      int(key.port).to_bytes(2, "little")))
    return found


def _backend_state(datapath) -> tuple[np.ndarray, np.ndarray]:
    """Each backend id's generation and state."""
    table = datapath.backends
    leaf = table.Leaf
    raw = bpfsys.lookup_array_values(table.map_fd, ctypes.sizeof(leaf), datapath.limits.max_backends)
    dtype = np.dtype({"names": ["generation", "state"], "formats": ["<u4", "u1"],
                      "offsets": [leaf.generation.offset, leaf.state.offset],
                      "itemsize": ctypes.sizeof(leaf)})
    values = np.frombuffer(raw, dtype=dtype)
    return values["generation"].copy(), values["state"].copy()


def _prepare(datapath) -> tuple[list[_Judged], dict, np.ndarray, np.ndarray]:
    """Step 1, with settle_lock held."""
    size = datapath.limits.ring_size
    judged: list[_Judged] = []
    by_address: dict[tuple[bytes, bytes], int] = {}  # (family+address, port) -> index in judged
    for vip_id, flags, address, port in _tcp_vips(datapath):
        first_map = bpfsys.lookup_u32(datapath.rings.map_fd, vip_id)
        if not first_map or flags & SECOND_PENDING:
            continue
        second_map = bpfsys.lookup_u32(datapath.second_rings.map_fd, vip_id) or 0
        second = _read_table(second_map, size) if second_map else np.zeros(size, np.uint32)
        _with_memory(first_map, 4, size, lambda memory: _maglev.mark_candidates(memory, size))
        by_address[(address, port)] = len(judged)
        judged.append(_Judged(vip_id, bool(flags & CLIENT_AFFINITY), first_map, second_map,
                              _read_table(first_map, size), second))
    generations, states = _backend_state(datapath)
    return judged, by_address, generations, states


def _walk(datapath) -> tuple[np.ndarray, np.ndarray, bytes]:
    """Step 2: every TCP entry, keys as numpy records and as raw bytes."""
    table = datapath.conntrack
    key, leaf = table.Key, table.Leaf
    raw_keys, raw_values = bpfsys.lookup_hash_items(table.map_fd, ctypes.sizeof(key), ctypes.sizeof(leaf))
    key_dtype = np.dtype({"names": ["src", "dst", "dport", "family"],
                          "formats": ["V16", "V16", "V2", "u1"],
                          "offsets": [key.src.offset, key.dst.offset, key.dport.offset, key.family.offset],
                          "itemsize": ctypes.sizeof(key)})
    names = ["backend_id", "generation", "seen", "flags", "second_id"]
    value_dtype = np.dtype({"names": names, "formats": ["<u4"] * len(names),
                            "offsets": [getattr(leaf, n).offset for n in names],
                            "itemsize": ctypes.sizeof(leaf)})
    return np.frombuffer(raw_keys, dtype=key_dtype), np.frombuffer(raw_values, dtype=value_dtype), raw_keys


def _vip_of_entries(keys: np.ndarray, by_address: dict) -> np.ndarray:
    """Each entry's VIP (index in judged, -1 for none): the one a SYN of its
    4-tuple finds, the VIP of its port before a port-0 VIP of its address.
    Entries are grouped by a 64-bit mix of their destination (sorting 1M of
    those takes a tenth of the time sorting the records would), and every
    entry is checked to have its group's destination exactly."""
    where = np.full(len(keys), -1, dtype=np.int64)
    if not len(keys):
        return where
    dst = np.frombuffer(keys["dst"].tobytes(), dtype="<u8").reshape(-1, 2)
    port = np.frombuffer(keys["dport"].tobytes(), dtype="<u2").astype(np.uint64)
    rest = port << np.uint64(8) | keys["family"].astype(np.uint64)
    mix = (dst[:, 0] * np.uint64(0x9E3779B97F4A7C15)) ^ (dst[:, 1] * np.uint64(0xC2B2AE3D27D4EB4F)) \
        ^ (rest * np.uint64(0x165667B19E3779F9))
    _, first, group = np.unique(mix, return_index=True, return_inverse=True)

    def vip_of(i: int) -> int:
        address = bytes([int(keys["family"][i])]) + bytes(keys["dst"][i])
        return by_address.get((address, bytes(keys["dport"][i])), by_address.get((address, b"\0\0"), -1))

    found = np.array([vip_of(int(i)) for i in first], dtype=np.int64)
    where = found[group]
    same = first[group]
    collided = np.flatnonzero((dst[:, 0] != dst[same, 0]) | (dst[:, 1] != dst[same, 1]) | (rest != rest[same]))
    for i in collided:  # two destinations of one mix: each on its own
        where[i] = vip_of(int(i))
    return where


def _count_settled(memory, size: int) -> int:
    values = np.frombuffer(memory, dtype=np.uint32, count=2 * size)[0::2]
    count = int(np.count_nonzero((values & np.uint32(SLOT_MARKS)) == np.uint32(SLOT_SETTLED)))
    del values
    return count


def settle(datapath) -> SettleResult:
    """One walk (the module docstring's steps). Runs for a while at 1M
    entries: call it off the event loop."""
    started = time.monotonic()
    size = datapath.limits.ring_size
    with datapath.settle_lock:
        judged, by_address, generations, states = _prepare(datapath)
    if not judged:
        return SettleResult(seconds=time.monotonic() - started)
    keys, values, raw_keys = _walk(datapath)
    now = datapath.jiffies()
    owner = _vip_of_entries(keys, by_address)
    key_type = datapath.conntrack.Key
    key_size = ctypes.sizeof(key_type)
    offsets = (key_type.src.offset, key_type.dst.offset, key_type.sport.offset,
               key_type.proto.offset, key_type.family.offset)
    client_only = np.array([j.client_only for j in judged] + [False], dtype=np.uint8)[owner]
    slots = np.frombuffer(_maglev.flow_slots(raw_keys, key_size, offsets, client_only.tobytes(), size),
                          dtype=np.uint32)
    closed_for = int(ENDED_KEPT_S * datapath.hz)
    blocked_by_vip, removable = [], []
    for index, vip in enumerate(judged):
        mine = np.flatnonzero(owner == index)
        slot = slots[mine]
        entry = values[mine]
        first = vip.first[slot]
        in_range = first < len(generations)
        first_generation = np.where(in_range, generations[np.minimum(first, len(generations) - 1)], 0)
        first_state = np.where(in_range, states[np.minimum(first, len(states) - 1)], 0)
        second = np.where(entry["flags"] & PROVISIONAL, vip.second[slot], entry["second_id"])
        agrees = ((entry["backend_id"] == first) & (first != 0) & (first_generation == entry["generation"])
                  & (first_state == ACTIVE) & (second == vip.second[slot]))
        ended = (entry["flags"] & CLIENT_CLOSED) != 0
        silent = (np.uint32(now & 0xFFFFFFFF) - entry["seen"]) > closed_for
        remove = agrees & ended & silent
        blocked = np.zeros(size, dtype=np.uint8)
        blocked[slot[~agrees | (ended & ~remove)]] = 1
        blocked_by_vip.append(blocked)
        removable.append(mine[remove])
    removed = newly = settled = blocked_slots = 0
    with datapath.settle_lock:
        for vip, blocked, remove in zip(judged, blocked_by_vip, removable):
            if (bpfsys.lookup_u32(datapath.rings.map_fd, vip.vip_id) != vip.first_map
                    or (bpfsys.lookup_u32(datapath.second_rings.map_fd, vip.vip_id) or 0) != vip.second_map):
                continue  # its tables changed since step 1: judged again next walk
            for i in remove:
                bpfsys.delete_bytes(datapath.conntrack.map_fd, raw_keys[i * key_size:(i + 1) * key_size])
            removed += len(remove)
            blocked_slots += int(np.count_nonzero(blocked))
            newly += _with_memory(vip.first_map, 4, size,
                                  lambda memory: _maglev.settle_slots(memory, blocked.tobytes()))
            settled += _with_memory(vip.first_map, 4, size, lambda memory: _count_settled(memory, size))
    return SettleResult(len(judged), len(judged) * size, settled, newly, blocked_slots, removed,
                        len(values), time.monotonic() - started)
