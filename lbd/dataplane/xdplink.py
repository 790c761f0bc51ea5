"""XDP links: attach, replace, detach and query the program of an interface.

The one place that knows the kernel's XDP attach flags and the values of
IFLA_XDP_ATTACHED. Everything goes over netlink (pyroute2), in this network
namespace or, with `netns=`, in another one (pyroute2 opens the socket in a
short-lived child there, so a program fd of this process is passed as is).
An attachment made here outlives the process: the kernel holds it.

Attaching a program where one is attached replaces it atomically: no
packet meets an interface without a program in between.
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

log = logging.getLogger("lbd.dataplane.xdplink")

XDP_FLAGS_SKB_MODE = 1 << 1   # generic: after the skb is built (any driver, slower)
XDP_FLAGS_DRV_MODE = 1 << 2   # native: in the driver, before any skb
MODE_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}
# IFLA_XDP_ATTACHED: numbers from the kernel, names from pyroute2 >= 0.9
_ATTACHED = {1: "native", 2: "generic", 3: "offload", 4: "multi",
             "xdp": "native", "xdpdrv": "native", "xdpgeneric": "generic",
             "xdpoffload": "offload", "xdpmulti": "multi"}


class XdpError(RuntimeError):
    """The kernel refused an attachment; the message says which and why."""


@dataclass(frozen=True)
class XdpState:
    """What is attached to an interface now."""
    prog_id: int
    mode: str   # native, generic, offload or multi


@contextlib.contextmanager
def _netlink(ipr=None, netns: str | None = None):
    """The caller's pyroute2 handle, or one of our own (in `netns` if given)."""
    if ipr is not None:
        yield ipr
        return
    from pyroute2 import IPRoute, NetNS

    with (NetNS(netns) if netns else IPRoute()) as own:
        yield own


def _index(ipr, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise XdpError(f"no interface {ifname!r}")
    return found[0]


def state(ifname: str, *, netns: str | None = None, ipr=None) -> XdpState | None:
    """The program attached to `ifname` and how (None: nothing attached)."""
    with _netlink(ipr, netns) as nl:
        xdp = nl.get_links(_index(nl, ifname))[0].get_attr("IFLA_XDP")
    if xdp is None:
        return None
    attached = xdp.get_attr("IFLA_XDP_ATTACHED")
    prog_id = (xdp.get_attr("IFLA_XDP_PROG_ID") or xdp.get_attr("IFLA_XDP_DRV_PROG_ID")
               or xdp.get_attr("IFLA_XDP_SKB_PROG_ID"))
    if not attached or not prog_id:
        return None
    return XdpState(prog_id, _ATTACHED.get(attached, str(attached)))


def mode(ifname: str, *, netns: str | None = None, ipr=None) -> str | None:
    """How a program is attached to `ifname` (None: not at all)."""
    found = state(ifname, netns=netns, ipr=ipr)
    return found.mode if found else None


def _set(nl, ifname: str, fd: int, flags: int) -> None:
    nl.link("set", index=_index(nl, ifname),
            xdp={"attrs": [("IFLA_XDP_FD", fd), ("IFLA_XDP_FLAGS", flags)]})


def attach(fd: int, ifname: str, how: str = "native", *, netns: str | None = None,
           ipr=None) -> str:
    """Attach (or atomically replace) the program `fd` on `ifname`.

    native: driver mode or fail. generic: skb mode. auto: native, else
    generic with a warning. Returns the mode the kernel reports."""
    if how not in ("native", "generic", "auto"):
        raise ValueError(f"xdp mode must be native, generic or auto, got {how!r}")
    tries = ["native", "generic"] if how == "auto" else [how]
    with _netlink(ipr, netns) as nl:
        for attempt in tries:
            try:
                _set(nl, ifname, fd, MODE_FLAGS[attempt])
                break
            except Exception as err:  # pyroute2's NetlinkError carries the kernel's errno
                if attempt == tries[-1]:
                    hint = ". Use mode: generic (slower) or auto" if how == "native" else ""
                    raise XdpError(f"{attempt} XDP attach to {ifname} failed: {err}{hint}") from err
                log.warning("xdp_native_failed interface=%s error=%s fallback=generic", ifname, err)
        actual = mode(ifname, ipr=nl) or "unknown"
    log.info("xdp_attached interface=%s mode=%s requested=%s", ifname, actual, how)
    return actual


def detach(ifname: str, *, netns: str | None = None, ipr=None) -> None:
    """Remove whatever program is attached to `ifname`, in whichever mode."""
    with _netlink(ipr, netns) as nl:
        found = mode(ifname, ipr=nl)
        if found is None:
            return
        _set(nl, ifname, -1, XDP_FLAGS_SKB_MODE if found == "generic" else XDP_FLAGS_DRV_MODE)
