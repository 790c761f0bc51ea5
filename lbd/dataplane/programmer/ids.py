"""Ids and generations: every VIP gets a stable id, every (VIP, backend
address) a stable backend id; a reused backend id gets a new generation, so
connection-table entries of the backend that had it before move on instead
of reaching a stranger. `adopt` reads them back from the maps of a running
datapath, holds included, so a restarted daemon keeps every flow where it is."""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from lbd.dataplane import layout
from lbd.dataplane.maps import IPAddress, MapWriter
from lbd.dataplane.programmer.state import EMPTY, HELD, Books, HeldBackend

if TYPE_CHECKING:
    from lbd.plan import VipKey

C = layout.constant


def _address(raw: bytes, family: int) -> IPAddress:
    return ipaddress.ip_address(raw[:4] if family == C("LBD_FAMILY_V4") else raw)


def adopt(books: Books, dp: MapWriter) -> int:
    """Take over ids from maps written by an earlier daemon. Returns the
    number of VIPs found. The next apply rewrites every table with the same
    ids (identical tables for an identical config: no flow moves), and
    every hold goes on: second_until is read back, held backends too (a
    held entry keeps its configured weight in its ifindex, unused by ipip)."""
    id_to_key: dict[int, VipKey] = {}
    for vip_key, vip_id in dp.vip_ids().items():
        books.vip_ids[vip_key] = vip_id
        id_to_key[vip_id] = vip_key
    for backend_id, entry in dp.backend_entries().items():
        if entry.generation:
            books.generations[backend_id] = entry.generation
        if entry.state == EMPTY or entry.vip_id not in id_to_key:
            continue
        address = _address(bytes(entry.addr), entry.family)
        vip_key = id_to_key[entry.vip_id]
        books.backend_ids[(vip_key, address)] = backend_id
        books.until[backend_id] = int(entry.second_until)
        if entry.state == HELD:
            books.held.setdefault(vip_key, {})[address] = HeldBackend(
                backend_id, max(1, int(entry.ifindex)), int(entry.second_until))
        else:
            books.adopted.setdefault(vip_key, {})[address] = backend_id
    used_vips = set(books.vip_ids.values())
    used_backends = set(books.backend_ids.values())
    books.free_vip_ids = [i for i in books.free_vip_ids if i not in used_vips]
    books.free_backend_ids = [i for i in books.free_backend_ids if i not in used_backends]
    return len(books.vip_ids)


def backend_id(books: Books, dp: MapWriter, vip_key: VipKey, address: IPAddress, fresh: set[int]) -> int:
    """The backend's id: the one it has (a held address back in the config
    takes its held id again, an adopted one is claimed), or a free one with
    a new generation (added to `fresh`)."""
    existing = books.backend_ids.get((vip_key, address))
    if existing:
        books.held.get(vip_key, {}).pop(address, None)
        books.adopted.get(vip_key, {}).pop(address, None)
        return existing
    if not books.free_backend_ids:
        _yield_held_id(books, dp)
    new_id = books.free_backend_ids.pop()
    books.generations[new_id] = books.generations.get(new_id, 0) + 1
    books.backend_ids[(vip_key, address)] = new_id
    fresh.add(new_id)
    return new_id


def _yield_held_id(books: Books, dp: MapWriter) -> None:
    """Out of ids (the config fills limits.max_backends): the held backend
    whose hold ends first gives its id up now. A configured backend always
    comes before a hold."""
    held = [(h.until, key, address) for key, by_address in books.held.items()
            for address, h in by_address.items()]
    if not held:
        return  # pop() fails: apply reports the write failure and restores
    _, key, address = min(held, key=lambda h: h[0])
    gone = books.held[key].pop(address)
    release_backend(books, dp, key, address, gone.backend_id)
    if key in books.applied:  # its second table no longer has it
        books.second_pending[key] = None


def release_backend(books: Books, dp: MapWriter, vip_key: VipKey, address: IPAddress, backend_id: int) -> None:
    """The backend's entry cleared and its id freed (its generation kept)."""
    dp.clear_backend(backend_id)
    books.backend_ids.pop((vip_key, address), None)
    books.until.pop(backend_id, None)
    books.free_backend_ids.append(backend_id)
