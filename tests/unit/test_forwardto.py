"""`lbd-backend prepare --forward-to`: the values an operator types, and the
trie keys the backend program looks addresses up by (struct
lbd_forward_prefix: an IPv4 prefix IPv4-mapped, its length plus 96). That the
program admits exactly the addresses inside is tested against the kernel in
tests/bpf/test_decap_second_chance.py."""
from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbd.backend import forwardto
from tests.unit.test_layout import header_sizes

pytestmark = pytest.mark.unit

v4 = st.builds(lambda a, n: ipaddress.IPv4Network((a, n), strict=False),
               st.integers(0, 2**32 - 1), st.integers(0, 32))
# IPv6 prefixes outside ::ffff:0:0/96, whose keys are IPv4's
v6 = st.builds(lambda a, n: ipaddress.IPv6Network((a, n), strict=False),
               st.integers(0, 2**128 - 1), st.integers(0, 128)).filter(
    lambda n: not (n.prefixlen >= 96 and n.subnet_of(ipaddress.ip_network("::ffff:0:0/96"))))


@given(st.one_of(v4, v6))
def test_a_key_gives_its_prefix_back(network):
    key = forwardto.key(network)
    assert len(key) == forwardto.KEY_SIZE
    assert forwardto.network_of(key) == network


@given(v4, st.integers(0, 2**32 - 1))
def test_an_ipv4_key_matches_as_the_kernel_matches_its_mapped_address(network, address):
    """The LPM trie compares the first prefixlen bits of the key's 16 bytes
    with the looked-up address's (the IPv4-mapped one for IPv4)."""
    key = forwardto.key(network)
    length = int.from_bytes(key[:4], "little")
    mapped = ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.to_bytes(4, "big"))
    bits = int.from_bytes(key[4:], "big") >> (128 - length) if length else 0
    same = (int(mapped) >> (128 - length) if length else 0) == bits
    assert same == (ipaddress.IPv4Address(address) in network)


def test_values_are_cidrs_or_any_and_a_bad_one_is_named():
    assert forwardto.parse(["10.1.0.0/16", "fd00::/48", "10.1.0.0/16", "192.0.2.7"]) == [
        ipaddress.ip_network("10.1.0.0/16"), ipaddress.ip_network("192.0.2.7/32"),
        ipaddress.ip_network("fd00::/48")]
    assert forwardto.parse(["any"]) == list(forwardto.ANY)
    assert forwardto.describe(forwardto.parse(["any", "10.0.0.0/8"])) == "any address"
    assert forwardto.describe([]) == "no address"
    with pytest.raises(ValueError, match=r"--forward-to '10.1.2.3/16': .*host bits set"):
        forwardto.parse(["10.1.2.3/16"])
    with pytest.raises(ValueError, match=r"--forward-to 'backends'"):
        forwardto.parse(["backends"])


def test_the_key_is_the_shared_struct():
    assert forwardto.KEY_SIZE == header_sizes()["lbd_forward_prefix"]
