"""A config that makes lbd run about 1,000 health checks a second in the lab
(issue 21): VIPS_PER_KIND VIPs of each kind (dsr and ipip, IPv4 and IPv6),
each with its three backends, every backend checked through the VIP and at
its own address (tcp to port 80, INTERVAL apart). The VIPs share the lab's
VIP addresses on ports 8001..; their checks go to port 80 of the address,
where a VIP of its own takes client traffic, so the test can show that the
checks' packets never pass lbd's XDP program (that VIP's counters and the
connection table stay empty).

Shared by tests/netns/test_health_load.py (no false DOWN, nothing counted)
and bench/health_cost.py (the daemon's CPU per 1,000 checks a second)."""
from __future__ import annotations

from tests.netns.lbdrun import host_config, vip_entry

INTERVAL = 0.2
VIPS_PER_KIND = 9
KINDS = {"dsr4": ("198.18.100.1", "dsr", 4), "dsr6": ("fd00:100::1", "dsr", 6),
         "ipip4": ("198.18.100.2", "ipip", 4), "ipip6": ("fd00:100::2", "ipip", 6)}
HEALTH = f"{{type: tcp, port: 80, interval: {int(INTERVAL * 1000)}ms, timeout: 150ms, rise: 2, fall: 3}}"


def checks_per_s() -> float:
    """Checks a second the config asks for: 2 per backend per interval."""
    return len(KINDS) * VIPS_PER_KIND * 3 * 2 / INTERVAL


def config(lab, written_by: str, checked: bool = True):
    """The config (a function of the control socket's path, as lbdrun.running
    takes it); checked=False: the same VIPs without health sections."""
    def for_socket(socket_path: str) -> str:
        text = host_config(lab, socket_path, written_by)
        for kind, (vip, mode, _) in KINDS.items():
            names = ["b1", "b2", "b3"] if mode == "dsr" else ["r1", "r2", "r3"]
            # the port-80 VIP the checks are addressed to, itself unchecked
            text += vip_entry(lab, f"{kind}-80", vip, 80, "tcp", mode, names)
            for i in range(VIPS_PER_KIND):
                text += vip_entry(lab, f"{kind}-{8001 + i}", vip, 8001 + i, "tcp", mode, names,
                                  HEALTH if checked else None)
        return text
    return for_socket


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (clock ticks -> seconds)."""
    import os

    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
