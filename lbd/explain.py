"""`lbctl explain`: which backend a flow gets, and why.

It follows the program's own steps with the daemon's knowledge: the VIP the
packet matches, the connection-table entry if the flow is known, otherwise
the flow hash (or client hash), the Maglev slot and the backend in it, and
that backend's state and health.
"""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from lbd import flowhash
from lbd.programmer import PROTO_NUMBERS, STATE_NAMES

if TYPE_CHECKING:
    from lbd.daemon import Daemon


def parse_flow_end(text: str) -> tuple[ipaddress._BaseAddress, int]:
    host, _, port = text.rpartition(":")
    return ipaddress.ip_address(host.strip("[]")), int(port)


def explain(daemon: "Daemon", client: str, vip_spec: str) -> dict:
    """client: ADDR:PORT; vip_spec: ADDR:PORT/PROTO (PROTO tcp or udp)."""
    endpoint, _, proto_name = vip_spec.partition("/")
    proto = PROTO_NUMBERS.get(proto_name or "tcp")
    if proto is None:
        raise ValueError(f"protocol must be tcp or udp, got {proto_name!r}")
    src, sport = parse_flow_end(client)
    dst, dport = parse_flow_end(endpoint)
    if src.version != dst.version:
        raise ValueError("client and VIP must be the same address family")
    applied = daemon.programmer.applied()
    entry = applied.get((dst, dport, proto)) or applied.get((dst, 0, proto))
    if entry is None:
        return {"vip": None, "verdict": "pass: no VIP matches; the packet goes to the kernel untouched"}
    plan = entry.plan
    ring = daemon.datapath.limits.ring_size
    hashed = (flowhash.client_hash(src) if plan.client_affinity
              else flowhash.flow_hash(src, dst, sport, dport, proto))
    slot = flowhash.table_slot(hashed, ring)
    table_id = daemon.datapath.ring_slot(entry.vip_id, slot)
    by_id = {backend_id: address for address, backend_id in entry.backend_ids.items()}
    known = daemon.datapath.lookup_flow(src, dst, sport, dport, proto)
    health = daemon.health.snapshot() if daemon.health else {}

    def describe(backend_id: int) -> dict:
        address = by_id.get(backend_id)
        backend = next((b for b in plan.backends if b.address == address), None)
        return {"backend": str(address) if address else None, "backend_id": backend_id,
                "state": STATE_NAMES.get(backend.state) if backend else "not in config",
                "health": str(health.get((plan.name, str(address)), {}).get("state", "no check"))}

    result = {
        "vip": plan.name, "mode": "ipip" if plan.ipip else "dsr",
        "hash": "client address" if plan.client_affinity else "5-tuple",
        "hash_value": hashed, "table_slot": slot, "table_backend": describe(table_id),
        "connection_table": None,
    }
    if known:
        backend_id, generation = known
        info = describe(backend_id)
        usable = info["state"] in ("active", "draining")
        result["connection_table"] = {**info, "generation": generation}
        result["verdict"] = (f"known flow: stays on {info['backend']} ({info['state']})" if usable else
                             f"known flow, but {info['backend']} is {info['state']}: its next packet "
                             f"moves to {result['table_backend']['backend']}")
    else:
        result["verdict"] = (f"new flow: slot {slot} of the Maglev table -> "
                             f"{result['table_backend']['backend']}")
    return result
