"""The namespace lab itself: it builds, its backends answer, lbd-backend prepares
and diagnoses them, the decap program delivers, and teardown leaves nothing.

Real traffic only, and only inside the lab's namespaces.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import time

import pytest

from lbd.testing import netns as lab_netns
from lbd.testing.topology import mac_of
from lbd.testing.lab import Lab

pytestmark = pytest.mark.netns

BACKENDS = ["b1", "b2", "b3", "r1", "r2", "r3"]


def _address(node, family: int):
    return node.v4 if family == 4 else node.v6


def test_lab_shape_and_xdp_modes(lab):
    assert set(lab.backends) == set(BACKENDS)
    assert [b.mode for b in lab.dsr_backends] == ["dsr"] * 3
    assert [b.mode for b in lab.ipip_backends] == ["ipip"] * 3
    assert len(lab.client.v4s) >= 50 and len(lab.client.v6s) >= 50
    assert str(lab.lbd.v4) == "198.18.0.2" and lab.lbd.ifname == "eth0"
    # the helpers on the veth peers and the decap programs all run natively
    expected = {"switch/p-lbd", "switch/p-r1", "switch/p-r2", "switch/p-r3",
                "r1/eth0", "r2/eth0", "r3/eth0"}
    assert set(lab.xdp_modes) == expected
    assert set(lab.xdp_modes.values()) == {"native"}
    assert lab.read_xdp_mode(lab.switch_ns, "p-lbd") == "native"
    for name in lab.nodes:
        assert os.path.exists(f"/run/netns/{lab.ns(name)}")
    assert lab.build_seconds < 60


def test_tx_checksum_offload_is_off_on_veths(lab):
    for ns, dev in ((lab.lbd.ns, "eth0"), (lab.switch_ns, "p-lbd"), (lab.router.ns, "rem0"),
                    (lab.ns("r1"), "eth0")):
        out = lab.run(ns, ["ethtool", "-k", dev], check=True).stdout
        assert "tx-checksumming: off" in out, (ns, dev)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", BACKENDS)
def test_http_reaches_each_backend_from_client(lab, name, family):
    backend = lab.backends[name]
    reply = lab.http_get(lab.url(_address(backend, family)))
    assert reply.ok, reply
    assert reply.body == f"{name}\n"


@pytest.mark.parametrize("family", [4, 6])
def test_healthz_and_whoami_from_chosen_source(lab, family):
    backend = lab.backends["r2"]
    health = lab.http_get(lab.url(_address(backend, family), "/healthz"))
    assert (health.status, health.body) == (200, "ok\n")
    source = (lab.client.v4s if family == 4 else lab.client.v6s)[7]
    who = lab.http_get(lab.url(_address(backend, family), "/whoami"), source=source)
    assert who.body == f"r2 {source}\n"


def test_every_client_address_is_usable_as_source(lab):
    for sources, target in ((lab.client.v4s, lab.backends["b1"].v4),
                            (lab.client.v6s, lab.backends["r3"].v6)):
        replies = lab.http_get_many(lab.url(target, "/whoami"), sources)
        assert len(replies) == len(sources)
        for source, reply in zip(sources, replies):
            assert reply.ok, reply
            assert reply.body.split()[1] == str(source)


@pytest.mark.parametrize("family", [4, 6])
@pytest.mark.parametrize("name", ["b1", "r1"])
def test_udp_echo_answers(lab, name, family):
    assert lab.udp_echo(_address(lab.backends[name], family), "hello") == f"{name} hello"


def test_stopped_server_fails_and_restarts(lab):
    target = lab.url(lab.backends["b2"].v4)
    lab.stop_server("b2", "http")
    try:
        assert not lab.server_running("b2", "http")
        down = lab.http_get(target, timeout=2)
        assert down.status is None and "refused" in down.error.lower(), down
        # the other service of the backend is untouched
        assert lab.udp_echo(lab.backends["b2"].v4, "x") == "b2 x"
    finally:
        lab.start_server("b2", "http")
    assert lab.http_get(target).body == "b2\n"


# --- lbd-backend --------------------------------------------------------------
@pytest.mark.parametrize("name", BACKENDS)
def test_backend_check_passes_on_prepared_backends(lab, name):
    result = lab.check_backend(name, "--port", "80")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PROBLEM" not in result.stdout


def test_prepare_is_idempotent(lab):
    result = lab.prepare_backend("r1")
    assert "already prepared" in result.stdout
    assert "xdp mode native" in result.stdout


def _expect_problem(lab, name: str, *words: str) -> str:
    result = lab.check_backend(name)
    assert result.returncode == 1, result.stdout
    problems = [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 1, result.stdout
    for word in words:
        assert word in problems[0], problems[0]
    return problems[0]


def test_check_finds_vip_missing_from_lo(lab):
    vip = lab.vips_v4[1]
    lab.run("b1", ["ip", "addr", "del", f"{vip}/32", "dev", "lo"], check=True)
    try:
        line = _expect_problem(lab, "b1", str(vip), "not on lo")
        assert "lbd-backend prepare" in line          # says what to do
    finally:
        lab.prepare_backend("b1")
    assert lab.check_backend("b1").returncode == 0


def test_check_finds_strict_rp_filter(lab):
    lab.run("b2", ["sysctl", "-w", "net.ipv4.conf.eth0.rp_filter=1"], check=True)
    try:
        _expect_problem(lab, "b2", "rp_filter", "strict")
    finally:
        lab.prepare_backend("b2")
    assert lab.check_backend("b2").returncode == 0


def test_check_finds_detached_decap_program(lab):
    lab.run("r3", ["ip", "link", "set", "dev", "eth0", "xdp", "off"], check=True)
    try:
        _expect_problem(lab, "r3", "no XDP program on eth0")
        assert lab.read_xdp_mode("r3", "eth0") is None
    finally:
        prepared = lab.prepare_backend("r3")
    # put back from the lab's pin: no second compile
    assert "pinned" in prepared.stdout and "compiled" not in prepared.stdout
    assert lab.read_xdp_mode("r3", "eth0") == "native"
    assert lab.check_backend("r3").returncode == 0
    assert lab.http_get(lab.url(lab.backends["r3"].v4)).body == "r3\n"


def test_undo_removes_only_what_prepare_added(lab):
    manual = "198.18.100.250"
    lab.run("r2", ["ip", "addr", "add", f"{manual}/32", "dev", "lo"], check=True)
    try:
        undo = lab.run("r2", [sys.executable, "-m", "lbd.backend.cli", "undo"], check=True)
        assert "detached lbd_decap from eth0" in undo.stdout
        addresses = lab.run("r2", ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        assert manual in addresses
        for vip in (*lab.vips_v4, *lab.vips_v6):
            assert f" {vip}/" not in addresses
        check = lab.check_backend("r2")
        assert check.returncode == 1
        assert check.stdout.count("PROBLEM") == len(lab.vips_v4) + len(lab.vips_v6) + 1
    finally:
        lab.run("r2", ["ip", "addr", "del", f"{manual}/32", "dev", "lo"])
        lab.prepare_backend("r2")
    assert lab.check_backend("r2").returncode == 0


# --- the decap program, end to end --------------------------------------------
_DECAP_PROBE = r"""
import json, sys, threading
from scapy.all import AsyncSniffer, Ether, IP, IPv6, TCP, conf, sendp
conf.verb = 0
a = json.loads(sys.argv[1])
ready = threading.Event()
sniffer = AsyncSniffer(iface=a["watch"], count=2, store=True, started_callback=ready.set,
                       lfilter=lambda p: TCP in p and p[TCP].sport == 80
                       and p[TCP].dport in (40001, 40002) and str(p[TCP].flags) == "SA")
