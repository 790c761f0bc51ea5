"""What `lbctl capture` writes and accepts, without a kernel: the pcapng it
writes, read back by another implementation (scapy's reader: frames, lengths,
times, comments, directions, interfaces), the outer destination it names a
backend by, and the parameters it refuses with a message that says why."""
from __future__ import annotations

import io
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import PcapNgReader

from lbd import capture
from lbd.pcapng import INBOUND, OUTBOUND, PcapNgWriter

pytestmark = pytest.mark.unit

packets = st.lists(st.tuples(
    st.sampled_from(["eth0", "eth1", "bond0.7"]),
    st.integers(min_value=10**18, max_value=2 * 10**18),       # ns since 1970
    st.binary(min_size=14, max_size=256),
    st.integers(min_value=0, max_value=9000),                  # more on the wire than kept
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=80),
    st.sampled_from([0, INBOUND, OUTBOUND])), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(packets)
def test_what_the_writer_writes_scapy_reads_back(written):
    out = io.BytesIO()
    writer = PcapNgWriter(out, snaplen=256)
    for interface, time_ns, data, more, comment, direction in written:
        writer.packet(interface, time_ns, data, len(data) + more, comment, direction)
    out.seek(0)
    with PcapNgReader(out) as reader:
        read = list(reader)
    assert len(read) == len(written)
    for packet, (interface, time_ns, data, more, comment, direction) in zip(read, written):
        assert bytes(packet) == data and packet.wirelen == len(data) + more
        assert int(packet.time * 10**9) // 1000 == time_ns // 1000  # scapy keeps µs of a float
        assert (packet.comments or [b""]) == [comment.encode()]
        assert packet.sniffed_on == interface
        if direction:
            assert packet.direction == direction


@pytest.mark.parametrize("frame, where", [
    (Ether() / IP(src="198.18.0.2", dst="198.18.20.11") / IP(dst="198.18.100.2") / TCP(), "198.18.20.11"),
    (Ether() / Dot1Q(vlan=7) / Dot1Q(vlan=8) / IP(dst="198.18.20.12") / TCP(), "198.18.20.12"),
    (Ether() / IPv6(dst="fd00:20::11") / IPv6(dst="fd00:100::2") / TCP(), "fd00:20::11"),
    (Ether(type=0x0806) / (b"\0" * 28), None),
    (Ether() / IP(dst="198.18.20.11"), "198.18.20.11"),
])
def test_the_outer_destination_is_where_an_encapsulated_packet_went(frame, where):
    assert capture.outer_destination(bytes(frame)) == (ipaddress.ip_address(where) if where else None)
    assert capture.outer_destination(bytes(frame)[:20]) is None  # cut short: no answer, no error


@pytest.mark.parametrize("query, message", [
    ({"action": "tx,bounce"}, "action: bounce is not one of aborted, drop, pass, tx, redirect"),
    ({"reason": "no_backend", "action": "tx"}, "only drops have a reason"),
    ({"reason": "nope"}, "reason: nope is not one of malformed"),
    ({"count": "0"}, "count: must be above 0 and at most 1000000, got 0"),
    ({"duration": "7200"}, "duration: must be above 0 and at most 3600.0, got 7200.0"),
    ({"rate": "lots"}, "rate: not a number: 'lots'"),
    ({"client": "198.18.0.300"}, "client: not an address: '198.18.0.300'"),
])
def test_a_bad_parameter_is_refused_by_name(query, message):
    with pytest.raises(ValueError) as err:
        capture.spec_from_query(query, daemon=None)
    assert message in str(err.value)


def test_a_reason_alone_means_drops_and_the_default_leaves_passed_packets_to_tcpdump():
    assert capture.spec_from_query({"reason": "no_backend"}, daemon=None).actions == ("drop",)
    assert "pass" not in capture.spec_from_query({}, daemon=None).actions
