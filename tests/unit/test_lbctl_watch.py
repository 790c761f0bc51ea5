"""`lbctl status --rate`, `--watch` and `lbctl wait-drained` as docs/operating.md's
Operations section describes them: the rates per VIP and per backend over
the daemon's last seconds, a redraw in place that never scrolls, and a wait
that ends 0 once the backend has no live flow, 1 with the count at the
timeout, 2 when it can never end (unknown VIP or backend, a backend that
takes new flows)."""
from __future__ import annotations

import http.server
import io
import threading
import urllib.parse

import numpy as np
import pytest

from lbd import lbctl
from lbd.rates import RateRing
from tests.unit.unixhttp import UnixHTTPServer, send_json

pytestmark = pytest.mark.unit


# --- the rate ring ---------------------------------------------------------------------

def counters(n: int, packets: int, bytes_: int, new: int) -> np.ndarray:
    rows = np.zeros((n, 3), dtype=np.uint64)
    rows[1] = (packets, bytes_, new)
    return rows


def test_rates_are_per_second_over_the_last_seconds():
    ring = RateRing(window_s=5.0)
    assert ring.vip(1) is None and ring.span_s is None, "no rate from one snapshot or none"
    for t in range(10):  # 100 packets, 6,400 bytes and 10 new flows a second, for 10 s
        ring.add(counters(4, 100 * t, 6400 * t, 10 * t), counters(8, 50 * t, 3200 * t, 5 * t), at=float(t))
    assert ring.span_s == 5.0, "the window, not the whole history"
    assert ring.vip(1) == {"packets_per_s": 100.0, "bytes_per_s": 6400.0, "new_flows_per_s": 10.0}
    assert ring.backend(1) == {"packets_per_s": 50.0, "bytes_per_s": 3200.0, "new_flows_per_s": 5.0}
    assert ring.vip(2) == {"packets_per_s": 0.0, "bytes_per_s": 0.0, "new_flows_per_s": 0.0}


def test_a_rate_follows_the_traffic_of_the_last_seconds_only():
    ring = RateRing(window_s=5.0)
    for t in range(6):
        ring.add(counters(2, 1000 * t, 0, 0), counters(2, 0, 0, 0), at=float(t))
    for t in range(6, 12):  # traffic stopped at t=5
        ring.add(counters(2, 5000, 0, 0), counters(2, 0, 0, 0), at=float(t))
    assert ring.vip(1)["packets_per_s"] == 0.0


def test_a_backend_new_since_the_oldest_snapshot_counts_from_zero_and_no_rate_is_negative():
    ring = RateRing(window_s=5.0)
    ring.add(counters(2, 500, 0, 0), counters(2, 0, 0, 0), at=0.0)
    ring.add(counters(2, 100, 0, 0), counters(4, 0, 0, 0) + counters(4, 40, 0, 0), at=2.0)
    assert ring.vip(1)["packets_per_s"] == 0.0, "a counter that went down (a replaced map) reads 0"
    assert ring.backend(1)["packets_per_s"] == 20.0
    assert ring.backend(3) == {"packets_per_s": 0.0, "bytes_per_s": 0.0, "new_flows_per_s": 0.0}
    assert ring.backend(9) is None, "an id beyond the snapshot has no rate"


# --- what --rate shows -----------------------------------------------------------------

def status_with_rates(window=5.0, rate=True) -> dict:
    r = (lambda n, p, b: {"new_flows_per_s": n, "packets_per_s": p, "bytes_per_s": b}) if rate else \
        (lambda *_: None)
    return {"ready": True, "rate_window_s": window if rate else None, "vips": [
        {"name": "web4", "address": "198.18.100.1", "port": 80, "protocol": "tcp", "rate": r(12.0, 345.5, 41000.0),
         "backends": [{"address": "198.18.0.11", "rate": r(4.0, 115.2, 13700.0)}]},
        {"name": "web6", "address": "fd00:100::1", "port": 80, "protocol": "tcp", "rate": r(0.0, 0.0, 0.0),
         "backends": [{"address": "fd00::11", "rate": r(0.0, 0.0, 0.0)}]}]}


