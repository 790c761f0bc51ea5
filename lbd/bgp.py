"""When this host announces a VIP over BGP, and the loop that holds BIRD to it.

The rules (docs/fleet.md):
  - A VIP is announced only while lbd's program is attached to every
    configured interface, the host is not drained, the VIP has
    `announce: true`, and at least `min_healthy` of its backends are healthy.
  - Healthy: in the table for new flows (weight above 0, not draining),
    resolved, and passing its checks (UP or FALLING; every backend of a VIP
    without checks). A backend with no verdict yet (INIT) counts only for a
    VIP that is announced already: a restarted lbd changes nothing.
  - A VIP not announced yet is announced only once its backends have
    settled (none unchecked or rising): a host that joins or recovers then
    has the same Maglev table as its peers, so a flow the routers later move
    between hosts keeps its backend. A table built from half the backends
    would send flows where the other hosts do not, and those flows would
    break when they move. For the same reason it waits until the table in
    the map is the one the current health state makes (a health change is
    written first, then decided on).
    Fail-open keeps forwarding to every backend, but does not announce.
  - Drained: the maintenance file exists (`lbctl drain` writes it, `lbctl
    undrain` removes it, or touch and rm it by hand). It survives reboots.
  - Teardown withdraws everything, waits bgp.withdraw_delay for the routers
    to move the flows, then detaches. A plain stop or restart of lbd
    withdraws nothing: BIRD keeps what lbd last wrote, and the program keeps
    forwarding.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

from lbd import bird
from lbd.dataplane import bpfsys
from lbd.config import Config, Vip
from lbd.health import HealthState

log = logging.getLogger("lbd.bgp")
RECONCILE_EVERY_S = 1.0
_HEALTHY = frozenset({HealthState.UP, HealthState.FALLING})


@dataclass(frozen=True)
class Decision:
    vip: str
    address: str
    announce: bool
    reason: str        # why, in words for /status and the log
    healthy: int
    needed: int


def decide(config: Config, *, attached: bool, drained: bool,
           health_state: Callable[[Vip, str], HealthState | None],
           resolved: Callable[[str], bool], table_current: Callable[[Vip], bool],
           announced: set) -> list[Decision]:
    """One Decision per VIP. health_state(vip, backend address) is None
    for a VIP without checks; table_current(vip) says whether the VIP's table
    in the maps reflects the current health state; `announced` holds the
    addresses announced now."""
    decisions = []
    for vip in config.vips:
        needed = vip.min_healthy or config.bgp.min_healthy
        healthy = unknown = rising = 0
        for backend in vip.backends:
            address = str(backend.address)
            if backend.effective_weight == 0 or not resolved(address):
                continue
            state = health_state(vip, address)
            if state is None or state in _HEALTHY:
                healthy += 1
            elif state is HealthState.INIT:
                unknown += 1
            elif state is HealthState.RISING:
                rising += 1
        is_announced = vip.address in announced
        if not vip.announce:
            verdict, reason = False, "announce: false"
        elif not attached:
            verdict, reason = False, "program not attached"
        elif drained:
            verdict, reason = False, "host drained"
        elif healthy >= needed and (is_announced or (unknown + rising == 0 and table_current(vip))):
            verdict, reason = True, f"{healthy} healthy backends, {needed} needed"
        elif healthy >= needed and unknown + rising:
            verdict, reason = False, f"waiting for {unknown + rising} backends to settle (unchecked or rising)"
        elif healthy >= needed:
            verdict, reason = False, "waiting for the table to be written"
        elif is_announced and healthy + unknown >= needed:
            verdict, reason = True, f"{healthy} healthy and {unknown} not checked yet, {needed} needed"
        else:
            verdict, reason = False, f"{healthy} healthy backends, {needed} needed"
        decisions.append(Decision(vip.name, str(vip.address), verdict, reason, healthy, needed))
    return decisions


class Announcer:
    """Keeps BIRD's config equal to the decisions: rewrites it when they
    change and retries `birdc configure` until BIRD has taken it."""

    def __init__(self, daemon):
        self.daemon = daemon
        # the bgp section in force; kept when a reload removes it, to withdraw with
        self.bgp = daemon.config.bgp
        previous = bird.announced_in(self.bgp.bird_config)
        self.announced: set = previous or set()   # what the file says now
        self.decisions: list[Decision] = []
        self.peers: list[bird.Protocol] = []
        self.speaker_up = False
        self.pending = previous is None            # BIRD has not read our file yet
        self.last_error: str | None = None
        self.withdrawn_all = False                 # teardown: nothing may be announced again
        self._lock = asyncio.Lock()
        if previous is not None:
            log.info("bgp_adopted file=%s announced=%s", self.bgp.bird_config,
                     ",".join(sorted(map(str, previous))) or "-")

    @property
    def birdc(self) -> bird.Birdc:
        return bird.Birdc(self.bgp.bird_socket)   # a reload may move the socket

    @property
    def drained(self) -> bool:
        return os.path.exists(self.bgp.maintenance_file)

    def attached(self) -> bool:
        """Our program (by id) is the one attached to every configured interface."""
        datapath = self.daemon.datapath
        if datapath is None or not self.daemon.ready:
            return False
        ours = bpfsys.program_id(datapath.prog_fd)
        try:
            return all(bpfsys.xdp_program_id(socket.if_nametoindex(i.name)) == ours
                       for i in self.daemon.config.interfaces)
        except OSError:   # an interface is gone
            return False

    def _decide(self, attached: bool) -> list[Decision]:
        daemon = self.daemon

        def health_state(vip: Vip, address: str):
            if vip.health is None or daemon.health is None:
                return None
            return daemon.health.state((vip.name, address))

        def resolved(address: str) -> bool:
            found = daemon.resolutions.get(address)
            return found is None or found.ok

        return decide(daemon.config, attached=attached, drained=self.drained,
                      health_state=health_state, resolved=resolved,
                      table_current=daemon.plan_is_current, announced=self.announced)

    async def reconcile(self, why: str = "tick") -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            if self.daemon.config.bgp is not None:
                self.bgp = self.daemon.config.bgp   # a reload may have changed it
            if self.withdrawn_all:   # teardown, or the bgp section is gone
                decisions = [replace(d, announce=False, reason="withdrawn for good (teardown or no "
                                                              "bgp section)") for d in self.decisions]
            else:
                attached = await loop.run_in_executor(None, self.attached)
                async with self.daemon.apply_lock:   # no table write half done while deciding
                    decisions = self._decide(attached)
            wanted = {vip.address for vip, d in zip(self.daemon.config.vips, decisions) if d.announce}
            for before, after in zip(self._by_vip(self.decisions), decisions):
                if before is not None and before.announce != after.announce:
                    log.info("bgp_%s vip=%s address=%s reason=%r why=%s",
                             "announce" if after.announce else "withdraw", after.vip, after.address,
                             after.reason, why)
            self.decisions = decisions
            text = bird.render(self.bgp, wanted, self.daemon.config_path)
            changed = await loop.run_in_executor(None, bird.write, self.bgp.bird_config, text)
            self.announced = wanted
            if changed or self.pending:
                await self._configure(loop)
            await self._refresh_peers(loop)

    def _by_vip(self, previous: list[Decision]) -> list[Decision | None]:
        by_name = {d.vip: d for d in previous}
        return [by_name.get(v.name) for v in self.daemon.config.vips]

    async def _configure(self, loop) -> None:
        try:
            await loop.run_in_executor(None, self.birdc.configure)
        except bird.BirdError as err:
            if not self.pending or str(err) != self.last_error:
                log.warning("bgp_configure_failed error=%r (retried every %gs)", str(err),
                            RECONCILE_EVERY_S)
            self.pending, self.last_error = True, str(err)
            self.daemon.metrics.bgp_configure_failures.inc()
            return
        self.pending, self.last_error = False, None

    async def _refresh_peers(self, loop) -> None:
        try:
            protocols = await loop.run_in_executor(None, self.birdc.protocols)
        except bird.BirdError as err:
            self.speaker_up, self.peers = False, []
            self.last_error = self.last_error or str(err)
            return
        self.speaker_up = True
        self.peers = [p for p in protocols if p.proto == "BGP"]

    async def set_drained(self, drained: bool) -> dict:
        path = self.bgp.maintenance_file
        if drained:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"drained by lbctl at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        log.info("bgp_%s maintenance_file=%s", "drained" if drained else "undrained", path)
        await self.reconcile("drain" if drained else "undrain")
        return self.status()

    def status(self) -> dict:
        return {"speaker_up": self.speaker_up, "drained": self.drained,
                "maintenance_file": self.bgp.maintenance_file, "bird_config": self.bgp.bird_config,
                "pending": self.pending, "last_error": self.last_error,
                "peers": [asdict(p) | {"established": p.established} for p in self.peers],
                "vips": [asdict(d) for d in self.decisions]}


def withdraw_everything(config: Config) -> str:
    """`lbd --teardown` without a daemon: a config announcing nothing, reread
    by BIRD, then bgp.withdraw_delay for the routers. Says what it did."""
    bgp = config.bgp
    bird.write(bgp.bird_config, bird.render(bgp, (), "lbd --teardown"))
    try:
        bird.Birdc(bgp.bird_socket).configure()
    except bird.BirdError as err:
        return f"BGP: wrote {bgp.bird_config} announcing nothing; BIRD did not take it: {err}"
    time.sleep(bgp.withdraw_delay_s)
    return f"BGP: withdrew every VIP and waited {bgp.withdraw_delay_s:g}s"
