"""The VIPs and backends the bpf-tier tests program, and how to predict what
the balancer must do with a packet (which backend, what bytes come out).

Predictions use lbd.dataplane.flowhash (the Python reference of the flow hash) over the
table the programmer wrote; the kernel-vs-Python test builds its own table
with the pure-Python Maglev reference instead.
"""
from __future__ import annotations

import ipaddress

from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from lbd.dataplane import flowhash
from lbd.plan import ACTIVE, BackendPlan, VipPlan
from tests.bpf.conftest import GW_MAC, IPIP_SRC_V4, IPIP_SRC_V6, LBD_MAC

ip = ipaddress.ip_address
CLIENT_MAC = "02:00:00:00:0c:01"
CLIENT_V4, CLIENT_V6 = "198.18.10.2", "fd00:10::2"
TCP_P, UDP_P = 6, 17


def backend_mac(address) -> bytes:
    """Every test backend has a MAC derived from its address, so the output
    frame says which backend was picked."""
    return bytes([0x02, 0xbe]) + ip(address).packed[-4:]


def backends(prefix: str, count: int = 3, weights=None, state=ACTIVE) -> tuple[BackendPlan, ...]:
    weights = weights or [100] * count
    return tuple(
        BackendPlan(ip(f"{prefix}{11 + i}"), weights[i], state, backend_mac(f"{prefix}{11 + i}"),
                    bytes.fromhex(LBD_MAC.replace(":", "")))
        for i in range(count))


def vip(address: str, port: int, proto: int, *, ipip=False, client=False, members=None,
        name=None) -> VipPlan:
    address_obj = ip(address)
    if members is None:
        if ipip:
            members = backends("198.18.20." if address_obj.version == 4 else "fd00:20::")
        else:
            members = backends("198.18.0." if address_obj.version == 4 else "fd00::")
    return VipPlan(address_obj, port, proto, ipip=ipip, client_affinity=client,
                   backends=members, name=name or f"{address}:{port}/{proto}")


# The VIPs of the packet table: v4/v6 x tcp/udp x dsr/ipip, plus special ones.
DSR_V4, DSR_V6 = "198.18.100.10", "fd00:100::10"
IPIP_V4, IPIP_V6 = "198.18.100.20", "fd00:100::20"
WILDCARD_V4 = "198.18.100.30"
AFFINITY_V4, AFFINITY_V6 = "198.18.100.40", "fd00:100::40"
UNRESOLVED_IPIP_V4 = "198.18.100.50"


def standard_vips() -> list[VipPlan]:
    return [
        vip(DSR_V4, 80, TCP_P), vip(DSR_V4, 53, UDP_P),
        vip(DSR_V6, 80, TCP_P), vip(DSR_V6, 53, UDP_P),
        vip(IPIP_V4, 80, TCP_P, ipip=True), vip(IPIP_V4, 53, UDP_P, ipip=True),
        vip(IPIP_V6, 80, TCP_P, ipip=True), vip(IPIP_V6, 53, UDP_P, ipip=True),
        vip(WILDCARD_V4, 0, TCP_P),
        vip(AFFINITY_V4, 80, TCP_P, client=True), vip(AFFINITY_V4, 53, UDP_P, client=True),
        vip(AFFINITY_V6, 80, TCP_P, client=True),
        vip(UNRESOLVED_IPIP_V4, 80, TCP_P, ipip=True, members=backends("198.18.30.")),
    ]


def client_packet(dst: str, dport: int, proto: int = TCP_P, *, src=None, sport=40000,
                  payload=b"hello", vlan=None, ip_options=None, tos=0, df=False, flags="S"):
    """A client->VIP frame as it reaches the balancer (TCP: a SYN unless
    `flags` says otherwise; "A" is a packet of an established flow)."""
    version = ip(dst).version
    src = src or (CLIENT_V4 if version == 4 else CLIENT_V6)
    l4 = TCP(sport=sport, dport=dport, flags=flags) if proto == TCP_P else UDP(sport=sport, dport=dport)
    if version == 4:
        kw = {"options": ip_options} if ip_options else {}
        l3 = IP(src=src, dst=dst, tos=tos, flags="DF" if df else 0, **kw)
    else:
        l3 = IPv6(src=src, dst=dst, tc=tos)
    l2 = Ether(src=CLIENT_MAC, dst=LBD_MAC)
    if vlan is not None:
        l2 = l2 / Dot1Q(vlan=vlan)
    return l2 / l3 / l4 / payload


def flow_of(packet):
    """(src, dst, sport, dport, proto) of a scapy client packet."""
    l3 = packet[IP] if IP in packet else packet[IPv6]
    l4 = packet[TCP] if TCP in packet else packet[UDP]
    proto = TCP_P if TCP in packet else UDP_P
    return ip(l3.src), ip(l3.dst), l4.sport, l4.dport, proto


def flow_hash_for(plan: VipPlan, packet) -> int:
    src, dst, sport, dport, proto = flow_of(packet)
    if plan.client_affinity:
        return flowhash.client_hash(src)
    return flowhash.flow_hash(src, dst, sport, dport, proto)


def predicted_backend(lb, plan: VipPlan, packet) -> BackendPlan:
    """The backend the Python reference picks for a new flow."""
    applied = lb.programmer.applied()[plan.key]
    slot = flowhash.table_slot(flow_hash_for(plan, packet), lb.dp.limits.ring_size)
    backend_id = int(applied.table[slot])
    return next(b for b in plan.backends if applied.backend_ids[b.address] == backend_id)


def mac(text_or_bytes) -> str:
    raw = text_or_bytes if isinstance(text_or_bytes, bytes) else bytes.fromhex(text_or_bytes.replace(":", ""))
    return ":".join(f"{b:02x}" for b in raw)


def expected_dsr(packet, backend: BackendPlan) -> bytes:
    out = packet.copy()
    out[Ether].dst = mac(backend.dst_mac)
    out[Ether].src = mac(backend.src_mac)
    return bytes(out)


def expected_ipip(packet, backend: BackendPlan, plan: VipPlan) -> bytes:
    """Outer header as the program writes it: our source, the backend, TTL 64,
    the inner TOS/DF, (v6) a flow label from the flow hash; MACs from the FIB."""
    inner = packet[IP] if IP in packet else packet[IPv6]
    l2 = Ether(src=LBD_MAC, dst=GW_MAC, type=packet[Ether].type)
    if Dot1Q in packet:
        l2 = Ether(src=LBD_MAC, dst=GW_MAC) / Dot1Q(vlan=packet[Dot1Q].vlan)
    if IP in packet:
        outer = IP(src=IPIP_SRC_V4, dst=str(backend.address), proto=4, ttl=64, id=0,
                   tos=inner.tos, flags="DF" if inner.flags.DF else 0)
    else:
        outer = IPv6(src=IPIP_SRC_V6, dst=str(backend.address), nh=41, hlim=64, tc=inner.tc,
                     fl=flow_hash_for(plan, packet) & 0xFFFFF)
    return bytes(l2 / outer / bytes(inner))
