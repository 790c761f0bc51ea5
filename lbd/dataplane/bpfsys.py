"""The few bpf(2) operations bcc's Python module does not offer, from libbpf.

bcc loads the program and gives typed tables; this module adds what it lacks:
creating a map off to the side (a Maglev table before it is swapped in),
tables written through mmap, map-in-map slot reads, pinning, an attached
program's maps found by id (lbd-backend reads the decap program's counters so),
and BPF_PROG_TEST_RUN for the packet tests and the per-packet cost benchmark.
libbpf.so.1 comes with Debian's bcc packages.
"""
from __future__ import annotations

import array
import ctypes
import ctypes.util
import errno
import mmap
import os
from dataclasses import dataclass

_libbpf = ctypes.CDLL(ctypes.util.find_library("bpf") or "libbpf.so.1", use_errno=True)

BPF_MAP_TYPE_ARRAY = 2
BPF_ANY = 0
BPF_F_MMAPABLE = 1 << 10


def _u32(*names: str) -> list[tuple[str, type]]:
    """Struct fields of type __u32, in the order given (the kernel's)."""
    return [(name, ctypes.c_uint32) for name in names]


class _MapCreateOpts(ctypes.Structure):
    # struct bpf_map_create_opts of libbpf 1.x (its sz field versions it)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        *_u32("btf_fd", "btf_key_type_id", "btf_value_type_id", "btf_vmlinux_value_type_id",
              "inner_map_fd", "map_flags"),
        ("map_extra", ctypes.c_uint64),
        *_u32("numa_node", "map_ifindex"),
    ]


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts of libbpf 1.x (its sz field versions it)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        *_u32("data_size_in", "data_size_out"),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        *_u32("ctx_size_in", "ctx_size_out", "retval"),
        ("repeat", ctypes.c_int),
        *_u32("duration", "flags", "cpu", "batch_size"),
    ]


class _XdpMd(ctypes.Structure):
    # struct xdp_md as BPF_PROG_TEST_RUN takes it: only ingress_ifindex and
    # data_end (= packet length) may be set.
    _fields_ = _u32("data", "data_end", "data_meta", "ingress_ifindex", "rx_queue_index", "egress_ifindex")


_libbpf.bpf_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
                                   ctypes.c_uint32, ctypes.c_uint32, ctypes.c_void_p]
_libbpf.bpf_map_update_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
_libbpf.bpf_map_lookup_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libbpf.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_uint64]
_libbpf.bpf_map_delete_elem.argtypes = [ctypes.c_int, ctypes.c_void_p]
_libbpf.bpf_map_get_next_key.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p]
_libbpf.bpf_map_lookup_batch.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p]
_libbpf.bpf_map_get_fd_by_id.argtypes = [ctypes.c_uint32]
_libbpf.bpf_obj_pin.argtypes = [ctypes.c_int, ctypes.c_char_p]
_libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]
_libbpf.bpf_prog_test_run_opts.argtypes = [ctypes.c_int, ctypes.POINTER(_TestRunOpts)]


class BpfError(OSError):
    pass


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno() or -result
        raise BpfError(err, f"{what}: {os.strerror(err)}")
    return result


def create_array(name: str, value_size: int, max_entries: int, flags: int = 0) -> int:
    """A new, unpinned BPF array map with u32 keys; returns its fd."""
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=flags)
    return _check(_libbpf.bpf_map_create(BPF_MAP_TYPE_ARRAY, name.encode()[:15], 4,
                                         value_size, max_entries, ctypes.byref(opts)),
                  f"creating map {name}")


