"""Tests for lbd.health: the state machine, the checks, and the scheduler.

The checks run against real servers on 127.0.0.1 (and ::1 when the host has
it), started by the tests on port 0; nothing is mocked. Every loop is bounded
by a deadline so a broken checker fails a test instead of hanging it.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time

import pytest
import uvloop

from lbd.health import (
    CheckResult,
    CheckSpec,
    CheckType,
    HealthChecker,
    HealthState,
    HealthTracker,
    check_http,
    check_tcp,
    check_udp,
    run_check,
)

pytestmark = pytest.mark.unit

S = HealthState
LOCAL = "127.0.0.1"


def run(coro, limit_s: float = 10.0):
    """Run a coroutine on uvloop, as the daemon does, with a hard time limit."""
    return uvloop.run(asyncio.wait_for(coro, limit_s))


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not _has_ipv6_loopback(), reason="no ::1 on this host")


# --- state machine -----------------------------------------------------------

# (rise, fall, results, state after each result); S = success, F = failure.
SEQUENCES = [
    (2, 3, "SS", "INIT UP"),
    (2, 3, "FFF", "INIT INIT DOWN"),
    (2, 3, "SSF", "INIT UP FALLING"),
    (2, 3, "SSFS", "INIT UP FALLING UP"),
    (2, 3, "SSFFF", "INIT UP FALLING FALLING DOWN"),
    (2, 3, "SSFFSFFF", "INIT UP FALLING FALLING UP FALLING FALLING DOWN"),
    (2, 3, "FFFS", "INIT INIT DOWN RISING"),
    (2, 3, "FFFSS", "INIT INIT DOWN RISING UP"),
    (2, 3, "FFFSF", "INIT INIT DOWN RISING DOWN"),
    (3, 2, "FFSSS", "INIT DOWN RISING RISING UP"),
    # A failure resets the success count (and vice versa), also in INIT.
    (2, 3, "FFSFFF", "INIT INIT INIT INIT INIT DOWN"),
    (3, 3, "SSFSS", "INIT INIT INIT INIT INIT"),
    # Flapping keeps the last verdict.
    (2, 3, "SFSFSF", "INIT INIT INIT INIT INIT INIT"),
    (2, 3, "SSFSFSFS", "INIT UP FALLING UP FALLING UP FALLING UP"),
    (2, 3, "FFFSFSFS", "INIT INIT DOWN RISING DOWN RISING DOWN RISING"),
    # rise = fall = 1 skips the in-between states.
    (1, 1, "S", "UP"),
    (1, 1, "F", "DOWN"),
    (1, 1, "SFSF", "UP DOWN UP DOWN"),
]


@pytest.mark.parametrize("rise, fall, results, expected", SEQUENCES)
def test_tracker_sequences(rise, fall, results, expected):
    tracker = HealthTracker(rise, fall)
    previous = tracker.state
    states = []
    for r in results:
        transition = tracker.record(r == "S")
        states.append(tracker.state.value)
        if tracker.state is previous:
            assert transition is None
        else:
            assert (transition.old, transition.new) == (previous, tracker.state)
            assert transition.up_changed == (previous.is_up != tracker.state.is_up)
        previous = tracker.state
    assert " ".join(states) == expected


def test_up_for_traffic_by_state():
    assert {s for s in HealthState if s.is_up} == {S.INIT, S.UP, S.FALLING}
    # A new backend is trusted until proven down, so a start never blackholes a VIP.
    assert HealthTracker(2, 3).is_up


def test_tracker_counts_and_str_enum():
    tracker = HealthTracker(2, 3)
    for ok in (True, True, True, False, False):
        tracker.record(ok)
    assert (tracker.successes, tracker.failures) == (0, 2)
    assert tracker.state == "FALLING" and str(tracker.state) == "FALLING"


@pytest.mark.parametrize("rise, fall, field", [(0, 1, "rise"), (1, 0, "fall")])
def test_tracker_rejects_zero_counts(rise, fall, field):
    with pytest.raises(ValueError, match=f"{field}: must be >= 1, got 0"):
        HealthTracker(rise, fall)


def test_check_spec_coerces_and_validates():
    spec = CheckSpec("http", "10.0.0.1", 80)
    assert spec.type is CheckType.HTTP and str(spec.address) == "10.0.0.1"
    assert spec == CheckSpec(CheckType.HTTP, spec.address, 80)
    assert spec.same_check(CheckSpec("http", "10.0.0.1", 80, interval_s=5, timeout_s=2))
    assert not spec.same_check(CheckSpec("http", "10.0.0.1", 80, path="/health"))
    with pytest.raises(ValueError, match="type: must be one of tcp, http, https, udp, got 'icmp'"):
        CheckSpec("icmp", "10.0.0.1", 80)
    with pytest.raises(ValueError, match="address: .* got 'web1'"):
        CheckSpec("tcp", "web1", 80)
    with pytest.raises(ValueError, match="port: must be 1..65535, got 70000"):
        CheckSpec("tcp", "10.0.0.1", 70000)
    with pytest.raises(ValueError, match="path: must start with '/', got 'health'"):
        CheckSpec("http", "10.0.0.1", 80, path="health")
    with pytest.raises(ValueError, match="timeout_s: must be > 0, got 0"):
        CheckSpec("tcp", "10.0.0.1", 80, timeout_s=0)


# --- local servers -----------------------------------------------------------


class HttpServer:
    """A tiny HTTP server on a loopback port; `status` and `mode` can change live.

    mode "answer": reply with `status`; "silent": read the request and never
    answer; "hangup": close the connection as soon as it is accepted;
    "garbage": answer with something that is not HTTP.
    """

    def __init__(self, host: str = LOCAL, status: int = 200, mode: str = "answer", tls=None):
        self.host, self.status, self.mode = host, status, mode
        self.port = 0
        self.requests: list[bytes] = []
        self.server_names: list[str | None] = []  # TLS: the SNI of each handshake
        self._server: asyncio.AbstractServer | None = None
        self.tls = tls
        if tls is not None:
            tls.sni_callback = lambda _sock, name, _ctx: self.server_names.append(name)

    async def start(self) -> HttpServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.mode == "hangup":
                return
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            if self.mode == "garbage":
                writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
                await writer.drain()
                return
            if self.mode == "silent":
                await reader.read()  # until the checker gives up and closes
                return
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % self.status)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def refusing_port() -> socket.socket:
    """A bound, non-listening socket: connects to its port are refused while it lives."""
    sock = socket.socket()
    sock.bind((LOCAL, 0))
    return sock


@contextlib.contextmanager
def unanswered_syn_port():
    """A listener whose accept queue is full, so new SYNs go unanswered (connect times out)."""
    listener = socket.socket()
    listener.bind((LOCAL, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(16):
            client = socket.socket()
            client.settimeout(0.2)
            try:
                client.connect((LOCAL, port))
            except (TimeoutError, socket.timeout):
                client.close()
                break
            fillers.append(client)
        else:
            pytest.skip("could not fill the accept queue on this host")
        yield port
    finally:
        for client in fillers:
            client.close()
        listener.close()


# --- single checks -----------------------------------------------------------


def test_tcp_ok():
    async def main():
        server = await HttpServer().start()
        try:
            return await check_tcp(LOCAL, server.port, 1.0)
        finally:
            await server.stop()

    result = run(main())
    assert result.ok and result.duration_s < 1.0


def test_tcp_refused():
    with refusing_port() as sock:
        result = run(check_tcp(LOCAL, sock.getsockname()[1], 1.0))
    assert (result.ok, result.detail) == (False, "connect refused")


def test_tcp_timeout():
    with unanswered_syn_port() as port:
        result = run(check_tcp(LOCAL, port, 0.3))
    assert (result.ok, result.detail) == (False, "timeout after 0.3s")
    assert 0.25 < result.duration_s < 1.0


@needs_ipv6
def test_tcp_and_http_over_ipv6():
    async def main():
        server = await HttpServer(host="::1").start()
        try:
            return (
                await check_tcp("::1", server.port, 1.0),
                await check_http("::1", server.port, "/", 200, 1.0),
                server.requests,
            )
        finally:
            await server.stop()

    tcp, http, requests = run(main())
    assert tcp.ok and http.ok, (tcp, http)
    assert b"\r\nHost: [::1]:" in requests[0]


def test_http_ok_sends_get_with_host_and_connection_close():
    async def main():
        server = await HttpServer().start()
        try:
            return await check_http(LOCAL, server.port, "/health?deep=1", 200, 1.0), server
        finally:
            await server.stop()

    result, server = run(main())
    assert (result.ok, result.detail) == (True, "status 200")
    head = server.requests[0].decode()
    lines = head.split("\r\n")
    assert lines[0] == "GET /health?deep=1 HTTP/1.1"
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:] if line)}
    assert headers["host"] == f"{LOCAL}:{server.port}"
    assert headers["connection"].lower() == "close"


def test_http_wrong_status():
    async def main():
        server = await HttpServer(status=503).start()
        try:
            return await check_http(LOCAL, server.port, "/", 200, 1.0)
        finally:
            await server.stop()

    result = run(main())
    assert (result.ok, result.detail) == (False, "status 503, expected 200")


def test_http_expected_non_200_status_passes():
    async def main():
        server = await HttpServer(status=204).start()
        try:
            return await check_http(LOCAL, server.port, "/", 204, 1.0)
        finally:
            await server.stop()

    assert run(main()).ok


def test_http_connection_closed():
    async def main():
        server = await HttpServer(mode="hangup").start()
        try:
            return await check_http(LOCAL, server.port, "/", 200, 1.0)
        finally:
            await server.stop()

    result = run(main())
    assert (result.ok, result.detail) == (False, "connection closed before response")


def test_http_not_http_answer():
    async def main():
        server = await HttpServer(mode="garbage").start()
        try:
            return await check_http(LOCAL, server.port, "/", 200, 1.0)
        finally:
            await server.stop()

    result = run(main())
    assert not result.ok and result.detail.startswith("bad response: Bad status line"), result
    assert "SSH-2.0" in result.detail and "\n" not in result.detail


def test_http_timeout_when_server_never_answers():
    async def main():
        server = await HttpServer(mode="silent").start()
        try:
            return await check_http(LOCAL, server.port, "/", 200, 0.3)
        finally:
            await server.stop()

    result = run(main())
    assert (result.ok, result.detail) == (False, "timeout after 0.3s")
    assert 0.25 < result.duration_s < 1.0


def test_http_refused():
    with refusing_port() as sock:
        result = run(check_http(LOCAL, sock.getsockname()[1], "/", 200, 1.0))
    assert (result.ok, result.detail) == (False, "connect refused")


# --- HealthChecker -----------------------------------------------------------


class Recorder:
    """Collects callbacks; `wait_for` polls a condition against a deadline."""

    def __init__(self):
        self.changes: list[tuple[object, HealthState, HealthState, CheckResult, float]] = []
        self.results: list[tuple[object, CheckResult, float]] = []

    def on_change(self, key, old, new, result):
        self.changes.append((key, old, new, result, time.monotonic()))

    def on_result(self, key, result):
        self.results.append((key, result, time.monotonic()))

    def transitions(self, key) -> list[tuple[str, str]]:
        return [(old.value, new.value) for k, old, new, _, _ in self.changes if k == key]

    def result_count(self, key) -> int:
        return sum(1 for k, _, _ in self.results if k == key)

    @staticmethod
    async def wait_for(condition, limit_s: float) -> float:
        start = time.monotonic()
        while not condition():
            if time.monotonic() - start > limit_s:
                raise AssertionError(f"condition not met within {limit_s}s")
            await asyncio.sleep(0.01)
        return time.monotonic() - start


def fast_spec(port: int, kind: str = "tcp", **kw) -> CheckSpec:
    values = dict(interval_s=0.05, timeout_s=0.2, rise=2, fall=2)
    values.update(kw)
    return CheckSpec(kind, LOCAL, port, **values)


def test_checker_detects_backend_going_away_and_coming_back(caplog):
    caplog.set_level(logging.INFO, logger="lbd.health")
    key = ("web", LOCAL)
    spec = None

    async def main():
        nonlocal spec
        server = await HttpServer().start()
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        spec = fast_spec(server.port)
        checker.set_targets({key: spec})
        try:
            await rec.wait_for(lambda: checker.state(key) is S.UP, 2.0)
            await server.stop()
            down_after = await rec.wait_for(lambda: checker.state(key) is S.DOWN, 2.0)
            await server.start()  # same port
            up_after = await rec.wait_for(lambda: checker.state(key) is S.UP, 2.0)
            return rec, down_after, up_after
        finally:
            await checker.stop()
            await server.stop()

    rec, down_after, up_after = run(main())
    slack = 0.3
    assert down_after < spec.interval_s * spec.fall + slack
    assert up_after < spec.interval_s * spec.rise + slack
    assert rec.transitions(key) == [
        ("INIT", "UP"), ("UP", "FALLING"), ("FALLING", "DOWN"), ("DOWN", "RISING"), ("RISING", "UP"),
    ]
    down_result = next(r for _, _, new, r, _ in rec.changes if new is S.DOWN)
    assert down_result.detail == "connect refused"
    assert (
        f"health_transition target=web/{LOCAL} from=FALLING to=DOWN "
        f'detail="connect refused"'
    ) in caplog.messages


def test_checker_http_status_change_takes_backend_down():
    key = "api"

    async def main():
        server = await HttpServer().start()
        rec = Recorder()
        checker = HealthChecker(rec.on_change)
        checker.set_targets({key: fast_spec(server.port, "http", path="/health")})
        try:
            await rec.wait_for(lambda: checker.state(key) is S.UP, 2.0)
            server.status = 503
            await rec.wait_for(lambda: checker.state(key) is S.DOWN, 2.0)
            return rec, checker.snapshot()[key]
        finally:
            await checker.stop()
            await server.stop()

    rec, snap = run(main())
    assert rec.changes[-1][3].detail == "status 503, expected 200"
    assert snap["state"] == "DOWN" and snap["up"] is False
    assert snap["last_detail"] == "status 503, expected 200"
    assert snap["consecutive_failures"] >= 2 and snap["consecutive_successes"] == 0
    assert snap["checks"] >= 4 and snap["last_duration_s"] >= 0


def test_set_targets_keeps_unchanged_restarts_changed_drops_removed():
    async def main():
        server = await HttpServer().start()
        refused = refusing_port()
        dead = refused.getsockname()[1]
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        first = {
            "dead": fast_spec(dead),
            "dead-retimed": fast_spec(dead),
            "dead-repathed": fast_spec(dead, "http"),
            "live": fast_spec(server.port),
            "removed": fast_spec(server.port),
        }
        checker.set_targets(first)
        try:
            await rec.wait_for(
                lambda: all(checker.state(k) is S.DOWN for k in ("dead", "dead-retimed", "dead-repathed"))
                and checker.state("live") is S.UP,
                2.0,
            )
            counts_before = rec.result_count("live")
            checker.set_targets({
                "dead": fast_spec(dead),
                "dead-retimed": fast_spec(dead, interval_s=0.07, timeout_s=0.1),
                "dead-repathed": fast_spec(dead, "http", path="/other"),
                "live": fast_spec(server.port),
                "added": fast_spec(server.port),
            })
            after_reload = {k: checker.state(k) for k in checker.keys()}
            removed_results = rec.result_count("removed")
            await asyncio.sleep(0.3)  # several intervals
            return (
                after_reload,
                removed_results,
                rec.result_count("removed"),
                rec.result_count("live") - counts_before,
                set(checker.snapshot()),
                rec,
            )
        finally:
            await checker.stop()
            await server.stop()
            refused.close()

    after_reload, removed_then, removed_later, live_checks, snapshot_keys, rec = run(main())
    assert after_reload == {
        "dead": S.DOWN,  # unchanged: a reload must not make it trusted again
        "dead-retimed": S.DOWN,  # only timing changed: same check, same verdict
        "dead-repathed": S.INIT,  # a different check: its past proves nothing
        "live": S.UP,
        "added": S.INIT,
    }
    assert "removed" not in snapshot_keys and "added" in snapshot_keys
    assert removed_later == removed_then  # no checks after removal
    assert live_checks >= 3  # the kept target's checks kept running
    # The unchanged DOWN target saw no transition from the reload.
    assert rec.transitions("dead") == [("INIT", "DOWN")]


def test_slow_target_does_not_delay_others():
    timeout_s = 1.0

    async def main():
        silent = await HttpServer(mode="silent").start()
        fast_server = await HttpServer().start()
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        checker.set_targets({
            "slow": fast_spec(silent.port, "http", timeout_s=timeout_s),
            # HTTP too, so the two share the HTTP session and its connector.
            "fast": fast_spec(fast_server.port, "http"),
        })
        try:
            await rec.wait_for(lambda: rec.result_count("slow") >= 1, timeout_s + 1.0)
        finally:
            await checker.stop()
            await silent.stop()
            await fast_server.stop()
        return rec

    rec = run(main())
    slow_result, slow_done = next((r, t) for k, r, t in rec.results if k == "slow")
    assert slow_result.detail == f"timeout after {timeout_s:g}s"
    window_start = slow_done - slow_result.duration_s
    fast_during = [t for k, _, t in rec.results if k == "fast" and window_start <= t <= slow_done]
    # 0.05 s interval over a 1 s timeout: about 20 if independent, about 0 if serialised.
    assert len(fast_during) >= 10, len(fast_during)


def test_callback_errors_do_not_stop_checks(caplog):
    def broken(*_):
        raise RuntimeError("boom")

    async def main():
        server = await HttpServer().start()
        checker = HealthChecker(broken, broken)
        checker.set_targets({"k": fast_spec(server.port)})
        try:
            await Recorder.wait_for(lambda: checker.snapshot()["k"]["checks"] >= 4, 2.0)
            return checker.state("k")
        finally:
            await checker.stop()
            await server.stop()

    assert run(main()) is S.UP
    assert any("health_callback_error callback=on_change" in m for m in caplog.messages)


def test_stop_ends_all_checks():
    async def main():
        server = await HttpServer().start()
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        checker.set_targets({i: fast_spec(server.port) for i in range(20)})
        await rec.wait_for(lambda: len(rec.results) >= 20, 2.0)
        await checker.stop()
        stopped_at = len(rec.results)
        await asyncio.sleep(0.2)
        await checker.stop()  # idempotent
        with pytest.raises(RuntimeError, match="stopped"):
            checker.set_targets({})
        await server.stop()
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("health:")]
        return stopped_at, len(rec.results), tasks

    stopped_at, later, tasks = run(main())
    assert later == stopped_at and tasks == []


def test_first_checks_are_spread_over_the_interval():
    interval_s = 0.5

    async def main():
        server = await HttpServer().start()
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        started = time.monotonic()
        checker.set_targets({i: fast_spec(server.port, interval_s=interval_s) for i in range(40)})
        try:
            await rec.wait_for(lambda: len({k for k, _, _ in rec.results}) == 40, 2.0)
        finally:
            await checker.stop()
            await server.stop()
        first = {}
        for k, _, t in rec.results:
            first.setdefault(k, t - started)
        return sorted(first.values())

    offsets = run(main())
    assert offsets[-1] < interval_s + 0.2
    # Uniform jitter: a quarter of 40 targets in each quarter of the interval,
    # give or take; all at once would put them all in the first quarter.
    assert sum(1 for o in offsets if o < interval_s / 4) < 25


# --- the last verdict carried over a restart ------------------------------------


@pytest.mark.parametrize("initial, results, expected", [
    # pinned down: stays out until `rise` checks pass (rise 2, fall 3)
    (S.DOWN, "", ""),
    (S.DOWN, "S", "RISING"),
    (S.DOWN, "SS", "RISING UP"),
    (S.DOWN, "SFSS", "RISING DOWN RISING UP"),
    # pinned up: stays in until `fall` checks fail
    (S.UP, "FF", "FALLING FALLING"),
    (S.UP, "FFF", "FALLING FALLING DOWN"),
    (S.UP, "S", "UP"),
])
def test_tracker_starts_from_a_known_verdict(initial, results, expected):
    tracker = HealthTracker(2, 3, initial)
    assert tracker.state is initial and tracker.is_up == (initial is S.UP)
    states = []
    for r in results:
        tracker.record(r == "S")
        states.append(tracker.state.value)
    assert " ".join(states) == expected


@pytest.mark.parametrize("initial", [S.RISING, S.FALLING])
def test_tracker_starts_only_from_a_verdict(initial):
    with pytest.raises(ValueError, match="initial: must be INIT, UP or DOWN"):
        HealthTracker(2, 3, initial)


def test_unknown_target_is_not_checked_yet():
    # lbd check --diff asks about backends a reload would add: they are INIT
    # (trusted until proven down), never a KeyError
    async def main():
        checker = HealthChecker(lambda *a: None)
        try:
            return checker.state(("web", "198.18.7.26")), checker.is_up(("web", "198.18.7.26"))
        finally:
            await checker.stop()

    assert run(main()) == (S.INIT, True)


def test_set_targets_starts_new_targets_from_initial_and_keeps_known_ones():
    async def main():
        server = await HttpServer().start()
        refused = refusing_port()
        dead = refused.getsockname()[1]
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        slow = dict(interval_s=5.0, timeout_s=0.2)  # no check answers during the test's first part
        try:
            checker.set_targets({"was-down": fast_spec(server.port, **slow),
                                 "was-up": fast_spec(dead, **slow),
                                 "new": fast_spec(server.port, **slow)},
                                initial={"was-down": S.DOWN, "was-up": S.UP})
            started = {k: checker.state(k) for k in checker.keys()}
            # a reload later: initial applies to new targets only
            checker.set_targets({"was-down": fast_spec(server.port, **slow),
                                 "was-up": fast_spec(dead, **slow),
                                 "new": fast_spec(server.port, **slow)},
                                initial={"was-down": S.UP, "was-up": S.DOWN, "new": S.DOWN})
            reloaded = {k: checker.state(k) for k in checker.keys()}
            # then real checks: DOWN needs rise passes, UP needs fall failures
            checker.set_targets({"was-down": fast_spec(server.port), "was-up": fast_spec(dead)})
            await rec.wait_for(lambda: checker.state("was-down") is S.UP and checker.state("was-up") is S.DOWN,
                               3.0)
            return started, reloaded, rec
        finally:
            await checker.stop()
            await server.stop()
            refused.close()

    started, reloaded, rec = run(main())
    assert started == {"was-down": S.DOWN, "was-up": S.UP, "new": S.INIT}
    assert reloaded == started
    assert rec.transitions("was-down") == [("DOWN", "RISING"), ("RISING", "UP")]
    assert rec.transitions("was-up") == [("UP", "FALLING"), ("FALLING", "DOWN")]


def test_states_after_predicts_set_targets():
    async def main():
        refused = refusing_port()
        dead = refused.getsockname()[1]
        rec = Recorder()
        checker = HealthChecker(rec.on_change, rec.on_result)
        try:
            checker.set_targets({k: fast_spec(dead) for k in ("kept", "retimed", "repathed", "removed")})
            await rec.wait_for(lambda: all(checker.state(k) is S.DOWN for k in checker.keys()), 3.0)
            reload = {"kept": fast_spec(dead), "retimed": fast_spec(dead, interval_s=0.07),
                      "repathed": fast_spec(dead, "http", path="/other"), "added": fast_spec(dead)}
            predicted = checker.states_after(reload)
            unchanged = {k: checker.state(k) for k in checker.keys()}
            checker.set_targets(reload)
            return predicted, unchanged, {k: checker.state(k) for k in checker.keys()}
        finally:
            await checker.stop()
            refused.close()

    predicted, unchanged, actual = run(main())
    assert predicted == actual == {"kept": S.DOWN, "retimed": S.DOWN, "repathed": S.INIT, "added": S.INIT}
    assert set(unchanged) == {"kept", "retimed", "repathed", "removed"}, "states_after changes nothing"


# --- https and udp checks (issue 21) ------------------------------------------


@pytest.fixture(scope="module")
def server_tls(tmp_path_factory):
    """A server context with a self-signed certificate for www.example.test."""
    import datetime
    import ssl

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.test")]), False)
            .sign(key, hashes.SHA256()))
    directory = tmp_path_factory.mktemp("tls")
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))

    def make():
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(directory / "cert.pem", directory / "key.pem")
        return context
    return make


def test_https_sends_the_host_header_and_sni_and_accepts_any_certificate_by_default(server_tls):
    async def main():
        server = await HttpServer(tls=server_tls()).start()
        try:
            spec = CheckSpec("https", LOCAL, server.port, path="/healthz", host="www.example.test")
            return await run_check(spec), server
        finally:
            await server.stop()

    result, server = run(main())
    assert (result.ok, result.detail) == (True, "status 200")
    assert server.server_names == ["www.example.test"]
    assert "\r\nHost: www.example.test\r\n" in server.requests[0].decode()


def test_https_sni_can_differ_from_the_host_header(server_tls):
    async def main():
        server = await HttpServer(tls=server_tls()).start()
        try:
            spec = CheckSpec("https", LOCAL, server.port, host="www.example.test", sni="cdn.example.test")
            return await run_check(spec), server
        finally:
            await server.stop()

    result, server = run(main())
    assert result.ok and server.server_names == ["cdn.example.test"]


def test_https_with_verification_refuses_a_certificate_it_cannot_trust(server_tls):
    async def main():
        server = await HttpServer(tls=server_tls()).start()
        try:
            spec = CheckSpec("https", LOCAL, server.port, host="www.example.test", verify_tls=True)
            return await run_check(spec)
        finally:
            await server.stop()

    result = run(main())
    assert not result.ok and result.detail.startswith("TLS certificate not accepted"), result.detail
    assert "self" in result.detail or "verify" in result.detail, result.detail


class UdpServer(asyncio.DatagramProtocol):
    """Answers every datagram with prefix + the datagram (like the lab's echo)."""

    def __init__(self, prefix: bytes = b""):
        self.prefix, self.received = prefix, []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.received.append(data)
        self.transport.sendto(self.prefix + data, addr)


async def _udp_server(prefix: bytes = b""):
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: UdpServer(prefix), local_addr=(LOCAL, 0))
    return transport, server, transport.get_extra_info("sockname")[1]


# a DNS query (id 0x4c62) for example.com, type A: what a DNS check sends
DNS_QUERY = bytes.fromhex("4c6201000001000000000000076578616d706c650000010001")


@pytest.mark.parametrize("expect, ok", [(b"", True), (b"\x4c\x62", True), (b"b2 \x4c", True),
                                        (b"\x4c\x63", False)])
def test_udp_check_passes_on_an_answer_containing_expect(expect, ok):
    async def main():
        transport, server, port = await _udp_server(prefix=b"b2 ")
        try:
            return await check_udp(LOCAL, port, DNS_QUERY, expect, timeout_s=0.3), server
        finally:
            transport.close()

    result, server = run(main())
    assert server.received == [DNS_QUERY]
    assert result.ok is ok, result
    if not ok:
        assert result.detail == "timeout after 0.3s waiting for the expected answer"


def test_udp_check_to_a_closed_port_says_nothing_listens():
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOCAL, 0))
    port = probe.getsockname()[1]
    probe.close()  # a port nothing listens on: the kernel answers ICMP port unreachable
    result = run(check_udp(LOCAL, port, b"ping", timeout_s=1.0))
    assert (result.ok, result.detail) == (False, "port unreachable (nothing listens)")
