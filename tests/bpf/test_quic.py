"""Issue 22: QUIC by connection ID, through the real program (BPF_PROG_TEST_RUN).

The QUIC-LB draft's plaintext test vectors reach the backends that own their
server IDs, and the Python encoder/decoder (lbd.dataplane.quiclb) agrees; a packet
grammar (long and short headers, v1, v2 and unknown versions, every CID
length, truncated anywhere, bad fixed bit, a UDP length shorter than the IP
payload) is held to an oracle written from RFC 9000/9001/9369 and the draft
(tests/bpf/quic_oracle.py): never a verdict the oracle does not give, never
a CID-routed packet to a backend that does not own the ID, an entry made
exactly when docs/design.md's flow rules say, and the counters by reason.
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbd.dataplane import flowhash, layout
from lbd.dataplane.maps import prefilter_bit, quic_sid_slot_of
from lbd.plan import ACTIVE, DOWN, DRAINING, QuicPlan, VipPlan
from lbd.dataplane.quiclb import CidFormat
from tests.bpf import packet_grammar as g
from tests.bpf import quic_oracle as oracle
from tests.bpf import rfc_oracle
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

XDP_PASS, XDP_TX = 2, 3
UDP = 17
QUIC_V4, QUIC_V6 = "198.18.100.60", "fd00:100::60"
VECTOR2_V4 = "198.18.100.61"
PLAIN_V4 = "198.18.100.62"  # the same backends without quic: (the control)
PORT = 443
CLIENT_MAC, LBD_MAC = g.mac(sc.CLIENT_MAC), g.mac(sc.LBD_MAC)

# draft-ietf-quic-load-balancers, "Load Balancer Test Vectors", unencrypted
# CIDs (every row self-encodes the length). The draft prints the second row's
# nonce and CID with a digit missing ("3487d970b", 9 hex digits); the row as
# its format makes it: config 1, 5-octet server ID, 5-octet nonce -> first
# octet 0b001_01010 = 0x2a (the CID is 11 octets, length - 1 = 10).
VECTORS = [
    (CidFormat(0, 3, 4), "c4605e", "4504cc4f", "07c4605e4504cc4f"),
    (CidFormat(1, 5, 5), "350d28b420", "3487d9700b", "2a350d28b4203487d9700b"),
]
FMT = VECTORS[0][0]
# server IDs of the QUIC VIPs' backends: two active, one draining, one down
SIDS = {"198.18.0.": ["c4605e", "0a0b0c", "111111", "222222"],
        "fd00::": ["c4605e", "0a0b0c", "111111", "222222"]}
STATES = [ACTIVE, ACTIVE, DRAINING, DOWN]


def quic_vip(address: str, fmt: CidFormat, sids: list[str], prefix: str, *, quic=True,
             ipip=False) -> VipPlan:
    members = []
    for base, sid, state in zip(sc.backends(prefix, len(sids)), sids, STATES):
        members.append(dataclasses.replace(base, state=state, weight=0 if state == DRAINING else base.weight,
                                           server_id=bytes.fromhex(sid) if quic else None))
    plan = sc.vip(address, PORT, UDP, members=tuple(members), ipip=ipip)
    return dataclasses.replace(plan, quic=QuicPlan(fmt.config_id, fmt.server_id_length, fmt.cid_length)
                               if quic else None)


def plans() -> list[VipPlan]:
    return [quic_vip(QUIC_V4, FMT, SIDS["198.18.0."], "198.18.0."),
            quic_vip(QUIC_V6, FMT, SIDS["fd00::"], "fd00::"),
            quic_vip(VECTOR2_V4, VECTORS[1][0], ["350d28b420", "0102030405"], "198.18.0.",
                     ipip=False),
            quic_vip(PLAIN_V4, FMT, SIDS["198.18.0."], "198.18.0.", quic=False)]


@pytest.fixture
def quic_lb(lb):
    lb.apply(plans())
    rfc_oracle.clear_flows(lb.dp)
    return lb


def frame(vip: str, datagram: bytes, *, src=None, sport=40000, udp_length=None, trailer=b"") -> bytes:
    """Client -> VIP; udp_length may say less than the datagram carries, and
    trailer bytes follow the UDP datagram inside the IP packet."""
    v4 = ":" not in vip
    src = src or (sc.CLIENT_V4 if v4 else sc.CLIENT_V6)
    body = g.udp(src, vip, sport, PORT, datagram, length=udp_length) + trailer
    l3 = g.ipv4(src, vip, UDP, body) if v4 else g.ipv6(src, vip, UDP, body)
    return g.ethernet(LBD_MAC, CLIENT_MAC, [], 0x0800 if v4 else 0x86DD) + l3


def short_packet(cid: bytes, body: bytes = bytes(24), first: int = 0x41) -> bytes:
    return bytes([first & 0x7F]) + cid + body


def long_packet(version: int, kind: str, dcid: bytes, scid: bytes = b"\x01\x02\x03\x04",
                body: bytes = bytes(40)) -> bytes:
    type_bits = {v: k for k, v in oracle.TYPES[version].items()}[kind] if version in oracle.TYPES else 0
    return (bytes([0xC0 | type_bits << 4 | 1]) + struct.pack("!I", version) + bytes([len(dcid)]) + dcid
            + bytes([len(scid)]) + scid + body)


def plan_of(lb, address: str) -> VipPlan:
    return next(p for p in lb.programmer.applied().values() if str(p.plan.address) == address).plan


def backend_of(result, plan: VipPlan):
    """The backend a DSR output frame was sent to (its destination MAC)."""
    if result.action != XDP_TX:
        return None
    return next((b for b in plan.backends if b.dst_mac == result.packet[:6]), None)


def table_backend(lb, plan: VipPlan, src, sport: int):
    """The backend the Maglev table gives this flow (lbd.flowhash reference)."""
    applied = lb.programmer.applied()[plan.key]
    h = flowhash.flow_hash(sc.ip(src), plan.address, sport, PORT, UDP)
    backend_id = int(applied.table[flowhash.table_slot(h, lb.dp.limits.ring_size)])
    return next(b for b in plan.backends if applied.backend_ids[b.address] == backend_id)


def udp_entry(lb, vip: str, src, sport: int):
    return lb.dp.lookup_flow(sc.ip(src), sc.ip(vip), sport, PORT, UDP)


# --- the draft's test vectors ------------------------------------------------------
@pytest.mark.parametrize("fmt,sid,nonce,cid", VECTORS, ids=["vector-1", "vector-2"])
def test_python_encoder_and_decoder_follow_the_draft_vectors(fmt, sid, nonce, cid):
    assert fmt.encode(bytes.fromhex(sid), bytes.fromhex(nonce)).hex() == cid
    assert fmt.server_id(bytes.fromhex(cid)).hex() == sid


@pytest.mark.parametrize("vip,fmt,sid,nonce,cid", [
    (QUIC_V4, *VECTORS[0]), (QUIC_V6, *VECTORS[0]), (VECTOR2_V4, *VECTORS[1])])
def test_draft_vectors_reach_the_server_id_owner_from_any_client(quic_lb, vip, fmt, sid, nonce, cid):
    plan = plan_of(quic_lb, vip)
    owner = next(b for b in plan.backends if b.server_id == bytes.fromhex(sid))
    cid_bytes = bytes.fromhex(cid)
    clients = [(sc.CLIENT_V4 if ":" not in vip else sc.CLIENT_V6, 40000 + i) for i in range(40)]
    before = quic_lb.dp.quic_counters()
    # the clients include some the Maglev table would send elsewhere: the CID wins
    assert any(table_backend(quic_lb, plan, s, p) != owner for s, p in clients)
    for src, sport in clients:
        for datagram in (short_packet(cid_bytes), long_packet(oracle.V1, "handshake", cid_bytes),
                         long_packet(oracle.V2, "handshake", cid_bytes)):
            result = quic_lb.run(frame(vip, datagram, src=src, sport=sport))
            assert backend_of(result, plan) == owner, f"{vip} {src}:{sport} {datagram[:1].hex()}"
            assert udp_entry(quic_lb, vip, src, sport) is None  # no entry needed or made
    after = quic_lb.dp.quic_counters()
    assert {k: after[k] - before[k] for k in after if after[k] != before[k]} == \
        {"routed_short": 40, "routed_handshake": 80}
    owner_id = quic_lb.programmer.backend_id(plan.key, owner.address)
    assert quic_lb.dp.quic_routed_count(owner_id) == 120


def test_a_datagram_under_todays_rule_makes_an_entry_that_a_routable_cid_passes_by(quic_lb):
    """docs/design.md: an unroutable CID (0b111) makes an entry, as any UDP
    flow's first datagram, and the 4-tuple's next unroutable datagram follows
    it; a routable CID of another backend on the same 4-tuple goes to that
    server ID's backend whatever the entry says (the CID is read before the
    entry) and leaves the entry as it was."""
    plan = plan_of(quic_lb, QUIC_V4)
    sport = next(p for p in range(40000, 41000)
                 if table_backend(quic_lb, plan, sc.CLIENT_V4, p).server_id.hex() != "c4605e")
    unroutable = bytes([0xE7]) + os.urandom(7)
    first = quic_lb.run(frame(QUIC_V4, short_packet(unroutable), sport=sport))
    placed = table_backend(quic_lb, plan, sc.CLIENT_V4, sport)
    assert backend_of(first, plan) == placed
    entry = udp_entry(quic_lb, QUIC_V4, sc.CLIENT_V4, sport)
    assert entry is not None
    lookups = quic_lb.dp.global_counters()
    routed = quic_lb.run(frame(QUIC_V4, short_packet(bytes.fromhex(VECTORS[0][3])), sport=sport))
    assert backend_of(routed, plan).server_id.hex() == "c4605e"
    assert udp_entry(quic_lb, QUIC_V4, sc.CLIENT_V4, sport) == entry
    again = quic_lb.run(frame(QUIC_V4, short_packet(bytes([0xE7]) + os.urandom(7)), sport=sport))
    assert backend_of(again, plan) == placed
    counted = quic_lb.dp.global_counters()
    # one entry hit (the unroutable datagram's), no miss: the routed one read no entry
    assert (counted["ct_hits"] - lookups["ct_hits"], counted["ct_misses"] - lookups["ct_misses"]) == (1, 0)


def quic_bits(dp) -> set[int]:
    return {i * 64 + b for i, word in enumerate(dp.read_prefilter(quic=True)) for b in range(64) if word >> b & 1}


def test_the_quic_bits_follow_the_quic_vips_and_gate_the_cid(quic_lb):
    """xdp/prefilter.h: quic_prefilter has the bit of every QUIC VIP's address
    (none of the control's), as Python computes it; the program reads the CID
    of a datagram only behind that bit, and the bit goes with the last QUIC VIP."""
    quic = [p for p in plans() if p.quic]
    assert quic_bits(quic_lb.dp) == {prefilter_bit(p.address) for p in quic}
    assert prefilter_bit(sc.ip(PLAIN_V4)) not in quic_bits(quic_lb.dp)
    plan = plan_of(quic_lb, QUIC_V4)
    sport = next(p for p in range(40000, 41000)
                 if table_backend(quic_lb, plan, sc.CLIENT_V4, p).server_id.hex() != "c4605e")
    packet = frame(QUIC_V4, short_packet(bytes.fromhex(VECTORS[0][3])), sport=sport)
    bit = prefilter_bit(sc.ip(QUIC_V4))
    words = quic_lb.dp.read_prefilter(quic=True)
    quic_lb.dp.write_prefilter({bit // 64: words[bit // 64] & ~(1 << bit % 64)}, quic=True)
    try:  # without its bit, the datagram is plain UDP: the table's backend
        assert backend_of(quic_lb.run(packet), plan) == table_backend(quic_lb, plan, sc.CLIENT_V4, sport)
    finally:
        quic_lb.dp.write_prefilter({bit // 64: words[bit // 64]}, quic=True)
    rfc_oracle.clear_flows(quic_lb.dp)
    assert backend_of(quic_lb.run(packet), plan).server_id.hex() == "c4605e"
    quic_lb.apply([dataclasses.replace(p, quic=None, backends=tuple(dataclasses.replace(b, server_id=None)
                                                                     for b in p.backends))
                   if str(p.address) == QUIC_V4 else p for p in plans()])
    assert quic_bits(quic_lb.dp) == {prefilter_bit(p.address) for p in quic if str(p.address) != QUIC_V4}
    quic_lb.apply([])
    assert quic_bits(quic_lb.dp) == set()


def colliding_server_ids(vip_id: int, slots: int, count: int) -> list[bytes]:
    """`count` 3-octet server IDs whose home slot in quic_sid_slots is the same."""
    by_home: dict[int, list[bytes]] = {}
    for n in range(0x100000, 0x1000000):
        sid = n.to_bytes(3, "big")
        lo, hi = struct.unpack("=2Q", sid.ljust(16, b"\0"))
        same = by_home.setdefault(quic_sid_slot_of(vip_id, lo, hi, slots), [])
        same.append(sid)
        if len(same) == count:
            return same
    raise AssertionError("no home slot for that many IDs")


def test_server_ids_past_their_slots_are_read_from_quic_servers(quic_lb):
    """xdp/quic.h: an ID's entry sits in one of LBD_QUIC_PROBES slots from its
    home in quic_sid_slots, or only in quic_servers once they are taken. Six
    IDs of one home: four in slots, two not, and each reaches its owner; a
    removed backend's slot is emptied and its ID goes to no backend by CID."""
    address, probes = "198.18.100.63", layout.constant("LBD_QUIC_PROBES")
    six = sc.backends("198.18.0.", 6)
    first = dataclasses.replace(sc.vip(address, PORT, UDP, members=tuple(
        dataclasses.replace(b, server_id=bytes([0, 0, i + 1])) for i, b in enumerate(six))),
        quic=QuicPlan(FMT.config_id, FMT.server_id_length, FMT.cid_length))
    quic_lb.apply([*plans(), first])
    vip_id = quic_lb.programmer.applied()[first.key].vip_id
    slots = quic_lb.dp.limits.max_backends
    sids = colliding_server_ids(vip_id, slots, 6)
    members = tuple(dataclasses.replace(b, server_id=sid) for b, sid in zip(six, sids))
    plan = dataclasses.replace(first, backends=members)
    quic_lb.apply([*plans(), plan])
    home = quic_sid_slot_of(vip_id, *struct.unpack("=2Q", sids[0].ljust(16, b"\0")), slots)

    def in_slots() -> set[bytes]:
        """The server IDs of the VIP in the probes from their home."""
        read = [quic_lb.dp.quic_sid_slots[ctypes.c_uint32((home + i) % slots)] for i in range(probes)]
        return {struct.pack("=2Q", *s.server_id)[:3] for s in read if s.vip_id == vip_id}

    slotted = in_slots()
    assert len(slotted) == probes and slotted < set(sids)
    for backend in members:
        cid = FMT.encode(backend.server_id)
        assert backend_of(quic_lb.run(frame(address, short_packet(cid))), plan) == backend, backend.server_id.hex()
    # the program reads the slots (same home as Python's): a slotted ID routes
    # without its quic_servers entry, an ID past its slots does not
    for backend in (next(b for b in members if b.server_id in slotted),
                    next(b for b in members if b.server_id not in slotted)):
        key = quic_lb.dp._quic_server_key(vip_id, backend.server_id)
        value = quic_lb.dp.quic_servers[key]
        del quic_lb.dp.quic_servers[key]
        try:
            got = backend_of(quic_lb.run(frame(address, short_packet(FMT.encode(backend.server_id)))), plan)
            assert (got == backend) == (backend.server_id in slotted), backend.server_id.hex()
        finally:
            quic_lb.dp.quic_servers[key] = value
    gone = next(b for b in members if b.server_id in slotted)
    kept = dataclasses.replace(plan, backends=tuple(b for b in members if b is not gone))
    quic_lb.apply([*plans(), kept])
    assert in_slots() == slotted - {gone.server_id}
    before = quic_lb.dp.quic_counters()
    quic_lb.run(frame(address, short_packet(FMT.encode(gone.server_id))))
    assert quic_lb.dp.quic_counters()["fb_unknown_server"] == before["fb_unknown_server"] + 1
    for backend in kept.backends:
        cid = FMT.encode(backend.server_id)
        assert backend_of(quic_lb.run(frame(address, short_packet(cid))), kept) == backend


def test_the_control_vip_without_quic_places_by_the_table(quic_lb):
    plan = plan_of(quic_lb, PLAIN_V4)
    cid = bytes.fromhex(VECTORS[0][3])
    for sport in range(40000, 40040):
        result = quic_lb.run(frame(PLAIN_V4, short_packet(cid), sport=sport))
        assert backend_of(result, plan) == table_backend(quic_lb, plan, sc.CLIENT_V4, sport)


# --- the grammar ---------------------------------------------------------------------
def cids(fmt: CidFormat, sids: list[str]):
    """A CID: the VIP's config or another or 0b111; an owned, a stranger's or
    no server ID; any length 0..20 (and over, for long headers)."""
    config = st.sampled_from([fmt.config_id] * 6 + [3, 7])
    sid = st.one_of(st.sampled_from([bytes.fromhex(s) for s in sids]),
                    st.binary(min_size=fmt.server_id_length, max_size=fmt.server_id_length))
    routable = st.builds(lambda c, low, s, n: bytes([c << 5 | low]) + s + n, config,
                         st.integers(0, 31), sid, st.binary(min_size=4, max_size=4))
    return st.one_of(routable, routable, routable, routable.map(lambda c: c[:len(c) - 1]),
                     st.binary(min_size=0, max_size=22))


@st.composite
def datagrams(draw, fmt: CidFormat, sids: list[str]):
    kind = draw(st.sampled_from(["short"] * 4 + ["long"] * 4 + ["junk"]))
    if kind == "junk":
        data = draw(st.binary(min_size=0, max_size=64))
    elif kind == "short":
        cid = draw(cids(fmt, sids))
        first = draw(st.integers(0, 0x7F)) | (0x40 if draw(st.integers(0, 9)) else 0)
        data = bytes([first & 0x7F]) + cid + draw(st.binary(min_size=16, max_size=48))
    else:
        version = draw(st.sampled_from([oracle.V1, oracle.V1, oracle.V2, oracle.V2, 0, 0xFF00001D,
                                        0x1A2A3A4A]))
        first = 0x80 | draw(st.integers(0, 0x7F))
        if draw(st.integers(0, 9)):
            first |= 0x40
        dcid = draw(cids(fmt, sids))
        stated = len(dcid) if draw(st.integers(0, 5)) else draw(st.integers(0, 255))
        scid = draw(st.binary(min_size=0, max_size=20))
        data = (bytes([first]) + struct.pack("!I", version) + bytes([stated]) + dcid + bytes([len(scid)])
                + scid + draw(st.binary(min_size=16, max_size=60)))
    if draw(st.integers(0, 5)) == 0:  # truncated anywhere
        data = data[:draw(st.integers(0, len(data)))]
    return data


SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])