def mmap_array(fd: int, value_size: int, max_entries: int) -> mmap.mmap:
    """Map a BPF_F_MMAPABLE array's values into memory. The kernel stores each
    value in an 8-byte-aligned slot (round_up(value_size, 8) bytes)."""
    slot = (value_size + 7) // 8 * 8
    length = (slot * max_entries + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    return mmap.mmap(fd, length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)


def update_batch_u32(fd: int, pairs: list[tuple[int, int]]) -> None:
    """Write u32 key/value pairs in one BPF_MAP_UPDATE_BATCH. For a map-in-map
    this matters: the kernel waits for an RCU grace period after every update
    call (so no program still uses an old inner map), once per batch here."""
    keys = (ctypes.c_uint32 * len(pairs))(*(k for k, _ in pairs))
    values = (ctypes.c_uint32 * len(pairs))(*(v for _, v in pairs))
    update_batch(fd, keys, values, len(pairs))


def update_batch(fd: int, keys, values, count: int) -> None:
    """Write `count` entries in one BPF_MAP_UPDATE_BATCH (keys, values: ctypes
    arrays or buffers of `count` keys and values of the map's sizes): one
    syscall where a loop of updates takes one each (a cold apply of 1,000
    VIPs x 100 backends writes 100,000 backend entries)."""
    key_size, value_size = ctypes.sizeof(keys) // max(count, 1), ctypes.sizeof(values) // max(count, 1)
    done = 0
    while done < count:
        n = ctypes.c_uint32(count - done)
        _check(_libbpf.bpf_map_update_batch(fd, ctypes.addressof(keys) + key_size * done,
                                            ctypes.addressof(values) + value_size * done,
                                            ctypes.byref(n), None),
               "BPF_MAP_UPDATE_BATCH")
        done += n.value


def lookup_u32(fd: int, key: int) -> int | None:
    """A u32 value (e.g. an inner map id in a map-in-map), or None if absent."""
    k = ctypes.c_uint32(key)
    v = ctypes.c_uint32()
    if _libbpf.bpf_map_lookup_elem(fd, ctypes.byref(k), ctypes.byref(v)) < 0:
        return None
    return v.value


def update_u32(fd: int, key: int, value: int) -> None:
    k = ctypes.c_uint32(key)
    v = ctypes.c_uint32(value)
    _check(_libbpf.bpf_map_update_elem(fd, ctypes.byref(k), ctypes.byref(v), BPF_ANY),
           "bpf_map_update_elem")


def delete_u32(fd: int, key: int) -> None:
    """Delete an entry; absent entries are fine."""
    k = ctypes.c_uint32(key)
    _libbpf.bpf_map_delete_elem(fd, ctypes.byref(k))


def update_bytes(fd: int, key: bytes, value: bytes) -> None:
    """Write one entry of any map whose key and value are plain bytes."""
    _check(_libbpf.bpf_map_update_elem(fd, key, value, BPF_ANY), "bpf_map_update_elem")


def delete_bytes(fd: int, key: bytes) -> None:
    """Delete one entry; an absent one is fine."""
    _libbpf.bpf_map_delete_elem(fd, key)


def map_keys(fd: int, key_size: int) -> list[bytes]:
    """Every key of a (small) hash-like map: an LPM trie, say."""
    keys, previous = [], None
    current = ctypes.create_string_buffer(key_size)
    while _libbpf.bpf_map_get_next_key(fd, previous, current) == 0:
        keys.append(current.raw)
        previous = ctypes.create_string_buffer(current.raw, key_size)
    return keys


def lookup_array_u32(fd: int, size: int) -> array.array:
    """All `size` u32 values of an array map, in a few batched syscalls."""
    return array.array("I", lookup_array_values(fd, 4, size).ljust(4 * size, b"\0"))


def lookup_hash_values(fd: int, key_size: int, value_size: int, chunk: int = 16384) -> bytes:
    """Every value of a hash (or LRU hash) map, packed (value_size bytes
    each, for numpy to read); see lookup_hash_items."""
    return lookup_hash_items(fd, key_size, value_size, chunk)[1]


def lookup_hash_items(fd: int, key_size: int, value_size: int,
                      chunk: int = 16384) -> tuple[bytes, bytes]:
    """Every key and value of a hash (or LRU hash) map, in batches of `chunk`.

    The kernel walks one bucket at a time under that bucket's lock, so the
    datapath waits at most for one bucket, never for the whole walk, and an
    entry that stays in the map throughout is returned (it never changes
    bucket). Keys and values come back packed, in the same order."""
    keys = ctypes.create_string_buffer(key_size * chunk)
    values = ctypes.create_string_buffer(value_size * chunk)
    token = ctypes.create_string_buffer(max(key_size, 8))
    out_keys, out_values, first = [], [], True
    while True:
        n = ctypes.c_uint32(chunk)
        result = _libbpf.bpf_map_lookup_batch(fd, None if first else token, token, keys, values,
                                              ctypes.byref(n), None)
        err = ctypes.get_errno() if result < 0 else 0
        if result < 0 and err == errno.ENOSPC and n.value == 0:
            # one bucket holds more than a chunk: try again with room for it
            return lookup_hash_items(fd, key_size, value_size, chunk * 4)
        out_keys.append(keys.raw[:n.value * key_size])
        out_values.append(values.raw[:n.value * value_size])
        first = False
        if result < 0:
            if err == errno.ENOENT:  # end of the map
                return b"".join(out_keys), b"".join(out_values)
            _check(result, "BPF_MAP_LOOKUP_BATCH")


def lookup_array_values(fd: int, value_size: int, count: int) -> bytes:
    """The values of an array map's first `count` slots (value_size bytes
    each; for a per-CPU array, round_up(size, 8) bytes per possible CPU),
    in a few batched syscalls."""
    keys = ctypes.create_string_buffer(4 * count)
    values = ctypes.create_string_buffer(value_size * count)
    token = ctypes.c_uint32()
    done = 0
    while done < count:
        n = ctypes.c_uint32(count - done)
        result = _libbpf.bpf_map_lookup_batch(
            fd, ctypes.byref(token) if done else None, ctypes.byref(token),
            ctypes.addressof(keys) + 4 * done, ctypes.addressof(values) + value_size * done,
            ctypes.byref(n), None)
        done += n.value
        if result < 0:
            if ctypes.get_errno() == errno.ENOENT:  # end of the map
                break
            _check(result, "BPF_MAP_LOOKUP_BATCH")
    return values.raw[:value_size * done]


def map_fd_by_id(map_id: int) -> int:
    return _check(_libbpf.bpf_map_get_fd_by_id(map_id), f"opening map id {map_id}")


def pin(fd: int, path: str) -> None:
    _check(_libbpf.bpf_obj_pin(fd, path.encode()), f"pinning {path}")


def pinned_fd(path: str) -> int:
    return _check(_libbpf.bpf_obj_get(path.encode()), f"opening pinned {path}")


@dataclass(frozen=True)
class TestRun:
    action: int     # XDP verdict the program returned
    packet: bytes   # the packet as the program left it
    duration_ns: int


def test_run(prog_fd: int, packet: bytes, ingress_ifindex: int = 0, repeat: int = 1) -> TestRun:
    """Run the XDP program once (or `repeat` times) on `packet` in the kernel."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 512)  # room for encapsulation
    md = _XdpMd(data_end=len(packet), ingress_ifindex=ingress_ifindex)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(data_in), data_size_in=len(packet),
        data_out=ctypes.addressof(data_out), data_size_out=len(data_out),
        ctx_in=ctypes.addressof(md) if ingress_ifindex else None,
        ctx_size_in=ctypes.sizeof(md) if ingress_ifindex else 0,
        repeat=repeat,
    )
    _check(_libbpf.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(opts.retval, data_out.raw[:opts.data_size_out], opts.duration)


class _SkBuff(ctypes.Structure):
    # The start of struct __sk_buff (uapi/linux/bpf.h) as BPF_PROG_TEST_RUN of
    # a TC program takes it: of these only mark, priority, ingress_ifindex and
    # ifindex may be non-zero; the kernel zero-fills the rest of the struct.
    _fields_ = [
        ("len", ctypes.c_uint32),
        ("pkt_type", ctypes.c_uint32),
        ("mark", ctypes.c_uint32),
        ("queue_mapping", ctypes.c_uint32),
        ("protocol", ctypes.c_uint32),
        ("vlan_present", ctypes.c_uint32),
        ("vlan_tci", ctypes.c_uint32),
        ("vlan_proto", ctypes.c_uint32),
        ("priority", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("ifindex", ctypes.c_uint32),
    ]


def test_run_skb(prog_fd: int, packet: bytes, mark: int = 0, ifindex: int = 0) -> TestRun:
    """Run a TC (SCHED_CLS) program once on `packet` (an Ethernet frame) as
    an skb carrying `mark`, on interface `ifindex` (0: loopback). `action` is
    the TC verdict."""
    data_in = ctypes.create_string_buffer(packet, len(packet))
    data_out = ctypes.create_string_buffer(len(packet) + 512)  # room for encapsulation
    skb = _SkBuff(mark=mark, ifindex=ifindex)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.addressof(data_in), data_size_in=len(packet),
        data_out=ctypes.addressof(data_out), data_size_out=len(data_out),
        ctx_in=ctypes.addressof(skb), ctx_size_in=ctypes.sizeof(skb),
        repeat=1,
    )
    _check(_libbpf.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(opts.retval, data_out.raw[:opts.data_size_out], opts.duration)


# --- which program is attached where (lbd.bgp announces only while ours is) ----
_libbpf.bpf_xdp_query_id.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_uint32)]
_libbpf.bpf_obj_get_info_by_fd.argtypes = [ctypes.c_int, ctypes.c_void_p,
                                           ctypes.POINTER(ctypes.c_uint32)]


def xdp_program_id(ifindex: int) -> int:
    """Id of the XDP program attached to an interface in any mode (0: none).

    libbpf asks over its own netlink socket: safe from any thread, unlike
    pyroute2 on a running asyncio loop."""
    prog_id = ctypes.c_uint32(0)
    _check(_libbpf.bpf_xdp_query_id(ifindex, 0, ctypes.byref(prog_id)), "bpf_xdp_query_id")
    return prog_id.value


class _ProgInfo(ctypes.Structure):
    """The head of struct bpf_prog_info (linux/bpf.h), up to the name; the
    kernel fills what fits in the size we pass and leaves the rest."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("tag", ctypes.c_uint8 * 8),
                ("jited_prog_len", ctypes.c_uint32), ("xlated_prog_len", ctypes.c_uint32),
                ("jited_prog_insns", ctypes.c_uint64), ("xlated_prog_insns", ctypes.c_uint64),
                ("load_time", ctypes.c_uint64), ("created_by_uid", ctypes.c_uint32),
                ("nr_map_ids", ctypes.c_uint32), ("map_ids", ctypes.c_uint64),
                ("name", ctypes.c_char * 16)]