def test_status_rate_shows_each_vip_and_backend_per_second():
    text = lbctl.format_status(status_with_rates(), stats=False, rate=True)
    lines = text.splitlines()
    assert "over the last 5 s" in lines[0]
    assert lines[1].split()[-3:] == ["NewFlows/s", "Packets/s", "Bytes/s"]
    web4 = next(line for line in lines if line.startswith("TCP  198.18.100.1:80"))
    assert web4.split()[2:5] == ["12.0", "346", "41000"] and web4.endswith("web4")
    backend = lines[lines.index(web4) + 1]
    assert backend.split()[1:] == ["198.18.0.11", "4.0", "115", "13700"]
    assert any(line.startswith("TCP  [fd00:100::1]:80") and line.split()[2:5] == ["0.0"] * 3 for line in lines)


def test_status_rate_before_the_daemon_has_two_snapshots():
    text = lbctl.format_status(status_with_rates(rate=False), stats=False, rate=True)
    assert "- s" in text.splitlines()[0]
    assert all(line.split()[2:5] == ["-", "-", "-"] for line in text.splitlines() if line.startswith("TCP"))


def test_rate_and_stats_are_one_or_the_other():
    with pytest.raises(SystemExit):
        lbctl.parse_args(["status", "--rate", "--stats"])
    with pytest.raises(SystemExit):
        lbctl.parse_args(["status", "--watch", "--json"])
    args = lbctl.parse_args(["status", "--rate", "--watch"])
    assert args.rate and args.watch


# --- --watch: a redraw in place ------------------------------------------------------------

def test_a_frame_redraws_over_the_last_one_without_scrolling():
    first = lbctl.watch_frame("line one\nline two", "every 1s", first=True)
    later = lbctl.watch_frame("line one\nline two", "every 1s")
    assert first.startswith("\x1b[2J\x1b[H"), "the first frame clears the screen, then homes"
    assert later.startswith("\x1b[H") and "\x1b[2J" not in later, "later frames home and overwrite"
    body = later.removeprefix("\x1b[H").removesuffix("\x1b[J")
    assert body.split("\n")[:-1] == ["every 1s\x1b[K", "\x1b[K", "line one\x1b[K", "line two\x1b[K"], \
        "every line erases what a longer line of the last frame left"
    assert later.endswith("\n\x1b[J"), "and what a longer last frame left below"


def test_watch_redraws_every_second_until_ctrl_c():
    out, sleeps, fetched = io.StringIO(), [], []

    def fetch():
        fetched.append(1)
        if len(fetched) == 4:
            raise KeyboardInterrupt
        return {"n": len(fetched)}

    assert lbctl.watch(fetch, lambda body: f"frame {body['n']}", out, sleep=sleeps.append,
                       clock=lambda fmt: "12:00:00") == 0
    frames = out.getvalue().split("\x1b[H")[1:]
    assert [f.split("\n")[2] for f in frames] == ["frame 1\x1b[K", "frame 2\x1b[K", "frame 3\x1b[K"]
    assert sleeps == [1.0, 1.0, 1.0]
    assert out.getvalue().endswith("\n"), "Ctrl-C leaves the cursor below the last frame"


def test_watch_shows_a_daemon_that_stops_answering_and_goes_on():
    out = io.StringIO()
    answers = iter([{"n": 1}, SystemExit("lbctl: cannot reach lbd at /run/lbd/lbd.sock"), {"n": 3}])

    def fetch():
        answer = next(answers)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    lbctl.watch(fetch, lambda body: f"frame {body['n']}", out, count=3, sleep=lambda s: None)
    frames = out.getvalue().split("\x1b[H")[1:]
    assert "cannot reach lbd" in frames[1] and "frame 3" in frames[2]


# --- wait-drained ------------------------------------------------------------------------

def test_durations():
    assert [lbctl.parse_duration(t) for t in ("10m", "30s", "500ms", "1h", "2")] == [600, 30, 0.5, 3600, 2]
    with pytest.raises(Exception):
        lbctl.parse_duration("0s")
    args = lbctl.parse_args(["wait-drained", "web4", "198.18.0.11", "--socket", "/run/x.sock"])
    assert (args.vip, args.backend, args.timeout, args.idle) == ("web4", "198.18.0.11", 600.0, 30.0)


