"""Which checks a health-checked backend gets, and what they say together.

Every backend of a VIP with a `health` section is checked twice (docs/operating.md
"Health checks"):

* through the VIP: the check connects to the VIP's address and the check's
  port, marked so that lbd.dataplane.healthpath delivers it to this one backend the
  way the balancer delivers a client's packet (dsr rewrite, ipip/GUE);
* at the backend's own address: the same check, straight to the backend.

`health.via` names the deciding check (default `vip`): a backend is in its
VIP's table only while that one passes. The other is a second signal that
tells "the service is down" (both fail) from "the path is broken" (only the
VIP check fails) and is shown, logged and exported, never acted on.

Keys: the deciding check of a backend is keyed (VIP name, address), the key
the rest of the daemon has always used for a backend's health (pinned-state
restore, plans); its second signal is (VIP name, address, "second").
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from lbd.config import Config, Vip
from lbd.health import CheckSpec

SECOND = "second"


def deciding_key(vip: Vip, backend) -> tuple[str, str]:
    return (vip.name, str(backend.address))


def second_key(vip: Vip, backend) -> tuple[str, str, str]:
    return (vip.name, str(backend.address), SECOND)


def path_keys(config: Config) -> list[tuple[str, str]]:
    """One key per (VIP, backend) check through the VIP: what gets a mark."""
    return [deciding_key(vip, b) for vip in config.vips if vip.health is not None for b in vip.backends]


def health_targets(config: Config, mark_of: Callable[[tuple[str, str]], int]) -> dict:
    """Every check of the config: key -> CheckSpec (see the module doc)."""
    targets = {}
    for vip in config.vips:
        h = vip.health
        if h is None:
            continue
        common = dict(type=h.type, port=h.port, path=h.path, expect_status=h.expect_status, host=h.host,
                      sni=h.sni, verify_tls=h.verify, payload=h.payload or b"", expect=h.expect,
                      interval_s=h.interval_s, timeout_s=h.timeout_s, rise=h.rise, fall=h.fall)
        for backend in vip.backends:
            through_vip = CheckSpec(address=vip.address, mark=mark_of(deciding_key(vip, backend)), **common)
            at_address = CheckSpec(address=backend.address, **common)
            deciding, second = (through_vip, at_address) if h.via == "vip" else (at_address, through_vip)
            targets[deciding_key(vip, backend)] = deciding
            targets[second_key(vip, backend)] = second
    return targets


def path_words(vip: Vip) -> str:
    """How a client's packet reaches a backend of this VIP."""
    if vip.mode == "dsr":
        return "dsr (MAC rewrite)"
    return "ipip (GUE, second chance)" if vip.second_chance else "ipip"


def _endpoint(address: str, port: int | None) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


def verdict(vip: Vip, backend, checks: Mapping[Any, dict]) -> dict:
    """The two checks of a backend side by side, and one line that says which
    fails and why, in words an operator can act on. `checks` is
    HealthChecker.snapshot(); missing entries (not checked yet) say nothing."""
    h = vip.health
    first = checks.get(deciding_key(vip, backend), {})
    other = checks.get(second_key(vip, backend), {})
    through_vip, at_address = (first, other) if h.via == "vip" else (other, first)
    vip_end = _endpoint(str(vip.address), h.port)
    own_end = _endpoint(str(backend.address), h.port)
    vip_ok, own_ok = _passing(through_vip), _passing(at_address)
    vip_why, own_why = through_vip.get("last_detail"), at_address.get("last_detail")
    if vip_ok is False and own_ok is False:
        kind = "service_down"
        reason = (f"service down: {h.type} check of the backend's own address {own_end} fails ({own_why}), "
                  f"and through VIP {vip_end} too ({vip_why})")
    elif vip_ok is False:
        kind = "path_broken"
        reason = (f"VIP {vip_end} unreachable through {path_words(vip)}: {vip_why}; the backend's own "
                  f"address {own_end} answers. {_path_hint(vip)}")
    elif own_ok is False:
        kind = "address_failing"
        reason = (f"the backend's own address {own_end} fails ({own_why}) while VIP {vip_end} answers "
                  "through the data path: a listener bound to the VIP only, or a filter on the "
                  "backend's address")
    elif vip_ok is None and own_ok is None:
        kind, reason = "unchecked", ""
    else:
        kind, reason = "ok", ""
    return {"via": h.via, "verdict": kind, "reason": reason,
            "vip_check": _brief(through_vip), "address_check": _brief(at_address)}


def _passing(check: dict) -> bool | None:
    """False when a check is down or its latest result failed (the two
    checks of a backend run apart, so the latest results say at once what
    a state machine says only after `fall` of them); None: not checked yet."""
    if not check or (check.get("last_ok") is None and check.get("up") is not False):
        return None
    return bool(check.get("up")) and check.get("last_ok") is not False


def _path_hint(vip: Vip) -> str:
    if vip.mode == "dsr":
        return ("Check on the backend: the VIP on lo (ip addr show dev lo), arp_ignore/arp_announce, "
                "a firewall rule on the VIP; lbd-backend check --mode dsr --vip VIP.")
    return ("Check on the backend: lbd-backend check --mode ipip --vip VIP (the decapsulation program "
            "attached), the VIP on lo, a firewall rule on the VIP or on GUE/IP-in-IP.")


def _brief(check: dict) -> dict | None:
    if not check:
        return None
    return {"state": check.get("state"), "up": check.get("up"), "detail": check.get("last_detail"),
            "address": check.get("address"), "port": check.get("port"),
            "consecutive_failures": check.get("consecutive_failures")}
