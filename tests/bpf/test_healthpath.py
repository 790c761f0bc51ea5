"""The health-path program (xdp/healthpath.c), packet by packet through the
real program (BPF_PROG_TEST_RUN of a TC program, an skb with a mark).

What a user relies on (docs/operating.md "Health checks"): a check's packet, marked for
a backend, leaves exactly as the balancer sends a client's packet placed on
that backend: byte for byte the balancer's own output for dsr and ipip (one
VIP, one backend, the same frame through both programs); GUE on a
second-chance VIP, naming the backend itself; and nothing else is touched: a
packet without a mark of lbd's range passes unchanged, and a mark of the
range that names no check is dropped, never sent to the placeholder MAC.
"""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP
from scapy.layers.l2 import Ether

from lbd.dataplane import bpfsys, layout
from lbd.dataplane.healthpath import HealthPath
from lbd.plan import VipPlan
from tests.bpf import scenario as sc
from tests.bpf.conftest import IPIP_SRC_V4, IPIP_SRC_V6
from tests.bpf.test_second_chance_balancer import check_gue_fields, expected_gue, gue_source_port

pytestmark = pytest.mark.bpf

C = layout.constant
MARK = C("LBD_HEALTH_MARK_BASE") | 7
TC_ACT_OK, TC_ACT_SHOT = 0, 2
XDP_TX = 3
VIPS = {4: "198.18.100.70", 6: "fd00:100::70"}
MEMBER = {("dsr", 4): "198.18.0.", ("dsr", 6): "fd00::", ("ipip", 4): "198.18.20.", ("ipip", 6): "fd00:20::"}


@pytest.fixture(scope="module")
def path(fib_namespace):
    hp = HealthPath("lbd0").load()  # loaded, not attached: the test runs it
    hp.set_sources(ipaddress.ip_address(IPIP_SRC_V4), ipaddress.ip_address(IPIP_SRC_V6))
    return hp


def run(path: HealthPath, packet, mark: int, ifindex: int) -> bpfsys.TestRun:
    return bpfsys.test_run_skb(path.function.fd, bytes(packet), mark=mark, ifindex=ifindex)


def one_backend_vip(mode: str, family: int, proto: int, second_chance: bool = False) -> VipPlan:
    plan = sc.vip(VIPS[family], 80, proto, ipip=mode == "ipip", members=sc.backends(MEMBER[mode, family], 1))
    return VipPlan(plan.address, plan.port, plan.proto, ipip=plan.ipip, backends=plan.backends,
                   name=plan.name, second_chance=second_chance)


def the_backends_entry(lb, plan: VipPlan) -> bytes:
    """The backend's entry as the balancer's map holds it: what the daemon copies."""
    backend_id = lb.programmer.applied()[plan.key].backend_ids[plan.backends[0].address]
    return bytes(lb.dp.backend(backend_id))


@pytest.mark.parametrize("mode", ["dsr", "ipip"])
@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("proto", [sc.TCP_P, sc.UDP_P], ids=["tcp", "udp"])
def test_a_check_leaves_as_the_balancer_sends_a_client_packet(lb, path, mode, family, proto):
    plan = one_backend_vip(mode, family, proto)
    lb.apply([plan])
    path.set_paths({MARK: the_backends_entry(lb, plan)})
    # the check's first packet: the lbd host's address to the VIP
    packet = sc.client_packet(VIPS[family], 80, proto, src=IPIP_SRC_V4 if family == 4 else IPIP_SRC_V6,
                              sport=45678)
    balancer = lb.run(packet)
    assert balancer.action == XDP_TX
    check = run(path, packet, MARK, lb.ifindex)
    assert check.action == TC_ACT_OK
    assert check.packet == balancer.packet  # byte for byte
    expected = sc.expected_dsr(packet, plan.backends[0]) if mode == "dsr" else \
        sc.expected_ipip(packet, plan.backends[0], plan)
    assert check.packet == expected


