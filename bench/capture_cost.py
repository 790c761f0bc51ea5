"""What `lbctl capture` costs the packet path (xdp/capture.h): off, today's
program beside the program of a git revision before capture existed, on the
same packets; on, per packet a capture looks at and per packet it keeps.

Per call (BPF_PROG_TEST_RUN, repeat=1), calls of every case interleaved,
the median and the mean of many calls per run, then the median over runs
(bench/notes/xdp_cost.md says why per call and what the floor is). The
kernel's timer reads in steps of about 10 ns here: the median moves by whole
steps, the mean of many calls resolves less.

Cases (bench.xdp_cost's realistic config, 40 VIPs; an established dsr flow
and a packet to no VIP):
  off_nonvip, off_established            today's program, no capture running
  before_nonvip, before_established      the program of --before (default main)
  on_filtered_out_established            a capture runs for another client:
                                         the second parse and the filter
  on_kept_established                    a capture keeps the packet: the
                                         copies, the counters' diff, the perf
                                         event (read by this process between calls)

Writes bench/results/capture_cost.json:
  {"floor_ns", "cases": {"<case>": {"ns", "mean_ns", "runs_ns", "over_floor_ns"}},
   "off_over_before_ns": {"nonvip", "established"} (median and mean), "machine": {...}}
"""
from __future__ import annotations

import ipaddress
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from bench.machine import arguments, loadavg, machine_info
from bench.xdp_cost import ESTABLISHED, Runner, load_from, packet, xdp_tree
from lbd import capture
from lbd.dataplane.maps import load_helper
from lbd.testing import fibns

XDP_TX, XDP_PASS = 3, 2


def measure(calls: int, runs: int, before_rev: str) -> dict:
    load_start = loadavg()
    with fibns.fib_namespace(f"lbdt-capcost-{os.getpid()}") as ifindex, \
            tempfile.TemporaryDirectory(prefix="lbd-capture-") as work:
        floor_bpf, floor_fn = load_helper("lbd_pass")
        today = load_from(xdp_tree(None, os.path.join(work, "today")))
        before = load_from(xdp_tree(before_rev, os.path.join(work, "before")))
        if before is None:
            raise SystemExit(f"--before {before_rev}: git cannot give its xdp/")
        run = Runner(ifindex, lean=False)
        established = packet(ESTABLISHED["dsr"][0], "198.18.40.1", 40000, ESTABLISHED["dsr"][1])
        nonvip = packet("198.18.200.1", "198.18.40.1", 40000, 80)
        for program in (today, before):   # the flow's entry, once
            run(program.prog_fd, established)
            assert run.action == XDP_TX
        other_client = capture.CaptureSpec(client=ipaddress.ip_address("198.18.99.99"), rate_per_s=10**6)
        everything = capture.CaptureSpec(rate_per_s=10**6)
        ctl = today.capture_ctl.Leaf

        def timed(program, frame, spec=None):
            if spec is None:
                return lambda: run(program.prog_fd, frame)

            def call():
                today.set_capture(capture.control_entry(ctl, spec))
                ns = run(program.prog_fd, frame)
                today.capture_off()
                return ns
            return call

        cases = {
            "floor": lambda: run(floor_fn.fd, nonvip),
            "off_nonvip": timed(today, nonvip), "before_nonvip": timed(before, nonvip),
            "off_established": timed(today, established), "before_established": timed(before, established),
            "on_filtered_out_established": timed(today, established, other_client),
            "on_kept_established": timed(today, established, everything),
        }
        per_run: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        today.poll_capture(0)  # opens the rings: a kept packet's event has somewhere to go
        kept = 0
        for _ in range(runs):
            samples: dict[str, list[int]] = {name: [] for name in cases}
            for i in range(calls):
                for name, call in cases.items():
                    samples[name].append(call())
                if i % 256 == 255:
                    kept += len(today.poll_capture(0))
            kept += len(today.poll_capture(0))
            for name, values in samples.items():
                per_run[name].append((statistics.median(values), statistics.fmean(values)))
        floor_bpf.cleanup()
    assert kept == calls * runs, f"{kept} records for {calls * runs} kept packets"
    floor = statistics.median(m for m, _ in per_run["floor"])
    result = {"floor_ns": floor, "calls_per_run": calls, "runs": runs, "before": before_rev, "cases": {}}
    for name, values in per_run.items():
        if name == "floor":
            continue
        ns = statistics.median(m for m, _ in values)
        result["cases"][name] = {"ns": ns, "mean_ns": round(statistics.median(a for _, a in values), 1),
                                 "runs_ns": [m for m, _ in values], "over_floor_ns": ns - floor}
    c = result["cases"]
    result["off_over_before_ns"] = {
        kind: {"median": c[f"off_{kind}"]["ns"] - c[f"before_{kind}"]["ns"],
               "mean": round(c[f"off_{kind}"]["mean_ns"] - c[f"before_{kind}"]["mean_ns"], 1)}
        for kind in ("nonvip", "established")}
    result["kept_over_off_ns"] = c["on_kept_established"]["ns"] - c["off_established"]["ns"]
    result["filtered_out_over_off_ns"] = c["on_filtered_out_established"]["ns"] - c["off_established"]["ns"]
    result["machine"] = machine_info(xdp_mode="test_run", load_start=load_start)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = arguments(__doc__, "capture_cost", "few calls: checks it runs, not how fast")
    parser.add_argument("--before", default="main", metavar="REV",
                        help="the program to compare today's with, capture off (default main)")
    args = parser.parse_args(argv)
    calls, runs = (200, 1) if args.quick else (20000, 3)
    result = measure(calls, runs, args.before)
    result["quick"] = args.quick
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"floor {result['floor_ns']} ns")
    for name, case in result["cases"].items():
        print(f"{name:30} {case['ns']:7.1f} ns (mean {case['mean_ns']:7.1f})  runs {case['runs_ns']}")
    print(f"off over {args.before}: {result['off_over_before_ns']}; a kept packet over off: "
          f"{result['kept_over_off_ns']} ns; filtered out over off: {result['filtered_out_over_off_ns']} ns")
    return 0


if __name__ == "__main__":
    sys.exit(main())
