"""`lbctl`: read and drive a running lbd over its control socket.

  lbctl status [--stats] [--json]     VIPs and backends, like `ipvsadm -Ln`
  lbctl reload                        re-read the config (like SIGHUP), print what moved
  lbctl check FILE... [--diff]        validate; with --diff, what a reload would move
  lbctl explain CLIENT:PORT VIP:PORT/PROTO   which backend this flow gets, and why
  lbctl explain --batch FILE          the same for many flows (lines "CLIENT VIP"; - = stdin), JSON
  lbctl drain / undrain               withdraw every VIP from BGP (keeps forwarding), or announce again
  lbctl teardown                      withdraw from BGP, detach and unpin everything, stop lbd

The socket (control.socket in the config, /run/lbd/lbd.sock by default) is
mode 0660: root, or the configured control.group.
"""
from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import urllib.parse

DEFAULT_SOCKET = "/run/lbd/lbd.sock"


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float = 30.0):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


def call(socket_path: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    connection = _UnixConnection(socket_path)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        connection.request(method, path, body=payload,
                           headers={"Content-Type": "application/json"} if payload else {})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    except (FileNotFoundError, ConnectionRefusedError) as err:
        raise SystemExit(f"lbctl: cannot reach lbd at {socket_path} ({err}); is lbd running? "
                         "(--socket, or control.socket in the config)")
    except PermissionError:
        raise SystemExit(f"lbctl: permission denied on {socket_path}: run as root or as a member of "
                         "control.group")
    finally:
        connection.close()


def format_status(status: dict, stats: bool) -> str:
    lines = [f"lbd {'ready' if status['ready'] else 'NOT READY'}  attached: "
             + ", ".join(f"{k} ({v})" for k, v in status["attached"].items())]
    reload = status["reload"]
    if reload.get("last_error"):
        lines.append(f"last reload: {reload['last_result']}: {reload['last_error']}")
    header = "Prot VIP                          Mode Affinity Fingerprint"
    lines.append(header)
    backend_header = ("  -> Backend                      Weight State      Health    Packets     Bytes"
                      if stats else "  -> Backend                      Weight State      Health")
    lines.append(backend_header)
    for vip in status["vips"]:
        endpoint = f"{vip['address']}:{vip['port']}" if ":" not in vip["address"] else \
            f"[{vip['address']}]:{vip['port']}"
        extra = "  FAIL-OPEN" if vip["fail_open"] else ""
        lines.append(f"{vip['protocol'].upper():4} {endpoint:28} {vip['mode']:4} {vip['affinity']:8} "
                     f"{vip['fingerprint']}{extra}")
        if stats:
            c = vip.get("counters", {})
            lines.append(f"     packets {c.get('packets', 0)}  bytes {c.get('bytes', 0)}  "
                         f"new flows {c.get('new_flows', 0)}  rescheduled {c.get('rescheduled', 0)}")
        for b in vip["backends"]:
            row = f"  -> {b['address']:28} {b['weight']:6} {b['state']:10} {b['health']:9}"
            if stats:
                row += f" {b.get('packets', 0):9} {b.get('bytes', 0):9}"
            if b.get("note"):
                row += f"  ({b['note']})"
            lines.append(row)
    lines += _format_bgp(status.get("bgp"))
    return "\n".join(lines)


def _format_bgp(bgp: dict | None) -> list[str]:
    if bgp is None:
        return []
    state = "DRAINED" if bgp["drained"] else "in service"
    speaker = "BIRD up" if bgp["speaker_up"] else "BIRD NOT REACHABLE"
    lines = ["", f"BGP: {state} ({bgp['maintenance_file']}), {speaker}"
                 + (", config NOT TAKEN YET" if bgp["pending"] else "")]
    if bgp.get("last_error"):
        lines.append(f"  last error: {bgp['last_error']}")
    for peer in bgp["peers"]:
        lines.append(f"  peer {peer['name']:28} {peer['state']:6} {peer['info']}")
    for vip in bgp["vips"]:
        lines.append(f"  {'announced' if vip['announce'] else 'WITHDRAWN':9} {vip['address']:28} "
                     f"{vip['vip']}: {vip['reason']}")
    return lines


def check_command(argv: list[str], socket_path: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbd check", description="validate config files")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--diff", action="store_true", help="show what a reload would move (asks lbd)")
    parser.add_argument("--socket", default=socket_path or DEFAULT_SOCKET)
    args = parser.parse_args(argv)
    from lbd.config import check_main
    result = check_main(args.files)
    if result != 0 or not args.diff:
        return result
    import os
    status, body = call(args.socket, "POST", "/diff", {"path": os.path.abspath(args.files[0])})
    if status != 200:
        print(body.get("error"), file=sys.stderr)
        return 1
    if body["refused"]:
        print(f"a reload would be REFUSED: boot-only settings changed: {', '.join(body['refused'])}")
    for vip in body["vips"]:
        print(f"{vip['name']}: {vip['action']}, {vip['moved_share'] * 100:.2f}% of flows would move")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbctl", description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"control socket (default {DEFAULT_SOCKET})")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="VIPs and backends")
    status.add_argument("--stats", action="store_true")
    status.add_argument("--json", action="store_true")
    sub.add_parser("reload", help="re-read the config")
    check = sub.add_parser("check", help="validate config files")
    check.add_argument("rest", nargs=argparse.REMAINDER)
    explain = sub.add_parser("explain", help="which backend a flow gets, and why")
    explain.add_argument("client", nargs="?", help="CLIENT_ADDR:PORT ([v6]:port)")
    explain.add_argument("vip", nargs="?", help="VIP_ADDR:PORT/PROTO")
    explain.add_argument("--batch", metavar="FILE", help='lines "CLIENT_ADDR:PORT VIP_ADDR:PORT/PROTO"; - = stdin')
    sub.add_parser("drain", help="withdraw every VIP from BGP; forwarding goes on")
    sub.add_parser("undrain", help="announce the VIPs again (where the rules allow)")
    sub.add_parser("teardown", help="detach, unpin, stop lbd")
    args = parser.parse_args(argv)

    if args.command == "check":
        return check_command(args.rest, args.socket)
    if args.command == "status":
        code, body = call(args.socket, "GET", "/status")
        print(json.dumps(body, indent=2) if args.json else format_status(body, args.stats))
        return 0 if code == 200 else 1
    if args.command == "reload":
        code, body = call(args.socket, "POST", "/reload")
        if body.get("result") != "success":
            print(f"reload {body.get('result')}: {body.get('error')}", file=sys.stderr)
            return 1
        for vip in body["vips"]:
            print(f"{vip['name']}: {vip['action']}, moved {vip['moved_share'] * 100:.2f}% of flows")
        return 0
    if args.command == "explain" and args.batch:
        with (sys.stdin if args.batch == "-" else open(args.batch, encoding="utf-8")) as f:
            flows = [line.split() for line in f if line.strip()]
        code, body = call(args.socket, "POST", "/explain", {"flows": flows})
        print(json.dumps(body))
        return 0 if code == 200 else 1
    if args.command == "explain":
        if not (args.client and args.vip):
            parser.error("explain needs CLIENT:PORT VIP:PORT/PROTO, or --batch FILE")
        query = urllib.parse.urlencode({"client": args.client, "vip": args.vip})
        code, body = call(args.socket, "GET", f"/explain?{query}")
        print(json.dumps(body, indent=2))
        return 0 if code == 200 else 1
    if args.command in ("drain", "undrain"):
        code, body = call(args.socket, "POST", f"/{args.command}")
        if code != 200:
            print(f"lbctl {args.command}: {body.get('error')}", file=sys.stderr)
            return 1
        print("\n".join(_format_bgp(body)[1:]))
        return 0
    if args.command == "teardown":
        code, body = call(args.socket, "POST", "/teardown")
        print("\n".join(body.get("done", [])))
        return 0 if code == 200 else 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
