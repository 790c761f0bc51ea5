"""Second-chance forwarding, the balancer's side (issue #12), packet by packet
through the real program (BPF_PROG_TEST_RUN).

What a user relies on: a packet of a second-chance VIP travels in GUE to its
first choice, naming its second choice, exactly when the two differ and the
second is still a second choice of the same VIP (its hold has not ended); the
second a flow was placed with stays in its entry, so every later packet names
it whatever the table says by then; every other packet (no second, the same,
an ended hold, another VIP's backend, a VIP without second chance, any UDP
VIP) is plain IP-in-IP exactly as before; and a second-chance VIP's MTU counts
GUE's overhead always. Expected frames are built from the wire format
(lbd_shared.h, draft-ietf-intarea-gue variant 0) with scapy.

The first and second tables are written here with Datapath, not computed by
the control plane (which has tests of its own): any table the daemon could
write must be carried faithfully.
"""
from __future__ import annotations

import ipaddress
import struct
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6PacketTooBig, IPv6
from scapy.layers.l2 import Dot1Q, Ether

from lbd.dataplane import flowhash, layout
from lbd.dataplane.maps import BackendEntry
from lbd.explain import PACKET, RST, SYN, Flow, decide, read_flow
from lbd.plan import ACTIVE, DOWN, DRAINING, HELD, BackendPlan
from tests.bpf import flowkit as fk
from tests.bpf import scenario as sc
from tests.bpf.conftest import GW_MAC, IPIP_SRC_V4, IPIP_SRC_V6, LBD_MAC

pytestmark = pytest.mark.bpf

C = layout.constant
SECOND_CHANCE = C("LBD_VIP_SECOND_CHANCE")
FOREVER = C("LBD_SECOND_FOREVER")
GUE_PORT, GUE_MAGIC = C("LBD_GUE_PORT"), C("LBD_GUE_MAGIC")
OVERHEAD = {4: C("LBD_GUE_OVERHEAD_V4"), 6: C("LBD_GUE_OVERHEAD_V6")}
IPIP_OVERHEAD = {4: 20, 6: 40}
LINK_MTU = 1500  # lbd0's, the egress toward every ipip backend (lbd.testing.fibns)
XDP_TX = 3
ip = ipaddress.ip_address

TCP_VIP = {4: "198.18.100.60", 6: "fd00:100::60"}
UDP_VIP = {4: "198.18.100.62", 6: "fd00:100::62"}
OTHER_VIP = {4: "198.18.100.61", 6: "fd00:100::61"}
MEMBERS = {4: "198.18.20.", 6: "fd00:20::"}   # routed via the resolved next hop
CLIENTS = {4: "198.19.{}.{}", 6: "fd00:19::{:x}:{:x}"}


def plans():
    vips = [sc.vip(TCP_VIP[v], 80, sc.TCP_P, ipip=True, members=sc.backends(MEMBERS[v], 4))
            for v in (4, 6)]
    vips += [sc.vip(UDP_VIP[v], 53, sc.UDP_P, ipip=True, members=sc.backends(MEMBERS[v], 4))
             for v in (4, 6)]
    vips += [sc.vip(OTHER_VIP[v], 80, sc.TCP_P, ipip=True, members=sc.backends(MEMBERS[v] + "1", 2))
             for v in (4, 6)]  # backends ...111 and ...112
    return vips


