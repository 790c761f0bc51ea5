"""Backend health checks: the state machine, the checks, and the scheduler.

The daemon asks this module one question per backend: should it get traffic?
It answers with three layers, each usable and testable on its own:

* `HealthTracker`: a pure state machine (no I/O, no clock) in the style of
  ExaBGP's healthcheck. It turns a stream of check results into a
  `HealthState` and reports a `Transition` whenever the state changes.
* `check_tcp` / `check_http` (and https) / `check_udp`: one check against
  one address, IPv4 or IPv6, returning a `CheckResult` whose `detail` says
  why a check failed in words an operator can act on ("connect refused",
  "timeout after 0.5s", "status 503, expected 200"). With a `mark`, the
  check's socket carries it (SO_MARK): that is how a check addressed to a
  VIP travels the data path to one backend (lbd.dataplane.healthpath).
* `HealthChecker`: runs one asyncio task per target on the running loop
  (uvloop in the daemon), feeds the trackers, logs transitions, and calls
  back into the daemon, which takes a DOWN backend out of its VIP's Maglev
  table and puts it back once it is up again.

State rules (rise and fall are consecutive counts, both >= 1):

    INIT    --rise successes-->  UP       INIT    --fall failures-->  DOWN
    UP      --failure-->         FALLING  (DOWN at once when fall == 1)
    FALLING --success-->         UP       FALLING --fall failures-->  DOWN
    DOWN    --success-->         RISING   (UP at once when rise == 1)
    RISING  --failure-->         DOWN     RISING  --rise successes--> UP

INIT, UP and FALLING count as up for traffic; RISING and DOWN do not. INIT
counts as up on purpose: a backend lbd has never checked (a new one, or one
whose check changed), before any check has answered, must not blackhole a
VIP whose backends are fine, so it is trusted until `fall` consecutive
failures prove otherwise. A restart is different: lbd knows each backend's
last verdict from the pinned maps, and a target can start from it (UP or
DOWN, see `HealthChecker.set_targets`), so a backend that was down stays
out until `rise` checks pass. Flapping keeps the last verdict: alternating
results hold UP/FALLING up, DOWN/RISING down, and INIT in INIT (still up).

Length (over 450 lines, on purpose): one job, a backend's health, in the
three layers above; each is used and tested on its own.
"""
from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import errno
import functools
import ipaddress
import logging
import random
import socket
import ssl
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import aiohttp

log = logging.getLogger("lbd.health")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
TargetKey = Hashable


class HealthState(str, Enum):
    """Where a backend stands; the value is what logs and the status view show."""

    INIT = "INIT"  # no verdict yet; trusted (up) until proven down
    RISING = "RISING"  # was down, passing checks, not yet `rise` in a row
    UP = "UP"
    FALLING = "FALLING"  # was up, failing checks, not yet `fall` in a row
    DOWN = "DOWN"

    @property
    def is_up(self) -> bool:
        """True when a backend in this state should receive traffic."""
        return self in _UP_STATES

    def __str__(self) -> str:
        return self.value


_UP_STATES = frozenset({HealthState.INIT, HealthState.UP, HealthState.FALLING})


@dataclass(frozen=True)
class Transition:
    """A change of state; `up_changed` is what the data plane cares about."""

    old: HealthState
    new: HealthState

    @property
    def up_changed(self) -> bool:
        return self.old.is_up != self.new.is_up


class HealthTracker:
    """Turns consecutive check results into a HealthState (see module doc)."""

    def __init__(self, rise: int, fall: int, initial: HealthState = HealthState.INIT) -> None:
        if initial not in (HealthState.INIT, HealthState.UP, HealthState.DOWN):
            raise ValueError(f"initial: must be INIT, UP or DOWN, got {initial!r}")
        if rise < 1:
            raise ValueError(f"rise: must be >= 1, got {rise!r}")
        if fall < 1:
            raise ValueError(f"fall: must be >= 1, got {fall!r}")
        self.rise = rise
        self.fall = fall
        self.state = initial  # UP or DOWN: a verdict carried over a restart
        self.successes = 0  # consecutive, reset by a failure
        self.failures = 0  # consecutive, reset by a success

    @property
    def is_up(self) -> bool:
        return self.state.is_up

    def record(self, success: bool) -> Transition | None:
        """Account one check result; return the transition if the state changed."""
        if success:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        old = self.state
        self.state = self._next(old, success)
        return Transition(old, self.state) if self.state is not old else None

    def _next(self, state: HealthState, success: bool) -> HealthState:
        if success:
            if state in (HealthState.UP, HealthState.FALLING) or self.successes >= self.rise:
                return HealthState.UP
            return HealthState.INIT if state is HealthState.INIT else HealthState.RISING
        if state in (HealthState.DOWN, HealthState.RISING) or self.failures >= self.fall:
            return HealthState.DOWN
        return HealthState.INIT if state is HealthState.INIT else HealthState.FALLING


