"""Compile, load, attach and drive the XDP balancer (xdp/balancer.c) with bcc.

`Datapath` owns the loaded program and is the only place that reads or writes
its maps. Struct layouts come from bcc's table types (built from
xdp/lbd_shared.h); this module only converts Python values into them.

Length (over 450 lines, on purpose): Datapath is the one owner of the
program's maps, so every map's reads and writes, and the conversion of
Python values into the structs, stay in one class; the Programmer sees only
its MapWriter calls.
"""
from __future__ import annotations

import array
import ctypes
import functools
import gzip
import ipaddress
import logging
import os
import re
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Iterable, Protocol, runtime_checkable

import numpy as np

from lbd.dataplane import bpfsys, heap, layout, settle, xdplink

log = logging.getLogger("lbd.dataplane.maps")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
C = layout.constant
SLOT_BACKEND = C("LBD_SLOT_BACKEND")  # a table slot without settle.h's marks
TCP = socket.IPPROTO_TCP  # its flows have their own connection table


def addr_words(address: IPAddress) -> tuple[int, int, int, int]:
    """An address as the program's __u32[4]: network byte order in memory."""
    return struct.unpack("<4I", address.packed.ljust(16, b"\0"))


def port_word(port: int) -> int:
    """A port as the program's __u16 in network byte order."""
    return struct.unpack("<H", struct.pack(">H", port))[0]


def prefilter_bit(address: IPAddress) -> int:
    """The address's bit in the prefilter bitmap (xdp/prefilter.h)."""
    a, b, c, d = addr_words(address)
    product = ((a ^ b ^ c ^ d) * C("LBD_PREFILTER_HASH_MUL")) & 0xFFFFFFFF
    return product >> (32 - C("LBD_PREFILTER_LOG2"))


def quic_sid_slot_of(vip_id: int, server_id_lo: int, server_id_hi: int, slots: int) -> int:
    """The home slot of a VIP's server ID in quic_sid_slots (xdp/quic.h
    lbd_quic_sid_slot_of): its two key words as the program loads them."""
    mul, mask = C("LBD_QUIC_SLOT_MUL"), (1 << 64) - 1
    mix = ((server_id_lo ^ ((server_id_hi * mul) & mask) ^ vip_id) * mul) & mask
    return (mix >> 32) % slots


def family_of(address: IPAddress) -> int:
    return C("LBD_FAMILY_V4") if address.version == 4 else C("LBD_FAMILY_V6")


@functools.cache
def kernel_hz() -> int | None:
    """The running kernel's CONFIG_HZ, from its config (None if not shipped).

    The program counts the ipip next-hop cache's lifetime in jiffies (a load,
    where reading a ns clock is a helper call); without this it assumes the
    lowest HZ, so entries expire early rather than late."""
    for path in ("/proc/config.gz", f"/boot/config-{os.uname().release}"):
        try:
            opener = gzip.open if path.endswith(".gz") else open
            with opener(path, "rt") as config:
                found = re.search(r"^CONFIG_HZ=(\d+)$", config.read(), re.M)
        except OSError:
            continue
        if found:
            return int(found.group(1))
    return None


@dataclass(frozen=True)
class Limits:
    """Map sizes compiled into the program: changing one needs a new program."""
    max_vips: int = C("LBD_MAX_VIPS")
    max_backends: int = C("LBD_MAX_BACKENDS")
    ring_size: int = C("LBD_RING_SIZE")
    conntrack_size: int = C("LBD_CT_SIZE")
    conntrack_udp_size: int = C("LBD_CT_UDP_SIZE")

    def cflags(self) -> list[str]:
        return [f"-DLBD_MAX_VIPS={self.max_vips}", f"-DLBD_MAX_BACKENDS={self.max_backends}",
                f"-DLBD_RING_SIZE={self.ring_size}", f"-DLBD_CT_SIZE={self.conntrack_size}",
                f"-DLBD_CT_UDP_SIZE={self.conntrack_udp_size}"]


@dataclass(frozen=True)
class BackendEntry:
    """One backend slot as the program sees it."""
    vip_id: int
    address: IPAddress
    state: int = C("LBD_BACKEND_ACTIVE")
    generation: int = 1
    dst_mac: bytes = b"\0" * 6   # dsr: the backend's MAC
    src_mac: bytes = b"\0" * 6   # dsr: our MAC on the egress interface
    ifindex: int = 0             # dsr: egress interface, 0 = where it came in
    vip_flags: int = 0           # the owner VIP's flags (established flows read them here)
    second_until: int = 0        # unix s until which it may be a second choice (LBD_SECOND_FOREVER: no end)