class SecondChance:
    """The test's VIPs programmed, then turned into second-chance VIPs by hand
    and given the tables each test writes."""

    def __init__(self, lb):
        self.lb, self.dp = lb, lb.dp
        self.plans = plans()
        lb.apply(self.plans)
        self.applied = lb.programmer.applied()
        self.by_key = {p.key: p for p in self.plans}

    def plan(self, address: str, proto: int = sc.TCP_P):
        port = 80 if proto == sc.TCP_P else 53
        return self.by_key[(ip(address), port, proto)]

    def vip_id(self, plan) -> int:
        return self.applied[plan.key].vip_id

    def ids(self, plan) -> list[int]:
        """The VIP's backend ids, in the order of its members."""
        ids = self.applied[plan.key].backend_ids
        return [ids[b.address] for b in plan.backends]

    def address_of(self, backend_id: int):
        for applied in self.applied.values():
            for address, bid in applied.backend_ids.items():
                if bid == backend_id:
                    return address
        raise KeyError(backend_id)

    def set_second_chance(self, plan, on: bool = True) -> None:
        """The flag on (or off) in the VIP and in each backend entry (where
        established flows read it), every backend a second choice for ever."""
        flags = (plan.flags | SECOND_CHANCE) if on else (plan.flags & ~SECOND_CHANCE)
        vip_id = self.vip_id(plan)
        self.dp.set_vip(plan.address, plan.port, plan.proto, vip_id, flags)
        for backend_id, member in zip(self.ids(plan), plan.backends):
            self.set_member(plan, backend_id, member.address, flags=flags)

    def set_member(self, plan, backend_id: int, address, *, flags=None, state=None,
                   second_until=FOREVER) -> None:
        old = self.dp.backend(backend_id)
        self.dp.set_backend(backend_id, BackendEntry(
            self.vip_id(plan), address, state=old.state if state is None else state,
            generation=old.generation, vip_flags=old.vip_flags if flags is None else flags,
            second_until=second_until))

    def write_tables(self, plan, first, second) -> None:
        self.dp.write_ring(self.vip_id(plan), np.asarray(first, dtype=np.uint32))
        self.dp.write_second_rings({self.vip_id(plan): np.asarray(second, dtype=np.uint32)})

    def constant_tables(self, plan, first: int, second: int) -> None:
        size = self.dp.limits.ring_size
        self.write_tables(plan, [first] * size, [second] * size)

    def slot(self, packet) -> int:
        return flowhash.table_slot(flowhash.flow_hash(*sc.flow_of(packet)), self.dp.limits.ring_size)

    def cleanup(self) -> None:
        for applied in self.lb.programmer.applied().values():
            self.dp.clear_second_ring(applied.vip_id)


@pytest.fixture
def scb(lb):
    setup = SecondChance(lb)
    yield setup
    setup.cleanup()   # the rest goes with lb's reset


def client(version: int, n: int, dst: str, *, sport=40000, flags="A", proto=sc.TCP_P, payload=b"hello",
           df=False, tos=0, vlan=None):
    src = CLIENTS[version].format((n >> 8) & 0xff, n & 0xff)
    return sc.client_packet(dst, 80 if proto == sc.TCP_P else 53, proto, src=src, sport=sport,
                            flags=flags, payload=payload, df=df, tos=tos, vlan=vlan)


def inner_of(packet):
    return packet[IP] if IP in packet else packet[IPv6]


def expected_gue(packet, first, second, sport: int, plan) -> bytes:
    """The frame the wire format prescribes: outer IP to the first choice from
    our ipip source (TTL/hop limit 64, the client's TOS and DF, IPv6: the flow
    hash's flow label), UDP to LBD_GUE_PORT with checksum 0, the GUE header
    (version 0, C 0, Hlen = private data words, proto = the inner family),
    private data (magic, hops 0, pad 0, the second's address), the client's
    packet. scapy fills in the lengths and the IPv4 checksum."""
    inner = inner_of(packet)
    if IP in packet:
        outer = IP(src=IPIP_SRC_V4, dst=str(first), proto=17, ttl=64, id=0, tos=inner.tos,
                   flags="DF" if inner.flags.DF else 0)
        gue = struct.pack("!BBHHBB4s", 2, 4, 0, GUE_MAGIC, 0, 0, ip(second).packed)
    else:
        outer = IPv6(src=IPIP_SRC_V6, dst=str(first), nh=17, hlim=64, tc=inner.tc,
                     fl=sc.flow_hash_for(plan, packet) & 0xFFFFF)
        gue = struct.pack("!BBHHBB16s", 5, 41, 0, GUE_MAGIC, 0, 0, ip(second).packed)
    l2 = Ether(src=LBD_MAC, dst=GW_MAC)
    if Dot1Q in packet:
        l2 = l2 / Dot1Q(vlan=packet[Dot1Q].vlan)
    return bytes(l2 / outer / UDP(sport=sport, dport=GUE_PORT, chksum=0) / gue / bytes(inner))


