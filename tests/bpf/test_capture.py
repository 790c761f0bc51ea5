"""What `lbctl capture` relies on from the program (xdp/capture.h): while a
capture runs, every packet its filter wants comes out once, as it arrived and
as it left, with the decision (action, what placed it, the drop reason); the
rate holds; and with the capture off nothing comes out at all."""
from __future__ import annotations

import ctypes
import ipaddress
import socket
from types import SimpleNamespace

import pytest

from lbd import capture
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf

XDP_DROP, XDP_TX = 1, 3
OTHER_CLIENT = "198.18.11.9"


@pytest.fixture
def capturing(lb):
    """The harness, and a function that turns a capture on with a spec and
    returns the records decoded into the program's struct."""
    dp = lb.dp
    record_type = type(dp.bpf[b"capture_scratch"].sLeaf().record)
    size = ctypes.sizeof(record_type)
    dp.poll_capture(0)

    def start(spec: capture.CaptureSpec):
        dp.set_capture(capture.control_entry(dp.capture_ctl.Leaf, spec))

    def records():
        out = []
        for raw in dp.poll_capture(100):
            rec = record_type.from_buffer_copy(raw[:size])
            out.append((rec, bytes(rec.arrived[:rec.arrived_caplen]), raw[size:size + rec.left_caplen]))
        return out

    yield lb, start, records
    dp.capture_off()
    dp.close_capture()


def test_nothing_is_captured_while_no_capture_runs(capturing):
    lb, _start, records = capturing
    lb.apply([sc.vip(sc.DSR_V4, 80, sc.TCP_P)])
    for flags in ("S", "A", "A"):
        assert lb.run(sc.client_packet(sc.DSR_V4, 80, flags=flags)).action == XDP_TX
    assert records() == []


def test_a_flow_is_captured_as_it_arrived_and_left_with_what_placed_each_packet(capturing):
    lb, start, records = capturing
    lb.apply([sc.vip(sc.DSR_V4, 80, sc.TCP_P)])
    start(capture.CaptureSpec())
    sent = [sc.client_packet(sc.DSR_V4, 80, flags=f) for f in ("S", "A", "PA")]
    results = [lb.run(bytes(p)) for p in sent]
    got = records()
    assert [r.action for r, _, _ in got] == [XDP_TX] * 3
    # the SYN by the table without an entry, its ACK by the table making the
    # entry, the next packet by the entry (docs/design.md's flow rules)
    assert [capture.PLACED[r.placed] for r, _, _ in got] == ["table_no_entry", "table", "entry"]
    for (rec, arrived, left), packet, result in zip(got, sent, results):
        assert arrived == bytes(packet) and rec.arrived_len == len(packet)
        assert left == result.packet and rec.left_len == len(result.packet)
        assert rec.drop_reason == len(capture.DROP_REASONS)  # LBD_DROP__MAX: none
        assert ipaddress.ip_address(bytes(rec.flow.src)[:4]) == ipaddress.ip_address(sc.CLIENT_V4)


def test_a_drop_comes_with_its_reason_and_leaves_nothing(capturing):
    lb, start, records = capturing
    lb.apply([sc.vip(sc.DSR_V4, 80, sc.TCP_P, members=())])  # no backend: the table is empty
    start(capture.CaptureSpec())
    assert lb.run(sc.client_packet(sc.DSR_V4, 80)).action == XDP_DROP
    [(rec, arrived, left)] = records()
    assert rec.action == XDP_DROP and capture.DROP_REASONS[rec.drop_reason] == "no_backend"
    assert capture.PLACED[rec.placed] == "none" and left == b"" and len(arrived) == rec.arrived_len


def test_the_filter_keeps_only_the_client_vip_action_and_reason_asked_for(capturing):
    lb, start, records = capturing
    lb.apply([sc.vip(sc.DSR_V4, 80, sc.TCP_P), sc.vip(sc.DSR_V6, 80, sc.TCP_P),
              sc.vip(sc.IPIP_V4, 80, sc.TCP_P, ipip=True, members=())])
    vip = SimpleNamespace(address=ipaddress.ip_address(sc.DSR_V4), port=80, proto_number=sc.TCP_P)
    start(capture.CaptureSpec(vip=vip, client=ipaddress.ip_address(sc.CLIENT_V4)))
    lb.run(sc.client_packet(sc.DSR_V4, 80))
    lb.run(sc.client_packet(sc.DSR_V4, 80, src=OTHER_CLIENT))
    lb.run(sc.client_packet(sc.DSR_V6, 80))
    lb.run(sc.client_packet(sc.DSR_V4, 81))  # no VIP on that port: passed, and not this VIP
    assert [(r.action, socket.ntohs(r.flow.sport)) for r, _, _ in records()] == [(XDP_TX, 40000)]
    start(capture.CaptureSpec(actions=("drop",), reasons=("no_backend",)))
    lb.run(sc.client_packet(sc.DSR_V4, 80))           # forwarded: not a drop
    lb.run(sc.client_packet(sc.IPIP_V4, 80))          # dropped, no backend
    [(rec, _, _)] = records()
    assert capture.DROP_REASONS[rec.drop_reason] == "no_backend"
    start(capture.CaptureSpec(actions=("drop",), reasons=("malformed",)))
    lb.run(sc.client_packet(sc.IPIP_V4, 80))
    assert records() == []


def test_the_rate_holds_and_what_it_held_back_is_counted(capturing):
    lb, start, records = capturing
    lb.apply([sc.vip(sc.DSR_V4, 80, sc.TCP_P)])
    start(capture.CaptureSpec(rate_per_s=3))
    for sport in range(20):
        lb.run(sc.client_packet(sc.DSR_V4, 80, sport=1000 + sport))
    kept = len(records())
    # 3 a second: 3, or 6 should the 20 calls straddle a second's turn
    assert kept in (3, 6)
    assert lb.dp.capture_state().over_rate == 20 - kept


def test_ipip_packets_leave_for_the_backend_the_daemon_names_from_the_outer_header(capturing):
    lb, start, records = capturing
    plan = sc.vip(sc.IPIP_V4, 80, sc.TCP_P, ipip=True)
    lb.apply([plan])
    start(capture.CaptureSpec())
    packet = sc.client_packet(sc.IPIP_V4, 80, flags="A")
    result = lb.run(bytes(packet))
    [(rec, _, left)] = records()
    assert left == result.packet
    assert capture.outer_destination(left) == sc.predicted_backend(lb, plan, packet).address
