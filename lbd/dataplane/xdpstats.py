"""What an interface's driver did with the frames an XDP program sent back out
of it (XDP_TX): how many left and how many it lost, from the driver's own
statistics (what `ethtool -S` prints, read through pyroute2's ethtool ioctl;
ethtool's netlink interface carries only the standard statistics groups, not
these driver-specific ones).

Why it is needed: a program counts a frame as sent the moment it returns
XDP_TX; whether the frame leaves is up to the driver. On a veth with a
native (driver-mode) program, a frame leaves only when the other end of the
veth takes XDP frames (it runs an XDP program, an XDP_PASS one is enough, or
has GRO on); otherwise the driver drops it and counts it nowhere but in its
rx_queue_N_xdp_tx_errors (checked on this kernel, 6.18). Containers and VMs
behind a veth are backends like any other, so this is the common way a
backend's second-chance forwarding fails while its program says "forwarded".

Only veth's names are known here (rx_queue_N_xdp_tx for the frames that
left, rx_queue_N_xdp_tx_errors for the lost ones, peer_ifindex for the other
end); a driver without them gives None: nothing to tell. A generic-mode
(skb) program's XDP_TX goes through the kernel's stack, not these counters.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

_SENT = re.compile(r"^rx_queue_\d+_xdp_tx$")
_LOST = re.compile(r"^rx_queue_\d+_xdp_tx_errors$")


@dataclass(frozen=True)
class XdpTx:
    """An interface's XDP_TX frames since it was created, summed over its queues."""
    sent: int                  # left the interface
    lost: int                  # dropped by the driver after the program returned XDP_TX
    peer_ifindex: int | None   # a veth's other end (in whichever namespace it lives); None: no veth


def from_statistics(stats: list[tuple[str, int]]) -> XdpTx | None:
    """XdpTx from a driver's (name, value) statistics; None without XDP_TX error counters."""
    lost = [value for name, value in stats if _LOST.match(name)]
    if not lost:
        return None
    peer = [value for name, value in stats if name == "peer_ifindex"]
    return XdpTx(sum(value for name, value in stats if _SENT.match(name)), sum(lost),
                 peer[0] if peer else None)


def xdp_tx(ifname: str) -> XdpTx | None:
    """The interface's XDP_TX counters, read now in this network namespace;
    None when its driver keeps none (or reports no statistics at all)."""
    from pyroute2.ethtool.ioctl import IoctlEthtool, NoSuchDevice, NotSupportedError

    ethtool = IoctlEthtool(ifname)
    try:
        return from_statistics(ethtool.get_statistics())
    except (NotSupportedError, NoSuchDevice, OSError):
        return None
    finally:
        ethtool.close()