def check_gue_fields(out: bytes, packet, second) -> None:
    """The output as scapy parses it, GUE's fields read by offset from the UDP
    payload: every length and the IPv4 checksum as a receiver checks them."""
    frame = Ether(out)
    inner = bytes(inner_of(packet))
    if IP in frame:
        outer = frame[IP]
        assert outer.len == len(bytes(outer)) and outer.ihl == 5
        written = outer.chksum
        del outer.chksum
        assert IP(bytes(outer)).chksum == written, "outer IPv4 header checksum"
        private, hlen, proto = 8, 2, 4
    else:
        outer = frame[IPv6]
        assert outer.plen == len(bytes(outer.payload))
        private, hlen, proto = 20, 5, 41
    udp = outer[UDP]
    assert udp.len == len(bytes(udp)) == 8 + 4 + private + len(inner) and udp.chksum == 0
    body = bytes(udp.payload)
    assert body[0] == hlen, "version 0, C 0, Hlen = private data words"
    assert (body[1], body[2:4]) == (proto, b"\0\0")
    assert struct.unpack_from("!HBB", body, 4) == (GUE_MAGIC, 0, 0)
    assert body[8:4 + 4 * hlen] == ip(second).packed
    assert body[4 + 4 * hlen:] == inner, "the client's packet, byte for byte"


def gue_source_port(out: bytes) -> int | None:
    """The UDP source port of a GUE frame, read by offset; None if not GUE."""
    frame = Ether(out)
    if UDP in frame and frame[UDP].dport == GUE_PORT and (IP in frame or IPv6 in frame):
        return frame[UDP].sport
    return None


def check_forwarded(setup, packet, first_id: int, second_id: int | None, plan) -> int | None:
    """Run one packet: it must leave for `first_id`, in GUE naming `second_id`
    (None: plain IP-in-IP). Returns the GUE source port."""
    result = setup.lb.run(bytes(packet))
    assert result.action == XDP_TX
    first = setup.address_of(first_id)
    if second_id is None:
        assert result.packet.hex() == sc.expected_ipip(packet, BackendPlan(first, 1), plan).hex()
        return None
    sport = gue_source_port(result.packet)
    assert sport is not None, f"plain frame where GUE naming {setup.address_of(second_id)} was due"
    assert 49152 <= sport <= 65535, "the source port is in the ephemeral range (RFC 8085)"
    check_gue_fields(result.packet, packet, setup.address_of(second_id))
    assert result.packet.hex() == expected_gue(packet, first, setup.address_of(second_id), sport,
                                               plan).hex()
    return sport


def carried(dp) -> int:
    return dp.global_counters()["second_choice_carried"]


