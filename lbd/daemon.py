"""The lbd daemon: config in, datapath programmed, health checked, observable.

Lifecycle
  start:   check the host, load (or adopt) the pinned program and maps,
           resolve backends, apply the config, attach, then READY=1.
  reload:  SIGHUP or `lbctl reload`: validate, refuse boot-only changes by
           name, diff, apply; an invalid file or a failed apply leaves the
           datapath exactly as it was (logged, in /status, counted).
  stop:    SIGTERM: STOPPING=1 and exit, leaving the program attached and
           the maps pinned, so forwarding and the connection table go on
           and the next start adopts them (hitless restart and upgrade).
  teardown: `lbctl teardown` / `lbd --teardown`: withdraw the VIPs from
           BGP (with a bgp section), wait, then detach and unpin all.
  BGP:     with a bgp section, lbd.bgp decides which VIPs this host
           announces and holds BIRD's config to it (see lbd/bgp.py).

Length (over 450 lines, on purpose): the lifecycle above is one object's,
sharing its state and the apply lock; each thing it drives has its own
module (plan, dataplane.programmer, health, neighbours, bgp, http, metrics,
status).
"""
from __future__ import annotations

import asyncio
import contextlib
import glob
import ipaddress
import logging
import os
import shutil
import signal
import socket
import time
from pathlib import Path

from lbd import config as config_mod
from lbd import bgp as bgp_mod
from lbd import healthview, hostsetup, rates
from lbd.dataplane import flowtable, layout, mounts, settle
from lbd.config import Config, ConfigError
from lbd.dataplane.healthpath import HealthPath, MarkBook
from lbd.dataplane.maps import Datapath, Limits
from lbd.health import HealthChecker, HealthState, format_key
from lbd.metrics import Metrics
from lbd.neighbours import NeighbourResolver
from lbd.plan import ACTIVE, DOWN, VipStatus, plans_for, vip_plan
from lbd.dataplane.programmer import ApplyError, Programmer, VipResult

log = logging.getLogger("lbd")
NEIGHBOUR_REFRESH_S = 30.0
EXPIRE_EVERY_S = 5.0  # holds are ended at their time, and looked at at least this often
# Second tables cost one Maglev build per backend (0.13 s for 100 backends;
# VIPs of the same backends share one: lbd.dataplane.programmer): an apply
# spends this on them (none: a health change or a reload must not wait a
# build's 0.1-0.8 s, bench/control.py's second_chance_scale), and they are
# built in the background right after, this long at a time under the apply
# lock, so start-up, reloads and health changes wait for none. Meanwhile a
# changed VIP names the backend a moved slot had, which is the rule's answer
# for one backend down, drained, removed or added (docs/second-chance.md).
SECOND_BUDGET_S = 0.0
SECOND_CHUNK_S = 0.5


class StartupError(Exception):
    """Something basic is missing; the message says what to do."""


def pin_dir_for(bpffs: str, limits: Limits) -> str:
    """Pins live in a directory named after the layout and the map sizes, so
    a daemon only ever adopts maps shaped exactly as its program expects."""
    return os.path.join(bpffs, f"layout{layout.constant('LBD_LAYOUT_VERSION')}-vips{limits.max_vips}"
                               f"-backends{limits.max_backends}-ring{limits.ring_size}"
                               f"-ct{limits.conntrack_size}-ctudp{limits.conntrack_udp_size}")


def datapath_limits(config: Config) -> Limits:
    return Limits(**config.limits.model_dump())


def _notify(message: str) -> None:
    if not os.environ.get("NOTIFY_SOCKET"):
        return
    try:
        from systemd import daemon as sd
    except ImportError:  # no python3-systemd: nothing to notify with
        return
    sd.notify(message)