@pytest.mark.parametrize("family", [4, 6])
def test_a_second_chance_check_travels_in_gue_naming_the_backend_itself(lb, path, family):
    plan = one_backend_vip("ipip", family, sc.TCP_P, second_chance=True)
    lb.apply([plan])
    path.set_paths({MARK: the_backends_entry(lb, plan)})
    packet = sc.client_packet(VIPS[family], 80, sc.TCP_P, src=IPIP_SRC_V4 if family == 4 else IPIP_SRC_V6)
    before = path.counters()["gue"]
    check = run(path, packet, MARK, lb.ifindex)
    assert check.action == TC_ACT_OK
    backend = plan.backends[0].address
    sport = gue_source_port(check.packet)
    assert sport is not None and 0xC000 <= sport <= 0xFFFF
    assert check.packet == expected_gue(packet, backend, backend, sport, plan)
    check_gue_fields(check.packet, packet, backend)
    assert path.counters()["gue"] == before + 1
    # a udp check on such a VIP goes as the balancer sends UDP there: plain IP-in-IP
    udp = sc.client_packet(VIPS[family], 80, sc.UDP_P, src=IPIP_SRC_V4 if family == 4 else IPIP_SRC_V6)
    assert run(path, udp, MARK, lb.ifindex).packet == sc.expected_ipip(udp, plan.backends[0], plan)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mark=st.integers(0, 0xFFFFFFFF).filter(lambda m: m & C("LBD_HEALTH_MARK_MASK") != C("LBD_HEALTH_MARK_BASE")),
       family=st.sampled_from([4, 6]))
def test_packets_without_a_check_mark_pass_untouched(lb, path, mark, family):
    plan = one_backend_vip("ipip", family, sc.TCP_P)
    lb.apply([plan])
    path.set_paths({MARK: the_backends_entry(lb, plan)})
    packet = sc.client_packet(VIPS[family], 80, sc.TCP_P)
    result = run(path, packet, mark, lb.ifindex)
    assert (result.action, result.packet) == (TC_ACT_OK, bytes(packet))


def test_a_mark_of_the_range_without_a_check_is_dropped(lb, path):
    path.set_paths({})
    before = path.counters()["unknown_mark"]
    packet = sc.client_packet(VIPS[4], 80, sc.TCP_P)
    assert run(path, packet, MARK, lb.ifindex).action == TC_ACT_SHOT
    assert path.counters()["unknown_mark"] == before + 1


def test_a_check_of_the_other_family_or_not_tcp_udp_is_dropped(lb, path):
    plan = one_backend_vip("dsr", 4, sc.TCP_P)
    lb.apply([plan])
    path.set_paths({MARK: the_backends_entry(lb, plan)})
    before = path.counters()["unparsed"]
    v6 = sc.client_packet(VIPS[6], 80, sc.TCP_P)
    assert run(path, v6, MARK, lb.ifindex).action == TC_ACT_SHOT
    icmp = Ether(src=sc.CLIENT_MAC, dst="02:00:00:00:01:01") / IP(src="198.18.10.2", dst=VIPS[4], proto=1) / (b"x" * 8)
    assert run(path, icmp, MARK, lb.ifindex).action == TC_ACT_SHOT
    assert path.counters()["unparsed"] == before + 2


def test_no_route_to_an_ipip_backend_is_counted_and_dropped(lb, path):
    # a backend behind the namespace's next hop without a MAC (lbd.testing.fibns)
    members = sc.backends("198.18.30.", 1)
    plan = VipPlan(ipaddress.ip_address(VIPS[4]), 80, sc.TCP_P, ipip=True, backends=members, name="unresolved")
    lb.apply([plan])
    path.set_paths({MARK: the_backends_entry(lb, plan)})
    before = path.counters()["no_neighbour"]
    assert run(path, sc.client_packet(VIPS[4], 80, sc.TCP_P), MARK, lb.ifindex).action == TC_ACT_SHOT
    assert path.counters()["no_neighbour"] == before + 1
