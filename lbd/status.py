"""The status view: what `/status` and `lbctl status` show, assembled from
the daemon's config, the maps' counters, health, the last table sample and
the rate ring (lbd.rates)."""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from lbd import healthview
from lbd.dataplane import flowtable, layout
from lbd.plan import VipStatus

if TYPE_CHECKING:
    from lbd.daemon import Daemon

STATE_NAMES = layout.enum_names("LBD_BACKEND_")  # the header's names: active, draining, down, empty, held
FOREVER = layout.constant("LBD_SECOND_FOREVER")


def status_view(daemon: "Daemon") -> dict:
    d = daemon
    health = d.health.snapshot() if d.health else {}
    applied = d.programmer.applied() if d.programmer else {}
    vips = []
    for vip in d.config.vips:
        entry = applied.get((vip.address, vip.port, vip.proto_number))
        status = d.vip_status.get(vip.name, VipStatus())
        backends = []
        for backend, plan in zip(vip.backends, entry.plan.backends if entry else ()):
            h = health.get((vip.name, str(backend.address)), {})
            checks = healthview.verdict(vip, backend, health) if vip.health else None
            backend_id = entry.backend_ids[backend.address]
            until = d.programmer.second_until(backend_id)
            backends.append({
                "address": str(backend.address), "weight": backend.weight, "drain": backend.drain,
                "state": STATE_NAMES.get(plan.state, "?"),
                # "none": no check configured; INIT: checked, no verdict yet
                "in_table": plan.in_table, "health": str(h.get("state", "none")),
                "health_detail": h.get("last_detail"), "health_checks": h.get("checks", 0),
                "note": status.notes.get(str(backend.address), ""),
                # both checks apart and what they say together (lbd.healthview)
                "checks": checks,
                "flows": flows_of(d, backend_id), "idle_flows": flows_of(d, backend_id, idle=True),
                "rate": d.rates.backend(backend_id),
                # a down backend of a second-chance VIP: a second choice until then
                "hold_until": until if until not in (0, FOREVER) else None,
                # QUIC VIPs: the server ID its CIDs carry, and the packets placed by it
                "server_id": backend.server_id,
                "quic_routed": d.datapath.quic_routed_count(backend_id) if vip.quic else None,
                **d.datapath.backend_counters(backend_id)})
        vips.append({"name": vip.name, "address": str(vip.address), "port": vip.port,
                     "protocol": vip.protocol, "mode": vip.mode, "affinity": vip.affinity,
                     "fingerprint": entry.fingerprint if entry else "", "fail_open": status.fail_open,
                     "second_chance": bool(vip.second_chance),
                     "quic": vip.quic.model_dump() if vip.quic else None,
                     "second_fingerprint": entry.second_fingerprint if entry else "",
                     # being built (lbd.daemon SECOND_BUDGET_S): the fingerprint is of the table before
                     "second_pending": bool(entry) and d.programmer.second_pending(entry.plan.key),
                     "held": held_backends(d, entry) if entry else [],
                     "counters": d.datapath.vip_counters(entry.vip_id) if entry else {},
                     "rate": d.rates.vip(entry.vip_id) if entry else None,
                     "backends": backends})
    return {"ready": d.ready, "config": d.config_path, "attached": d.attached,
            "uptime_s": round(time.time() - d.started, 1), "reload": d.reload_state,
            "global": d.datapath.global_counters() if d.datapath else {}, "vips": vips,
            "conntrack": {name: {"entries": u.entries, "capacity": u.capacity,
                                 "used": round(u.used, 4), "walk_seconds": round(u.walk_seconds, 3),
                                 "idle_after_s": u.idle_after_s}
                          for name, u in d.table_usage.items()},
            # flows and idle_flows are from this sample of the tables, taken every every_s
            "flows_sample": {"at": d.table_sampled_at, "every_s": flowtable.SAMPLE_EVERY_S,
                             "age_s": round(time.time() - d.table_sampled_at, 1) if d.table_sampled_at else None,
                             "idle_after_s": flowtable.IDLE_AFTER_S, "closed_after_s": flowtable.CLOSED_AFTER_S},
            "rate_window_s": d.rates.span_s,
            "capture": d.capture_last,  # the last `lbctl capture`'s summary (lbd.capture)
            "bgp": d.announcer.status() if d.announcer else None}


def held_backends(daemon: "Daemon", entry) -> list[dict]:
    """The VIP's backends removed from the config whose hold runs: second
    choices still, until `hold_until` (unix seconds)."""
    held = daemon.programmer.held(entry.plan.key)
    return [{"address": str(address), "backend_id": h.backend_id, "weight": h.weight, "state": "held",
             "hold_until": h.until, "flows": flows_of(daemon, h.backend_id),
             "idle_flows": flows_of(daemon, h.backend_id, idle=True)}
            for address, h in sorted(held.items(), key=lambda item: item[0].packed)]


def flows_of(daemon: "Daemon", backend_id: int, idle: bool = False) -> int | None:
    """The backend's live flows (or, with idle, its idle entries) at the last
    sample (None before one); lbd.dataplane.flowtable says which are which."""
    if not daemon.table_usage:
        return None
    return sum((u.idle_by_backend if idle else u.by_backend).get(backend_id, 0)
               for u in daemon.table_usage.values())
