"""Rates for `lbctl status --rate` (like `ipvsadm -Ln --rate`): new flows,
packets and bytes per second, per VIP and per backend, over the last few
seconds.

The daemon snapshots the program's counters every RATE_EVERY_S (one batched
read of each per-CPU counter array: lbd.dataplane.maps.counter_arrays) into a
small ring; a rate is the difference between the newest snapshot and the
oldest one at most RATE_WINDOW_S before it, over the time between them.
Nothing here depends on Prometheus.
"""
from __future__ import annotations

import collections
import time
from dataclasses import dataclass

import numpy as np

RATE_EVERY_S = 1.0
RATE_WINDOW_S = 5.0
# columns of the counter arrays (the structs' field order in xdp/lbd_shared.h)
VIP_FIELDS = {"packets": 0, "bytes": 1, "new_flows": 2}
BACKEND_FIELDS = {"packets": 0, "bytes": 1, "new_flows": 2}


@dataclass(frozen=True)
class Snapshot:
    at: float              # time.monotonic()
    vips: np.ndarray       # vip id -> counters
    backends: np.ndarray   # backend id -> counters


class RateRing:
    """The last few snapshots; rates between the newest and the oldest."""

    def __init__(self, window_s: float = RATE_WINDOW_S, every_s: float = RATE_EVERY_S):
        self.window_s = window_s
        self._ring: collections.deque[Snapshot] = collections.deque(maxlen=int(window_s / every_s) + 1)

    def add(self, vips: np.ndarray, backends: np.ndarray, at: float | None = None) -> None:
        self._ring.append(Snapshot(time.monotonic() if at is None else at, vips, backends))

    def _ends(self) -> tuple[Snapshot, Snapshot] | None:
        if len(self._ring) < 2:
            return None
        newest = self._ring[-1]
        oldest = next(s for s in self._ring if newest.at - s.at <= self.window_s + 0.5)
        return (oldest, newest) if oldest is not newest else None

    @property
    def span_s(self) -> float | None:
        """Seconds the rates are taken over (None: not two snapshots yet)."""
        ends = self._ends()
        return None if ends is None else round(ends[1].at - ends[0].at, 2)

    @staticmethod
    def _rate(old: np.ndarray, new: np.ndarray, row: int, span: float, fields: dict) -> dict | None:
        if row >= len(new):
            return None
        before = old[row] if row < len(old) else np.zeros_like(new[row])
        # a counter never goes down; if one did (a map replaced), say 0, not a negative rate
        delta = np.maximum(new[row].astype(np.int64) - before.astype(np.int64), 0)
        return {f"{name}_per_s": round(float(delta[col]) / span, 1) for name, col in fields.items()}

    def _between_ends(self, array: str, row: int, fields: dict) -> dict | None:
        ends = self._ends()
        if ends is None:
            return None
        old, new = ends
        return self._rate(getattr(old, array), getattr(new, array), row, new.at - old.at, fields)

    def vip(self, vip_id: int) -> dict | None:
        return self._between_ends("vips", vip_id, VIP_FIELDS)

    def backend(self, backend_id: int) -> dict | None:
        return self._between_ends("backends", backend_id, BACKEND_FIELDS)
