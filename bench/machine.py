"""What every benchmark result records about the machine it ran on."""
from __future__ import annotations

import os
import platform


def machine_info(xdp_mode: str) -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "xdp_mode": xdp_mode, "python": platform.python_version()}