# --- checks ----------------------------------------------------------------


class CheckType(str, Enum):
    TCP = "tcp"  # the backend accepts a TCP connection
    HTTP = "http"  # the backend answers GET path with the expected status
    HTTPS = "https"  # the same over TLS (SNI; certificate verified only if asked)
    UDP = "udp"  # the backend answers a datagram (containing `expect`, if given)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class CheckSpec:
    """How to check one backend. Equal specs mean the same check (see set_targets)."""

    type: CheckType
    address: IPAddress
    port: int
    path: str = "/"
    expect_status: int = 200
    host: str | None = None  # http(s) Host header; None: the address (and port)
    sni: str | None = None  # https server name; None: host, if it is a name
    verify_tls: bool = False  # https: verify the certificate (against sni/host)
    payload: bytes = b""  # udp: the datagram sent
    expect: bytes = b""  # udp: bytes the answer must contain (empty: any answer)
    mark: int = 0  # SO_MARK of the check's sockets (0: none); lbd.dataplane.healthpath
    interval_s: float = 1.0
    timeout_s: float = 0.5
    rise: int = 2
    fall: int = 3

    def __post_init__(self) -> None:
        # Accept the plain strings a caller naturally has ("http", "10.0.0.1")
        # but store the typed forms, so equal checks compare equal.
        try:
            object.__setattr__(self, "type", CheckType(self.type))
        except ValueError:
            raise ValueError(f"type: must be one of {', '.join(t.value for t in CheckType)}, "
                             f"got {self.type!r}") from None
        try:
            object.__setattr__(self, "address", ipaddress.ip_address(self.address))
        except ValueError:
            raise ValueError(f"address: must be an IPv4 or IPv6 address, got {self.address!r}") from None
        if not isinstance(self.port, int) or not 1 <= self.port <= 65535:
            raise ValueError(f"port: must be 1..65535, got {self.port!r}")
        if not self.path.startswith("/"):
            raise ValueError(f"path: must start with '/', got {self.path!r}")
        if not 100 <= self.expect_status <= 599:
            raise ValueError(f"expect_status: must be 100..599, got {self.expect_status!r}")
        if not self.interval_s > 0:
            raise ValueError(f"interval_s: must be > 0, got {self.interval_s!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s!r}")
        if self.rise < 1:
            raise ValueError(f"rise: must be >= 1, got {self.rise!r}")
        if self.fall < 1:
            raise ValueError(f"fall: must be >= 1, got {self.fall!r}")
        if not 0 <= self.mark <= 0xFFFFFFFF:
            raise ValueError(f"mark: must be a 32-bit value, got {self.mark!r}")

    def same_check(self, other: CheckSpec) -> bool:
        """True if only the timing differs, so results so far still apply."""
        return dataclasses.replace(other, interval_s=self.interval_s, timeout_s=self.timeout_s) == self


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    duration_s: float
    detail: str  # "ok" / "status 200", or why it failed


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connect refused",
    errno.ECONNRESET: "connection reset",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.EADDRNOTAVAIL: "address not available",
}


def _describe_os_error(exc: OSError) -> str:
    if exc.errno in _ERRNO_WORDS:
        return _ERRNO_WORDS[exc.errno]
    return f"connect error: {exc.strerror or exc}"


def _timeout_detail(timeout_s: float) -> str:
    return f"timeout after {timeout_s:g}s"


def check_socket(family: int, kind: int, mark: int = 0) -> socket.socket:
    """A non-blocking socket for a check, carrying `mark` (SO_MARK) if given:
    the policy routing and the TC program of lbd.dataplane.healthpath take a marked
    check to one backend through the data path."""
    sock = socket.socket(family, kind)
    try:
        sock.setblocking(False)
        if mark:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_MARK, mark)
    except BaseException:
        sock.close()
        raise
    return sock