def settings_leaf(leaf_type, ipip_src_v4: ipaddress.IPv4Address | None,
                  ipip_src_v6: ipaddress.IPv6Address | None):
    """A struct lbd_settings (bcc's type for it: the balancer's settings, or
    the health-path program's health_settings) with the ipip outer sources."""
    leaf = leaf_type()
    if ipip_src_v4:
        leaf.ipip_src_v4 = addr_words(ipip_src_v4)[0]
    if ipip_src_v6:
        leaf.ipip_src_v6[:] = addr_words(ipip_src_v6)
    leaf.layout_version = C("LBD_LAYOUT_VERSION")
    return leaf


def backend_leaf(leaf_type, entry: BackendEntry):
    """A struct lbd_backend (bcc's type for it: the balancer's backends map,
    or the health-path program's health_paths) holding `entry`."""
    return fill_backend_leaf(leaf_type(), entry)


def fill_backend_leaf(leaf, entry: BackendEntry):
    """`leaf` (a struct lbd_backend, e.g. one of an array of them) set to `entry`."""
    leaf.addr[:] = addr_words(entry.address)
    leaf.dst_mac[:] = entry.dst_mac
    leaf.src_mac[:] = entry.src_mac
    leaf.ifindex = entry.ifindex
    leaf.generation = entry.generation
    leaf.state = entry.state
    leaf.family = family_of(entry.address)
    leaf.vip_id = entry.vip_id
    leaf.vip_flags = entry.vip_flags
    leaf.second_until = entry.second_until
    return leaf


@runtime_checkable
class MapWriter(Protocol):
    """Exactly the calls lbd.dataplane.programmer makes on the maps: what
    Datapath offers it, and what a double of the maps must offer
    (tests/unit/fakes.py, held to this by tests/unit/test_fakes.py)."""
    limits: Limits

    def vip_ids(self) -> dict[tuple[IPAddress, int, int], int]: ...
    def backend_entries(self) -> dict: ...
    def read_prefilter(self, quic: bool = False) -> list[int]: ...
    def write_prefilter(self, words: dict[int, int], quic: bool = False) -> None: ...
    def set_vip(self, address: IPAddress, port: int, proto: int, vip_id: int, flags: int) -> None: ...
    def delete_vip(self, address: IPAddress, port: int, proto: int) -> None: ...
    def set_addr(self, address: IPAddress, proto: int, flags: int,
                 frag_vip_id: int = 0, frag_vip_flags: int = 0) -> None: ...
    def delete_addr(self, address: IPAddress, proto: int) -> None: ...
    def set_backend(self, backend_id: int, entry: BackendEntry) -> None: ...
    def set_backends(self, entries: dict[int, BackendEntry]) -> None: ...
    def set_second_until(self, backend_id: int, value: int) -> None: ...
    def clear_backend(self, backend_id: int) -> None: ...
    def write_rings(self, tables: dict) -> None: ...
    def write_second_rings(self, tables: dict) -> None: ...
    def clear_ring(self, vip_id: int) -> None: ...
    def clear_second_ring(self, vip_id: int) -> None: ...
    # written second tables are read back, not kept (lbd.dataplane.programmer.stored)
    def read_second_ring(self, vip_id: int) -> array.array | None: ...
    def second_ring_slot(self, vip_id: int, slot: int) -> int: ...
    def clear_counters(self, vip_ids: Iterable[int], backend_ids: Iterable[int]) -> None: ...
    # QUIC VIPs (xdp/quic.h)
    def set_quic_config(self, vip_id: int, config_id: int, server_id_len: int, cid_len: int) -> None: ...
    def clear_quic_config(self, vip_id: int) -> None: ...
    def set_quic_server(self, vip_id: int, server_id: bytes, backend_id: int) -> None: ...
    def delete_quic_server(self, vip_id: int, server_id: bytes) -> None: ...
    def quic_servers_of(self, vip_id: int) -> dict[bytes, int]: ...


