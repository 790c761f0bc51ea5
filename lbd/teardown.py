"""Stop forwarding for good: withdraw from BGP, detach lbd's program from
every interface it is attached to, unpin everything (`lbd --teardown`,
`lbctl teardown`). Needs nothing but the pins, so it works whatever state
the config file is in."""
from __future__ import annotations

import glob
import os
import shutil
import socket
from types import SimpleNamespace

from lbd import bgp as bgp_mod
from lbd.dataplane import bpfsys, healthpath, xdplink
from lbd.config import Bgp


def teardown(bpffs: str, bgp: Bgp | None = None) -> list[str]:
    """Withdraw the VIPs from BGP (routers move the flows first), then detach
    lbd's program from every interface it is attached to and remove the pins.

    Needs nothing but the pins: the interfaces are those (in this network
    namespace) whose XDP program is one pinned under bpffs, so a config
    that is broken, missing or lists other interfaces does not matter.
    Returns what it did, one line per step."""
    done = [bgp_mod.withdraw_everything(SimpleNamespace(bgp=bgp))] if bgp else []  # reads only .bgp
    ours = _pinned_programs(bpffs)
    if not ours:
        done.append(f"no lbd program pinned under {bpffs}")
    for index, name in socket.if_nameindex():
        try:
            attached = bpfsys.xdp_program_id(index)
        except OSError:  # gone meanwhile
            continue
        if attached and attached in ours:
            try:
                xdplink.detach(name)
                done.append(f"detached {name} (program id {attached})")
            except Exception as err:  # say which one stayed, go on with the others
                done.append(f"{name}: detaching program id {attached} failed: {err}")
    # the health checks' TC filter, mark rules, routes and VIP neighbour
    # entries (lbd.dataplane.healthpath), wherever a daemon left them
    for index, name in socket.if_nameindex():
        try:
            healthpath.remove_leftovers(name)
        except Exception as err:  # say which one stayed, go on with the others
            done.append(f"{name}: removing the health checks' routing failed: {err}")
    layouts = glob.glob(os.path.join(bpffs, "layout*"))
    for pin_dir in layouts:
        shutil.rmtree(pin_dir, ignore_errors=True)
    # the directory itself too, unless it is bpffs's mount point (bpffs: /sys/fs/bpf)
    if os.path.isdir(bpffs) and not os.path.ismount(bpffs):
        shutil.rmtree(bpffs, ignore_errors=True)
    if layouts:
        done.append(f"unpinned {bpffs} ({', '.join(os.path.basename(d) for d in layouts)})")
    return done


def _pinned_programs(bpffs: str) -> set[int]:
    """Kernel ids of the programs pinned by lbd under bpffs (every layout)."""
    ids = set()
    for pin in glob.glob(os.path.join(bpffs, "layout*", "prog")):
        try:
            fd = bpfsys.pinned_fd(pin)
        except OSError:
            continue
        try:
            ids.add(bpfsys.program_id(fd))
        finally:
            os.close(fd)
    return ids
