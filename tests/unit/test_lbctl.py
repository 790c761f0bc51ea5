"""lbctl's options: --socket and --config before or after the command, and the
socket taken from the config's control.socket (docs/operating.md: Operations)."""
from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time

import pytest

from lbd import lbctl
from tests.unit.unixhttp import UnixHTTPServer, send_json

pytestmark = pytest.mark.unit


def resolved(argv, default_config="/nonexistent/lbd.yaml") -> str:
    return lbctl.socket_path(lbctl.parse_args(argv), default_config=default_config)


@pytest.mark.parametrize("argv", [
    ["--socket", "/run/x.sock", "status"],
    ["status", "--socket", "/run/x.sock"],
    ["status", "--stats", "--socket", "/run/x.sock", "--json"],
    ["reload", "--socket", "/run/x.sock"],
    ["teardown", "--socket=/run/x.sock"],
    ["drain", "--socket", "/run/x.sock"],
    ["explain", "198.51.100.7:40000", "203.0.113.10:443/tcp", "--socket", "/run/x.sock"],
    ["check", "a.yaml", "--diff", "--socket", "/run/x.sock"],
    ["check", "--socket", "/run/x.sock", "--diff", "a.yaml"],
])
def test_socket_before_or_after_the_command(argv):
    assert resolved(argv) == "/run/x.sock"


def test_socket_after_the_command_wins_over_the_one_before():
    assert resolved(["--socket", "/run/a.sock", "status", "--socket", "/run/b.sock"]) == "/run/b.sock"


def test_status_options_still_parse():
    args = lbctl.parse_args(["status", "--stats", "--json"])
    assert args.command == "status" and args.stats and args.json


@pytest.mark.parametrize("where", ["before", "after"])
def test_socket_from_the_config_named_by_config(tmp_path, where):
    config = tmp_path / "lbd.yaml"
    config.write_text("interfaces: [{name: eth0}]\ncontrol: {socket: /run/lbd-test/ctl.sock}\n")
    argv = ["--config", str(config), "status"] if where == "before" else ["status", "--config", str(config)]
    assert resolved(argv) == "/run/lbd-test/ctl.sock"


def test_socket_from_the_default_config_when_it_exists(tmp_path):
    config = tmp_path / "lbd.yaml"
    config.write_text("interfaces: [{name: eth0}]\ncontrol:\n  socket: /run/other/lbd.sock\n")
    assert resolved(["status"], default_config=str(config)) == "/run/other/lbd.sock"


def test_builtin_socket_without_a_default_config(tmp_path):
    assert resolved(["status"], default_config=str(tmp_path / "absent.yaml")) == "/run/lbd/lbd.sock"


def test_builtin_socket_when_the_config_has_no_control_section(tmp_path):
    config = tmp_path / "lbd.yaml"
    config.write_text("interfaces: [{name: eth0}]\n")
    assert resolved(["--config", str(config), "status"]) == "/run/lbd/lbd.sock"


def test_socket_read_from_a_config_the_daemon_would_refuse(tmp_path):
    # a half-done edit elsewhere in the file must not cut the operator off the daemon
    config = tmp_path / "lbd.yaml"
    config.write_text("interfaces: [{name: eth0, mode: turbo}]\ncontrol: {socket: /run/x/lbd.sock}\n"
                      "vips: [{address: nonsense}]\n")
    assert resolved(["status", "--config", str(config)]) == "/run/x/lbd.sock"


def test_explicit_config_that_cannot_be_read_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="cannot read .*absent.yaml"):
        resolved(["status", "--config", str(tmp_path / "absent.yaml")])


def test_explain_without_a_flow_is_a_usage_error():
    with pytest.raises(SystemExit):
        lbctl.parse_args(["explain", "--socket", "/run/x.sock"])


class _StatusHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        send_json(self, 200, {"ready": True, "attached": {"eth0": "native"}, "reload": {}, "vips": [],
                              "bgp": None, "path": self.path})

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def serving(path: str, handler):
    """A unix socket at path answering as `handler` does, while in the block."""
    server = UnixHTTPServer(path, handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def control_socket(tmp_path):
    """A unix socket answering GET /status the way lbd's control socket does."""
    with serving(str(tmp_path / "ctl.sock"), _StatusHandler) as path:
        yield path


@pytest.mark.parametrize("how", ["socket after", "socket before", "config"])
def test_lbctl_status_reaches_the_socket(tmp_path, control_socket, capsys, how):
    config = tmp_path / "lbd.yaml"
    config.write_text(f"interfaces: [{{name: eth0}}]\ncontrol: {{socket: {control_socket}}}\n")
    argv = {"socket after": ["status", "--json", "--socket", control_socket],
            "socket before": ["--socket", control_socket, "status", "--json"],
            "config": ["status", "--json", "--config", str(config)]}[how]
    assert lbctl.main(argv) == 0
    assert json.loads(capsys.readouterr().out)["path"] == "/status"


class _ReloadHandler(http.server.BaseHTTPRequestHandler):
    """POST /reload as lbd answers it: one second-chance VIP, one without."""

    def do_POST(self):  # noqa: N802 (http.server's name)
        send_json(self, 200, {"result": "success", "vips": [
            {"name": "web", "action": "changed", "moved_share": 0.2, "second_found_share": 0.9999},
            {"name": "dns", "action": "changed", "moved_share": 0.25, "second_found_share": None},
            {"name": "api", "action": "changed", "moved_share": 0.2867, "second_found_share": 0.8299,
             "joined": 2}]})

    def log_message(self, *args):
        pass


def test_lbctl_reload_says_what_moved_and_what_second_chance_finds(tmp_path, capsys):
    with serving(str(tmp_path / "ctl.sock"), _ReloadHandler) as path:
        assert lbctl.main(["reload", "--socket", path]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "web: changed, moved 20.00% of flows; for 99.99% of them the second choice is the backend they had",
        "dns: changed, moved 25.00% of flows",
        "api: changed, moved 28.67% of flows; for 82.99% of them the second choice is the backend they had; "
        "2 backends join its table at once: add one per reload, and let the connections open at the "
        "previous reload end before the next"]


def test_status_says_checking_until_the_first_verdict_and_when_flows_were_counted():
    """A newcomer's first status (issue 24): INIT is "checking" (the backend
    takes traffic meanwhile), no check at all is "unchecked", a verdict is
    itself, and Flows come with the time they were counted."""
    counted = 1_900_000_000
    backend = {"address": "198.18.0.11", "weight": 100, "state": "active", "flows": 0, "idle_flows": 12}
    vip = {"name": "web", "address": "198.18.100.1", "port": 80, "protocol": "tcp", "mode": "dsr",
           "affinity": "flow", "fingerprint": "aaaa", "fail_open": False,
           "backends": [dict(backend, health="INIT"), dict(backend, address="198.18.0.12", health="none"),
                        dict(backend, address="198.18.0.13", health="DOWN")]}
    status = {"ready": True, "attached": {}, "reload": {}, "vips": [vip],
              "flows_sample": {"at": counted, "age_s": 4.2, "every_s": 10.0, "idle_after_s": 30.0,
                               "closed_after_s": 2.0}}
    lines = lbctl.format_status(status, stats=False).splitlines()
    health = {line.split()[1]: line.split()[4] for line in lines if line.startswith("  -> 198.")}
    assert health == {"198.18.0.11": "checking", "198.18.0.12": "unchecked", "198.18.0.13": "DOWN"}
    clock = time.strftime("%H:%M:%S", time.localtime(counted))
    assert f"flows counted at {clock} (4 s ago; the tables are walked every 10 s)" in "\n".join(lines)