class Datapath:
    """The balancer program loaded in the kernel, and its maps.

    With `pin_dir`, maps are pinned there (and adopted if already pinned, so
    a restarted daemon keeps the connection table); without, maps are private
    to this object (tests).
    """

    def __init__(self, limits: Limits = Limits(), pin_dir: str | None = None):
        from bcc import BPF  # imported here so unit tests never need bcc

        self.limits = limits
        self.pin_dir = pin_dir
        cflags = [f"-I{layout.XDP_DIR}", "-Wno-unused-function", *limits.cflags()]
        # Experiments and the tests' control runs only (e.g. the flood test's
        # -DLBD_SYN_MAKES_ENTRY=1, the behaviour before SYNs left no state);
        # no production setting needs it.
        cflags += os.environ.get("LBD_EXTRA_CFLAGS", "").split()
        if kernel_hz():
            cflags += [f"-DLBD_KERNEL_HZ={kernel_hz()}", f"-DLBD_KERNEL_HZ_MAX={kernel_hz()}"]
        if pin_dir:
            os.makedirs(pin_dir, exist_ok=True)
            cflags.append(f'-DLBD_PIN_DIR="{pin_dir}"')
        self.bpf = BPF(src_file=str(layout.XDP_DIR / "balancer.c").encode(), cflags=cflags)
        self.function = self.bpf.load_func(b"lbd_balancer", BPF.XDP)
        self.prog_fd = self.function.fd
        if pin_dir:
            prog_pin = os.path.join(pin_dir, "prog")
            if os.path.exists(prog_pin):
                os.unlink(prog_pin)
            bpfsys.pin(self.prog_fd, prog_pin)
        self.vips = self.bpf[b"vips"]
        self.addrs = self.bpf[b"addrs"]
        self.prefilter = self.bpf[b"prefilter"]
        self.quic_prefilter = self.bpf[b"quic_prefilter"]
        self.backends = self.bpf[b"backends"]
        self.rings = self.bpf[b"rings"]
        self.second_rings = self.bpf[b"second_rings"]
        self.conntrack = self.bpf[b"conntrack"]
        self.conntrack_udp = self.bpf[b"conntrack_udp"]
        self.settings = self.bpf[b"settings"]
        self.nexthops = self.bpf[b"nexthops"]
        self.vip_stats = self.bpf[b"vip_stats"]
        self.backend_stats = self.bpf[b"backend_stats"]
        self.global_stats = self.bpf[b"global_stats"]
        self.quic_configs = self.bpf[b"quic_configs"]
        self.quic_servers = self.bpf[b"quic_servers"]
        self.quic_sid_slots = self.bpf[b"quic_sid_slots"]
        self.quic_stats = self.bpf[b"quic_stats"]
        self.quic_routed = self.bpf[b"quic_routed"]
        self.syn_settled = self.bpf[b"syn_settled"]  # SYNs placed without a connection-table lookup
        # Held while a VIP's second table changes and while the settle walk
        # judges or settles slots: a slot is settled only against the tables
        # the walk read (lbd/dataplane/settle.py).
        self.settle_lock = threading.Lock()
        self._clock_fd: int | None = None
        self._clock_lock = threading.Lock()
        self._capture_lock = threading.Lock()
        self._captured: list[bytes] | None = None  # records read by poll_capture, not yet taken
        self._capture_lost = 0
        heap.give_back()  # the compiler's heap: freed, but still resident until asked back

    # --- VIPs -----------------------------------------------------------------
    def _vip_key(self, address: IPAddress, port: int, proto: int):
        key = self.vips.Key()
        key.addr[:] = addr_words(address)
        key.port = port_word(port)
        key.proto = proto
        key.family = family_of(address)
        return key

    def _addr_key(self, address: IPAddress, proto: int):
        key = self.addrs.Key()
        key.addr[:] = addr_words(address)
        key.proto = proto
        key.family = family_of(address)
        return key

    def set_vip(self, address: IPAddress, port: int, proto: int, vip_id: int, flags: int) -> None:
        self.vips[self._vip_key(address, port, proto)] = self.vips.Leaf(vip_id, flags)

    def delete_vip(self, address: IPAddress, port: int, proto: int) -> None:
        self.vips.pop(self._vip_key(address, port, proto), None)

    def vip_ids(self) -> dict[tuple[IPAddress, int, int], int]:
        """(address, port, protocol) -> VIP id of every VIP entry (adoption)."""
        found = {}
        for key, leaf in self.vips.items():
            raw = bytes(key.addr)
            address = ipaddress.ip_address(raw[:4] if key.family == C("LBD_FAMILY_V4") else raw)
            port = int.from_bytes(int(key.port).to_bytes(2, "little"), "big")
            found[(address, port, int(key.proto))] = int(leaf.vip_id)
        return found

    def set_addr(self, address: IPAddress, proto: int, flags: int,
                 frag_vip_id: int = 0, frag_vip_flags: int = 0) -> None:
        leaf = self.addrs.Leaf()
        leaf.flags = flags
        leaf.frag_vip_id = frag_vip_id
        leaf.frag_vip_flags = frag_vip_flags
        self.addrs[self._addr_key(address, proto)] = leaf

    def delete_addr(self, address: IPAddress, proto: int) -> None:
        self.addrs.pop(self._addr_key(address, proto), None)

    def read_prefilter(self, quic: bool = False) -> list[int]:
        """The prefilter bitmap (with quic, the QUIC VIP addresses' bitmap of the
        same bits) as the program sees it, one int per 64-bit word."""
        bitmap = self.quic_prefilter if quic else self.prefilter
        return [bitmap[ctypes.c_uint32(i)].value for i in range(C("LBD_PREFILTER_WORDS"))]

    def write_prefilter(self, words: dict[int, int], quic: bool = False) -> None:
        """Set prefilter words (with quic, quic_prefilter's): word index -> the word's 64 bits."""
        bitmap = self.quic_prefilter if quic else self.prefilter
        for index, bits in words.items():
            bitmap[ctypes.c_uint32(index)] = ctypes.c_uint64(bits)

    def set_settings(self, ipip_src_v4: ipaddress.IPv4Address | None,
                     ipip_src_v6: ipaddress.IPv6Address | None) -> None:
        self.settings[ctypes.c_uint32(0)] = settings_leaf(self.settings.Leaf, ipip_src_v4, ipip_src_v6)

    # --- backends -------------------------------------------------------------
    def set_backend(self, backend_id: int, entry: BackendEntry) -> None:
        self.backends[ctypes.c_uint32(backend_id)] = backend_leaf(self.backends.Leaf, entry)

    def set_backends(self, entries: dict[int, BackendEntry]) -> None:
        """Write backend entries (id -> entry) in one batched update: one
        syscall where a cold apply of 1,000 VIPs x 100 backends made 100,000."""
        if not entries:
            return
        leaves = (self.backends.Leaf * len(entries))()
        for leaf, entry in zip(leaves, entries.values()):
            fill_backend_leaf(leaf, entry)
        keys = (ctypes.c_uint32 * len(entries))(*entries)
        bpfsys.update_batch(self.backends.map_fd, keys, leaves, len(entries))

    def set_second_until(self, backend_id: int, value: int) -> None:
        """Change only a backend's second_until (a hold starts or ends); the
        rest of its entry stays as it is."""
        key = ctypes.c_uint32(backend_id)
        leaf = self.backends[key]
        leaf.second_until = value
        self.backends[key] = leaf

    def clear_backend(self, backend_id: int) -> None:
        self.backends[ctypes.c_uint32(backend_id)] = self.backends.Leaf()

    def backend(self, backend_id: int):
        return self.backends[ctypes.c_uint32(backend_id)]

    def backend_entries(self) -> dict:
        """Backend id (1..; 0 names none) -> entry, for every entry that is not
        all zeros (an emptied one keeps its generation), read in a few batched syscalls: a
        restarted daemon reads all 131,072 at once, not with one call each."""
        leaf, size = self.backends.Leaf, ctypes.sizeof(self.backends.Leaf)
        raw = bpfsys.lookup_array_values(self.backends.map_fd, size, self.limits.max_backends)
        used = np.flatnonzero(np.frombuffer(raw, dtype=np.uint8).reshape(-1, size).any(axis=1))
        return {int(i): leaf.from_buffer_copy(raw, int(i) * size) for i in used if i}

    def nexthop(self, backend_id: int) -> list:
        """The ipip next-hop cache entry of a backend id, one per CPU."""
        return list(self.nexthops[ctypes.c_uint32(backend_id)])

    def forget_nexthop(self, backend_id: int) -> None:
        """Empty a backend id's next-hop cache entry on every CPU: the next
        packet asks the FIB again."""
        key = ctypes.c_uint32(backend_id)
        self.nexthops[key] = self.nexthops.Leaf(*([self.nexthops.sLeaf()] * self.nexthops.total_cpu))

    # --- Maglev tables --------------------------------------------------------
    # Two tables per VIP, each an inner map of an array of maps indexed by VIP
    # id: rings (the first choice, today's Maglev table) and second_rings (the
    # second choice of each slot, second-chance VIPs only). Both are written,
    # read and cleared the same way.
    def write_ring(self, vip_id: int, table) -> None:
        """Swap in a new Maglev table for one VIP (see write_rings)."""
        self.write_rings({vip_id: table})

    # Tables filled before one batched swap; bounded so open fds stay few.
    RING_BATCH = 128

    def write_rings(self, tables: dict) -> None:
        """Swap in new Maglev tables, each in one map update.

        Each table is written into a new map first; packets see a VIP's old
        table until its slot in rings is replaced, then the new one. The
        slots are replaced with one batched update per RING_BATCH tables,
        since the kernel waits an RCU grace period after each update call.
        """
        self._swap_tables(self.rings, tables)

    def write_second_rings(self, tables: dict) -> None:
        """Write second-choice tables (VIP id -> table of backend ids, 0 where
        a slot has none): over the VIP's second table in place where it has
        one, else swapped in as write_rings does the first choices.

        In place is what a swap is to every packet: a packet reads one slot
        of the second table, and each slot (an aligned u32) is the old value
        or the new one, as on either side of a swap; slots switching at
        different moments cannot be told from the swap coming just before or
        after the packet. It spares the RCU grace period every swap call
        waits for (10-20 ms here, half a health change: bench/control.py's
        second_chance_scale). First tables are swapped whole, always: a
        Maglev table is only consistent as a whole, and flows are placed by it."""
        swap = {}
        with self.settle_lock:
            # before a second choice changes, its VIP's slots are unsettled, so
            # no SYN skips its lookup on the strength of a judgement of the old
            # second choices (lbd/dataplane/settle.py)
            settle.clear(self, list(tables))
            for vip_id, table in tables.items():
                if not self._write_in_place(self.second_rings, vip_id, table):
                    swap[vip_id] = table
        self._swap_tables(self.second_rings, swap)

    def _write_in_place(self, outer, vip_id: int, table) -> bool:
        """Copy `table` over the VIP's inner map through mmap; False if it has
        none, or one that cannot be mapped (then it is swapped in instead)."""
        if len(table) != self.limits.ring_size:
            raise ValueError(f"table has {len(table)} slots, program expects {self.limits.ring_size}")
        map_id = bpfsys.lookup_u32(outer.map_fd, vip_id)
        if not map_id:
            return False
        try:
            fd = bpfsys.map_fd_by_id(map_id)
        except OSError:  # swapped out meanwhile
            return False
        try:
            self._fill_ring(fd, table)
        except OSError:  # not mmapable (a map of an older daemon)
            return False
        finally:
            os.close(fd)
        return True

    def _swap_tables(self, outer, tables: dict) -> None:
        items = list(tables.items())
        for start in range(0, len(items), self.RING_BATCH):
            fds: list[tuple[int, int]] = []
            try:
                for vip_id, table in items[start:start + self.RING_BATCH]:
                    fds.append((vip_id, self._new_ring(table)))
                with self.settle_lock:
                    # a new table comes unmarked; before a new second table,
                    # its VIP's table is unsettled, so no SYN skips its lookup
                    # on the strength of a judgement of the old second choices
                    if outer is self.second_rings:
                        settle.clear(self, [vip_id for vip_id, _ in fds])
                    bpfsys.update_batch_u32(outer.map_fd, fds)
            finally:
                for _, fd in fds:
                    os.close(fd)  # the outer map holds its own references now

    def _new_ring(self, table) -> int:
        if len(table) != self.limits.ring_size:
            raise ValueError(f"table has {len(table)} slots, program expects "
                             f"{self.limits.ring_size}")
        fd = bpfsys.create_array("lbd_ring", 4, self.limits.ring_size, bpfsys.BPF_F_MMAPABLE)
        try:
            self._fill_ring(fd, table)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _fill_ring(self, fd: int, table) -> None:
        """One memory copy of `table` into a ring map (u32 values in 8-byte slots)."""
        with bpfsys.mmap_array(fd, 4, self.limits.ring_size) as memory:
            slots = np.frombuffer(memory, dtype=np.uint32, count=2 * self.limits.ring_size)
            slots[0::2] = np.frombuffer(memoryview(table).cast("B"), dtype=np.uint32)
            del slots  # the mapping cannot close while a view holds it

    def read_ring(self, vip_id: int) -> array.array | None:
        """The VIP's current table as the program sees it, or None."""
        return self._read_table(self.rings, vip_id)

    def read_second_ring(self, vip_id: int) -> array.array | None:
        """The VIP's current second-choice table, or None (no second chance)."""
        return self._read_table(self.second_rings, vip_id)

    def _read_table(self, outer, vip_id: int) -> array.array | None:
        map_id = bpfsys.lookup_u32(outer.map_fd, vip_id)
        if not map_id:
            return None
        fd = bpfsys.map_fd_by_id(map_id)
        try:
            table = self._read_ring_memory(fd)
        except OSError:  # not mmapable (a map of an older daemon): a syscall per batch, ~50 ms
            table = bpfsys.lookup_array_u32(fd, self.limits.ring_size)
        finally:
            os.close(fd)
        return table

    def _read_ring_memory(self, fd: int) -> array.array:
        """A table read through mmap, as _new_ring wrote it (u32 values in
        8-byte slots): a memory copy, where the batched lookup took ~50 ms a
        table (the programmer reads written second tables back)."""
        size = self.limits.ring_size
        with bpfsys.mmap_array(fd, 4, size) as memory:
            slots = np.frombuffer(memory, dtype=np.uint32, count=2 * size)
            table = array.array("I", (slots[0::2] & np.uint32(SLOT_BACKEND)).tobytes())  # without settle's marks
            del slots  # the mapping cannot close while a view holds it
        return table

    def ring_slot(self, vip_id: int, slot: int) -> int:
        """One slot of the VIP's current table (for explain)."""
        return self._table_slot(self.rings, vip_id, slot)

    def second_ring_slot(self, vip_id: int, slot: int) -> int:
        """One slot of the VIP's second-choice table (0: none, or no table)."""
        return self._table_slot(self.second_rings, vip_id, slot)

    def _table_slot(self, outer, vip_id: int, slot: int) -> int:
        map_id = bpfsys.lookup_u32(outer.map_fd, vip_id)
        if not map_id:
            return C("LBD_NO_BACKEND")
        fd = bpfsys.map_fd_by_id(map_id)
        try:
            return (bpfsys.lookup_u32(fd, slot) or 0) & SLOT_BACKEND  # without settle's marks
        finally:
            os.close(fd)

    def clear_ring(self, vip_id: int) -> None:
        bpfsys.delete_u32(self.rings.map_fd, vip_id)

    def clear_second_ring(self, vip_id: int) -> None:
        """Remove the VIP's second-choice table (a no-op if it has none)."""
        with self.settle_lock:
            settle.clear(self, [vip_id])
            bpfsys.delete_u32(self.second_rings.map_fd, vip_id)

    # --- connection table -----------------------------------------------------
    def flow_key(self, src: IPAddress, dst: IPAddress, sport: int, dport: int, proto: int):
        key = self.conntrack.Key()
        key.src[:] = addr_words(src)
        key.dst[:] = addr_words(dst)
        key.sport = port_word(sport)
        key.dport = port_word(dport)
        key.proto = proto
        key.family = family_of(src)
        return key

    def flow_table(self, proto: int):
        """The connection table of a protocol: TCP and UDP have one each."""
        return self.conntrack if proto == TCP else self.conntrack_udp

    def lookup_flow(self, src, dst, sport, dport, proto) -> tuple[int, int] | None:
        """(backend id, generation) the connection table holds for a flow."""
        entry = self.flow_table(proto).get(self.flow_key(src, dst, sport, dport, proto))
        return None if entry is None else (entry.backend_id, entry.generation)

    def flow_entry(self, src, dst, sport, dport, proto):
        """A flow's raw connection-table entry (lbd_flow_entry: backend_id,
        generation, seen, flags, second_id), or None."""
        return self.flow_table(proto).get(self.flow_key(src, dst, sport, dport, proto))

    def forget_flow(self, src, dst, sport, dport, proto) -> bool:
        """Remove a flow's entry, as the LRU does when it evicts it."""
        try:
            del self.flow_table(proto)[self.flow_key(src, dst, sport, dport, proto)]
        except KeyError:
            return False
        return True

    def clear_flows(self) -> None:
        self.conntrack.clear()
        self.conntrack_udp.clear()

    def conntrack_snapshot(self) -> dict[bytes, tuple[int, int]]:
        """Every entry of both connection tables, keyed by the raw key bytes
        (the key holds the protocol, so TCP and UDP keys never collide)."""
        return {bytes(k): (v.backend_id, v.generation)
                for table in (self.conntrack, self.conntrack_udp) for k, v in table.items()}

    def jiffies(self) -> int:
        """The kernel's jiffies now: the clock of the entries' `seen`
        (xdp/balancer.c lbd_clock; loaded on first use, so a program without
        it, an old revision in bench/, still loads)."""
        with self._clock_lock:
            if self._clock_fd is None:
                from bcc import BPF
                self._clock_fd = self.bpf.load_func(b"lbd_clock", BPF.XDP).fd
        return struct.unpack_from("<Q", bpfsys.test_run(self._clock_fd, bytes(64)).packet)[0]

    @property
    def finished_idle_jiffies(self) -> int:
        """How long an entry must have seen nothing for a SYN to find its
        connection finished, in the jiffies the program counts it in
        (xdp/balancer.c lbd_flow_finished: the kernel's HZ where known, else
        the highest, so never shorter than stated)."""
        return C("LBD_FLOW_FINISHED_IDLE_S") * (kernel_hz() or C("LBD_KERNEL_HZ_MAX"))

    @functools.cached_property
    def hz(self) -> int:
        """Jiffies per second: the kernel's CONFIG_HZ, or, where its config
        is not shipped, measured (0.2 s) and rounded to the nearest HZ Linux
        offers."""
        if kernel_hz():
            return kernel_hz()
        j0, t0 = self.jiffies(), time.monotonic()
        time.sleep(0.2)
        rate = (self.jiffies() - j0) / (time.monotonic() - t0)
        return min((100, 250, 300, 1000), key=lambda hz: abs(hz - rate))

    # --- counters -------------------------------------------------------------
    @staticmethod
    def _sum_percpu(values) -> dict[str, int]:
        total: dict[str, int] = {}
        for per_cpu in values:
            for name, ctype in per_cpu._fields_:
                value = getattr(per_cpu, name)
                if hasattr(ctype, "_length_"):
                    acc = total.setdefault(name, [0] * ctype._length_)
                    for i, v in enumerate(value):
                        acc[i] += v
                else:
                    total[name] = total.get(name, 0) + value
        return total

    def clear_counters(self, vip_ids: Iterable[int], backend_ids: Iterable[int]) -> None:
        """Zero the counters of VIP and backend ids (a backend's QUIC count
        too), every CPU's copy, in one batched update per map: a cold apply
        takes 100,000 backend ids anew."""
        backend_ids = list(backend_ids)
        for table, ids in ((self.vip_stats, list(vip_ids)), (self.backend_stats, backend_ids),
                           (self.quic_routed, backend_ids)):
            if not ids:
                continue
            per_key = (ctypes.sizeof(table.sLeaf) + 7) // 8 * 8 * table.total_cpu  # the kernel's per-CPU slots
            keys = (ctypes.c_uint32 * len(ids))(*ids)
            bpfsys.update_batch(table.map_fd, keys, ctypes.create_string_buffer(per_key * len(ids)), len(ids))

    def vip_counters(self, vip_id: int) -> dict[str, int]:
        return self._sum_percpu(self.vip_stats[ctypes.c_uint32(vip_id)])

    def backend_counters(self, backend_id: int) -> dict[str, int]:
        return self._sum_percpu(self.backend_stats[ctypes.c_uint32(backend_id)])

    def counter_arrays(self, backends: int) -> tuple[np.ndarray, np.ndarray]:
        """Every VIP's and the first `backends` backend ids' counters, summed
        over CPUs: one batched read of each per-CPU array (the daemon's
        rate snapshots, every second). Rows by id; columns by field, in
        the structs' order (lbd_vip_stats, lbd_backend_stats)."""
        out = []
        for table, count in ((self.vip_stats, self.limits.max_vips),
                             (self.backend_stats, min(backends, self.limits.max_backends))):
            fields = len(table.sLeaf._fields_)
            slot = (ctypes.sizeof(table.sLeaf) + 7) & ~7  # the kernel's per-CPU slot
            raw = bpfsys.lookup_array_values(table.map_fd, slot * table.total_cpu, count)
            per_cpu = np.frombuffer(raw, dtype=np.uint64).reshape(-1, table.total_cpu, slot // 8)
            out.append(per_cpu[:, :, :fields].sum(axis=1))
        return out[0], out[1]

    def global_counters(self) -> dict:
        """Actions and drops by name, plus the other global counters."""
        total = self._sum_percpu(self.global_stats[ctypes.c_uint32(0)])
        actions = layout.enum_names("LBD_ACT_")
        drops = layout.enum_names("LBD_DROP_")
        total["actions"] = {actions[i]: n for i, n in enumerate(total["actions"])}
        total["drops"] = {drops[i]: n for i, n in enumerate(total["drops"])}
        return total

    def syns_without_lookup(self) -> int:
        """SYNs a settled slot placed without a connection-table lookup
        (xdp/settle.h), all CPUs."""
        return int(sum(self.syn_settled[ctypes.c_uint32(0)]))

    # --- QUIC by connection ID (xdp/quic.h) -------------------------------------
    def set_quic_config(self, vip_id: int, config_id: int, server_id_len: int, cid_len: int) -> None:
        leaf = self.quic_configs.Leaf()
        leaf.config_id, leaf.server_id_len, leaf.cid_len = config_id, server_id_len, cid_len
        self.quic_configs[ctypes.c_uint32(vip_id)] = leaf

    def clear_quic_config(self, vip_id: int) -> None:
        self.quic_configs[ctypes.c_uint32(vip_id)] = self.quic_configs.Leaf()

    def _quic_server_key(self, vip_id: int, server_id: bytes):
        key = self.quic_servers.Key()
        key.vip_id = vip_id
        # two native words holding the octets in wire order, as the program loads them
        key.server_id[:] = struct.unpack("=2Q", server_id.ljust(16, b"\0"))
        return key

    def set_quic_server(self, vip_id: int, server_id: bytes, backend_id: int) -> None:
        """The server ID's entry in quic_servers, and in its slot of quic_sid_slots
        (the one that holds it already, else the first empty one of its probes;
        none when all are taken: the program then finds it in quic_servers)."""
        key = self._quic_server_key(vip_id, server_id)
        self.quic_servers[key] = ctypes.c_uint32(backend_id)
        probes = self._quic_sid_probes(key)
        index = next((i for i, slot in probes if self._holds(slot, key)), None)
        if index is None:
            index = next((i for i, slot in probes if slot.vip_id == 0), None)
        if index is not None:
            slot = self.quic_sid_slots.Leaf()
            slot.server_id[:] = key.server_id[:]
            slot.vip_id, slot.backend_id = vip_id, backend_id
            self.quic_sid_slots[ctypes.c_uint32(index)] = slot

    def delete_quic_server(self, vip_id: int, server_id: bytes) -> None:
        """Empty the server ID's slot (before another ID may take it), then its entry."""
        key = self._quic_server_key(vip_id, server_id)
        for index, slot in self._quic_sid_probes(key):
            if self._holds(slot, key):
                self.quic_sid_slots[ctypes.c_uint32(index)] = self.quic_sid_slots.Leaf()
        self.quic_servers.pop(key, None)

    def _quic_sid_probes(self, key) -> list:
        """(index, slot) of the LBD_QUIC_PROBES slots where the key's entry may sit."""
        home = quic_sid_slot_of(key.vip_id, key.server_id[0], key.server_id[1], self.limits.max_backends)
        indexes = [(home + i) % self.limits.max_backends for i in range(C("LBD_QUIC_PROBES"))]
        return [(i, self.quic_sid_slots[ctypes.c_uint32(i)]) for i in indexes]

    @staticmethod
    def _holds(slot, key) -> bool:
        return slot.vip_id == key.vip_id and list(slot.server_id) == list(key.server_id)

    def quic_config(self, vip_id: int) -> tuple[int, int, int]:
        """(config ID, server ID length, CID length) of a VIP; length 0: none."""
        leaf = self.quic_configs[ctypes.c_uint32(vip_id)]
        return int(leaf.config_id), int(leaf.server_id_len), int(leaf.cid_len)

    def quic_server(self, vip_id: int, server_id: bytes) -> int | None:
        """The backend id quic_servers names for a VIP's server ID, or None."""
        value = self.quic_servers.get(self._quic_server_key(vip_id, server_id))
        return None if value is None else int(value.value)

    def quic_servers_of(self, vip_id: int) -> dict[bytes, int]:
        """Server ID (all 16 key octets, zero-padded) -> backend id of one VIP, as written."""
        return {struct.pack("=2Q", *k.server_id): v.value for k, v in self.quic_servers.items()
                if k.vip_id == vip_id}

    def quic_counters(self) -> dict[str, int]:
        """QUIC datagrams by lbd_quic_slot name (routed_short, fb_client_cid, ...)."""
        total = self._sum_percpu(self.quic_stats[ctypes.c_uint32(0)])["packets"]
        return {name: total[i] for i, name in layout.enum_names("LBD_QUIC_PKT_").items()}

    def quic_routed_count(self, backend_id: int) -> int:
        """Packets placed on a backend id by their CID's server ID, all CPUs."""
        return sum(int(v) for v in self.quic_routed[ctypes.c_uint32(backend_id)])

    # --- capture (xdp/capture.h; lbd.capture runs it) ----------------------------
    # Looked up on first use, so a program without them (an old revision in
    # bench/) still loads.
    @functools.cached_property
    def capture_ctl(self):
        return self.bpf[b"capture_ctl"]

    @functools.cached_property
    def capture_events(self):
        return self.bpf[b"capture_events"]

    def set_capture(self, ctl) -> None:
        """Write the capture's control entry (struct lbd_capture_ctl): on,
        its filter, its rate; `capture_off` ends it."""
        self.capture_ctl[ctypes.c_uint32(0)] = ctl

    def capture_state(self):
        return self.capture_ctl[ctypes.c_uint32(0)]

    def capture_off(self) -> None:
        self.capture_ctl[ctypes.c_uint32(0)] = self.capture_ctl.Leaf()

    CAPTURE_RING_PAGES = 64  # per CPU: 256 KiB, about 600 records between two reads

    def poll_capture(self, timeout_ms: int) -> list[bytes]:
        """The records the program sent (struct lbd_capture_record, then the
        frame as it left), waiting up to timeout_ms for the first. The per-CPU
        rings are opened on first use and kept: a capture costs no setup."""
        with self._capture_lock:
            if self._captured is None:
                self._captured, self._capture_lost = [], 0

                def lost(count):
                    self._capture_lost += count
                self.capture_events.open_perf_buffer(
                    lambda _cpu, data, size: self._captured.append(ctypes.string_at(data, size)),
                    page_cnt=self.CAPTURE_RING_PAGES, lost_cb=lost)
            self.bpf.perf_buffer_poll(timeout_ms)
            records, self._captured[:] = list(self._captured), []
            return records

    def capture_lost(self) -> int:
        """Records the rings had no room for since they were opened."""
        return self._capture_lost

    def close_capture(self) -> None:
        """Close the per-CPU rings (opened by poll_capture), while the map is
        still open: left to bcc's destructor at exit, closing them fails
        with a traceback on stderr."""
        from bcc.utils import get_online_cpus
        with self._capture_lock:
            if self._captured is not None:
                for cpu in get_online_cpus():
                    del self.capture_events[cpu]
                self._captured = None

    # --- attach ---------------------------------------------------------------
    def attach(self, ifname: str, mode: str = "native") -> str:
        return xdplink.attach(self.prog_fd, ifname, mode)

    def test_run(self, packet: bytes, ingress_ifindex: int = 0) -> bpfsys.TestRun:
        return bpfsys.test_run(self.prog_fd, packet, ingress_ifindex)


def load_helper(function_name: str, source: str = "pass.c"):
    """Load one of the small helper programs (xdp/pass.c, xdp/decap.c)."""
    from bcc import BPF

    bpf = BPF(src_file=str(layout.XDP_DIR / source).encode(),
              cflags=[f"-I{layout.XDP_DIR}", "-Wno-unused-function"])
    return bpf, bpf.load_func(function_name.encode(), BPF.XDP)