def _family(address: IPAddress) -> int:
    return socket.AF_INET6 if address.version == 6 else socket.AF_INET


async def check_tcp(address: IPAddress | str, port: int, timeout_s: float, mark: int = 0) -> CheckResult:
    """Pass if address:port accepts a TCP connection within timeout_s."""
    address = ipaddress.ip_address(address)
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    # A bare non-blocking socket and sock_connect: no transport or protocol
    # objects, which is the cheapest connect the loop offers. Closing after
    # the handshake sends a FIN; the backend sees an empty connection.
    sock = check_socket(_family(address), socket.SOCK_STREAM, mark)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (str(address), port))
        return CheckResult(True, time.perf_counter() - start, "connected")
    except TimeoutError:
        return CheckResult(False, time.perf_counter() - start, _timeout_detail(timeout_s))
    except OSError as exc:
        return CheckResult(False, time.perf_counter() - start, _describe_os_error(exc))
    finally:
        sock.close()


# Why aiohttp rather than a hand-written HTTP/1.0 request. Measured on a
# 2-vCPU VM, 500 targets at 1 s against loopback servers in another process
# (user+sys CPU of the checker process): aiohttp ~0.67 ms per check, 33% of
# one core; a raw asyncio-streams HTTP/1.0 GET ~0.32 ms, 16%; a TCP connect
# check ~0.33 ms, 16%. So aiohttp costs about twice the raw request, ~0.35 ms
# per check, which is ~17% of one core only in the extreme case of 500 HTTP
# backends at 1 s, and the control plane is not on the forwarding path (XDP
# is). That is not worth owning an HTTP parser for: aiohttp gets status
# lines, chunking, and malformed or truncated answers right, and names them.
# The mark of the check running in this task: one session serves checks of
# every mark, and its connector asks for a socket (in this task or one it
# starts, which inherits the context) through _marked_socket.
_CHECK_MARK: contextvars.ContextVar[int] = contextvars.ContextVar("lbd_check_mark", default=0)


def _marked_socket(addr_info) -> socket.socket:
    family, kind, proto, _name, _address = addr_info
    return check_socket(family, kind, _CHECK_MARK.get())


def new_http_session() -> aiohttp.ClientSession:
    """An aiohttp session suited to health checks (call with a running loop)."""
    connector = aiohttp.TCPConnector(
        limit=0,  # the default of 100 would queue checks behind each other
        force_close=True,  # a fresh connection per check, as a client would open
        use_dns_cache=False,  # targets are IP literals
        socket_factory=_marked_socket,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # Timeouts are enforced by asyncio.timeout around the whole check.
        timeout=aiohttp.ClientTimeout(total=None),
        cookie_jar=aiohttp.DummyCookieJar(),
        auto_decompress=False,
        trust_env=False,  # never send checks through an environment proxy
        headers={"User-Agent": "lbd-healthcheck"},
        skip_auto_headers=("Accept-Encoding",),
    )


def _http_url(address: IPAddress, port: int, path: str, scheme: str = "http") -> str:
    host = f"[{address}]" if address.version == 6 else str(address)
    return f"{scheme}://{host}:{port}{path}"


def _is_name(host: str | None) -> bool:
    """True for a DNS name (SNI carries names only, RFC 6066 3)."""
    if not host:
        return False
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return True
    return False


