"""What every benchmark shares: its two options, and what its result records
about the machine it ran on."""
from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def arguments(doc: str, name: str, quick_help: str) -> argparse.ArgumentParser:
    """--quick (a run that checks the benchmark works, not how fast) and
    --out (default bench/results/NAME.json); a benchmark adds its own."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--out", default=str(RESULTS / f"{name}.json"))
    return parser


def save(result: dict, args: argparse.Namespace, xdp_mode: str, load_start: list[float]) -> None:
    """Record whether the run was quick and the machine it ran on (with the
    load at its start and now), and write the result where --out says."""
    result["quick"] = args.quick
    result["machine"] = machine_info(xdp_mode=xdp_mode, load_start=load_start)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


def loadavg() -> list[float]:
    """1, 5 and 15 minute load averages now (the machine may be shared)."""
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(xdp_mode: str, load_start: list[float] | None = None) -> dict:
    """`load_start`: loadavg() when the benchmark began; the end's is taken now."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "xdp_mode": xdp_mode, "python": platform.python_version(),
            "loadavg_start": load_start, "loadavg_end": loadavg()}