sniffer.start()
ready.wait(10)
l2 = Ether(src=a["src_mac"], dst=a["dst_mac"])
sendp(l2 / IP(src=a["lbd4"], dst=a["backend4"]) / IP(src=a["client4"], dst=a["vip4"])
      / TCP(sport=40001, dport=80, flags="S", seq=1000), iface=a["out"])
sendp(l2 / IPv6(src=a["lbd6"], dst=a["backend6"], nh=41) / IPv6(src=a["client6"], dst=a["vip6"])
      / TCP(sport=40002, dport=80, flags="S", seq=2000), iface=a["out"])
sniffer.join(8)
if sniffer.running:
    sniffer.stop()
print(json.dumps(sorted([[p[1].src, p[1].dst, p[TCP].dport, p[TCP].ack] for p in sniffer.results or []])))
"""


def test_decap_delivers_ipip_syn_to_vip_and_backend_answers_client(lab):
    """An IP-in-IP SYN (outer lbd -> r1, inner client -> VIP:80) sent from the
    router is decapsulated by r1's native XDP program; r1's nginx answers the
    client directly from the VIP, and the SYN-ACK crosses the router."""
    r1 = lab.backends["r1"]
    client4, client6 = lab.client.v4s[3], lab.client.v6s[3]
    args = {"watch": "cli0", "out": "rem0", "src_mac": mac_of("remote", 1),
            "dst_mac": r1.mac, "lbd4": str(lab.lbd.v4), "lbd6": str(lab.lbd.v6),
            "backend4": str(r1.v4), "backend6": str(r1.v6),
            "client4": str(client4), "client6": str(client6),
            "vip4": str(lab.vips_v4[0]), "vip6": str(lab.vips_v6[0])}
    assert lab.xdp_modes["r1/eth0"] == "native"
    result = lab.run("router", [sys.executable, "-c", _DECAP_PROBE, json.dumps(args)],
                     timeout=60)
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == sorted([[str(lab.vips_v4[0]), str(client4), 40001, 1001],
                           [str(lab.vips_v6[0]), str(client6), 40002, 2001]])


# --- teardown -------------------------------------------------------------------
def _leftovers(prefix: str) -> list[str]:
    return [n for n in os.listdir("/run/netns") if n.startswith(prefix)]


@pytest.mark.parametrize("error", [None, RuntimeError, KeyboardInterrupt])
def test_teardown_leaves_nothing(error):
    small = Lab(dsr_backends=1, ipip_backends=0, addresses_per_client=2)
    pids: list[int] = []

    def body():
        with small as lab:
            lab.spawn("lbd", ["sleep", "300"])
            # a process the lab did not start, left behind in a namespace
            lab.run("client", ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"], check=True)
            for ns in [lab.switch_ns, *(n.ns for n in lab.nodes.values())]:
                pids.extend(lab_netns.netns_pids(ns))
            assert lab.http_get(lab.url(lab.backends["b1"].v4)).body == "b1\n"
            if error:
                raise error("boom")

    if error:
        with pytest.raises(error):
            body()
    else:
        body()
    assert len(pids) >= 4            # nginx (master, worker), udp echo, sleeps
    assert _leftovers(small.prefix) == []
    assert [p for p in pids if lab_netns.process_alive(p)] == []
    assert not os.path.exists(small.tmpdir)
    assert small.bpffs_dir is None or not os.path.exists(small.bpffs_dir)


def test_start_removes_namespaces_of_dead_runs():
    dead = _dead_pid()
    stale = f"{lab_netns.BASE_PREFIX}{dead}-0-client"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    sleeper = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
    try:
        with Lab(dsr_backends=1, ipip_backends=0, addresses_per_client=1, servers=False):
            assert stale not in os.listdir("/run/netns")
            sleeper.wait(timeout=5)      # killed with its namespace
    finally:
        sleeper.kill()
        subprocess.run(["ip", "netns", "del", stale], capture_output=True)


def _dead_pid() -> int:
    """A pid that no process has now (a child that has exited and been reaped)."""
    for _ in range(100):
        proc = subprocess.Popen(["true"])
        proc.wait()
        if not lab_netns.process_alive(proc.pid):
            return proc.pid
        time.sleep(0.01)
    raise RuntimeError("no dead pid found")


# --- native XDP_TX through the lab ----------------------------------------------
_BOUNCE_TO_B1 = r"""
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

