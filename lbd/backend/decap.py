"""The backend program (xdp/decap.c, function lbd_decap): build, load, pin,
attach, and read its state back.

Each load of the program writes its build id (decap_source_hash()) into the
program's decap_build map: `lbd-backend check` reports a program of another
build (an older lbd's, without second chance) as a problem, and `prepare`
replaces it atomically. `check` and `metrics` read the program's counters
(decap_stats) through the attached program's map ids, so nothing but the
program is pinned.

With a pin directory (a directory on bpffs), the compiled program is pinned
there, named after a hash of its source, and later prepares attach the
pinned one instead of compiling again (about 3 s each): for a host that
prepares many network namespaces, such as one per container or the test lab.
A changed decap.c gets a new name, so an upgrade never reuses an old program.
Every interface that attaches that one pinned program shares its counters.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lbd.backend import forwardto
from lbd.backend.host import PrepError
from lbd.dataplane import bpfsys, layout, mounts, xdplink, xdpstats

DECAP_FUNCTION = "lbd_decap"
DECAP_STATS_MAP = "decap_stats"   # per-CPU __u64 by enum lbd_decap_slot
DECAP_BUILD_MAP = "decap_build"   # one __u64: the build id, 0 until written


@dataclass(frozen=True)
class XdpState:
    """The XDP program on an interface, as the kernel reports it."""
    prog_id: int
    mode: str
    name: str


def xdp_state(ifname: str) -> XdpState | None:
    found = xdplink.state(ifname)
    if found is None:
        return None
    return XdpState(found.prog_id, found.mode, bpfsys.program_name(found.prog_id))


def _decap_sources() -> list[Path]:
    """decap.c and the local headers it includes, recursively: a change to
    one of the balancer's own headers is no new decap build."""
    found: dict[str, Path] = {}
    todo = [layout.XDP_DIR / "decap.c"]
    while todo:
        path = todo.pop()
        if path.name in found or not path.exists():
            continue
        found[path.name] = path
        todo += [layout.XDP_DIR / name
                 for name in re.findall(r'^#include "([^"]+)"', path.read_text(), flags=re.M)]
    return sorted(found.values())


def decap_source_hash() -> str:
    """Names a build of the decap program (16 hex digits: 64 bits, the value
    of its decap_build map): decap.c and the headers it includes."""
    digest = hashlib.sha256()
    for path in _decap_sources():
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def load_decap():
    """Compile and load lbd_decap and write its build id; returns (bpf, fd).
    The program lives while bpf is referenced, or while attached or pinned."""
    from lbd.dataplane.maps import load_helper

    bpf, function = load_helper(DECAP_FUNCTION, "decap.c")
    build = bpf[DECAP_BUILD_MAP.encode()]
    build[build.Key(0)] = build.Leaf(int(decap_source_hash(), 16))
    # the program's code never reads it, so it would not be the program's map
    bpfsys.bind_map(function.fd, build.map_fd)
    return bpf, function.fd


@dataclass(frozen=True)
class DecapState:
    """lbd_decap as attached to an interface, read through the program's maps."""
    ifname: str
    prog_id: int
    mode: str
    build: str | None               # None: no decap_build map (a build before second chance)
    counters: dict[str, int] | None  # by enum lbd_decap_slot name; None: no decap_stats map
    forward_to: list | None = None   # the prefixes it may send on to; None: a build without the list
    xdp_tx: xdpstats.XdpTx | None = None  # the interface's XDP_TX frames sent and lost; None: not known

    @property
    def current(self) -> bool:
        return self.build == decap_source_hash()

    def build_text(self) -> str:
        if self.build is None:
            return "an old build (before second chance)"
        if not self.build:
            return "a build of unknown id"
        return f"build {self.build}" + ("" if self.current else
                                         f", not this lbd's {decap_source_hash()}")


def _possible_cpus() -> int:
    """How many copies of each value a per-CPU map holds (a sysfs range list
    like "0-1"; not bcc's helper, so metrics need no bcc)."""
    with open("/sys/devices/system/cpu/possible") as f:
        spans = [part.split("-") for part in f.read().strip().split(",")]
    return sum(int(span[-1]) - int(span[0]) + 1 for span in spans)


