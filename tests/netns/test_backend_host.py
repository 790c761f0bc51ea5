"""`lbd-backend` on one backend host of its own (tests/netns/backendhost.py),
with real frames from its neighbour; the program runs natively on the veth.

- `undo --vip A` removes A and only what A alone needed: while another VIP
  prepare added stays on lo, its ipip path (the program, its pin, its forward
  list) keeps working and `check` stays clean; undo of the last VIP removes
  everything, as before (issue 19, item 3).
- `check` does not call a backend fine whose forwarding cannot work: on a veth
  whose other end takes no XDP frames, the frames the program forwards to
  second choices (XDP_TX) vanish while it counts them as forwarded; check
  says so and the metrics count them as lost; with an XDP_PASS program on the
  other end they arrive and check is clean (issue 21, the backend's view).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbd.dataplane import xdplink
from lbd.dataplane.mounts import on_bpffs
from lbd.testing.netns import BPFFS
from tests.conftest import require_root
from tests.netns.backendhost import BACKEND_IP, CLIENT, SECOND_CHOICE, BackendHost

pytestmark = pytest.mark.netns

VIP_A, VIP_B = "198.18.9.100", "198.18.9.101"


@pytest.fixture
def host(request):
    require_root("lbd-backend's host tests")
    built = BackendHost(request.node.name.split("[")[0][-12:].replace("_", ""))
    try:
        yield built
    finally:
        built.close()


@pytest.fixture
def pin_dir(host):
    if not on_bpffs(BPFFS):
        pytest.fail(f"no bpffs at {BPFFS}: mount -t bpf bpf {BPFFS} (make test's setup does)",
                    pytrace=False)
    path = os.path.join(BPFFS, host.backend_ns.removesuffix("-be"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _ok(result) -> str:
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _problems(result) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.startswith("PROBLEM")]


def _lo(host: BackendHost) -> str:
    return subprocess.run(["ip", "-n", host.backend_ns, "-o", "addr", "show", "dev", "lo"],
                          capture_output=True, text=True, check=True).stdout


def _answered_from(host: BackendHost, vip: str, sport: int) -> bool:
    """An IP-in-IP SYN to vip:80 (no listener there) is decapsulated and
    delivered to the VIP: the backend's kernel answers the client from the
    VIP with a reset, out of eth0."""
    seen = host.send(vip, sport=sport)
    return any(src == vip and dst == CLIENT and dport == sport and "R" in flags
               for src, dst, proto, _sport, dport, flags in seen if proto == 6)


# --- undo of some VIPs (issue 19, item 3) -------------------------------------------
def test_undo_of_one_vip_keeps_what_the_other_needs_and_undo_of_the_last_removes_all(host, pin_dir):
    prepared = _ok(host.lbd_backend("prepare", "--mode", "ipip", "--vip", VIP_A, "--vip", VIP_B,
                                    "--interface", "eth0", "--xdp-mode", "native", "--pin-dir", pin_dir))
    assert "xdp mode native" in prepared
    pins = os.listdir(pin_dir)
    assert len(pins) == 1 and pins[0].startswith("lbd_decap-"), pins
    program = xdplink.state("eth0", netns=host.backend_ns)
    assert program is not None and program.mode == "native"
    assert _answered_from(host, VIP_A, 42001) and _answered_from(host, VIP_B, 42002)

    undone = _ok(host.lbd_backend("undo", "--vip", VIP_A, "--pin-dir", pin_dir))
    assert f"removed {VIP_A}/32 from lo" in undone
    assert "detached" not in undone and "unpinned" not in undone, undone
    # it says what it kept and why
    assert "kept lbd_decap on eth0" in undone and VIP_B in undone, undone
    assert "sysctls (arp_ignore, arp_announce, rp_filter) stay" in undone
    assert f" {VIP_A}/" not in _lo(host) and f" {VIP_B}/" in _lo(host)
    assert xdplink.state("eth0", netns=host.backend_ns) == program, "the same program, still attached"
    assert os.listdir(pin_dir) == pins
    check = host.lbd_backend("check", "--mode", "ipip", "--vip", VIP_B, "--interface", "eth0")
    assert check.returncode == 0 and not _problems(check), check.stdout
    assert "sends second-chance packets on to 198.18.77.0/24" in check.stdout, "the forward list stays"
    assert _answered_from(host, VIP_B, 42003), "B's packets still reach B"
    assert not _answered_from(host, VIP_A, 42004), "A is gone from this host"

    undone = _ok(host.lbd_backend("undo", "--vip", VIP_B, "--pin-dir", pin_dir))
    assert f"removed {VIP_B}/32 from lo" in undone and "detached lbd_decap from eth0" in undone
    assert f"unpinned {os.path.join(pin_dir, pins[0])}" in undone
    assert xdplink.state("eth0", netns=host.backend_ns) is None
    assert os.listdir(pin_dir) == []
    assert f" {VIP_B}/" not in _lo(host)
    check = host.lbd_backend("check", "--mode", "ipip", "--vip", VIP_B, "--interface", "eth0")
    assert check.returncode == 1
    assert any("not on lo" in line for line in _problems(check)), check.stdout
    assert any("no XDP program on eth0" in line for line in _problems(check)), check.stdout
    assert not _answered_from(host, VIP_B, 42005)


def test_undo_without_vips_removes_every_vip_and_the_program(host):
    _ok(host.lbd_backend("prepare", "--mode", "ipip", "--vip", VIP_A, "--vip", VIP_B,
                         "--interface", "eth0", "--xdp-mode", "native"))
    undone = _ok(host.lbd_backend("undo"))
    for vip in (VIP_A, VIP_B):
        assert f"removed {vip}/32 from lo" in undone
    assert "detached lbd_decap from eth0" in undone and "kept" not in undone
    assert xdplink.state("eth0", netns=host.backend_ns) is None


# --- forwarding the interface cannot send (issue 21, the backend's view) ------------
def _forwarded_frames(seen: list[list]) -> list[list]:
    """The GUE frames the program sent on to the second choice (from this backend, UDP)."""
    return [frame for frame in seen if frame[:3] == [BACKEND_IP, SECOND_CHOICE, 17]]


def _xdp_tx_frames(host: BackendHost) -> dict[str, float]:
    text = _ok(host.lbd_backend("metrics", "--interface", "eth0"))
    found = {s.labels["result"]: s.value for family in text_string_to_metric_families(text)
             for s in family.samples if s.name == "lbd_backend_xdp_tx_frames_total"}
    forwarded = [s.value for family in text_string_to_metric_families(text) for s in family.samples
                 if s.name == "lbd_backend_decap_packets_total" and s.labels["result"] == "forwarded"]
    return {**found, "program_forwarded": forwarded[0]}


def test_check_reports_forwarding_a_veths_other_end_cannot_take_until_it_takes_xdp_frames(host):
    from lbd.dataplane.maps import load_helper

    _ok(host.lbd_backend("prepare", "--mode", "ipip", "--vip", VIP_A, "--interface", "eth0",
                         "--xdp-mode", "native"))
    before = host.lbd_backend("check", "--mode", "ipip", "--vip", VIP_A, "--interface", "eth0")
    assert before.returncode == 0 and "eth0 lost none of the 0 frames" in before.stdout, before.stdout

    # ACKs of connections this backend never had, naming a second choice on eth0's
    # own network: the program forwards each once, back out of eth0 (XDP_TX)
    lost = 6
    seen = host.send(VIP_A, count=lost, flags="A", sport=43000, gue_second=SECOND_CHOICE)
    assert _forwarded_frames(seen) == [], "p0's side has no XDP program: nothing arrives"
    check = host.lbd_backend("check", "--mode", "ipip", "--vip", VIP_A, "--interface", "eth0")
    assert check.returncode == 1, check.stdout
    assert f"forwarded {lost}," in check.stdout, "the program's own count says all went"
    problems = _problems(check)
    assert len(problems) == 1, check.stdout
    for words in (f"eth0 lost all {lost} frames", "XDP_TX", "is a veth", "XDP_PASS", "generic"):
        assert words in problems[0], problems[0]
    assert _xdp_tx_frames(host) == {"sent": 0, "lost": lost, "program_forwarded": lost}

    # the other end takes XDP frames: the same forwarding now arrives
    bpf, passer = load_helper("lbd_pass")
    xdplink.attach(passer.fd, "p0", "native", netns=host.neighbour_ns)
    sent = 4
    seen = host.send(VIP_A, count=sent, flags="A", sport=44000, gue_second=SECOND_CHOICE)
    assert len(_forwarded_frames(seen)) == sent, seen
    check = host.lbd_backend("check", "--mode", "ipip", "--vip", VIP_A, "--interface", "eth0")
    assert check.returncode == 0 and not _problems(check), check.stdout
    assert f"eth0 lost {lost} frames" in check.stdout and f"sent {sent}; none lost" in check.stdout
    assert _xdp_tx_frames(host) == {"sent": sent, "lost": lost, "program_forwarded": lost + sent}

    # taken away again: frames have left before, so only new losses tell; check
    # watches for them while second-chance traffic flows
    xdplink.detach("p0", netns=host.neighbour_ns)
    del bpf
    watched: list = []
    checker = threading.Thread(target=lambda: watched.append(host.lbd_backend(
        "check", "--mode", "ipip", "--vip", VIP_A, "--interface", "eth0", "--watch", "10")))
    checker.start()
    try:
        seen = host.send(VIP_A, count=2, batches=5, gap=1.0, flags="A", sport=45000,
                         gue_second=SECOND_CHOICE)
    finally:
        checker.join(60)
    assert _forwarded_frames(seen) == []
    check = watched[0]
    assert check.returncode == 1, check.stdout
    problems = _problems(check)
    assert len(problems) == 1 and "in the last 10 s" in problems[0], check.stdout
    new_losses = int(re.search(r"eth0 lost (\d+) of the (\d+) frames", problems[0]).group(1))
    assert 0 < new_losses <= 10, problems[0]
    assert _xdp_tx_frames(host) == {"sent": sent, "lost": lost + 10, "program_forwarded": lost + sent + 10}
