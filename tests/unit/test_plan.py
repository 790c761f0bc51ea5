"""From config, health and neighbour facts to backend states (no kernel)."""
import ipaddress

import pytest

from lbd.dataplane import layout
from lbd.config import parse_config
from lbd.neighbours import Resolved
from lbd.plan import ACTIVE, DOWN, DRAINING, plans_for

pytestmark = pytest.mark.unit

CONFIG = """
interfaces: [{name: eth0}]
ipip: {source_v4: 198.18.0.2}
vips:
  - {name: web, address: 198.18.100.1, port: 80, protocol: tcp, mode: dsr,
     health: {type: tcp},
     backends: [{address: 198.18.0.11}, {address: 198.18.0.12, drain: true},
                {address: 198.18.0.13, weight: 0}, {address: 198.18.0.14}]}
  - {name: remote, address: 198.18.100.2, port: 80, protocol: tcp, mode: ipip, affinity: client,
     backends: [{address: 198.18.20.11}]}
"""
ip = ipaddress.ip_address


def resolved(*hosts, missing=()):
    out = {}
    for host in hosts:
        address = ip(host)
        if host in missing:
            out[address] = Resolved(address, problem=f"no MAC for {host}")
        else:
            out[address] = Resolved(address, 2, "eth0", b"\x02" * 6, b"\x02\xbe" + address.packed)
    return out


def states(plan):
    return {str(b.address): b.state for b in plan.backends}


def test_states_follow_drain_health_and_neighbours():
    config = parse_config(CONFIG)
    down = {"198.18.0.14"}
    plans, statuses = plans_for(config, lambda vip, b: str(b.address) not in down,
                                resolved("198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"))
    web = plans[0]
    assert states(web) == {"198.18.0.11": ACTIVE, "198.18.0.12": DRAINING, "198.18.0.13": DRAINING,
                           "198.18.0.14": DOWN}
    assert [b.in_table for b in web.backends] == [True, False, False, False]
    assert "health" in statuses["web"].notes["198.18.0.14"]
    assert plans[1].ipip and plans[1].client_affinity and plans[1].backends[0].state == ACTIVE


def test_unresolved_dsr_backend_is_down_and_reported():
    config = parse_config(CONFIG)
    plans, statuses = plans_for(config, lambda vip, b: True,
                                resolved("198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14",
                                         missing={"198.18.0.11"}))
    assert states(plans[0])["198.18.0.11"] == DOWN
    assert "no MAC" in statuses["web"].notes["198.18.0.11"]


def test_all_health_checks_failing_fails_open():
    config = parse_config(CONFIG)
    plans, statuses = plans_for(config, lambda vip, b: False,
                                resolved("198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14"))
    web = plans[0]
    assert statuses["web"].fail_open
    # the health-failed backends are back in the table; drained ones stay out
    assert {str(b.address) for b in web.backends if b.in_table} == {"198.18.0.11", "198.18.0.14"}


def test_no_fail_open_when_the_only_usable_backends_are_unreachable():
    config = parse_config(CONFIG)
    plans, statuses = plans_for(config, lambda vip, b: True,
                                resolved("198.18.0.11", "198.18.0.12", "198.18.0.13", "198.18.0.14",
                                         missing={"198.18.0.11", "198.18.0.14"}))
    assert not statuses["web"].fail_open
    assert not any(b.in_table for b in plans[0].backends)


SECOND_CHANCE = """
interfaces: [{name: eth0}]
ipip: {source_v4: 198.18.0.2}
vips:
  - {name: web, address: 198.18.100.3, port: 443, protocol: tcp, mode: ipip,
     backends: [{address: 198.18.20.11, weight: 50, drain: true}, {address: 198.18.20.12, weight: 0}]}
  - {name: plain, address: 198.18.100.3, port: 80, protocol: tcp, mode: ipip, second_chance: false,
     backends: [{address: 198.18.20.11}]}
  - {name: udp, address: 198.18.100.3, port: 53, protocol: udp, mode: ipip, backends: [{address: 198.18.20.11}]}
"""


def test_second_chance_is_a_vip_flag():
    plans, _ = plans_for(parse_config(SECOND_CHANCE), lambda vip, b: True, {})
    flag = layout.constant("LBD_VIP_SECOND_CHANCE")
    assert [bool(p.flags & flag) for p in plans] == [True, False, False]
    assert all(p.flags & layout.constant("LBD_VIP_MODE_IPIP") for p in plans)


def test_a_drained_backend_keeps_its_configured_weight_as_a_candidate():
    on = plans_for(parse_config(SECOND_CHANCE), lambda vip, b: True, {})[0][0]
    drained, zero = on.backends
    assert (drained.state, drained.weight, drained.candidate_weight) == (DRAINING, 0, 50)
    # weight 0 in the config: it takes no slots, yet may hold flows
    assert (zero.state, zero.weight, zero.candidate_weight) == (DRAINING, 0, 1)


def test_every_plan_carries_the_configs_hold():
    """second_chance.hold travels with the plans: an apply (and a failed
    reload's restore) uses the hold of the config its plans came from."""
    default = plans_for(parse_config(SECOND_CHANCE), lambda vip, b: True, {})[0]
    assert {p.hold_s for p in default} == {120.0}  # docs/second-chance.md: second_chance: {hold: 120s} by default
    held = plans_for(parse_config(SECOND_CHANCE + "second_chance: {hold: 45s}\n"), lambda vip, b: True, {})[0]
    assert {p.hold_s for p in held} == {45.0}
