"""lbd.healthview and lbd.dataplane.healthpath's MarkBook: which checks a backend gets
(docs/operating.md "Health checks": through the VIP and at its own address, `via`
deciding), and what the two verdicts say together, in operator words."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbd.dataplane import layout
from lbd.config import parse_config
from lbd.dataplane.healthpath import MarkBook
from lbd.healthview import deciding_key, health_targets, path_keys, second_key, verdict

pytestmark = pytest.mark.unit

CONFIG = """\
interfaces: [{name: eth0}]
ipip: {source_v4: 198.18.0.2}
vips:
  - {name: web, address: 198.18.100.1, port: 443, protocol: tcp, mode: ipip,
     health: {type: https, path: /healthz, host: www.example.com, VIA},
     backends: [{address: 198.18.20.11}, {address: 198.18.20.12}]}
  - {name: dns, address: 198.18.100.2, port: 53, protocol: udp, mode: dsr,
     health: {type: udp, payload: 'hex:12340100000100000000000000000100 01', expect: 'hex:1234'},
     backends: [{address: 198.18.0.11}]}
  - {name: plain, address: 198.18.100.3, port: 80, protocol: tcp, mode: dsr,
     backends: [{address: 198.18.0.11}]}
"""


def config(via: str = "vip"):
    return parse_config(CONFIG.replace("VIA", f"via: {via}").replace("00 01", "0001"))


def test_every_checked_backend_gets_a_check_through_the_vip_and_one_at_its_address():
    cfg = config()
    marks = MarkBook().assign(path_keys(cfg))
    targets = health_targets(cfg, marks.__getitem__)
    web = cfg.vips[0]
    b1 = web.backends[0]
    through, own = targets[deciding_key(web, b1)], targets[second_key(web, b1)]
    # the deciding check (via: vip) goes to the VIP, marked for this backend
    assert str(through.address) == "198.18.100.1" and through.port == 443
    assert through.mark == marks[("web", "198.18.20.11")] != 0
    # the second signal: the same check at the backend's own address, unmarked
    assert str(own.address) == "198.18.20.11" and own.mark == 0
    assert (through.type, through.path, through.host) == (own.type, own.path, own.host) == \
        ("https", "/healthz", "www.example.com")
    # udp settings carried; the unchecked VIP has no checks at all
    dns = targets[("dns", "198.18.0.11")]
    assert dns.payload.startswith(b"\x12\x34") and dns.expect == b"\x12\x34"
    assert not any(key[0] == "plain" for key in targets)
    assert len(targets) == 2 * 3


def test_via_address_makes_the_backends_own_address_decide():
    cfg = config("address")
    targets = health_targets(cfg, MarkBook().assign(path_keys(cfg)).__getitem__)
    web = cfg.vips[0]
    assert str(targets[deciding_key(web, web.backends[0])].address) == "198.18.20.11"
    assert str(targets[second_key(web, web.backends[0])].address) == "198.18.100.1"


def _check(up: bool, detail: str, address: str, last_ok: bool | None = None) -> dict:
    return {"state": "UP" if up else "DOWN", "up": up, "last_ok": up if last_ok is None else last_ok,
            "last_detail": detail, "address": address, "port": 443}


@pytest.mark.parametrize("vip_up, own_up, kind, words", [
    (False, True, "path_broken", ["VIP 198.18.100.1:443 unreachable through ipip (GUE, second chance): "
                                  "timeout after 0.5s", "own address 198.18.20.11:443 answers",
                                  "lbd-backend check --mode ipip"]),
    (False, False, "service_down", ["service down", "198.18.20.11:443 fails (connect refused)"]),
    (True, False, "address_failing", ["own address 198.18.20.11:443 fails (connect refused)"]),
    (True, True, "ok", []),
])
def test_the_verdict_says_which_check_fails_and_why(vip_up, own_up, kind, words):
    cfg = config()
    web, b1 = cfg.vips[0], cfg.vips[0].backends[0]
    checks = {deciding_key(web, b1): _check(vip_up, "status 200" if vip_up else "timeout after 0.5s",
                                            "198.18.100.1"),
              second_key(web, b1): _check(own_up, "status 200" if own_up else "connect refused",
                                          "198.18.20.11")}
    view = verdict(web, b1, checks)
    assert view["verdict"] == kind and view["via"] == "vip"
    for word in words:
        assert word in view["reason"], (word, view["reason"])
    assert (view["reason"] == "") == (kind == "ok")
    assert view["vip_check"]["up"] is vip_up and view["address_check"]["up"] is own_up


BASE, MASK = layout.constant("LBD_HEALTH_MARK_BASE"), layout.constant("LBD_HEALTH_MARK_MASK")


@given(st.lists(st.lists(st.integers(0, 40), max_size=30), min_size=1, max_size=6))
def test_marks_are_unique_in_range_and_stable_while_a_key_stays(rounds):
    book, before = MarkBook(), {}
    for keys in rounds:
        marks = book.assign(keys)
        assert set(marks) == set(keys)
        assert len(set(marks.values())) == len(marks)  # one check, one mark
        assert all(m & MASK == BASE and m != BASE for m in marks.values())  # the TC program's range
        for key in set(keys) & set(before):
            assert marks[key] == before[key]  # a reload keeps a check's mark (and so its state)
        before = marks


def test_a_preview_assigns_nothing():
    book = MarkBook()
    book.assign(["a"])
    preview = book.assign(["b"], commit=False)
    assert "b" in preview and book.get("b") is None and book.get("a") is not None


def test_the_verdict_follows_the_latest_results_of_both_checks():
    # the service stopped: the check through the VIP is already DOWN, the one
    # at the address has failed once (still FALLING, up): both fail now
    cfg = config()
    web, b1 = cfg.vips[0], cfg.vips[0].backends[0]
    checks = {deciding_key(web, b1): _check(False, "connect refused", "198.18.100.1"),
              second_key(web, b1): _check(True, "connect refused", "198.18.20.11", last_ok=False)}
    assert verdict(web, b1, checks)["verdict"] == "service_down"
    # nothing known yet: no verdict either way
    assert verdict(web, b1, {})["verdict"] == "unchecked"


def test_lbctl_status_prints_the_reason_under_the_backend():
    from lbd.lbctl import format_status
    cfg = config()
    web, b1 = cfg.vips[0], cfg.vips[0].backends[0]
    view = verdict(web, b1, {deciding_key(web, b1): _check(False, "timeout after 0.5s", "198.18.100.1"),
                             second_key(web, b1): _check(True, "status 200", "198.18.20.11")})
    backend = {"address": "198.18.20.11", "weight": 100, "state": "down", "health": "DOWN", "flows": 0,
               "idle_flows": 0, "note": "health check failing", "hold_until": None, "checks": view}
    healthy = dict(backend, address="198.18.20.12", state="active", health="UP", note="",
                   checks={**view, "verdict": "ok", "reason": ""})
    vip = {"name": "web", "address": "198.18.100.1", "port": 443, "protocol": "tcp", "mode": "ipip",
           "affinity": "flow", "fingerprint": "aaaa", "fail_open": False, "second_chance": True,
           "second_fingerprint": "bbbb", "second_pending": False, "held": [], "backends": [backend, healthy]}
    lines = format_status({"ready": True, "attached": {}, "reload": {}, "vips": [vip]}, stats=False).splitlines()
    row = next(i for i, line in enumerate(lines) if "198.18.20.11" in line and "->" in line)
    assert lines[row + 1].strip().startswith("VIP 198.18.100.1:443 unreachable through ipip (GUE, second chance)")
    assert "own address 198.18.20.11:443 answers" in lines[row + 1]
    after = next(i for i, line in enumerate(lines) if "198.18.20.12" in line)
    assert after == row + 2  # a passing backend gets no reason line