class Daemon:
    def __init__(self, config_path: str, config: Config):
        self.config_path = config_path
        self.config = config
        self.datapath: Datapath | None = None
        self.programmer: Programmer | None = None
        self.health: HealthChecker | None = None
        self.healthpath: HealthPath | None = None  # checks through the data path (lbd.dataplane.healthpath)
        self.marks = MarkBook()
        self.resolver = NeighbourResolver()
        self.resolutions: dict = {}
        self.vip_status: dict[str, VipStatus] = {}
        self._plans: dict = {}  # VIP name -> the VipPlan last applied
        self._pinned_health: dict = {}  # (VIP name, address) -> UP/DOWN read from adopted maps
        self.attached: dict[str, str] = {}
        self.table_usage: dict = {}  # "tcp"/"udp" -> flowtable.TableUsage, from the last sample
        self.table_sampled_at: float | None = None  # unix time of that sample
        self.settled = settle.SettleResult()  # the last settle walk's result
        self._settled_at = 0.0                # and when it ended (monotonic)
        self.rates = rates.RateRing()  # counter snapshots every second, for `lbctl status --rate`
        self._walk_lock = asyncio.Lock()  # one fresh walk (`lbctl wait-drained`) at a time
        self.capture_lock = asyncio.Lock()  # one `lbctl capture` at a time (lbd.capture)
        self.capture_last: dict | None = None  # the last capture's summary, for /status
        self.last_results: list[VipResult] = []
        self.reload_state = {"last_result": None, "last_error": None, "last_success_time": None,
                             "refused": None}
        self.ready = False
        self.started = time.time()
        self.announcer: bgp_mod.Announcer | None = None
        self.metrics = Metrics(self)
        self.apply_lock = asyncio.Lock()
        self._holds_changed = asyncio.Event()  # an apply may have started a hold: look again
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- start ----------------------------------------------------------------
    def preflight(self) -> None:
        problems = [p for p in hostsetup.problems() if "bpffs" not in p]
        if not mounts.on_bpffs(self.config.bpffs):
            problems.append(f"{self.config.bpffs} (config bpffs) is not on a mounted bpffs: "
                            f"mount -t bpf bpf /sys/fs/bpf")
        for interface in self.config.interfaces:
            if not _interface_exists(interface.name):
                problems.append(f"interface {interface.name} does not exist (config interfaces)")
        if problems:
            raise StartupError("lbd cannot start:\n  " + "\n  ".join(problems))

    def _load_datapath(self) -> None:
        limits = datapath_limits(self.config)
        pin_dir = pin_dir_for(self.config.bpffs, limits)
        stale = [d for d in glob.glob(os.path.join(self.config.bpffs, "layout*")) if d != pin_dir]
        adopting = os.path.isdir(pin_dir)
        try:
            self.datapath = Datapath(limits, pin_dir)
        except Exception as err:
            if "EACCES" in str(err) or "Operation not permitted" in str(err):
                raise StartupError(f"loading the XDP program was refused ({err}): lbd needs "
                                   "CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_SYS_ADMIN (to reopen "
                                   "pinned maps by id)") from err
            raise
        # second_chance.hold rides in each VipPlan (lbd.plan), not here
        self.programmer = Programmer(self.datapath, second_budget_s=SECOND_BUDGET_S)
        # the tables' first sample (a batched walk: 0.38 s at 1M entries, an
        # empty table's at once), so the first scrape and status have one and
        # the adoption log line its count
        self.table_usage = flowtable.sample(self.datapath)
        self.table_sampled_at = time.time()
        if adopting:
            found = self.programmer.adopt()
            log.info("datapath_adopted pin_dir=%s vips=%d conntrack_entries=%d", pin_dir, found,
                     sum(u.entries for u in self.table_usage.values()))
            self._pinned_health = self._read_pinned_health()
        else:
            log.info("datapath_created pin_dir=%s", pin_dir)
        self._stale_pins = stale

    def _read_pinned_health(self) -> dict:
        """The last verdict of every health-checked backend, from the adopted
        backend entries: ACTIVE -> UP, DOWN -> DOWN (draining says nothing
        about health: such a backend starts unchecked). Without this a
        restart trusted every backend until its first checks, and one that
        was down went back into the table for a few seconds (#11).

        DOWN may also have been an unresolved MAC rather than a failing
        check; starting it DOWN then costs `rise` passing checks, never a
        connection sent to a dead backend."""
        restored = {}
        for vip in self.config.vips:
            if vip.health is None:
                continue
            for backend in vip.backends:
                backend_id = self.programmer.backend_id((vip.address, vip.port, vip.proto_number),
                                                        backend.address)
                if not backend_id:
                    continue  # new in this config: not checked yet
                state = {ACTIVE: HealthState.UP, DOWN: HealthState.DOWN}.get(
                    self.datapath.backend(backend_id).state)
                if state is not None:
                    restored[(vip.name, str(backend.address))] = state
        for key, state in restored.items():
            log.info("health_restored target=%s state=%s source=pinned_maps need=%s", format_key(key),
                     state.value, "rise_passing_checks" if state is HealthState.DOWN else "fall_failures")
        log.info("health_restored_summary up=%d down=%d", sum(s is HealthState.UP for s in restored.values()),
                 sum(s is HealthState.DOWN for s in restored.values()))
        return restored

    def _ipip_forwarding(self) -> None:
        """bpf_fib_lookup() refuses to route when IP forwarding is off on the
        interface: ipip needs it on (dsr does not)."""
        families = {vip.address.version for vip in self.config.vips if vip.mode == "ipip"}
        for interface in self.config.interfaces:
            for version in families:
                path = (f"/proc/sys/net/ipv4/conf/{interface.name}/forwarding" if version == 4 else
                        f"/proc/sys/net/ipv6/conf/{interface.name}/forwarding")
                try:
                    if Path(path).read_text().strip() != "1":
                        Path(path).write_text("1\n")
                        log.info("forwarding_enabled interface=%s family=ipv%d reason=ipip", interface.name,
                                 version)
                except OSError as err:
                    log.warning("forwarding_not_set interface=%s error=%s", interface.name, err)

    async def _resolutions(self, config: Config) -> dict:
        dsr = {b.address for v in config.vips if v.mode == "dsr" for b in v.backends}
        ipip = {b.address for v in config.vips if v.mode == "ipip" for b in v.backends}
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, self.resolver.resolve_all, dsr, ipip)

    async def _resolve(self) -> None:
        resolutions = await self._resolutions(self.config)
        for address, resolved in resolutions.items():
            previous = self.resolutions.get(address)
            if not resolved.ok and (previous is None or previous.ok):
                log.warning("backend_unresolved backend=%s problem=%r", address, resolved.problem)
        self.resolutions = resolutions

    def _health_targets(self, config: Config, commit: bool = True) -> dict:
        """Every check of `config` (lbd.healthview). commit=False (a preview:
        check --diff) assigns no mark for good."""
        marks = self.marks.assign(healthview.path_keys(config), commit=commit)
        return healthview.health_targets(config, marks.__getitem__)

    def _sync_health_paths(self, config: Config) -> None:
        """Give every check through a VIP its backend's entry as the balancer
        has it (after each apply: MACs, flags, state as written), and the
        routing for the VIP addresses. Runs in a worker thread (map writes)."""
        if self.healthpath is None:
            return
        entries, addresses = {}, set()
        applied = self.programmer.applied()
        for vip in config.vips:
            if vip.health is None:
                continue
            addresses.add(vip.address)
            entry = applied.get((vip.address, vip.port, vip.proto_number))
            for backend in vip.backends:
                mark = self.marks.get(healthview.deciding_key(vip, backend))
                backend_id = entry.backend_ids.get(backend.address) if entry else None
                if mark and backend_id:
                    entries[mark] = bytes(self.datapath.backend(backend_id))
        self.healthpath.set_addresses(addresses)
        self.healthpath.set_paths(entries)

    def _start_health_path(self) -> None:
        """The TC program and routing of the checks through the VIPs, on the
        first interface (lbd.dataplane.healthpath), when any VIP is health-checked."""
        if self.healthpath is not None or not any(v.health for v in self.config.vips):
            return
        path = HealthPath(self.config.interfaces[0].name).load()
        path.attach()
        self.healthpath = path

    def _health_up(self, vip, backend) -> bool:
        if vip.health is None or self.health is None:
            return True
        return self.health.is_up((vip.name, str(backend.address)))  # not checked yet: up

    async def _apply(self, config: Config, only_vip: str | None = None) -> list[VipResult]:
        """Plan and write. With only_vip (a health change), only that VIP is
        planned again; the others keep their plan objects, which the
        programmer skips at the cost of an identity check."""
        async with self.apply_lock:
            # Planned under the lock: two health changes of different VIPs
            # apply one after the other, each on top of the other's plans and
            # with the health state of its own turn. (Planned outside it, the
            # second would write back the first VIP's older plan.)
            vip = next((v for v in config.vips if v.name == only_vip), None)
            if vip is not None and vip.name in self._plans:
                plan, status = vip_plan(vip, self._health_up, self.resolutions,
                                        config.second_chance_hold_s)
                plans = {**self._plans, vip.name: plan}
                statuses = {**self.vip_status, vip.name: status}
            else:
                plan_list, statuses = plans_for(config, self._health_up, self.resolutions)
                plans = {plan.name: plan for plan in plan_list}
            loop = asyncio.get_running_loop()
            try:
                results = await loop.run_in_executor(None, self.programmer.apply, list(plans.values()))
            finally:
                self._log_holds()
            # A health change (only_vip) changes a backend's state, which the
            # checks' program does not read: only applies that can change
            # addresses, MACs, flags or VIPs copy the entries again.
            if only_vip is None:
                try:
                    await loop.run_in_executor(None, self._sync_health_paths, config)
                except Exception:  # the checks through the VIP then fail and say so; forwarding is applied
                    log.exception("health_path_sync_failed")
            self._plans = plans
            self.vip_status = statuses
        self._holds_changed.set()
        return results

    def _log_holds(self) -> None:
        """Second-chance holds that started or ended (lbd.dataplane.programmer)."""
        for event in self.programmer.take_events():
            if event.event == "started":
                log.info("hold_started vip=%s backend=%s state=%s until=%d hold_s=%g", event.vip,
                         event.backend, event.state, event.until, self.config.second_chance_hold_s)
            else:
                log.info("hold_ended vip=%s backend=%s state=%s released=%s", event.vip, event.backend,
                         event.state, "yes" if event.released else "no")

    async def _second_chance_upkeep(self) -> None:
        """End second-chance holds when they are over (at the next hold's end,
        woken early when an apply starts one, and at least every
        EXPIRE_EVERY_S), and build the second tables an apply left pending."""
        pending_since = None
        while not self._stop.is_set():
            deadline = self.programmer.next_deadline()
            wait = EXPIRE_EVERY_S if deadline is None else min(EXPIRE_EVERY_S, max(0.0, deadline - time.time()))
            if self.programmer.second_pending():
                wait = 0.0
            self._holds_changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._holds_changed.wait(), wait)
            if self._stop.is_set():
                return
            try:
                async with self.apply_lock:
                    await asyncio.to_thread(self.programmer.expire)
                    self._log_holds()
                    if self.programmer.second_pending():
                        pending_since = pending_since or time.monotonic()
                        left = await asyncio.to_thread(self.programmer.build_second, SECOND_CHUNK_S)
                        if not left:
                            log.info("second_tables_built vips=%d seconds=%.1f",
                                     sum(a.plan.second_chance for a in self.programmer.applied().values()),
                                     time.monotonic() - pending_since)
                            pending_since = None
            except Exception:  # keep going; the log says what broke
                log.exception("second_chance_upkeep_failed")
                await asyncio.sleep(1.0)  # not a hot loop while the kernel refuses

    def _attach(self) -> None:
        for interface in self.config.interfaces:
            self.attached[interface.name] = self.datapath.attach(interface.name, interface.mode)
        # an older layout's pins are dropped only once our program has replaced its program
        for stale in getattr(self, "_stale_pins", []):
            log.warning("pinned_layout_replaced old=%s new_limits=%s conntrack=lost", stale,
                        datapath_limits(self.config))
            shutil.rmtree(stale, ignore_errors=True)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.preflight()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self._load_datapath)
        self.datapath.set_settings(self.config.ipip_source_v4, self.config.ipip_source_v6)
        self._ipip_forwarding()
        await loop.run_in_executor(None, self._start_health_path)
        self._health_path_sources(self.config)
        await self._resolve()
        # paused until the first apply has written the checks' paths
        self.health = HealthChecker(self._on_health_change, self._on_health_result, paused=True)
        # the first apply already uses the last verdicts, so a restart puts
        # no backend that was down back into the table
        self.health.set_targets(self._health_targets(self.config), initial=self._pinned_health)
        results = await self._apply(self.config)
        self.health.resume()
        self._log_results("initial", results)
        # pyroute2 runs an asyncio loop of its own: keep it off ours
        await loop.run_in_executor(None, self._attach)
        self.last_results = results
        self.reload_state.update(last_result="success", last_success_time=time.time())
        self.metrics.last_success.set(time.time())
        self.metrics.last_ok.set(1)
        self.ready = True
        log.info("ready vips=%d backends=%d interfaces=%s", len(self.config.vips), self.config.backend_count,
                 ",".join(f"{k}:{v}" for k, v in self.attached.items()))
        await self._follow_bgp_section()
        _notify("READY=1")

    async def _follow_bgp_section(self) -> None:
        """Start announcing when the config has a bgp section; withdraw
        everything when a reload removed it."""
        if self.config.bgp and self.announcer is None:
            self.announcer = bgp_mod.Announcer(self)
        elif self.config.bgp is None and self.announcer is not None:
            announcer, self.announcer = self.announcer, None
            announcer.withdrawn_all = True
            await announcer.reconcile("bgp section removed")
            return
        if self.announcer is not None:
            await self.announcer.reconcile("config")

    def _health_path_sources(self, config: Config) -> None:
        if self.healthpath is not None:
            self.healthpath.set_sources(config.ipip_source_v4, config.ipip_source_v6)

    # --- health ---------------------------------------------------------------
    def _on_health_change(self, key, old, new, result) -> None:
        if len(key) == 3:  # a second signal: shown and logged, never acted on
            vip = next((v for v in self.config.vips if v.name == key[0]), None)
            if vip is not None and new.is_up != old.is_up:
                backend = next((b for b in vip.backends if str(b.address) == key[1]), None)
                if backend is not None:
                    view = healthview.verdict(vip, backend, self.health.snapshot())
                    log.info("health_second_signal vip=%s backend=%s check=%s state=%s verdict=%s", key[0],
                             key[1], "address" if vip.health.via == "vip" else "vip", new.value,
                             view["verdict"])
            return
        if old.is_up == new.is_up or not self.ready:
            return
        vip = next((v for v in self.config.vips if v.name == key[0]), None)
        backend = vip and next((b for b in vip.backends if str(b.address) == key[1]), None)
        if backend is not None and not new.is_up:
            view = healthview.verdict(vip, backend, self.health.snapshot())
            log.warning("backend_down vip=%s backend=%s verdict=%s reason=%r", key[0], key[1],
                        view["verdict"], view["reason"] or result.detail)
        asyncio.ensure_future(self._replan_and_announce(key[0]))

    async def _replan_and_announce(self, vip_name: str) -> None:
        # the table first: the announcer decides on what the maps hold
        await self._replan(vip_name)
        if self.announcer is not None:
            await self.announcer.reconcile("health")

    def applied_plan(self, vip_name: str):
        """The VipPlan last written for a VIP (its backends' addresses, MACs,
        states), or None before its first apply."""
        return self._plans.get(vip_name)

    def plan_is_current(self, vip) -> bool:
        """Whether the VIP's applied plan is what health and neighbours make now."""
        applied = self._plans.get(vip.name)
        return applied is not None and vip_plan(vip, self._health_up, self.resolutions,
                                                    self.config.second_chance_hold_s)[0] == applied

    def _on_health_result(self, key, result) -> None:
        spec = self.health.spec(key)
        via = "vip" if spec is not None and spec.mark else "address"
        self.metrics.check_duration.labels(key[0]).observe(result.duration_s)
        self.metrics.checks.labels(key[0], key[1], via, "ok" if result.ok else "fail").inc()

    async def _replan(self, vip_name: str | None = None) -> None:
        """Recompute plans after a health or neighbour change and apply: only
        the VIPs whose plan changed are written."""
        try:
            results = await self._apply(self.config, only_vip=vip_name)
        except ApplyError as err:
            log.error("health_apply_failed vip=%s error=%s", vip_name, err)
            return
        for r in results:
            if r.action != "unchanged":
                log.info("table_updated vip=%s reason=health_or_neighbour moved_share=%.4f fingerprint=%s%s",
                         r.name, r.moved_share, r.fingerprint,
                         f" second_fingerprint={r.second_fingerprint}" if r.second_fingerprint else "")

    async def _refresh_neighbours(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), NEIGHBOUR_REFRESH_S)
            except asyncio.TimeoutError:
                before = self.resolutions
                await self._resolve()
                if before != self.resolutions:
                    await self._replan()

    async def _sample_tables_once(self) -> None:
        """How full the connection tables are, and each backend's flows:
        walked in a worker thread (a full table takes a fraction of a
        second), so neither the datapath nor the event loop waits for it."""
        try:
            self.table_usage = await asyncio.to_thread(flowtable.sample, self.datapath)
            self.table_sampled_at = time.time()
        except OSError as err:  # the maps are there while we run; say so if not
            log.warning("conntrack_sample_failed error=%s", err)
        # then the settle walk (lbd/dataplane/settle.py): which slots a SYN
        # may place without its connection-table lookup; at most a tenth of
        # one core's time however long a full table makes it
        if time.monotonic() - self._settled_at < settle.CPU_SHARE_INVERSE * self.settled.seconds:
            return
        try:
            self.settled = await asyncio.to_thread(settle.settle, self.datapath)
        except OSError as err:
            log.warning("settle_walk_failed error=%s", err)
        self._settled_at = time.monotonic()

    async def _sample_tables(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), flowtable.SAMPLE_EVERY_S)
            except asyncio.TimeoutError:
                await self._sample_tables_once()

    async def _sample_rates(self) -> None:
        """The program's counters every second into a small ring (lbd.rates),
        read off the event loop: one batched read per counter array."""
        while not self._stop.is_set():
            try:
                ids = [i for applied in self.programmer.applied().values()
                       for i in applied.backend_ids.values()]
                vips, backends = await asyncio.to_thread(self.datapath.counter_arrays,
                                                         max(ids, default=0) + 1)
                self.rates.add(vips, backends)
            except Exception:  # keep sampling; the log says what broke
                log.exception("rate_sample_failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), rates.RATE_EVERY_S)

    async def backend_flows(self, vip_spec: str, backend: str, idle_after_s: float) -> dict:
        """One backend's live and idle flows now (`lbctl wait-drained`): its
        VIP's table walked fresh, in a worker thread, one walk at a time.
        vip_spec: the VIP's name or ADDR:PORT/PROTO; backend: its address.
        LookupError: no such VIP or backend in the running config."""
        vip = self.find_vip(vip_spec)
        try:
            address = ipaddress.ip_address(backend)
        except ValueError:
            raise LookupError(f"{backend!r} is not an address: BACKEND is the backend's address") from None
        if not any(b.address == address for b in vip.backends):
            raise LookupError(f"{address} is not a backend of VIP {vip.name} in the running config "
                              f"({', '.join(str(b.address) for b in vip.backends)}); a removed backend "
                              "keeps no flows (they move on their next packet)")
        applied = self.programmer.applied().get((vip.address, vip.port, vip.proto_number))
        if applied is None:
            raise LookupError(f"VIP {vip.name} is not in the maps (lbctl status says why)")
        backend_id = applied.backend_ids[address]
        plan = next(b for b in applied.plan.backends if b.address == address)
        async with self._walk_lock:
            found = await asyncio.to_thread(flowtable.backend_flows, self.datapath, vip.protocol,
                                            backend_id, idle_after_s)
        from lbd.status import STATE_NAMES
        return {"vip": vip.name, "protocol": vip.protocol, "backend": str(address),
                "state": STATE_NAMES.get(plan.state, "?"),
                "live": found.live, "idle": found.idle, "idle_after_s": idle_after_s,
                # UDP has no close: its flows end only by going quiet
                "closed_after_s": None if vip.protocol == "udp" else min(idle_after_s, flowtable.CLOSED_AFTER_S),
                "walk_seconds": round(found.walk_seconds, 3)}

    def find_vip(self, spec: str):
        """A VIP of the running config by name or ADDR:PORT/PROTO (LookupError if none)."""
        for vip in self.config.vips:
            if vip.name == spec:
                return vip
        endpoint, _, proto = spec.partition("/")
        host, _, port = endpoint.rpartition(":")
        try:
            address, port_number = ipaddress.ip_address(host.strip("[]")), int(port)
        except ValueError:
            address = port_number = None
        for vip in self.config.vips:
            if vip.address == address and vip.port == port_number and vip.protocol == (proto or "tcp"):
                return vip
        raise LookupError(f"no VIP named or at {spec!r} in the running config (lbctl status lists "
                          "them: NAME or ADDR:PORT/PROTO)")

    # --- reload ---------------------------------------------------------------
    async def reload(self) -> dict:
        _notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            return await self._reload()
        finally:
            _notify("READY=1")

    async def _reload(self) -> dict:
        try:
            new = config_mod.load_config(self.config_path)
        except ConfigError as err:
            return self._reload_failed("failure", str(err))
        refused = config_mod.boot_only_changes(self.config, new)
        if refused:
            return self._reload_failed(
                "refused", f"boot-only settings changed: {', '.join(refused)} (restart lbd to change "
                           "them; nothing was applied)")
        old_config = self.config
        self.config = new
        loop = asyncio.get_running_loop()
        try:
            self.datapath.set_settings(new.ipip_source_v4, new.ipip_source_v6)
            self._ipip_forwarding()
            await loop.run_in_executor(None, self._start_health_path)
            self._health_path_sources(new)
            await self._resolve()
            self.health.set_targets(self._health_targets(new))
            results = await self._apply(new)
        except Exception as err:  # ApplyError: the programmer restored the previous plans
            self.config = old_config
            self.datapath.set_settings(old_config.ipip_source_v4, old_config.ipip_source_v6)
            self._health_path_sources(old_config)
            self.health.set_targets(self._health_targets(old_config))
            return self._reload_failed("failure", f"apply failed: {err}")
        self.last_results = results
        self._log_results("reload", results)
        await self._follow_bgp_section()
        self.reload_state.update(last_result="success", last_error=None, last_success_time=time.time(),
                                 refused=None)
        self.metrics.reloads.labels("success").inc()
        self.metrics.last_success.set(time.time())
        self.metrics.last_ok.set(1)
        return {"result": "success", "vips": [r.__dict__ for r in results]}

    def _reload_failed(self, result: str, error: str) -> dict:
        log.error("reload_%s file=%s error=%r", result, self.config_path, error)
        self.reload_state.update(last_result=result, last_error=error)
        self.metrics.reloads.labels(result).inc()
        self.metrics.last_ok.set(0)
        return {"result": result, "error": error}

    def _log_results(self, why: str, results: list[VipResult]) -> None:
        for r in results:
            log.info("vip_applied why=%s vip=%s action=%s moved_share=%.4f fingerprint=%s%s", why, r.name,
                     r.action, r.moved_share, r.fingerprint,
                     f" second_fingerprint={r.second_fingerprint}" if r.second_fingerprint else "")

    async def diff(self, path: str) -> dict:
        """What applying `path` would move, per VIP (for `lbd check --diff`).

        Planned from what a reload would plan from: the health states
        set_targets would leave (a backend the checker does not track yet
        starts unchecked, INIT, which is up: it enters the table) and the new
        file's backends resolved, as _reload resolves them."""
        new = config_mod.load_config(path)
        states = self.health.states_after(self._health_targets(new, commit=False))
        resolutions = await self._resolutions(new)

        def health_up(vip, backend) -> bool:
            return vip.health is None or states[(vip.name, str(backend.address))].is_up

        plans, _ = plans_for(new, health_up, resolutions)
        return {"refused": config_mod.boot_only_changes(self.config, new),
                "vips": [r.__dict__ for r in self.programmer.preview(plans)]}

    # --- status and explain -----------------------------------------------------
    def explain(self, client: str, vip_spec: str, quic_cid: str | None = None) -> dict:
        from lbd.explain import explain
        return explain(self, client, vip_spec, quic_cid)

    # --- run ------------------------------------------------------------------
    async def run(self) -> None:
        from lbd.http import serve
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        await self.start()
        runners = await serve(self)
        tasks = [asyncio.ensure_future(self._refresh_neighbours()),
                 asyncio.ensure_future(self._announce()),
                 asyncio.ensure_future(self._sample_tables()),
                 asyncio.ensure_future(self._sample_rates()),
                 asyncio.ensure_future(self._second_chance_upkeep())]
        watchdog_usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        if watchdog_usec:
            tasks.append(asyncio.ensure_future(self._watchdog(watchdog_usec / 2e6)))
        await self._stop.wait()
        _notify("STOPPING=1")
        log.info("stopping datapath=kept_attached pins=kept (restart adopts them; lbctl teardown removes)")
        for task in tasks:
            task.cancel()
        await self.health.stop()
        self.datapath.close_capture()
        if self.healthpath is not None:
            # the checks' filter, rules and VIP neighbour entries go with the
            # checker; forwarding (XDP) stays
            await loop.run_in_executor(None, self.healthpath.close)
        for runner in runners:
            await runner.cleanup()

    async def _announce(self) -> None:
        """Every second, with a bgp section: the announcement rules again (the
        maintenance file, the attachment and BIRD are polled; health changes
        reconcile at once, from _replan_and_announce)."""
        while not self._stop.is_set():
            if self.announcer is not None:
                try:
                    await self.announcer.reconcile()
                except Exception:  # keep announcing what holds; the log says what broke
                    log.exception("bgp_reconcile_failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), bgp_mod.RECONCILE_EVERY_S)

    async def _watchdog(self, every_s: float) -> None:
        while True:
            _notify("WATCHDOG=1")  # from the loop itself: a stuck loop stops the pings
            await asyncio.sleep(every_s)

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()


def _interface_exists(name: str) -> bool:
    try:
        socket.if_nametoindex(name)
        return True
    except OSError:
        return False