/* The least a DSR balancer does: packets to the VIP get b1's MAC and go back
 * out (XDP_TX); everything else passes. */
int lab_bounce(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	unsigned char dst[ETH_ALEN] = {DST_MAC}, src[ETH_ALEN] = {SRC_MAC};

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > data_end || ip->daddr != VIP4)
			return XDP_PASS;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);

		if ((void *)(ip6 + 1) > data_end || ip6->daddr.s6_addr32[0] != VIP6_0 ||
		    ip6->daddr.s6_addr32[1] != VIP6_1 || ip6->daddr.s6_addr32[2] != VIP6_2 ||
		    ip6->daddr.s6_addr32[3] != VIP6_3)
			return XDP_PASS;
	} else {
		return XDP_PASS;
	}
	__builtin_memcpy(eth->h_dest, dst, ETH_ALEN);
	__builtin_memcpy(eth->h_source, src, ETH_ALEN);
	return XDP_TX;
}
"""


def _mac_bytes(mac: str) -> str:
    return ",".join(f"0x{part}" for part in mac.split(":"))


def test_native_xdp_tx_on_lbd_host_delivers_tcp_to_a_dsr_backend(lab):
    """What the lab exists for: a native XDP program on lbd's eth0 that bounces
    VIP traffic to b1 (XDP_TX) delivers TCP, v4 and v6, and b1 answers the
    client directly."""
    import struct

    from bcc import BPF

    vip4, vip6 = lab.vips_v4[2], lab.vips_v6[2]
    words = struct.unpack("<4I", vip6.packed)
    cflags = [f"-DVIP4={struct.unpack('<I', vip4.packed)[0]}u",
              *(f"-DVIP6_{i}={w}u" for i, w in enumerate(words)),
              f"-DDST_MAC={_mac_bytes(lab.backends['b1'].mac)}",
              f"-DSRC_MAC={_mac_bytes(lab.lbd.mac)}"]
    bpf = BPF(text=_BOUNCE_TO_B1.encode(), cflags=cflags)
    function = bpf.load_func(b"lab_bounce", BPF.XDP)
    try:
        assert lab.attach_xdp(lab.lbd, "eth0", function.fd) == "native"
        for vip, source in ((vip4, lab.client.v4s[11]), (vip6, lab.client.v6s[11])):
            reply = lab.http_get(lab.url(vip, "/whoami"), source=source)
            assert reply.body == f"b1 {source}\n", reply
    finally:
        lab.detach_xdp(lab.lbd, "eth0")
        bpf.cleanup()
    assert lab.read_xdp_mode(lab.lbd, "eth0") is None


def test_add_vips_prepares_every_backend_again(lab):
    lab.add_vips(["198.18.100.40"], ["fd00:100::40"])
    assert ipaddress.ip_address("198.18.100.40") in lab.vips_v4
    for name in BACKENDS:
        result = lab.check_backend(name)
        assert result.returncode == 0, result.stdout
        assert "VIP fd00:100::40 is on lo" in result.stdout
