"""Which filesystem a path lies on: lbd pins its maps only on a bpf
filesystem, and says so plainly when the path is not on one."""
from __future__ import annotations

import os


def filesystem_of(path: str) -> str:
    """The type of the filesystem `path` lies on: that of the longest mount
    point above it (/proc/self/mountinfo, so bind mounts and mounts over
    mounts are seen as this process sees them)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            mount_point = fields[4].replace("\\040", " ")
            kind = fields[fields.index("-") + 1]
            if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) \
                    and len(mount_point) >= len(best):
                best, fstype = mount_point, kind
    return fstype


def on_bpffs(path: str) -> bool:
    return filesystem_of(path) == "bpf"
