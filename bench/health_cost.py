"""What health checks through the data path cost on the lbd host (issue 21).

The real daemon in the namespace lab (lbd.testing.lab), with the config of
tests/netns/healthload.py: 36 health-checked VIPs (dsr and ipip/GUE, IPv4 and
IPv6) of three backends each, every backend checked through the VIP and at
its own address, tcp, 200 ms apart: about 1,080 checks a second. The
daemon's CPU (utime + stime from /proc/<pid>/stat, which also holds the
TC egress program's work: it runs in the sending thread's system call) is
read over a fixed window, against the same VIPs without health sections
(the idle daemon: counters, table samples, rates).

  checks_per_s              checks done over the window (lbd_health_checks_total)
  cpu_s_per_s               the daemon's CPU seconds per second, with and without checks
  cpu_per_1000_checks_per_s CPU seconds per second that 1,000 checks a second add
                            (0.25 = a quarter of one core)
  us_per_check              the same per check, in microseconds

Half of the checks go through the data path (the TC program encapsulates or
rewrites them) and half to the backends' own addresses, as lbd runs them.
The XDP path is not touched by the checks (they leave by egress, and the
answers are not VIP packets): bench/xdp_cost.py measures it, unchanged.

Run: python -m bench.health_cost [--quick]. Writes bench/results/health_cost.json.
"""
from __future__ import annotations

import sys
import time

from bench.machine import arguments, loadavg, save


def _window(lbd, window_s: float) -> dict:
    from tests.netns import healthload

    pid = lbd.proc.pid
    checks0, cpu0, t0 = lbd.metric_sum("lbd_health_checks_total"), healthload.cpu_seconds(pid), time.monotonic()
    time.sleep(window_s)
    checks1, cpu1, t1 = lbd.metric_sum("lbd_health_checks_total"), healthload.cpu_seconds(pid), time.monotonic()
    return {"seconds": round(t1 - t0, 2), "checks_per_s": round((checks1 - checks0) / (t1 - t0), 1),
            "cpu_s_per_s": round((cpu1 - cpu0) / (t1 - t0), 4)}


def measure(window_s: float, settle_s: float) -> dict:
    from lbd.testing.lab import Lab
    from tests.netns import healthload
    from tests.netns.lbdrun import running

    with Lab() as lab:
        with running(lab, healthload.config(lab, "bench/health_cost.py", checked=False)) as lbd:
            time.sleep(settle_s)
            idle = _window(lbd, window_s)
        with running(lab, healthload.config(lab, "bench/health_cost.py")) as lbd:
            time.sleep(settle_s)
            busy = _window(lbd, window_s)
            down = sum(not b["in_table"] for v in lbd.status()["vips"] for b in v["backends"])
        xdp = dict(lab.xdp_modes)
    added = busy["cpu_s_per_s"] - idle["cpu_s_per_s"]
    per_1000 = added / (busy["checks_per_s"] / 1000) if busy["checks_per_s"] else None
    return {"config": {"vips_checked": len(healthload.KINDS) * healthload.VIPS_PER_KIND,
                       "interval_s": healthload.INTERVAL, "asked_checks_per_s": healthload.checks_per_s(),
                       "type": "tcp", "half_through_the_vip": True},
            "idle": idle, "checks": busy, "backends_down": down,
            "cpu_per_1000_checks_per_s": round(per_1000, 4) if per_1000 is not None else None,
            "us_per_check": round(per_1000 * 1000, 1) if per_1000 is not None else None,
            "xdp_modes": xdp}


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "health_cost", "a 3 s window: checks it runs, not what it costs")
    args = parser.parse_args(argv)
    start = loadavg()
    result = measure(window_s=3.0 if args.quick else 30.0, settle_s=2.0 if args.quick else 5.0)
    save(result, args, xdp_mode=",".join(sorted(set(result["xdp_modes"].values()))), load_start=start)
    print(f"{result['checks']['checks_per_s']:.0f} checks/s: daemon CPU {result['checks']['cpu_s_per_s']:.3f} s/s "
          f"(idle {result['idle']['cpu_s_per_s']:.3f}); {result['cpu_per_1000_checks_per_s']} CPU s/s per "
          f"1,000 checks/s, {result['us_per_check']} us per check; backends down: {result['backends_down']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
