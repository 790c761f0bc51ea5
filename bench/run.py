"""`python -m bench.run [--quick]`: every benchmark, then the report (what `make bench` runs).

Order: per-packet cost (bench.xdp_cost), data-plane throughput with UDP
(bench.datapath) and with TCP segments of established flows (bench.datapath
--tcp, written as datapath_tcp.json), control-plane scale (bench.control),
the shared-memory comparison (bench.sharedmem), then bench.report writes
bench/REPORT.md and the plots. One benchmark failing does not stop the others; the run exits
non-zero if any failed. Each runs as its own process, so one benchmark's
loaded programs and memory never colour the next one's numbers.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# result name -> (module, extra arguments)
# xdp_cost also times, beside today's program, the one before a SYN stopped making
# entries (a7ccca8^: the established path before and after issue #13); skipped
# when it no longer loads. (bench/notes/flow_lookup_inline.patch, the fix of the
# regression that change brought, is in xdp/ since ff0d240.)
XDP_COST_EXTRA = ["--before", "a7ccca8^"]
BENCHMARKS = {"xdp_cost": ("xdp_cost", XDP_COST_EXTRA), "datapath": ("datapath", []),
              "datapath_tcp": ("datapath", ["--tcp"]), "control": ("control", []),
              "sharedmem": ("sharedmem", []), "decap_cost": ("decap_cost", []),
              "health_cost": ("health_cost", [])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's quick mode")
    parser.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset")
    parser.add_argument("--results", default=str(REPO / "bench" / "results"),
                        help="directory for the JSON results (the report reads it)")
    parser.add_argument("--report", default=str(REPO / "bench" / "REPORT.md"))
    args = parser.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    failed = []
    for name in args.only.split(","):
        if name not in BENCHMARKS:
            parser.error(f"--only: unknown benchmark {name!r}, expected some of {', '.join(BENCHMARKS)}")
        module, extra = BENCHMARKS[name]
        cmd = [sys.executable, "-m", f"bench.{module}", *extra, "--out", str(results / f"{name}.json")]
        if args.quick:
            cmd.append("--quick")
        print(f"== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.monotonic()
        rc = subprocess.call(cmd, cwd=str(REPO))
        print(f"== {name}: exit {rc} after {time.monotonic() - t0:.0f}s", flush=True)
        if rc != 0:
            failed.append(name)
    rc = subprocess.call([sys.executable, "-m", "bench.report", "--results", str(results),
                          "--out", args.report], cwd=str(REPO))
    if rc != 0:
        failed.append("report")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
