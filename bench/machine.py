"""What every benchmark result records about the machine it ran on."""
from __future__ import annotations

import os
import platform


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