_libbpf.bpf_prog_get_fd_by_id.argtypes = [ctypes.c_uint32]


def _prog_info(prog_fd: int) -> _ProgInfo:
    info = _ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_libbpf.bpf_obj_get_info_by_fd(prog_fd, ctypes.byref(info), ctypes.byref(size)),
           "bpf_obj_get_info_by_fd")
    return info


def program_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program."""
    return _prog_info(prog_fd).id


class _MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info (linux/bpf.h), up to the name."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("name", ctypes.c_char * 16)]


@dataclass(frozen=True)
class MapInfo:
    id: int
    type: int
    name: str        # as the loader named it, cut to 15 bytes
    key_size: int
    value_size: int
    max_entries: int


def program_maps(prog_id: int) -> list[MapInfo]:
    """The maps a loaded program uses (found by id: how a program that is
    attached but not pinned with its maps is read); [] if the id is gone."""
    fd = _libbpf.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return []
    try:
        count = _prog_info(fd).nr_map_ids
        ids = (ctypes.c_uint32 * max(count, 1))()
        info = _ProgInfo(nr_map_ids=count, map_ids=ctypes.addressof(ids))
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(_libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
               "bpf_obj_get_info_by_fd")
    finally:
        os.close(fd)
    found = []
    for map_id in ids[:min(count, info.nr_map_ids)]:
        try:
            map_fd = map_fd_by_id(map_id)
        except BpfError:
            continue    # gone meanwhile
        try:
            found.append(map_info(map_fd))
        finally:
            os.close(map_fd)
    return found


_libbpf.bpf_prog_bind_map.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p]


def bind_map(prog_fd: int, map_fd: int) -> None:
    """Make a map the program's own (BPF_PROG_BIND_MAP) though its code never
    uses it: it then lives as long as the program and shows among its map ids."""
    _check(_libbpf.bpf_prog_bind_map(prog_fd, map_fd, None), "BPF_PROG_BIND_MAP")


def map_info(map_fd: int) -> MapInfo:
    info = _MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    _check(_libbpf.bpf_obj_get_info_by_fd(map_fd, ctypes.byref(info), ctypes.byref(size)),
           "bpf_obj_get_info_by_fd")
    return MapInfo(info.id, info.type, info.name.decode(errors="replace"), info.key_size,
                   info.value_size, info.max_entries)


def program_name(prog_id: int) -> str:
    """A loaded program's name (bcc names it after its function, cut to 15
    bytes); "" if the id is gone."""
    fd = _libbpf.bpf_prog_get_fd_by_id(prog_id)
    if fd < 0:
        return ""
    try:
        return _prog_info(fd).name.decode(errors="replace")
    finally:
        os.close(fd)


_libbpf.bpf_enable_stats.argtypes = [ctypes.c_int]
BPF_STATS_RUN_TIME = 0


def enable_run_time_stats() -> int:
    """Turn on the kernel's per-program run time and count (shown in a
    program fd's fdinfo) for as long as the returned fd stays open."""
    return _check(_libbpf.bpf_enable_stats(BPF_STATS_RUN_TIME), "BPF_ENABLE_STATS")
