"""The client side of lbd's control socket: where it is (--socket, or
control.socket of a config) and one HTTP call over it. lbctl, `lbd check
--diff`, the demo and the tests all talk to the daemon through this."""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket

from lbd.config import raw_setting, read_raw

DEFAULT_SOCKET = "/run/lbd/lbd.sock"
DEFAULT_CONFIG = "/etc/lbd/lbd.yaml"


def socket_options() -> argparse.ArgumentParser:
    """--socket and --config, for the main parser and every command's: an
    operator types them before or after the command. SUPPRESS leaves them
    unset when not given, so one given after the command is not overwritten
    by the main parser's default."""
    options = argparse.ArgumentParser(add_help=False)
    options.add_argument("--socket", default=argparse.SUPPRESS,
                         help=f"control socket (default: control.socket of --config, else {DEFAULT_SOCKET})")
    options.add_argument("--config", default=argparse.SUPPRESS,
                         help=f"take the socket from this config's control.socket (default {DEFAULT_CONFIG})")
    return options


def socket_path(args: argparse.Namespace, default_config: str = DEFAULT_CONFIG) -> str:
    """--socket; else control.socket of --config; else of the default config
    if it exists; else the built-in default (which is also control.socket's)."""
    if getattr(args, "socket", None):
        return args.socket
    path = getattr(args, "config", None)
    if path is None:
        if not os.path.exists(default_config):
            return DEFAULT_SOCKET
        path = default_config
    # Only this one setting is needed: read it from the YAML without
    # validating the rest, so lbctl still reaches the daemon while the file
    # holds an edit the daemon would refuse.
    raw = read_raw(path)
    if raw is None:
        raise SystemExit(f"lbctl: cannot read {path} for control.socket (not readable or not YAML); "
                         "give --socket PATH")
    value = raw_setting(raw, "control", "socket")
    return value if isinstance(value, str) and value.startswith("/") else DEFAULT_SOCKET


class UnixConnection(http.client.HTTPConnection):
    """HTTP over the daemon's unix socket (it serves /metrics there too)."""

    def __init__(self, path: str, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(socket_path: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = UnixConnection(socket_path)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json"} if payload else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise SystemExit(f"lbctl: cannot reach lbd at {socket_path} ({err}); is lbd running? "
                         f"(--socket PATH, or --config FILE for its control.socket; default "
                         f"{DEFAULT_CONFIG})")
    except PermissionError:
        raise SystemExit(f"lbctl: permission denied on {socket_path}: run as root or as a member of "
                         "control.group")
    finally:
        connection.close()


def quic_moved_text(vip: dict) -> str:
    """The QUIC part of a VIP's line in `lbd check --diff` and `lbctl reload`
    (VipResult.quic_moved): backends whose QUIC connections move because the
    server ID in their CIDs changes; "" when none do."""
    moved = vip.get("quic_moved") or {}
    if not moved:
        return ""
    return "; QUIC connections move off " + ", ".join(
        f"{address} (server ID {change})" for address, change in sorted(moved.items()))


def second_found_text(vip: dict) -> str:
    """The second-chance part of a VIP's line in `lbd check --diff` and
    `lbctl reload` (VipResult.second_found_share): "" without one."""
    found = vip.get("second_found_share")
    if found is None:
        return ""
    text = f"; for {found * 100:.2f}% of them the second choice is the backend they had"
    if vip.get("joined", 0) > 1:
        # README "Several backends joining at once": the rest name another of them
        text += (f"; {vip['joined']} backends join its table at once: add one per reload, and let "
                 "the connections open at the previous reload end before the next")
    return text