def tls_context(verify: bool) -> ssl.SSLContext:
    """The client context of an https check: the system's trust store and
    hostname checking when `verify`, otherwise any certificate (a check
    proves the service answers, not who it is, unless asked to)."""
    context = ssl.create_default_context()
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def check_http(
    address: IPAddress | str,
    port: int,
    path: str = "/",
    expect_status: int = 200,
    timeout_s: float = 1.0,
    *,
    session: aiohttp.ClientSession | None = None,
    host: str | None = None,
    mark: int = 0,
    tls: ssl.SSLContext | None = None,
    sni: str | None = None,
) -> CheckResult:
    """Pass if GET path answers expect_status within timeout_s.

    The Host header is `host` if given, else the address (with ":port"
    unless it is the scheme's default, as HTTP requires); redirects are not
    followed, since a 301 is an answer to compare with expect_status, not a
    reason to go elsewhere. With `tls` (an ssl context, see tls_context) the
    request goes over TLS, sending `sni` as server name (default: `host`
    when it is a name; none for an address). Pass a shared `session` when
    checking often; without one a session is made and closed for this check
    alone.
    """
    if session is None:
        async with new_http_session() as own_session:
            return await check_http(address, port, path, expect_status, timeout_s, session=own_session,
                                    host=host, mark=mark, tls=tls, sni=sni)
    address = ipaddress.ip_address(address)
    start = time.perf_counter()
    headers = {"Connection": "close"}
    if host:
        headers["Host"] = host
    options: dict[str, Any] = {}
    if tls is not None:
        options["ssl"] = tls
        server_name = sni or (host.rsplit(":", 1)[0] if host and not host.endswith("]") else None)
        if _is_name(server_name):
            options["server_hostname"] = server_name
    token = _CHECK_MARK.set(mark)
    try:
        async with asyncio.timeout(timeout_s):
            async with session.get(
                _http_url(address, port, path, "https" if tls is not None else "http"),
                headers=headers,
                allow_redirects=False,
                **options,
            ) as response:
                status = response.status
    except TimeoutError:
        return CheckResult(False, time.perf_counter() - start, _timeout_detail(timeout_s))
    except aiohttp.ClientConnectorCertificateError as exc:
        return CheckResult(False, time.perf_counter() - start,
                           f"TLS certificate not accepted: {exc.certificate_error}")
    except aiohttp.ClientConnectorSSLError as exc:
        return CheckResult(False, time.perf_counter() - start, f"TLS handshake failed: {exc.os_error}")
    except aiohttp.ClientConnectorError as exc:
        return CheckResult(False, time.perf_counter() - start, _describe_os_error(exc.os_error))
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionResetError, ConnectionResetError):
        # The backend accepted and hung up (or reset) before a status line:
        # reported as one reason, since the race between our write and its
        # close decides which of these exceptions aiohttp raises.
        return CheckResult(False, time.perf_counter() - start, "connection closed before response")
    except aiohttp.ClientResponseError as exc:
        # The parser's message spans lines and draws a caret under the bad
        # byte; fold it into one line so the transition log stays one line.
        parts = [p.strip() for p in str(exc.message or "unparseable").splitlines()]
        reason = " ".join(p for p in parts if p and set(p) != {"^"})[:200]
        return CheckResult(False, time.perf_counter() - start, f"bad response: {reason}")
    except aiohttp.ClientError as exc:
        return CheckResult(False, time.perf_counter() - start, f"http error: {type(exc).__name__}: {exc}")
    except OSError as exc:
        return CheckResult(False, time.perf_counter() - start, _describe_os_error(exc))
    finally:
        _CHECK_MARK.reset(token)
    duration = time.perf_counter() - start
    if status != expect_status:
        return CheckResult(False, duration, f"status {status}, expected {expect_status}")
    return CheckResult(True, duration, f"status {status}")


async def check_udp(address: IPAddress | str, port: int, payload: bytes, expect: bytes = b"",
                    timeout_s: float = 1.0, mark: int = 0) -> CheckResult:
    """Pass if a datagram `payload` to address:port is answered within
    timeout_s by one that contains `expect` (any answer if empty). A DNS
    check sends a query and expects its id (the first two bytes) back."""
    address = ipaddress.ip_address(address)
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    sock = check_socket(_family(address), socket.SOCK_DGRAM, mark)
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, (str(address), port))
            await loop.sock_sendall(sock, payload)
            while True:
                answer = await loop.sock_recv(sock, 65535)
                if expect in answer:
                    return CheckResult(True, time.perf_counter() - start, f"answer of {len(answer)} bytes")
                # not it: a late answer to nothing we still wait for; the next may be
    except TimeoutError:
        return CheckResult(False, time.perf_counter() - start,
                           _timeout_detail(timeout_s) + (" waiting for the expected answer" if expect else
                                                         " waiting for an answer"))
    except ConnectionRefusedError:  # ICMP port unreachable for an earlier datagram
        return CheckResult(False, time.perf_counter() - start, "port unreachable (nothing listens)")
    except OSError as exc:
        return CheckResult(False, time.perf_counter() - start, _describe_os_error(exc))
    finally:
        sock.close()


@functools.cache
def _tls(verify: bool) -> ssl.SSLContext:
    return tls_context(verify)  # one context per setting: loading the trust store is dear


