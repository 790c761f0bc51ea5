"""Namespaces and processes of the lab: run, stop, find and remove them,
including what a killed earlier run left behind."""
from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import time

log = logging.getLogger("lbd.testing")

BASE_PREFIX = "lbdt"
NETNS_DIR = "/run/netns"
BPFFS = "/sys/fs/bpf"
_WAIT_STEP = 0.05


def _netns_inode(ns: str) -> int | None:
    try:
        return os.stat(os.path.join(NETNS_DIR, ns)).st_ino
    except FileNotFoundError:
        return None


def netns_pids(ns: str) -> list[int]:
    """Processes whose network namespace is ns (what `ip netns pids` prints)."""
    inode = _netns_inode(ns)
    pids = []
    if inode is None:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == inode:
                pids.append(int(entry))
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return pids


def stop_groups(procs, sig: int = signal.SIGTERM, timeout: float = 5.0) -> None:
    """Signal every process group (each spawned with start_new_session), wait
    up to `timeout` in all for them to end, then SIGKILL each group, which
    also ends children left behind in it."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
    deadline = time.monotonic() + timeout
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(1)


def _kill_pids(pids: list[int], timeout: float = 3.0) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if process_alive(p)]
        time.sleep(_WAIT_STEP)


def process_alive(pid: int) -> bool:
    """Whether pid is a running process (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def remove_netns(ns: str) -> None:
    """Kill every process in ns, then remove it (its links go with it)."""
    from pyroute2 import netns

    _kill_pids(netns_pids(ns))
    with contextlib.suppress(FileNotFoundError):
        netns.remove(ns)


def lab_namespaces(base: str = BASE_PREFIX) -> dict[str, int]:
    """Namespaces of test runs with this base prefix, with the pid of the run
    that made them: a lab's (`lbdt4242-0-router`) and a single namespace's
    (`lbdt-bpf-4242`, `lbdt-fib-4242`: fibns)."""
    pattern = re.compile(rf"^{re.escape(base)}(?:(\d+)-\d+-|-[a-z]+-(\d+)$)")
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(NETNS_DIR):
            match = pattern.match(name)
            if match:
                found[name] = int(match.group(1) or match.group(2))
    return found


def remove_stale(base: str = BASE_PREFIX, everything: bool = False) -> list[str]:
    """Remove namespaces and bpffs dirs of earlier runs whose process is gone (or all)."""
    removed = []
    for name, pid in lab_namespaces(base).items():
        if everything or not process_alive(pid):
            remove_netns(name)
            removed.append(name)
    pattern = re.compile(rf"^{re.escape(base)}(\d+)-\d+$")
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir(BPFFS):
            match = pattern.match(name)
            if match and (everything or not process_alive(int(match.group(1)))):
                shutil.rmtree(os.path.join(BPFFS, name), ignore_errors=True)
                removed.append(os.path.join(BPFFS, name))
    if removed:
        log.info("lab_stale_removed count=%d first=%s", len(removed), removed[0])
    return removed
