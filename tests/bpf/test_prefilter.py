"""The prefilter bitmap (xdp/prefilter.h): every VIP address has its bit set
while any VIP uses it, the Python and C sides agree on which bit that is, and
a bit shared with a foreign address never makes that address's traffic ours."""
from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from lbd.dataplane import layout
from lbd.dataplane.maps import prefilter_bit
from lbd.plan import QuicPlan
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

XDP_PASS, XDP_TX = 2, 3


def set_bits(dp) -> set[int]:
    return {i * 64 + b for i, word in enumerate(dp.read_prefilter()) for b in range(64) if word >> b & 1}


def test_bits_follow_the_vip_addresses(lb):
    plans = sc.standard_vips()
    lb.apply(plans)
    assert set_bits(lb.dp) == {prefilter_bit(p.address) for p in plans}
    kept = [p for p in plans if p.address != sc.ip(sc.DSR_V4)]
    lb.apply(kept)
    assert set_bits(lb.dp) == {prefilter_bit(p.address) for p in kept}
    lb.apply([])
    assert set_bits(lb.dp) == set()


def test_program_checks_the_bit_python_computes(lb):
    plan = sc.vip(sc.DSR_V4, 80, sc.TCP_P)
    lb.apply([plan])
    packet = bytes(sc.client_packet(sc.DSR_V4, 80))
    assert lb.run(packet).action == XDP_TX
    bit = prefilter_bit(plan.address)
    words = lb.dp.read_prefilter()
    lb.dp.write_prefilter({bit // 64: words[bit // 64] & ~(1 << bit % 64)})
    try:
        result = lb.run(packet)
        assert result.action == XDP_PASS and result.packet == packet
    finally:
        lb.dp.write_prefilter({bit // 64: words[bit // 64]})
    assert lb.run(packet).action == XDP_TX


def twin_of(address):
    """Another address of the same family with the same prefilter bit."""
    rng = random.Random(7)
    target = prefilter_bit(address)
    while True:
        if address.version == 4:
            twin = ipaddress.IPv4Address(0xC6120000 | rng.getrandbits(17))  # 198.18.0.0/15
        else:
            twin = ipaddress.IPv6Address(int(address) & ~0xFFFFFFFFFFFF | rng.getrandbits(48))
        if twin != address and prefilter_bit(twin) == target:
            return twin


def test_foreign_address_sharing_a_bit_passes_untouched(lb):
    lb.apply([sc.vip(sc.DSR_V4, 80, sc.TCP_P), sc.vip(sc.DSR_V6, 80, sc.TCP_P)])
    for vip_address in (sc.DSR_V4, sc.DSR_V6):
        twin = twin_of(sc.ip(vip_address))
        for packet in (sc.client_packet(str(twin), 80), sc.client_packet(str(twin), 80, sc.UDP_P)):
            raw = bytes(packet)
            result = lb.run(raw)
            assert result.action == XDP_PASS and result.packet == raw


def quic_vip():
    """A QUIC VIP (a UDP VIP with quic:), whose address has a quic_prefilter bit too."""
    members = tuple(dataclasses.replace(b, server_id=bytes([i + 1]))
                    for i, b in enumerate(sc.backends("198.18.0.", 2)))
    return dataclasses.replace(sc.vip(sc.DSR_V4, 443, sc.UDP_P, members=members), quic=QuicPlan(0, 1, 6))


@pytest.mark.parametrize("make,want", [
    (lambda: sc.vip(sc.DSR_V4, 80, sc.TCP_P), ["bit set", "set_vip", "delete_vip", "bit cleared"]),
    (quic_vip, ["bit set", "quic bit set", "set_vip", "delete_vip", "bit cleared", "quic bit cleared"]),
], ids=["tcp", "quic"])
def test_bit_is_set_before_the_vip_and_cleared_after_it(lb, make, want):
    plan = make()
    bit = prefilter_bit(plan.address)
    events = []
    dp = lb.dp
    real = {name: getattr(dp, name) for name in ("write_prefilter", "set_vip", "delete_vip")}

    def record(name):
        def call(*args, **kwargs):
            if name == "write_prefilter":
                word = args[0].get(bit // 64)
                which = "quic bit" if kwargs.get("quic") else "bit"
                if word is not None:
                    events.append(f"{which} set" if word >> bit % 64 & 1 else f"{which} cleared")
            else:
                events.append(name)
            return real[name](*args, **kwargs)
        return call

    for name in real:
        setattr(dp, name, record(name))
    try:
        lb.apply([plan])
        lb.apply([])
    finally:
        for name in real:
            delattr(dp, name)
    assert events == want


def test_prefilter_constants_describe_the_map(datapath):
    assert layout.constant("LBD_PREFILTER_WORDS") * 64 == 1 << layout.constant("LBD_PREFILTER_LOG2")
    assert len(datapath.read_prefilter()) == layout.constant("LBD_PREFILTER_WORDS")