async def run_check(spec: CheckSpec, session: aiohttp.ClientSession | None = None) -> CheckResult:
    """Run the check a spec describes, once."""
    if spec.type is CheckType.TCP:
        return await check_tcp(spec.address, spec.port, spec.timeout_s, spec.mark)
    if spec.type is CheckType.UDP:
        return await check_udp(spec.address, spec.port, spec.payload, spec.expect, spec.timeout_s, spec.mark)
    return await check_http(
        spec.address, spec.port, spec.path, spec.expect_status, spec.timeout_s, session=session,
        host=spec.host, mark=spec.mark, sni=spec.sni,
        tls=_tls(spec.verify_tls) if spec.type is CheckType.HTTPS else None,
    )


# --- scheduler -------------------------------------------------------------

OnChange = Callable[[TargetKey, HealthState, HealthState, CheckResult], None]
OnResult = Callable[[TargetKey, CheckResult], None]


def _logfmt(value: str) -> str:
    """Quote a value with spaces so a key=value log line stays parseable."""
    if value and not any(c in value for c in ' "='):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_key(key: TargetKey) -> str:
    """('web', IPv4Address('10.0.0.1')) -> 'web/10.0.0.1' for logs."""
    if isinstance(key, tuple):
        return "/".join(str(part) for part in key)
    return str(key)


@dataclass(eq=False)
class _Target:
    key: TargetKey
    spec: CheckSpec
    tracker: HealthTracker
    task: asyncio.Task[None] | None = None
    last_result: CheckResult | None = None
    last_check_at: float | None = None  # time.monotonic() when the last result came in
    checks: int = 0


