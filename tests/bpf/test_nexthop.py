"""The ipip next-hop cache (struct lbd_nexthop, per CPU per backend id): filled
from successful FIB lookups only, used until it expires or the backend id's
generation changes, and the MTU check made against it answers exactly as the
FIB's own check did."""
from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Ether

from tests.bpf import scenario as sc
from tests.bpf.conftest import GW_MAC, LBD_MAC

pytestmark = pytest.mark.bpf

XDP_DROP, XDP_TX = 1, 3
BOGUS_MAC = bytes.fromhex("02dead00beef")


@pytest.fixture
def standard(lb):
    lb.apply(sc.standard_vips())
    return lb


def plan_of(address, port=80):
    return next(p for p in sc.standard_vips() if p.address == sc.ip(address) and p.port == port
                and p.proto == sc.TCP_P)


def backend_ids(lb, plan):
    return list(lb.programmer.applied()[plan.key].backend_ids.values())


def owner_id(lb, plan, packet) -> int:
    owner = sc.predicted_backend(lb, plan, packet)
    return lb.programmer.applied()[plan.key].backend_ids[owner.address]


def set_entry(lb, backend_id, **fields):
    """Overwrite fields of a backend id's cache entry on every CPU."""
    leaf = lb.dp.nexthops[lb.dp.nexthops.Key(backend_id)]
    for cpu in range(len(leaf)):
        for name, value in fields.items():
            if name.endswith("mac"):
                getattr(leaf[cpu], name)[:] = value
            else:
                setattr(leaf[cpu], name, value)
    lb.dp.nexthops[lb.dp.nexthops.Key(backend_id)] = leaf


def big_packet(address):
    """A DF packet of exactly 1500 bytes of IP: no room for the outer header."""
    small = sc.client_packet(address, 80, sport=42000, payload=b"", df=True)
    l3 = small[IP] if IP in small else small[IPv6]
    return sc.client_packet(address, 80, sport=42000, payload=b"p" * (1500 - len(l3)), df=True)


@pytest.mark.parametrize("version", [4, 6])
@pytest.mark.parametrize("cache", ["empty", "filled"])
def test_too_big_is_answered_whether_the_cache_is_empty_or_filled(standard, version, cache):
    address = sc.IPIP_V4 if version == 4 else sc.IPIP_V6
    overhead = 20 if version == 4 else 40
    plan = plan_of(address)
    for backend_id in backend_ids(standard, plan):
        standard.dp.forget_nexthop(backend_id)
    if cache == "filled":
        fits = sc.client_packet(address, 80, sport=42000, df=True)
        assert standard.run(bytes(fits)).action == XDP_TX
        backend_id = owner_id(standard, plan, fits)
        assert {e.mtu for e in standard.dp.nexthop(backend_id) if e.generation} == {1500}
    big = big_packet(address)
    assert len(big) - 14 == 1500
    result = standard.run(bytes(big))
    assert result.action == XDP_TX
    reply = Ether(result.packet)
    assert reply.dst == sc.CLIENT_MAC and reply.src == LBD_MAC
    if version == 4:
        assert reply[ICMP].type == 3 and reply[ICMP].code == 4
        assert reply[ICMP].nexthopmtu == 1500 - overhead
    else:
        assert reply[ICMPv6PacketTooBig].mtu == 1500 - overhead
    # the largest packet that fits still goes through, from the cache
    just_fits = sc.client_packet(address, 80, sport=42000, df=True,
                                 payload=b"p" * (len(big[IP if version == 4 else IPv6].payload.payload) - overhead))
    assert len(just_fits) - 14 == 1500 - overhead
    assert standard.run(bytes(just_fits)).action == XDP_TX


def test_a_forwarded_packet_fills_the_entry(standard):
    plan = plan_of(sc.IPIP_V4)
    packet = sc.client_packet(sc.IPIP_V4, 80, sport=43000)
    backend_id = owner_id(standard, plan, packet)
    standard.dp.forget_nexthop(backend_id)
    assert standard.run(bytes(packet)).action == XDP_TX
    filled = [e for e in standard.dp.nexthop(backend_id) if e.generation]
    assert len(filled) == 1, "one CPU ran the packet"
    entry = filled[0]
    assert sc.mac(bytes(entry.dst_mac)) == GW_MAC and sc.mac(bytes(entry.src_mac)) == LBD_MAC
    assert entry.mtu == 1500 and entry.ifindex == standard.ifindex and entry.expires_jiffies > 0
    assert entry.generation == standard.dp.backend(backend_id).generation


def test_the_cached_next_hop_is_used_until_it_is_stale(standard):
    plan = plan_of(sc.IPIP_V4)
    packet = bytes(sc.client_packet(sc.IPIP_V4, 80, sport=44000))
    backend_id = owner_id(standard, plan, sc.client_packet(sc.IPIP_V4, 80, sport=44000))
    assert standard.run(packet).action == XDP_TX
    generation = standard.dp.backend(backend_id).generation
    # what the cache holds is what the packet gets (no FIB lookup while fresh)
    set_entry(standard, backend_id, dst_mac=BOGUS_MAC, generation=generation,
              expires_jiffies=2**63, mtu=1500, ifindex=standard.ifindex)
    assert Ether(standard.run(packet).packet).dst == sc.mac(BOGUS_MAC)
    # an entry for another generation of the id is asked again
    set_entry(standard, backend_id, generation=generation + 1)
    assert Ether(standard.run(packet).packet).dst == GW_MAC
    # so is an expired one
    set_entry(standard, backend_id, dst_mac=BOGUS_MAC, generation=generation, expires_jiffies=1)
    assert Ether(standard.run(packet).packet).dst == GW_MAC


def test_a_failed_lookup_is_not_cached(standard):
    plan = plan_of(sc.UNRESOLVED_IPIP_V4)
    for backend_id in backend_ids(standard, plan):
        standard.dp.forget_nexthop(backend_id)
    assert standard.run(bytes(sc.client_packet(sc.UNRESOLVED_IPIP_V4, 80))).action == XDP_DROP
    for backend_id in backend_ids(standard, plan):
        assert all(e.generation == 0 for e in standard.dp.nexthop(backend_id))
