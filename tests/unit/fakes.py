"""Doubles of lbd's own interfaces for the unit tier (no kernel).

FakeMaps is the one double of the balancer's maps: it implements
lbd.dataplane.maps.MapWriter, the calls the Programmer makes, with the same
signatures as Datapath (tests/unit/test_fakes.py holds it to both), and keeps
what was written as dicts. Kept across Programmers as pinned maps are, so a
second Programmer adopting them is a restarted daemon. The bpf tier runs the
same Programmer on the real maps (tests/bpf/test_second_choice_programmer.py).
"""
from __future__ import annotations

import array
from types import SimpleNamespace
from typing import Iterable

import numpy as np

from lbd.dataplane import layout
from lbd.dataplane.maps import BackendEntry, IPAddress, Limits, family_of

C = layout.constant
FAKE_RING = 1009  # a small prime ring: tables build in microseconds


class FakeMaps:
    """The maps a Programmer writes, as dicts."""

    def __init__(self, limits: Limits | None = None):
        self.limits = limits or Limits(max_vips=64, max_backends=1024, ring_size=FAKE_RING)
        self.vip_entries: dict = {}   # (address, port, proto) -> (vip id, flags)
        self.entries: dict[int, SimpleNamespace] = {}
        self.rings: dict[int, np.ndarray] = {}
        self.second_rings: dict[int, np.ndarray] = {}
        self.prefilter: dict[int, int] = {}
        self.quic_prefilter: dict[int, int] = {}
        self.addrs: dict = {}         # (address, proto) -> (flags, fragment VIP id, its flags)
        self.quic_configs: dict[int, tuple[int, int, int]] = {}  # vip id -> (config id, sid len, cid len)
        self.quic_servers: dict[tuple[int, bytes], int] = {}    # (vip id, padded server ID) -> backend id

    # --- MapWriter ------------------------------------------------------------------
    def vip_ids(self) -> dict[tuple[IPAddress, int, int], int]:
        return {key: vip_id for key, (vip_id, _) in self.vip_entries.items()}

    def backend_entries(self) -> dict:
        """As Datapath's: the entries that are not all zeros, by id."""
        return dict(self.entries)

    def read_prefilter(self, quic: bool = False) -> list[int]:
        bitmap = self.quic_prefilter if quic else self.prefilter
        return [bitmap.get(i, 0) for i in range(C("LBD_PREFILTER_WORDS"))]

    def write_prefilter(self, words: dict[int, int], quic: bool = False) -> None:
        (self.quic_prefilter if quic else self.prefilter).update(words)

    def set_vip(self, address: IPAddress, port: int, proto: int, vip_id: int, flags: int) -> None:
        self.vip_entries[(address, port, proto)] = (vip_id, flags)

    def delete_vip(self, address: IPAddress, port: int, proto: int) -> None:
        self.vip_entries.pop((address, port, proto), None)

    def set_addr(self, address: IPAddress, proto: int, flags: int,
                 frag_vip_id: int = 0, frag_vip_flags: int = 0) -> None:
        self.addrs[(address, proto)] = (flags, frag_vip_id, frag_vip_flags)

    def delete_addr(self, address: IPAddress, proto: int) -> None:
        self.addrs.pop((address, proto), None)

    def set_backend(self, backend_id: int, entry: BackendEntry) -> None:
        self.entries[backend_id] = SimpleNamespace(
            addr=_struct_words(entry.address), family=family_of(entry.address), state=entry.state,
            generation=entry.generation, vip_id=entry.vip_id, vip_flags=entry.vip_flags,
            ifindex=entry.ifindex, second_until=entry.second_until, address=entry.address)

    def set_backends(self, entries: dict[int, BackendEntry]) -> None:
        for backend_id, entry in entries.items():
            self.set_backend(backend_id, entry)

    def set_second_until(self, backend_id: int, value: int) -> None:
        self.entries[backend_id].second_until = value

    def clear_backend(self, backend_id: int) -> None:
        self.entries.pop(backend_id, None)  # the kernel's entry: all zero

    def write_rings(self, tables: dict) -> None:
        self.rings.update({i: np.array(t, dtype=np.uint32) for i, t in tables.items()})

    def write_second_rings(self, tables: dict) -> None:
        self.second_rings.update({i: np.array(t, dtype=np.uint32) for i, t in tables.items()})

    def clear_ring(self, vip_id: int) -> None:
        self.rings.pop(vip_id, None)

    def clear_second_ring(self, vip_id: int) -> None:
        self.second_rings.pop(vip_id, None)

    def read_second_ring(self, vip_id: int) -> array.array | None:
        """As Datapath's: the programmer reads written second tables back."""
        table = self.second_rings.get(vip_id)
        return None if table is None else array.array("I", table.tobytes())

    def second_ring_slot(self, vip_id: int, slot: int) -> int:
        table = self.second_rings.get(vip_id)
        return 0 if table is None else int(table[slot])

    def clear_counters(self, vip_ids: Iterable[int], backend_ids: Iterable[int]) -> None:
        pass  # no counters here

    def set_quic_config(self, vip_id: int, config_id: int, server_id_len: int, cid_len: int) -> None:
        self.quic_configs[vip_id] = (config_id, server_id_len, cid_len)

    def clear_quic_config(self, vip_id: int) -> None:
        self.quic_configs.pop(vip_id, None)

    def set_quic_server(self, vip_id: int, server_id: bytes, backend_id: int) -> None:
        self.quic_servers[(vip_id, server_id.ljust(16, b"\0"))] = backend_id

    def delete_quic_server(self, vip_id: int, server_id: bytes) -> None:
        self.quic_servers.pop((vip_id, server_id.ljust(16, b"\0")), None)

    def quic_servers_of(self, vip_id: int) -> dict[bytes, int]:
        return {sid: b for (v, sid), b in self.quic_servers.items() if v == vip_id}

    # --- what a test reads back -------------------------------------------------------
    def backend(self, backend_id: int):
        """As Datapath's: the entry, all zeros when there is none."""
        return self.entries.get(backend_id) or SimpleNamespace(
            addr=bytes(16), family=0, state=0, generation=0, vip_id=0, vip_flags=0, ifindex=0,
            second_until=0, address=None)

    def by_address(self) -> dict:
        """VIP key -> (first, second) with every slot's backend address (None: 0)."""
        out = {}
        for key, (vip_id, _) in self.vip_entries.items():
            def named(table):
                return tuple(None if i == 0 else self.entries[int(i)].address for i in table)
            second = self.second_rings.get(vip_id)
            out[key] = (named(self.rings[vip_id]), None if second is None else named(second))
        return out


def _struct_words(address: IPAddress) -> bytes:
    """The address as the kernel's struct holds it: four little-endian words."""
    from lbd.dataplane.maps import addr_words
    return np.array(addr_words(address), dtype="<u4").tobytes()
