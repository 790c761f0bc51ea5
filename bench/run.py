"""`python -m bench.run [--quick] [--only NAMES]`: the benchmarks, then the report (`make bench`).

The benchmarks and their order are bench.registry's; then bench.report writes
bench/REPORT.md and the plots. One benchmark failing does not stop the others; the
run exits non-zero if any failed. Each runs as its own process, so one benchmark's
loaded programs and memory never colour the next one's numbers.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from bench.registry import BENCHMARKS, BY_NAME, REPO, RESULTS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's quick mode")
    parser.add_argument("--only", default=",".join(b.name for b in BENCHMARKS),
                        help="comma-separated subset")
    parser.add_argument("--results", default=str(RESULTS),
                        help="directory for the JSON results (the report reads it)")
    parser.add_argument("--report", default=str(REPO / "bench" / "REPORT.md"))
    args = parser.parse_args(argv)
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",")
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        parser.error(f"--only: unknown benchmark {unknown[0]!r}, expected some of {', '.join(BY_NAME)}")
    failed = []
    for name in names:
        cmd = BY_NAME[name].command(BY_NAME[name].results(results), args.quick)
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
