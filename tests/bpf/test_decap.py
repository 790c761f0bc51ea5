"""The backend-side decapsulation program turns what the balancer's ipip mode
sends back into the client's original packet, byte for byte; and what it sends
in GUE (second-chance VIPs) too, or on to the second choice once
(tests/bpf/test_decap_second_chance.py has the backend's side in detail)."""
from __future__ import annotations

import pytest
from scapy.layers.inet import IP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether

from lbd.backend import forwardto
from lbd.dataplane import bpfsys
from lbd.backend.decap import load_decap, write_forward_to
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

XDP_PASS, XDP_TX = 2, 3


@pytest.fixture(scope="module")
def decap(fib_namespace):
    bpf, fd = load_decap()
    # the backends' network, as prepare's default would find it on a backend there
    write_forward_to(bpfsys.program_id(fd), forwardto.parse(["198.18.20.0/24", "fd00:20::/64"]))
    yield fd
    bpf.cleanup()


@pytest.mark.parametrize("address,port,proto,vlan", [
    (sc.IPIP_V4, 80, 6, None), (sc.IPIP_V4, 53, 17, None), (sc.IPIP_V6, 80, 6, None),
    (sc.IPIP_V6, 53, 17, None), (sc.IPIP_V4, 80, 6, 9)])
def test_decap_restores_the_original_packet(lb, decap, address, port, proto, vlan):
    lb.apply(sc.standard_vips())
    original = sc.client_packet(address, port, proto, vlan=vlan,
                                ip_options=b"\x01\x01\x01\x00" if ":" not in address else None)
    encapsulated = lb.run(bytes(original))
    assert encapsulated.action == XDP_TX
    outer = Ether(encapsulated.packet)
    assert (IP in outer and outer[IP].proto == 4) or (IPv6 in outer and outer[IPv6].nh == 41)

    result = bpfsys.test_run(decap, encapsulated.packet)
    assert result.action == XDP_PASS
    l2_len = 18 if vlan is not None else 14
    inner = original[IP] if IP in original else original[IPv6]
    assert result.packet[l2_len:] == bytes(inner), "the IP packet, byte for byte"
    # the L2 header is the one the packet arrived with (MACs of the last hop)
    assert result.packet[:l2_len] == encapsulated.packet[:l2_len]


@pytest.mark.parametrize("frame", [
    sc.client_packet(sc.IPIP_V4, 80), sc.client_packet(sc.IPIP_V6, 53, 17),
    Ether() / IP(dst="198.18.0.1", proto=4) / (b"\x00" * 8),  # claims ipip, inner is no IPv4
])
def test_decap_leaves_everything_else_alone(decap, frame):
    raw = bytes(frame)
    result = bpfsys.test_run(decap, raw)
    assert result.action == XDP_PASS and result.packet == raw


@pytest.mark.parametrize("address", [sc.IPIP_V4, sc.IPIP_V6])
def test_decap_restores_a_frame_with_two_vlan_tags(lb, decap, address):
    """802.1ad + 802.1Q: the balancer keeps both tags, the backend strips
    only the outer IP header (with an IPv4 one, the 22-byte L2 header and
    the 20 bytes it moves over overlap)."""
    from scapy.layers.inet import TCP
    from scapy.layers.l2 import Dot1AD, Dot1Q
    lb.apply(sc.standard_vips())
    l3 = IP(src=sc.CLIENT_V4, dst=address) if ":" not in address else IPv6(src=sc.CLIENT_V6, dst=address)
    original = Ether(src=sc.CLIENT_MAC, dst=sc.LBD_MAC) / Dot1AD(vlan=100) / Dot1Q(vlan=7) / l3 / \
        TCP(sport=40500, dport=80, flags="S") / b"two tags"
    encapsulated = lb.run(bytes(original))
    assert encapsulated.action == XDP_TX
    result = bpfsys.test_run(decap, encapsulated.packet)
    assert result.action == XDP_PASS
    assert result.packet[22:] == bytes(original)[22:]
    assert result.packet[12:22] == bytes(original)[12:22], "both tags kept"


@pytest.mark.parametrize("version", [4, 6])
def test_the_balancers_gue_is_kept_or_forwarded_once_by_the_backend(lb, decap, fib_namespace, version):
    """Through both programs: a SYN in GUE stays at the first choice; a packet
    of a flow it has no socket for goes on to the second choice the balancer
    named, from the first, once; there it is the client's packet again."""
    from scapy.layers.inet import UDP
    from tests.bpf.test_second_chance_balancer import TCP_VIP, SecondChance, client

    setup = SecondChance(lb)
    try:
        plan = setup.plan(TCP_VIP[version])
        setup.set_second_chance(plan)
        first, second = setup.ids(plan)[:2]
        setup.constant_tables(plan, first, second)
        for n, flags in enumerate(("S", "A")):
            packet = client(version, n, TCP_VIP[version], flags=flags)
            inner = bytes(packet[IP] if version == 4 else packet[IPv6])
            gue = lb.run(bytes(packet))
            assert gue.action == XDP_TX and Ether(gue.packet)[UDP].dport == 6080
            result = bpfsys.test_run(decap, gue.packet, fib_namespace)
            if flags == "S":
                assert result.action == XDP_PASS and result.packet[14:] == inner
                continue
            assert result.action == XDP_TX
            outer = Ether(result.packet)[IP if version == 4 else IPv6]
            assert (outer.src, outer.dst) == (str(setup.address_of(first)), str(setup.address_of(second)))
            assert result.packet.endswith(inner)
            again = bpfsys.test_run(decap, result.packet, fib_namespace)
            assert again.action == XDP_PASS and again.packet[14:] == inner, "kept at the second"
    finally:
        setup.cleanup()
