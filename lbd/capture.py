"""`lbctl capture`, the daemon's side: run one capture of the packets the XDP
program handled (xdp/capture.h) and stream them as pcapng, each packet as it
arrived and as it left, with the decision in its comment.

Who reads the program's records: the daemon, which streams them to lbctl over
the control socket (GET /capture). Not lbctl opening the pinned maps itself,
because the daemon owns the loaded program (the capture maps are its own, not
pinned), knows what a backend id, a MAC or an outer address means (its
config, plans and neighbour resolutions name the VIP and the backend), lets
one capture run at a time, and turns the capture off whatever ends it (the
count, the duration, Ctrl-C or a client that went away, the daemon
stopping); and lbctl keeps needing only the control socket (root or
control.group), not CAP_BPF.

Bounds, all enforced here and the rate in the program too: a packet count, a
duration, a rate (records a second, counted by the program across CPUs, so
the ring and the daemon never see more). Off when none runs: the program then
reads one array entry per packet (bench/notes/capture.md has the cost).
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import ipaddress
import logging
import socket
import time
from typing import TYPE_CHECKING

from lbd.dataplane import layout
from lbd.dataplane.maps import addr_words, family_of, port_word
from lbd.pcapng import INBOUND, OUTBOUND, PcapNgWriter

if TYPE_CHECKING:
    from lbd.daemon import Daemon

log = logging.getLogger("lbd.capture")

# The kernel's enum xdp_action (UAPI), by the names lbd's metrics use.
ACTIONS = {"aborted": 0, "drop": 1, "pass": 2, "tx": 3, "redirect": 4}
ACTION_NAMES = {number: name for name, number in ACTIONS.items()}
# Passed packets go on to the kernel, whose taps (tcpdump) see them already.
DEFAULT_ACTIONS = ("tx", "redirect", "drop", "aborted")
DROP_REASONS = layout.enum_names("LBD_DROP_")
PLACED = layout.enum_names("LBD_PLACED_")
SNAP = layout.constant("LBD_CAPTURE_SNAP")
MAX_COUNT, MAX_DURATION_S, MAX_RATE = 1_000_000, 3600.0, 100_000
POLL_MS = 200  # how long one read of the rings waits: the stop conditions are looked at this often


@dataclasses.dataclass(frozen=True)
class CaptureSpec:
    """What one capture keeps, and for how long."""
    vip: object | None = None            # a config Vip, or None for every destination
    client: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    backend: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
    actions: tuple[str, ...] = DEFAULT_ACTIONS
    reasons: tuple[str, ...] = ()        # drop reasons; () = every one
    count: int = 1000
    duration_s: float = 60.0
    rate_per_s: int = 1000


def _names(text: str, known: dict[str, int] | list[str], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise ValueError(f"{what}: {', '.join(unknown) or repr(text)} is not one of {', '.join(known)}")
    return names


def _bounded(query, name: str, default, kind, low, high):
    try:
        value = kind(query.get(name, default))
    except ValueError:
        raise ValueError(f"{name}: not a number: {query.get(name)!r}") from None
    if not low < value <= high:
        raise ValueError(f"{name}: must be above {low} and at most {high}, got {value}")
    return value


def spec_from_query(query, daemon: "Daemon") -> CaptureSpec:
    """GET /capture's parameters: vip (NAME or ADDR:PORT/PROTO), client,
    backend (addresses), action and reason (comma lists), count, duration
    (seconds), rate (per second). ValueError/LookupError say which is wrong."""
    vip = daemon.find_vip(query["vip"]) if query.get("vip") else None
    addresses = {}
    for name in ("client", "backend"):
        if query.get(name):
            try:
                addresses[name] = ipaddress.ip_address(query[name])
            except ValueError:
                raise ValueError(f"{name}: not an address: {query[name]!r}") from None
    if vip and addresses.get("backend") and all(b.address != addresses["backend"] for b in vip.backends):
        raise LookupError(f"backend: {addresses['backend']} is not a backend of VIP {vip.name}")
    reasons = _names(query["reason"], list(DROP_REASONS.values()), "reason") if query.get("reason") else ()
    actions = _names(query["action"], ACTIONS, "action") if query.get("action") else \
        (("drop",) if reasons else DEFAULT_ACTIONS)
    if reasons and "drop" not in actions:
        raise ValueError("reason: only drops have a reason; add action drop")
    return CaptureSpec(vip=vip, client=addresses.get("client"), backend=addresses.get("backend"),
                       actions=actions, reasons=reasons,
                       count=_bounded(query, "count", 1000, int, 0, MAX_COUNT),
                       duration_s=_bounded(query, "duration", 60.0, float, 0, MAX_DURATION_S),
                       rate_per_s=_bounded(query, "rate", 1000, int, 0, MAX_RATE))


def control_entry(leaf_type, spec: CaptureSpec):
    """The program's struct lbd_capture_ctl for a spec (on)."""
    ctl = leaf_type()
    ctl.on = 1
    ctl.actions = sum(1 << ACTIONS[a] for a in spec.actions)
    reason_numbers = {name: number for number, name in DROP_REASONS.items()}
    ctl.drop_reasons = sum(1 << reason_numbers[r] for r in spec.reasons)
    ctl.rate_per_s = spec.rate_per_s
    if spec.client is not None:
        ctl.client[:] = addr_words(spec.client)
        ctl.client_family = family_of(spec.client)
    if spec.vip is not None:
        ctl.vip[:] = addr_words(spec.vip.address)
        ctl.vip_family = family_of(spec.vip.address)
        ctl.vip_port = port_word(spec.vip.port)
        ctl.vip_proto = spec.vip.proto_number
    return ctl