class _Flows(http.server.BaseHTTPRequestHandler):
    """GET /flows as lbd answers it, from a script of answers."""
    script: list = []
    asked: list = []

    def do_GET(self):  # noqa: N802
        type(self).asked.append(dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.path).query)))
        code, body = type(self).script.pop(0) if len(type(self).script) > 1 else type(self).script[0]
        send_json(self, code, body)

    def log_message(self, *args):
        pass


@pytest.fixture
def flows_socket(tmp_path):
    path = str(tmp_path / "ctl.sock")
    server = UnixHTTPServer(path, _Flows)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flows.asked = []
    yield path
    server.shutdown()
    server.server_close()
    thread.join(5)


def flows(live: int, idle: int = 0, state: str = "draining") -> tuple[int, dict]:
    return 200, {"vip": "web4", "protocol": "tcp", "backend": "198.18.0.11", "state": state, "live": live,
                 "idle": idle,
                 "idle_after_s": 30.0, "closed_after_s": 2.0, "walk_seconds": 0.01}


class _Clock:
    def __init__(self):
        self.now = 0.0
        self.slept = []

    def sleep(self, seconds):
        self.slept.append(seconds)
        self.now += seconds


def test_wait_drained_returns_0_once_no_live_flow_is_left(flows_socket):
    _Flows.script = [flows(3), flows(3), flows(1, idle=2), flows(0, idle=3)]
    clock, out = _Clock(), io.StringIO()
    code = lbctl.wait_drained(flows_socket, "web4", "198.18.0.11", 600, 30, out=out, sleep=clock.sleep,
                              clock=lambda: clock.now)
    assert code == 0
    assert len(_Flows.asked) == 4 and _Flows.asked[0] == {"vip": "web4", "backend": "198.18.0.11",
                                                          "idle": "30"}
    assert clock.slept == [2.0, 2.0, 2.0], "it asks every 2 s"
    assert "drained" in out.getvalue() and "3 idle" in out.getvalue()


@pytest.mark.parametrize("protocol, said, unsaid", [
    ("tcp", "or 2 s after the client's FIN or RST", "UDP"),
    ("udp", "no packet for 30 s; a UDP flow has no close", "FIN"),
])
def test_wait_drained_says_what_ended_the_flows_in_the_vips_protocol(flows_socket, protocol, said, unsaid):
    # issue 19: on a UDP VIP it spoke of FIN and RST, which UDP has not
    done = flows(0, idle=3)
    done[1].update(protocol=protocol, closed_after_s=2.0 if protocol == "tcp" else None)
    _Flows.script = [done]
    out = io.StringIO()
    assert lbctl.wait_drained(flows_socket, "web4", "198.18.0.11", 600, 30, out=out, sleep=lambda s: None) == 0
    assert "drained, no live flow (3 idle entries" in out.getvalue() and said in out.getvalue(), out.getvalue()
    assert unsaid not in out.getvalue()


def test_wait_drained_gives_up_at_the_timeout_with_the_count(flows_socket):
    _Flows.script = [flows(2, idle=5)]
    clock, out = _Clock(), io.StringIO()
    code = lbctl.wait_drained(flows_socket, "web4", "198.18.0.11", 5, 30, out=out, sleep=clock.sleep,
                              clock=lambda: clock.now)
    assert code == 1
    assert sum(clock.slept) == 5, "bounded by the timeout"
    assert "2 live flows left after 5 s" in out.getvalue()


def test_wait_drained_asks_less_often_when_the_walk_is_long(flows_socket):
    slow = flows(1)
    slow[1]["walk_seconds"] = 0.8
    _Flows.script = [slow, flows(0)]
    clock = _Clock()
    lbctl.wait_drained(flows_socket, "web4", "198.18.0.11", 600, 30, out=io.StringIO(), sleep=clock.sleep,
                       clock=lambda: clock.now)
    assert clock.slept == [4.0], "a walk of a big table costs a core: at most a fifth of one"


@pytest.mark.parametrize("answer, message", [
    ((404, {"error": "no VIP named or at 'web9'"}), "no VIP named"),
    (flows(3, state="active"), "is active"),
])
def test_wait_drained_that_could_never_end_is_an_error(flows_socket, capsys, answer, message):
    _Flows.script = [answer]
    assert lbctl.wait_drained(flows_socket, "web4", "198.18.0.11", 600, 30, sleep=lambda s: None) == 2
    assert message in capsys.readouterr().err
