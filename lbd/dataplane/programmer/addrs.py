"""The per-address entries (which ports an address has, its fragment VIP)
and the prefilter bits in front of them, written only where they differ
from what is written: a health change must not rewrite 1,000 addresses."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.dataplane import layout
from lbd.dataplane.maps import IPAddress, MapWriter, prefilter_bit
from lbd.dataplane.programmer.state import Books

if TYPE_CHECKING:
    from lbd.plan import VipKey, VipPlan

C = layout.constant


def prefilter_words(addresses) -> dict[int, int]:
    """Prefilter words (index -> bits) with the bit of every address set."""
    words: dict[int, int] = {}
    for address in addresses:
        bit = prefilter_bit(address)
        words[bit // 64] = words.get(bit // 64, 0) | 1 << (bit % 64)
    return words


def write_prefilter(books: Books, dp: MapWriter, words: dict[int, int], exact: bool = False,
                    quic: bool = False) -> None:
    """Write the prefilter words (with quic, quic_prefilter's) that differ from
    what is written; with exact, every word not in `words` becomes zero as well."""
    written = books.quic_prefilter if quic else books.prefilter
    target = dict(written)
    if exact:
        target = {i: 0 for i in target}
    target.update(words)
    changed = {i: bits for i, bits in target.items() if bits != written.get(i, 0)}
    dp.write_prefilter(changed, quic=quic)
    kept = {i: bits for i, bits in target.items() if bits}
    if quic:
        books.quic_prefilter = kept
    else:
        books.prefilter = kept


def write_addrs(books: Books, dp: MapWriter, wanted: dict[VipKey, VipPlan]) -> None:
    """Rewrite the per-address entries (ports, wildcard, fragment VIP)."""
    by_addr: dict[tuple[IPAddress, int], list[VipPlan]] = {}
    for plan in wanted.values():
        by_addr.setdefault((plan.address, plan.proto), []).append(plan)
    entries = {key: _addr_entry(vips, books.vip_ids) for key, vips in by_addr.items()}
    for (address, proto), entry in entries.items():
        if books.addr_entries.get((address, proto)) != entry:
            dp.set_addr(address, proto, *entry)
    for (address, proto) in set(books.addr_entries) - set(entries):
        dp.delete_addr(address, proto)
    books.addr_entries = entries


def _addr_entry(vips: list[VipPlan], vip_ids: dict[VipKey, int]) -> tuple[int, int, int]:
    """(flags, fragment VIP id, its flags) of one address: fragments follow
    its first client-affinity VIP."""
    flags, frag_vip = 0, None
    for plan in sorted(vips, key=lambda p: p.port):
        flags |= C("LBD_ADDR_HAS_WILDCARD") if plan.port == 0 else C("LBD_ADDR_HAS_PORTS")
        if plan.client_affinity and frag_vip is None:
            frag_vip = plan
    if frag_vip:
        return (flags | C("LBD_ADDR_FRAG_VIP"), vip_ids[frag_vip.key], frag_vip.flags)
    return (flags, 0, 0)