class HealthChecker:
    """Checks many targets concurrently on the running asyncio loop.

    Each target has its own task, so a check that hangs until its timeout
    delays nobody else. First checks are spread at random over one interval
    so that a start or reload with hundreds of backends does not fire them
    all at once; after that each target keeps a fixed cadence from its own
    start time.

    `on_change(key, old, new, result)` is called on every state change,
    after the state is updated (so `state(key)` already returns `new`); the
    daemon acts when `old.is_up != new.is_up`. `on_result(key, result)` is
    called for every check (metrics). Callbacks run on the loop and must not
    block; an exception in one is logged and does not stop the checks.

    `set_targets` calls no callbacks: after a reload the daemon reads
    `state(key)` / `is_up(key)` to build its tables.
    """

    def __init__(self, on_change: OnChange, on_result: OnResult | None = None,
                 paused: bool = False) -> None:
        self._on_change = on_change
        # paused: targets wait for resume() before their first check (the
        # daemon's start: a check through the data path needs its path in
        # place, which the first apply writes)
        self._go = asyncio.Event()
        if not paused:
            self._go.set()
        self._on_result = on_result
        self._targets: dict[TargetKey, _Target] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stopped = False
        # Tasks cancelled by set_targets end at their next await; stop()
        # waits for them too, so none outlives the checker.
        self._retiring: set[asyncio.Task[None]] = set()

    def set_targets(self, targets: Mapping[TargetKey, CheckSpec],
                    initial: Mapping[TargetKey, HealthState] | None = None) -> None:
        """Make `targets` the set being checked (start, config reload).

        New keys start at INIT, or at `initial[key]` (UP or DOWN: the last
        verdict, which the daemon reads back from the pinned maps at start);
        removed keys stop. A key whose spec is equal keeps its state and its
        running task, so a reload never turns a DOWN backend back into a
        trusted INIT one. When only interval_s/timeout_s changed, the state is
        kept too (the same thing is being checked) and the task restarts with
        the new timing. Any other change (type, address, port, path,
        expect_status, rise, fall) is a different check whose past results
        prove nothing, so the target restarts at INIT.
        Must be called from the loop's thread with the loop running.
        """
        if self._stopped:
            raise RuntimeError("HealthChecker is stopped")
        initial = initial or {}
        for key in self._targets.keys() - targets.keys():
            self._cancel(self._targets.pop(key))
        for key, spec in targets.items():
            current = self._targets.get(key)
            if current is not None and current.spec == spec:
                continue
            if current is not None and current.spec.same_check(spec):
                self._cancel(current)
                current.spec = spec
                target = current
            else:
                if current is not None:
                    self._cancel(current)
                start = initial.get(key, HealthState.INIT) if current is None else HealthState.INIT
                target = _Target(key, spec, HealthTracker(spec.rise, spec.fall, start))
                self._targets[key] = target
            target.task = asyncio.get_running_loop().create_task(
                self._run(target), name=f"health:{format_key(key)}"
            )

    def states_after(self, targets: Mapping[TargetKey, CheckSpec]) -> dict[TargetKey, HealthState]:
        """The state each target would have right after set_targets(targets),
        changing nothing: what a reload would start from (`lbd check --diff`)."""
        states = {}
        for key, spec in targets.items():
            current = self._targets.get(key)
            keeps = current is not None and current.spec.same_check(spec)
            states[key] = current.tracker.state if keeps else HealthState.INIT
        return states

    def resume(self) -> None:
        """Let paused targets start checking."""
        self._go.set()

    def state(self, key: TargetKey) -> HealthState:
        """The target's state; INIT (not checked yet) for a key that is not a
        target, which is how set_targets would start it."""
        target = self._targets.get(key)
        return target.tracker.state if target is not None else HealthState.INIT

    def is_up(self, key: TargetKey) -> bool:
        return self.state(key).is_up

    def spec(self, key: TargetKey) -> CheckSpec | None:
        target = self._targets.get(key)
        return target.spec if target is not None else None

    def keys(self) -> list[TargetKey]:
        return list(self._targets)

    def snapshot(self) -> dict[TargetKey, dict[str, Any]]:
        """Per-target state for the status endpoint (JSON-ready values)."""
        now = time.monotonic()
        view: dict[TargetKey, dict[str, Any]] = {}
        for key, target in self._targets.items():
            result = target.last_result
            view[key] = {
                "state": target.tracker.state.value,
                "up": target.tracker.is_up,
                "check": target.spec.type.value,
                "address": str(target.spec.address),
                "mark": target.spec.mark,
                "port": target.spec.port,
                "last_ok": result.ok if result else None,
                "last_detail": result.detail if result else None,
                "last_duration_s": round(result.duration_s, 6) if result else None,
                "last_check_age_s": (
                    round(now - target.last_check_at, 3) if target.last_check_at is not None else None
                ),
                "consecutive_successes": target.tracker.successes,
                "consecutive_failures": target.tracker.failures,
                "checks": target.checks,
            }
        return view

    async def stop(self) -> None:
        """Stop every check and release the HTTP session; idempotent."""
        self._stopped = True
        for target in self._targets.values():
            self._cancel(target)
        self._targets.clear()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _cancel(self, target: _Target) -> None:
        if target.task is not None:
            target.task.cancel()
            self._retiring.add(target.task)
            target.task.add_done_callback(self._retiring.discard)
            target.task = None

    def _http_session(self) -> aiohttp.ClientSession:
        # Made on first use, inside a task, so the loop is running; one
        # session (one connector) serves every HTTP target.
        if self._session is None or self._session.closed:
            self._session = new_http_session()
        return self._session

    async def _run(self, target: _Target) -> None:
        spec = target.spec
        loop = asyncio.get_running_loop()
        await self._go.wait()
        await asyncio.sleep(random.uniform(0, spec.interval_s))
        while True:
            started = loop.time()
            session = self._http_session() if spec.type in (CheckType.HTTP, CheckType.HTTPS) else None
            try:
                result = await run_check(spec, session)
            except Exception as exc:  # a bug in a check must not end the target's checks
                log.exception("health_check_error target=%s", format_key(target.key))
                result = CheckResult(False, loop.time() - started, f"check error: {exc!r}")
            self._account(target, result)
            # Fixed cadence from the check's start; a check slower than the
            # interval is followed by the next one at once, not by a burst.
            await asyncio.sleep(max(0.0, started + spec.interval_s - loop.time()))

    def _account(self, target: _Target, result: CheckResult) -> None:
        target.last_result = result
        target.last_check_at = time.monotonic()
        target.checks += 1
        transition = target.tracker.record(result.ok)
        if self._on_result is not None:
            try:
                self._on_result(target.key, result)
            except Exception:
                log.exception("health_callback_error callback=on_result target=%s", format_key(target.key))
        if transition is None:
            return
        log.info(
            "health_transition target=%s from=%s to=%s detail=%s",
            _logfmt(format_key(target.key)), transition.old.value, transition.new.value,
            _logfmt(result.detail),
        )
        try:
            self._on_change(target.key, transition.old, transition.new, result)
        except Exception:
            log.exception("health_callback_error callback=on_change target=%s", format_key(target.key))