def owners(plan: VipPlan) -> dict:
    return {b.server_id: (b if b.state in (ACTIVE, DRAINING) else None) for b in plan.backends}


def test_quic_grammar_against_the_rfc_oracle(quic_lb):
    seen: dict[str, int] = {}
    fmts = {QUIC_V4: FMT, QUIC_V6: FMT, VECTOR2_V4: VECTORS[1][0]}
    sids = {QUIC_V4: SIDS["198.18.0."], QUIC_V6: SIDS["fd00::"], VECTOR2_V4: ["350d28b420", "0102030405"]}

    @settings(max_examples=2500, **SETTINGS)
    @given(st.data())
    def check(data):
        vip = data.draw(st.sampled_from(sorted(fmts)))
        fmt = fmts[vip]
        datagram = data.draw(datagrams(fmt, sids[vip]))
        # a UDP length shorter than what the IP packet carries: the bytes past
        # it (a routable CID of a stranger) must never be read
        cut = data.draw(st.integers(0, 9))
        trailer = b""
        if cut == 0 and datagram:
            keep = data.draw(st.integers(0, len(datagram)))
            trailer, datagram = datagram[keep:], datagram[:keep]
        sport = data.draw(st.integers(1024, 65535))
        plan = plan_of(quic_lb, vip)
        src = sc.CLIENT_V4 if ":" not in vip else sc.CLIENT_V6
        slot, owner = oracle.way(datagram, oracle.Format(fmt.config_id, fmt.server_id_length,
                                                         fmt.cid_length), owners(plan))
        before = quic_lb.dp.quic_counters()
        result = quic_lb.run(frame(vip, datagram, sport=sport, udp_length=8 + len(datagram),
                                   trailer=trailer))
        got = backend_of(result, plan)
        after = quic_lb.dp.quic_counters()
        counted = [k for k in after if after[k] != before[k]]
        assert counted == [slot], f"counted {counted}, oracle says {slot} for {datagram.hex()}"
        want = owner if slot in oracle.ROUTED else table_backend(quic_lb, plan, src, sport)
        assert got == want, f"{slot}: went to {got and got.address}, not {want.address}"
        entry = udp_entry(quic_lb, vip, src, sport)
        if slot in oracle.ROUTED or slot in oracle.NO_ENTRY:
            assert entry is None, f"{slot} made an entry"
        else:
            assert entry is not None, f"{slot} made no entry (today's UDP rule)"
        rfc_oracle.clear_flows(quic_lb.dp)
        seen[slot] = seen.get(slot, 0) + 1

    check()
    print(seen)  # how the run spread (pytest -s)
    assert set(seen) == set(oracle.ROUTED) | oracle.NO_ENTRY | {"fb_not_quic", "fb_unroutable",
                                                                 "fb_other_config"}, seen