def _read_u64s(map_id: int, per_entry: int, entries: int) -> list[int]:
    """An array map's __u64 values, each entry's per_entry copies summed
    (per_entry = possible CPUs for a per-CPU array, 1 otherwise)."""
    fd = bpfsys.map_fd_by_id(map_id)
    try:
        raw = bpfsys.lookup_array_values(fd, 8 * per_entry, entries)
    finally:
        os.close(fd)
    values = memoryview(raw).cast("Q")
    return [sum(values[i * per_entry:(i + 1) * per_entry]) for i in range(len(values) // per_entry)]


def decap_state(ifname: str) -> DecapState | None:
    """lbd_decap on ifname, its build and counters; None if it runs none or another program."""
    state = xdp_state(ifname)
    if state is None or state.name != DECAP_FUNCTION:
        return None
    maps = {m.name: m for m in bpfsys.program_maps(state.prog_id)}
    build = counters = None
    if DECAP_BUILD_MAP in maps:
        value = _read_u64s(maps[DECAP_BUILD_MAP].id, 1, 1)
        build = f"{value[0]:016x}" if value and value[0] else ""
    if DECAP_STATS_MAP in maps:
        stats = maps[DECAP_STATS_MAP]
        totals = _read_u64s(stats.id, _possible_cpus(), stats.max_entries)
        counters = {name: totals[slot] if slot < len(totals) else 0
                    for slot, name in layout.enum_names("LBD_DECAP_").items()}
    forward_to = None
    if forwardto.MAP_NAME in maps:
        with _map_fd(maps[forwardto.MAP_NAME].id) as fd:
            forward_to = forwardto.read(fd)
    return DecapState(ifname, state.prog_id, state.mode, build, counters, forward_to,
                      xdpstats.xdp_tx(ifname))


@contextlib.contextmanager
def _map_fd(map_id: int):
    fd = bpfsys.map_fd_by_id(map_id)
    try:
        yield fd
    finally:
        os.close(fd)


def write_forward_to(prog_id: int, networks: list) -> bool:
    """Make the program's forward_to hold exactly `networks`; whether it changed."""
    found = [m for m in bpfsys.program_maps(prog_id) if m.name == forwardto.MAP_NAME]
    if not found:
        raise PrepError(f"{DECAP_FUNCTION} has no {forwardto.MAP_NAME} map: an old build")
    with _map_fd(found[0].id) as fd:
        return forwardto.write(fd, networks)


def counter_summary(counters: dict[str, int]) -> str:
    """One line: what the program did, grouped as kept / forwarded / dropped."""
    kept = {k[len("kept_"):]: v for k, v in counters.items() if k.startswith("kept_")}
    kept["refused"] = counters.get("forward_refused", 0)   # outside --forward-to
    dropped = {k: counters.get(k, 0) for k in ("forward_failed", "malformed")}
    return (f"ipip {counters.get('ipip', 0)}; GUE kept {sum(kept.values())} ("
            + ", ".join(f"{k} {v}" for k, v in kept.items()) + f"), forwarded "
            f"{counters.get('forwarded', 0)}, dropped {sum(dropped.values())} ("
            + ", ".join(f"{k} {v}" for k, v in dropped.items()) + ")")


def require_bpffs(pin_dir: str) -> None:
    existing = pin_dir if os.path.isdir(pin_dir) else os.path.dirname(os.path.abspath(pin_dir))
    if not mounts.on_bpffs(existing):
        raise PrepError(f"--pin-dir {pin_dir} is not on a bpf filesystem: mount one "
                        f"(`mount -t bpf bpf /sys/fs/bpf`) or leave --pin-dir out")


@contextlib.contextmanager
def _locked(directory: str):
    # Concurrent prepares sharing a pin directory (the lab prepares its
    # backends in parallel) compile once: the first holds the lock while the
    # others wait, then find the pin.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def decap_program(pin_dir: str | None, forward_to: list):
    """Yields (fd, origin) of lbd_decap, its forward_to holding `forward_to`.
    A pinned program is shared by every interface that attaches it, and so
    is its forward_to: the last prepare's list holds for all of them."""
    with _decap_fd(pin_dir) as (fd, origin):
        write_forward_to(bpfsys.program_id(fd), forward_to)
        yield fd, origin


@contextlib.contextmanager
def _decap_fd(pin_dir: str | None):
    """Yields (fd, origin) of lbd_decap: pinned in pin_dir, or compiled now."""
    if not pin_dir:
        _bpf, fd = load_decap()
        yield fd, "compiled"
        return
    require_bpffs(pin_dir)
    os.makedirs(pin_dir, exist_ok=True)
    pin = os.path.join(pin_dir, f"{DECAP_FUNCTION}-{decap_source_hash()}")
    with _locked(pin_dir):
        if os.path.exists(pin):
            fd = bpfsys.pinned_fd(pin)
            try:
                yield fd, f"pinned {pin}"
            finally:
                os.close(fd)
            return
        _bpf, fd = load_decap()
        bpfsys.pin(fd, pin)
        yield fd, f"compiled, pinned {pin}"


def attach_decap(ifname: str, mode: str, forward_to: list, pin_dir: str | None = None) -> str:
    """Attach lbd_decap to ifname, or replace the program there atomically,
    with its forward_to written first; returns how: the mode the kernel
    reports and origin.

    The attachment is made over netlink, so it outlives this process.
    """
    with decap_program(pin_dir, forward_to) as (fd, origin):
        try:
            used = xdplink.attach(fd, ifname, mode)
        except xdplink.XdpError as err:
            raise PrepError(f"attaching {DECAP_FUNCTION}: {err}") from err
    return f"{used}, {origin}"