# --- the second choice goes with every packet that has one ------------------------------
@settings(max_examples=30, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(version=st.sampled_from([4, 6]), seed=st.integers(0, 2**32 - 1),
       flows=st.lists(st.tuples(st.integers(0, 65535), st.integers(1024, 65535)),
                      min_size=1, max_size=8, unique=True))
def test_gue_names_the_slots_second_choice_exactly_when_it_differs(scb, version, seed, flows):
    """Random first and second tables over the VIP's backends (a second of 0,
    or the first itself, in some slots): a new flow's SYN, its first ACK (which
    makes the entry, storing the second) and a later packet each go to the
    slot's first choice, in GUE naming the second exactly when it differs."""
    scb.dp.clear_flows()
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    ids = scb.ids(plan)
    rng = np.random.default_rng(seed)
    first = rng.choice(ids, scb.dp.limits.ring_size)
    second = rng.choice([0, *ids], scb.dp.limits.ring_size)
    scb.write_tables(plan, first, second)
    before, gue_packets = carried(scb.dp), 0
    for n, sport in flows:
        syn = client(version, n, TCP_VIP[version], sport=sport, flags="S")
        slot = scb.slot(syn)
        want_first, want_second = int(first[slot]), int(second[slot])
        differs = want_second not in (0, want_first)
        ports = set()
        for flags in ("S", "A", "A"):
            packet = client(version, n, TCP_VIP[version], sport=sport, flags=flags)
            ports.add(check_forwarded(scb, packet, want_first, want_second if differs else None, plan))
            gue_packets += differs
        assert len(ports) == 1, "every packet of a flow has the same GUE source port"
        entry = scb.dp.flow_entry(*sc.flow_of(syn))
        assert (entry.backend_id, entry.second_id) == (want_first, want_second)
    assert carried(scb.dp) - before == gue_packets


@pytest.mark.parametrize("version", [4, 6])
def test_an_entry_keeps_its_second_after_the_second_table_changes(scb, version):
    """The second a flow was placed with goes with all its packets (its socket
    may be there), while a new flow gets the new table's second."""
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    a, b, c, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    placed = client(version, 1, TCP_VIP[version])
    check_forwarded(scb, placed, a, b, plan)           # makes the entry
    scb.constant_tables(plan, a, c)
    check_forwarded(scb, placed, a, b, plan)
    check_forwarded(scb, client(version, 2, TCP_VIP[version]), a, c, plan)
    scb.constant_tables(plan, a, 0)                    # no second any more: the entry's still goes
    check_forwarded(scb, placed, a, b, plan)
    assert scb.dp.flow_entry(*sc.flow_of(placed)).second_id == b


@pytest.mark.parametrize("version", [4, 6])
def test_a_flow_moved_off_a_failed_backend_names_it_while_its_hold_runs(scb, version):
    """The use the design makes of it: a's flows move when a fails, and the
    slot's second (a, DOWN, its hold running) goes with them, so a packet of a
    connection a still has can find it."""
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    flow = client(version, 3, TCP_VIP[version])
    check_forwarded(scb, flow, a, b, plan)
    scb.set_member(plan, a, scb.address_of(a), state=DOWN,
                   second_until=int(time.time()) + 120)
    scb.constant_tables(plan, b, a)
    check_forwarded(scb, flow, b, a, plan)
    assert (scb.dp.flow_entry(*sc.flow_of(flow)).backend_id,
            scb.dp.flow_entry(*sc.flow_of(flow)).second_id) == (b, a)


def test_a_held_backend_is_a_second_choice(scb):
    plan = scb.plan(TCP_VIP[4])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.set_member(plan, b, scb.address_of(b), state=HELD, second_until=int(time.time()) + 120)
    scb.constant_tables(plan, a, b)
    check_forwarded(scb, client(4, 4, TCP_VIP[4], flags="S"), a, b, plan)


# --- what an entry names (README "What an entry names") ---------------------------------
PENDING, PROVISIONAL = C("LBD_VIP_SECOND_PENDING"), C("LBD_FLOW_SECOND_PROVISIONAL")
EMPTY = C("LBD_BACKEND_EMPTY")


@settings(max_examples=80, deadline=None, print_blob=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(version=st.sampled_from([4, 6]), kind=st.sampled_from([SYN, PACKET, RST]),
       state=st.sampled_from([None, ACTIVE, DRAINING, DOWN, HELD, EMPTY]), same_generation=st.booleans(),
       hold=st.booleans(), provisional=st.booleans(), pending=st.booleans(),
       stored=st.sampled_from(["none", "c", "d"]), sport=st.integers(1024, 65535))
def test_the_second_a_packet_names_follows_its_entry(scb, version, kind, state, same_generation, hold,
                                                     provisional, pending, stored, sport):
    """The flow's entry on backend a (any state; None: no entry), its slot's
    first choice b and second c. Oracle, from the README: a packet that
    follows its entry names the entry's second, except that a provisional
    entry whose VIP is no longer pending names its slot's (and keeps it); a
    packet the table places names its slot's second, except that a non-SYN
    one moving off a held backend (down or removed, hold running, the same
    generation) names that backend; a provisional entry is made while the VIP
    is pending, unless it names its held backend. `lbctl explain` says the same."""
    scb.dp.clear_flows()
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    a, b, c, d = scb.ids(plan)
    vip_id, flags = scb.vip_id(plan), plan.flags | SECOND_CHANCE
    scb.constant_tables(plan, b, c)
    scb.dp.set_vip(plan.address, plan.port, plan.proto, vip_id, flags | (PENDING if pending else 0))
    generation = 7
    if state == EMPTY:
        scb.dp.clear_backend(a)
    else:
        until = FOREVER if state in (ACTIVE, DRAINING) else (int(time.time()) + 120 if hold else 0)
        scb.dp.set_backend(a, BackendEntry(vip_id, scb.address_of(a), state=state or ACTIVE,
                                           generation=generation, vip_flags=flags, second_until=until))
    stored_id = {"none": 0, "c": c, "d": d}[stored]
    flow = Flow(ip(CLIENTS[version].format(1, 2)), ip(TCP_VIP[version]), sport, 80, sc.TCP_P)
    if state is not None:
        fk.put_entry(scb.dp, flow, a, generation if same_generation else generation + 1,
                     PROVISIONAL if provisional else 0, stored_id)

    usable = state in (ACTIVE, DRAINING) and same_generation
    if usable and (kind != SYN or state == ACTIVE):
        first = a
        second = c if provisional and not pending else stored_id
    else:
        first = b
        held = state in (DOWN, HELD) and same_generation and hold
        second = a if held and kind != SYN else c
    address = {i: str(scb.address_of(i)) for i in (a, b, c, d)}
    want = (address[first], address[second] if second not in (0, first) else None)

    said = decide(read_flow(scb.dp, flow), kind)
    got = fk.carried(scb.lb.run(fk.frame(flow, kind)))
    assert got == want
    assert (said.backend, said.second) == got
    if kind == PACKET:      # the entry the packet followed or made
        entry = scb.dp.flow_entry(flow.src, flow.dst, flow.sport, flow.dport, flow.proto)
        made_provisional = first == b and pending and second == c
        kept_provisional = first == a and provisional and pending
        assert (entry.backend_id, entry.second_id) == (first, second)
        assert bool(entry.flags & PROVISIONAL) == (made_provisional or kept_provisional)


# --- no valid second: plain IP-in-IP exactly as before ----------------------------------
INVALID = ["none", "same as the first", "hold over", "another VIP's backend",
           "VIP without second chance"]


@pytest.mark.parametrize("why", INVALID)
@pytest.mark.parametrize("version", [4, 6])
def test_without_a_valid_second_the_packet_is_plain_ipip(scb, version, why):
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan, on=why != "VIP without second chance")
    a, b, _, _ = scb.ids(plan)
    second = {"none": 0, "same as the first": a}.get(why, b)
    if why == "another VIP's backend":
        other = scb.plan(OTHER_VIP[version])
        scb.set_second_chance(other)
        second = scb.ids(other)[0]
    if why == "hold over":
        scb.set_member(plan, b, scb.address_of(b), state=HELD, second_until=0)
    scb.constant_tables(plan, a, second)
    before = carried(scb.dp)
    for n, flags in ((5, "S"), (6, "A"), (6, "A")):    # stateless, new entry, established
        check_forwarded(scb, client(version, n, TCP_VIP[version], flags=flags), a, None, plan)
    assert carried(scb.dp) == before


@pytest.mark.parametrize("version", [4, 6])
def test_an_established_flows_second_is_checked_at_every_packet(scb, version):
    """The entry keeps the id; whether it is still a second choice is the
    backend entry's to say, now: a hold that ends stops GUE at once."""
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    flow = client(version, 7, TCP_VIP[version])
    check_forwarded(scb, flow, a, b, plan)
    scb.dp.set_second_until(b, 0)
    check_forwarded(scb, flow, a, None, plan)
    scb.dp.set_second_until(b, FOREVER)
    check_forwarded(scb, flow, a, b, plan)
    scb.dp.clear_backend(b)                            # the id freed
    check_forwarded(scb, flow, a, None, plan)


@pytest.mark.parametrize("version", [4, 6])
def test_udp_vips_never_carry_a_second(scb, version):
    """Even with the flag and a second table forced on a UDP VIP (config
    refuses that): a backend has no UDP state to tell its flows by."""
    plan = scb.plan(UDP_VIP[version], sc.UDP_P)
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    before = carried(scb.dp)
    for _ in range(2):                                 # the entry's first datagram, then a hit
        check_forwarded(scb, client(version, 8, UDP_VIP[version], proto=sc.UDP_P), a, None, plan)
    assert carried(scb.dp) == before


def test_the_gue_source_port_spreads_flows(scb):
    """Entropy for ECMP and RSS at the backend: 200 flows of one client
    address (only the port differs) get nearly as many source ports."""
    plan = scb.plan(TCP_VIP[4])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    ports = {gue_source_port(scb.lb.run(bytes(client(4, 9, TCP_VIP[4], sport=20000 + k,
                                                         flags="S"))).packet)
             for k in range(200)}
    assert None not in ports and len(ports) >= 180


def test_gue_keeps_the_clients_tos_and_df(scb):
    plan = scb.plan(TCP_VIP[4])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    for df, tos in ((True, 0x28), (False, 0xb8)):
        check_forwarded(scb, client(4, 10, TCP_VIP[4], df=df, tos=tos), a, b, plan)


@pytest.mark.parametrize("version", [4, 6])
def test_gue_behind_a_vlan_tag(scb, version):
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    check_forwarded(scb, client(version, 13, TCP_VIP[version], vlan=42, tos=0xb8), a, b, plan)


# --- MTU: GUE's overhead counted always on a second-chance VIP --------------------------
def sized(version: int, l3_len: int, n: int = 11):
    """A DF packet of the TCP VIP whose IP packet is l3_len bytes long."""
    bare = len(inner_of(client(version, n, TCP_VIP[version], payload=b"")))
    return client(version, n, TCP_VIP[version], payload=b"p" * (l3_len - bare), df=True)


def assert_too_big(result, version: int, mtu: int) -> None:
    assert result.action == XDP_TX
    reply = Ether(result.packet)
    assert reply.dst == sc.CLIENT_MAC and reply.src == LBD_MAC
    if version == 4:
        assert (reply[ICMP].type, reply[ICMP].code, reply[ICMP].nexthopmtu) == (3, 4, mtu)
    else:
        assert reply[ICMPv6PacketTooBig].mtu == mtu


@pytest.mark.parametrize("cached", [False, True], ids=["asking the FIB", "cached next hop"])
@pytest.mark.parametrize("second", ["a second", "no second"])
@pytest.mark.parametrize("version", [4, 6])
def test_a_packet_that_fits_ipip_but_not_gue_is_too_big(scb, version, second, cached):
    """On a second-chance VIP the client is told the MTU that leaves room for
    GUE, also when its packet would have gone as plain IP-in-IP (no second):
    a flow's path MTU never depends on its slot."""
    plan = scb.plan(TCP_VIP[version])
    scb.set_second_chance(plan)
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b if second == "a second" else 0)
    scb.dp.forget_nexthop(a)
    if cached:
        check_forwarded(scb, client(version, 12, TCP_VIP[version]), a,
                        b if second == "a second" else None, plan)
    gue_mtu = LINK_MTU - OVERHEAD[version]
    fits_ipip = sized(version, LINK_MTU - IPIP_OVERHEAD[version])
    before = scb.dp.global_counters()["icmp_too_big_sent"]
    assert_too_big(scb.lb.run(bytes(fits_ipip)), version, gue_mtu)
    assert scb.dp.global_counters()["icmp_too_big_sent"] == before + 1
    # the largest packet the answer allows goes through
    check_forwarded(scb, sized(version, gue_mtu), a, b if second == "a second" else None, plan)
    assert_too_big(scb.lb.run(bytes(sized(version, gue_mtu + 1))), version, gue_mtu)


@pytest.mark.parametrize("version", [4, 6])
def test_a_vip_without_second_chance_keeps_the_ipip_mtu(scb, version):
    plan = scb.plan(TCP_VIP[version])
    a, b, _, _ = scb.ids(plan)
    scb.constant_tables(plan, a, b)
    check_forwarded(scb, sized(version, LINK_MTU - IPIP_OVERHEAD[version]), a, None, plan)
