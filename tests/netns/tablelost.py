"""Lose lbd's TCP connection table on purpose, as an eviction, a full table or
a flood would: delete every entry of the pinned map, from the test, with
libbpf through lbd.dataplane.bpfsys (no lbd command does this; none should)."""
from __future__ import annotations

import ctypes
import os
from pathlib import Path

from lbd.dataplane import bpfsys


class _MapInfo(ctypes.Structure):
    # the head of struct bpf_map_info (uapi/linux/bpf.h); the kernel fills
    # at most the size passed in
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32)]


def pinned_conntrack(bpffs_dir: str, host: str) -> str:
    """The TCP connection table pinned by the daemon of `host` (bpffs: <bpffs_dir>/<host>)."""
    layouts = sorted(d for d in Path(bpffs_dir, host).iterdir() if d.name.startswith("layout"))
    if not layouts:
        raise FileNotFoundError(f"no layout directory under {bpffs_dir}/{host}")
    return str(layouts[-1] / "conntrack")


def empty_pinned_map(path: str) -> int:
    """Delete every entry of a pinned hash map; returns how many were deleted.

    The keys are read first and deleted after, so the table is lost at one
    moment: entries that packets make again meanwhile (placed by the table of
    that moment) stay, as they would after a real loss."""
    libbpf = bpfsys._libbpf
    fd = bpfsys.pinned_fd(path)
    try:
        info = _MapInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        bpfsys._check(libbpf.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
                      f"reading the info of {path}")
        keys: list[bytes] = []
        key = ctypes.create_string_buffer(info.key_size)
        previous = None
        # bounded by the map's size: the walk sees each key once
        while len(keys) < info.max_entries:
            if libbpf.bpf_map_get_next_key(fd, previous, key) < 0:
                break
            keys.append(key.raw)
            previous = ctypes.create_string_buffer(key.raw, info.key_size)
        deleted = 0
        for raw in keys:
            if libbpf.bpf_map_delete_elem(fd, ctypes.create_string_buffer(raw, info.key_size)) == 0:
                deleted += 1
        return deleted
    finally:
        os.close(fd)
