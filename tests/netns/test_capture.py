"""`lbctl capture` on a running lbd in the lab (docs/operating.md, Capturing
what the XDP program does): real HTTP through a DSR VIP, whose packets the
program sends back out with XDP_TX where tcpdump on the lbd host never sees
them, captured as pcapng and read back with scapy and tcpdump. The decisions
in the comments must name the backend that really answered each client."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapNgReader

from lbd.testing.topology import url
from tests.netns.lbdrun import running, wait_for

pytestmark = pytest.mark.netns
VIP = "198.18.100.1"  # web4 of lbdrun.lab_config: dsr, b1..b3
INBOUND, OUTBOUND = 1, 2


@pytest.fixture(scope="module")
def lbd(lab):
    with running(lab) as daemon:
        yield daemon


def lbctl_capture(lbd, *args, **popen) -> subprocess.Popen:
    """lbctl capture, returned once the daemon has turned the capture on."""
    started = lbd.log().count("capture_started")
    proc = subprocess.Popen([sys.executable, "-m", "lbd.lbctl", "--socket", lbd.socket, "capture", *args],
                            stderr=subprocess.PIPE, text=False, **popen)
    wait_for(lambda: lbd.log().count("capture_started") > started or proc.poll() is not None, 20,
             what="the daemon starts the capture")
    return proc


def decisions(path: Path) -> list[tuple[int, dict, bytes]]:
    """(direction, the comment's key=value fields, frame) of every packet."""
    out = []
    with PcapNgReader(str(path)) as reader:
        for packet in reader:
            [comment] = packet.comments
            fields = dict(item.split("=", 1) for item in comment.decode().split())
            out.append((packet.direction, fields, bytes(packet)))
    return out


def test_a_capture_names_the_backend_that_answered_each_client_and_stops_on_ctrl_c(lab, lbd, tmp_path):
    path = tmp_path / "web4.pcapng"
    proc = lbctl_capture(lbd, "-w", str(path), "--vip", "web4", "--count", "100000", "--duration", "5m")
    try:
        sources = lab.client.v4s[:8]
        replies = lab.http_get_many(url(VIP, "/whoami"), sources)
        assert all(r.ok for r in replies), replies
        wait_for(lambda: path.exists() and path.stat().st_size > 4000, 10, what="packets in the file")
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert b"ended: interrupted" in err
    wait_for(lambda: (lbd.status().get("capture") or {}).get("ended") == "client_gone", 10,
             what="the daemon ends the capture when lbctl goes")

    answered = {r.source: lab.backends[r.body.split()[0]].v4 for r in replies}
    seen = decisions(path)
    arrived = [(fields, frame) for direction, fields, frame in seen if direction == INBOUND]
    left = [(fields, frame) for direction, fields, frame in seen if direction == OUTBOUND]
    assert arrived and len(left) == len(arrived)  # every packet forwarded: both views
    by_client: dict[str, set] = {}
    for fields, frame in arrived:
        assert fields["lbd"] == "arrived" and fields["action"] == "tx" and fields["vip"] == "web4"
        assert fields["placed"] in ("table_no_entry", "table", "entry")
        by_client.setdefault(fields["client"].rsplit(":", 1)[0], set()).add(fields["backend"])
        assert Ether(frame).dst != "ff:ff:ff:ff:ff:ff"
    # each client's connection went to one backend: the one whose name it got back
    assert {client: backends.pop() for client, backends in by_client.items() if len(backends) == 1} == \
        {str(s): str(answered[str(s)]) for s in sources}
    # as it left: the same packet, rewritten to the backend's MAC (L2 DSR)
    for (a_fields, a_frame), (l_fields, l_frame) in zip(arrived, left):
        assert l_fields == {**a_fields, "lbd": "left"}
        assert l_frame[12:] == a_frame[12:] and l_frame[:6] != a_frame[:6]

    # tcpdump reads the same file: one line per view
    tcpdump = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert tcpdump.returncode == 0, tcpdump.stderr
    lines = tcpdump.stdout.splitlines()
    assert len(lines) == len(seen) and all(f"> {VIP}.80" in line for line in lines)


def test_a_capture_into_tcpdump_ends_by_itself_at_its_count(lab, lbd, tmp_path):
    tcpdump = subprocess.Popen(["tcpdump", "-nn", "-r", "-"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    proc = lbctl_capture(lbd, "-w", "-", "--vip", "198.18.100.1:80/tcp", "--client", str(lab.client.v4s[3]),
                         "--count", "3", "--duration", "60s", stdout=tcpdump.stdin)
    tcpdump.stdin.close()  # lbctl holds the pipe now
    try:
        replies = lab.http_get_many(url(VIP, "/whoami"), [lab.client.v4s[3]] * 3)
        assert all(r.ok for r in replies)
        _, err = proc.communicate(timeout=30)  # ends without a signal: 3 packets were enough
        out = tcpdump.stdout.read()  # to its end: lbctl has closed its side of the pipe
        tcpdump.wait(30)
    finally:
        for p in (proc, tcpdump):
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert proc.returncode == 0 and b"3 packets to stdout; ended: count" in err, err
    lines = out.splitlines()
    assert len(lines) == 6, out  # each packet as it arrived and as it left
    assert all(line.split()[2].startswith(f"{lab.client.v4s[3]}.") for line in lines), out


def test_an_ipip_capture_names_the_backend_by_the_outer_header(lab, lbd, tmp_path):
    path = tmp_path / "ipip4.pcapng"
    proc = lbctl_capture(lbd, "-w", str(path), "--vip", "ipip4", "--count", "100000", "--duration", "5m")
    try:
        sources = lab.client.v4s[10:16]
        replies = lab.http_get_many(url("198.18.100.2", "/whoami"), sources)
        assert all(r.ok for r in replies), replies
        wait_for(lambda: path.exists() and path.stat().st_size > 3000, 10, what="packets in the file")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    answered = {r.source: str(lab.backends[r.body.split()[0]].v4) for r in replies}
    seen = decisions(path)
    left = [(fields, frame) for direction, fields, frame in seen if direction == OUTBOUND]
    assert left and all(fields["action"] in ("tx", "redirect") for fields, _ in left)
    for fields, frame in left:
        client = fields["client"].rsplit(":", 1)[0]
        # the outer header goes to the backend that answered; the client's packet rides inside
        outer = IP(frame[14:])
        assert fields["backend"] == answered[client] == outer.dst, fields
        # GUE (second chance) or plain IP-in-IP, the client's packet to the VIP rides inside
        inner = IP(bytes(outer[UDP].payload)[12:]) if fields.get("second_choice") else outer.payload
        assert (inner.src, inner.dst) == (client, "198.18.100.2")