def _address(words, family: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    packed = bytes((ctypes.c_uint32 * 4)(*words))
    return ipaddress.ip_address(packed[:4] if family == layout.constant("LBD_FAMILY_V4") else packed)


def _endpoint(address, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def outer_destination(frame: bytes):
    """The destination address of a frame's IP header (after 802.1Q/802.1ad
    tags), or None: where an ipip packet went is its outer destination."""
    offset, ethertype = 12, None
    while len(frame) >= offset + 2:
        ethertype = int.from_bytes(frame[offset:offset + 2], "big")
        if ethertype not in (0x8100, 0x88A8):
            break
        offset += 4
    l3 = offset + 2
    if ethertype == 0x0800 and len(frame) >= l3 + 20:
        return ipaddress.IPv4Address(frame[l3 + 16:l3 + 20])
    if ethertype == 0x86DD and len(frame) >= l3 + 40:
        return ipaddress.IPv6Address(frame[l3 + 24:l3 + 40])
    return None


@dataclasses.dataclass
class Decoded:
    """One record: what arrived, what left, and the decision in words."""
    time_ns: int
    interface: str
    arrived: bytes
    arrived_len: int
    left: bytes
    left_len: int
    fields: dict

    def comment(self, view: str) -> str:
        return " ".join(f"{k}={v}" for k, v in {"lbd": view, **self.fields}.items())


class Decoder:
    """Turns the program's records into Decoded, naming VIPs and backends from
    the daemon's running config and last plans."""

    def __init__(self, daemon: "Daemon", record_type):
        self.daemon = daemon
        self.record_type = record_type
        self.size = ctypes.sizeof(record_type)
        # CLOCK_MONOTONIC (bpf_ktime_get_ns) to unix time, fixed for the capture
        self.offset_ns = time.time_ns() - time.monotonic_ns()
        self._ifnames: dict[int, str] = {}

    def _ifname(self, index: int) -> str:
        if index not in self._ifnames:
            try:
                self._ifnames[index] = socket.if_indextoname(index)
            except OSError:
                self._ifnames[index] = f"ifindex{index}"
        return self._ifnames[index]

    def _vip(self, flow):
        if not flow.family:
            return None
        dst, proto, port = _address(flow.dst, flow.family), flow.proto, socket.ntohs(flow.dport)
        wildcard = None
        for vip in self.daemon.config.vips:
            if vip.address == dst and vip.proto_number == proto:
                if vip.port == port:
                    return vip
                if vip.port == 0:
                    wildcard = vip
        return wildcard

    def _backend(self, vip, left: bytes):
        """The backend a frame went to: its outer destination (ipip), else its
        destination MAC (dsr), among the VIP's backends as last planned."""
        plan = self.daemon.applied_plan(vip.name) if vip else None
        if plan is None or len(left) < 14:
            return None
        if vip.mode == "ipip":
            outer = outer_destination(left)
            return next((b.address for b in plan.backends if b.address == outer), None)
        return next((b.address for b in plan.backends if b.dst_mac == left[:6]), None)

    def decode(self, raw: bytes) -> Decoded:
        rec = self.record_type.from_buffer_copy(raw[:self.size])
        arrived = bytes(rec.arrived[:rec.arrived_caplen])
        left = raw[self.size:self.size + rec.left_caplen]
        flow = rec.flow
        vip = self._vip(flow)
        fields = {"action": ACTION_NAMES.get(rec.action, str(rec.action))}
        if vip is not None:
            fields["vip"] = vip.name
        if flow.family:
            src = _address(flow.src, flow.family)
            sport = socket.ntohs(flow.sport)
            fields["client"] = _endpoint(src, sport) if sport else str(src)
        backend = self._backend(vip, left) if rec.placed else None
        if backend is not None:
            fields["backend"] = str(backend)
        fields["placed"] = PLACED.get(rec.placed, str(rec.placed))
        if rec.drop_reason in DROP_REASONS:
            fields["drop_reason"] = DROP_REASONS[rec.drop_reason]
        if rec.flags & layout.constant("LBD_CAPTURED_SECOND_CHOICE"):
            fields["second_choice"] = "carried"
        if rec.flags & layout.constant("LBD_CAPTURED_TOO_BIG"):
            fields["answered"] = "icmp_too_big"
        return Decoded(rec.ktime_ns + self.offset_ns, self._ifname(rec.ifindex), arrived, rec.arrived_len,
                       bytes(left), rec.left_len, fields)


def write(writer: PcapNgWriter, packet: Decoded) -> None:
    """Both views of a packet: as it arrived (inbound), and as it left
    (outbound; only a frame sent by tx or redirect leaves)."""
    writer.packet(packet.interface, packet.time_ns, packet.arrived, packet.arrived_len,
                  packet.comment("arrived"), INBOUND)
    if packet.left:
        writer.packet(packet.interface, packet.time_ns, packet.left, packet.left_len,
                      packet.comment("left"), OUTBOUND)


class _Chunks:
    """What PcapNgWriter writes, gathered for one write to the response."""

    def __init__(self):
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)

    def take(self) -> bytes:
        data, self.parts = b"".join(self.parts), []
        return data


async def run(daemon: "Daemon", spec: CaptureSpec, response, gone) -> dict:
    """Turn the capture on, stream pcapng into `response` (an aiohttp
    StreamResponse) until the count, the duration, gone() (the client went
    away) or the daemon stops; always off again at the end. Returns the
    summary (also logged)."""
    datapath = daemon.datapath
    record_type = type(datapath.bpf[b"capture_scratch"].sLeaf().record)
    decoder = Decoder(daemon, record_type)
    chunks = _Chunks()
    writer = PcapNgWriter(chunks, snaplen=SNAP)
    datapath.poll_capture(0)  # what an earlier capture left in the rings
    datapath.set_capture(control_entry(datapath.capture_ctl.Leaf, spec))
    started, written, ended = time.monotonic(), 0, "duration"
    log.info("capture_started vip=%s client=%s backend=%s actions=%s reasons=%s count=%d duration_s=%g "
             "rate_per_s=%d", spec.vip.name if spec.vip else "-", spec.client or "-", spec.backend or "-",
             ",".join(spec.actions), ",".join(spec.reasons) or "-", spec.count, spec.duration_s,
             spec.rate_per_s)
    try:
        await response.write(chunks.take())
        while True:
            left_s = spec.duration_s - (time.monotonic() - started)
            if left_s <= 0:
                ended = "duration"
                break
            if gone():
                ended = "client_gone"
                break
            if daemon.stopping:
                ended = "daemon_stopping"
                break
            records = await asyncio.to_thread(datapath.poll_capture, int(min(POLL_MS, left_s * 1000)) or 1)
            for raw in records:
                packet = decoder.decode(raw)
                if spec.backend is not None and packet.fields.get("backend") != str(spec.backend):
                    continue
                write(writer, packet)
                written += 1
                if written >= spec.count:
                    break
            if chunks.parts:
                await response.write(chunks.take())
            if written >= spec.count:
                ended = "count"
                break
    except (ConnectionResetError, ConnectionError):
        ended = "client_gone"
    finally:
        state = datapath.capture_state()
        datapath.capture_off()
    summary = {"packets": written, "ended": ended, "seconds": round(time.monotonic() - started, 3),
               "over_rate": state.over_rate, "lost": datapath.capture_lost()}
    log.info("capture_ended packets=%d ended=%s seconds=%.1f over_rate=%d lost=%d", written, ended,
             summary["seconds"], summary["over_rate"], summary["lost"])
    return summary
