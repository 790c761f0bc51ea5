"""QUIC VIPs' maps (xdp/quic.h): each VIP's CID format (quic_configs) and its
server IDs -> backend ids (quic_servers), written after the backend entries
they name; and which backends' QUIC connections a new plan moves."""
from __future__ import annotations

from typing import TYPE_CHECKING

from lbd.dataplane.maps import MapWriter
from lbd.dataplane.programmer.state import AppliedVip

if TYPE_CHECKING:  # plans are built by lbd.plan; this layer only reads them
    from lbd.plan import VipPlan


def sid_key(server_id: bytes) -> bytes:
    """A server ID as quic_servers' key holds it: zero-padded to 16 octets."""
    return server_id.ljust(16, b"\0")


def write(dp: MapWriter, applied: AppliedVip, old: AppliedVip | None, rewrite: bool) -> None:
    """The VIP's CID format and (server ID -> backend id) entries, writing
    only what differs from what is there: from the old plan, or, on the
    first apply after an adopt and on a restore, from the map itself."""
    plan, vip_id = applied.plan, applied.vip_id
    wanted = {sid_key(sid): applied.backend_ids[address] for sid, address in plan.server_ids().items()}
    if old is None or rewrite:
        there = dp.quic_servers_of(vip_id)
    else:
        there = {sid_key(sid): old.backend_ids[address] for sid, address in old.plan.server_ids().items()}
    if plan.quic:
        if rewrite or old is None or old.plan.quic != plan.quic:
            dp.set_quic_config(vip_id, plan.quic.config_id, plan.quic.server_id_len, plan.quic.cid_len)
    elif old is None or rewrite or old.plan.quic:
        dp.clear_quic_config(vip_id)
    for sid in there.keys() - wanted.keys():
        dp.delete_quic_server(vip_id, sid)
    for sid, backend_id in wanted.items():
        # read from the map (an adopted datapath, a restore): all of them, so that
        # their quic_sid_slots are filled too (an older program's has no slots)
        if there.get(sid) != backend_id or rewrite or old is None:
            dp.set_quic_server(vip_id, sid, backend_id)


def clear(dp: MapWriter, vip_id: int) -> None:
    """A removed VIP's CID format and server IDs (its id may be reused)."""
    dp.clear_quic_config(vip_id)
    for sid in dp.quic_servers_of(vip_id):
        dp.delete_quic_server(vip_id, sid)


def moved(old: VipPlan, new: VipPlan) -> dict[str, str]:
    """Kept backends whose QUIC connections move once `new` is applied: the
    server ID their clients' CIDs carry is no longer theirs (changed, or the
    VIP's CID format or quic: section changed, which moves every one)."""
    if old.quic is None:
        return {}
    after = {b.address: b.server_id for b in new.backends} if new.quic == old.quic else {}
    kept = {b.address for b in new.backends}
    return {str(b.address): f"{b.server_id.hex()} -> {after[b.address].hex() if after.get(b.address) else '-'}"
            for b in old.backends
            if b.server_id is not None and b.address in kept and after.get(b.address) != b.server_id}
