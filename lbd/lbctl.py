"""`lbctl`: read and drive a running lbd over its control socket.

  lbctl status [--stats] [--json]     VIPs and backends, like `ipvsadm -Ln`
  lbctl reload                        re-read the config (like SIGHUP), print what moved
  lbctl check FILE... [--diff]        validate; with --diff, what a reload would move
  lbctl explain CLIENT:PORT VIP:PORT/PROTO   which backend this flow gets, and why
  lbctl explain --batch FILE          the same for many flows (lines "CLIENT VIP"; - = stdin), JSON
  lbctl drain / undrain               withdraw every VIP from BGP (keeps forwarding), or announce again
  lbctl teardown                      withdraw from BGP, detach and unpin everything, stop lbd

Options go before or after the command. The socket is --socket PATH, else
control.socket of --config FILE (default /etc/lbd/lbd.yaml; when that file
does not exist, /run/lbd/lbd.sock). It is mode 0660: root, or the
configured control.group.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.parse

from lbd.cli import check_arguments, run_check
from lbd.control_client import call, socket_options, socket_path

def format_status(status: dict, stats: bool) -> str:
    lines = [f"lbd {'ready' if status['ready'] else 'NOT READY'}  attached: "
             + ", ".join(f"{k} ({v})" for k, v in status["attached"].items())]
    reload = status["reload"]
    if reload.get("last_error"):
        lines.append(f"last reload: {reload['last_result']}: {reload['last_error']}")
    for name, table in sorted(status.get("conntrack", {}).items()):
        warn = "  NEAR FULL" if table["used"] >= 0.9 else ""
        lines.append(f"connection table {name}: {table['entries']} of {table['capacity']} entries "
                     f"({table['used']:.0%}){warn}")
    header = "Prot VIP                          Mode Affinity Fingerprint"
    lines.append(header)
    backend_header = ("  -> Backend                      Weight State      Health     Flows   Packets     Bytes"
                      if stats else "  -> Backend                      Weight State      Health     Flows")
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
                         f"entries made {c.get('new_flows', 0)}  rescheduled {c.get('rescheduled', 0)}")
        for b in vip["backends"]:
            flows = "-" if b.get("flows") is None else b["flows"]  # "-": not sampled yet
            row = f"  -> {b['address']:28} {b['weight']:6} {b['state']:10} {b['health']:9} {flows:>6}"
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    options = socket_options()
    parser = argparse.ArgumentParser(prog="lbctl", description=__doc__.splitlines()[0], parents=[options])
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="VIPs and backends", parents=[options])
    status.add_argument("--stats", action="store_true")
    status.add_argument("--json", action="store_true")
    sub.add_parser("reload", help="re-read the config", parents=[options])
    check_arguments(sub.add_parser("check", help="validate config files", parents=[options]))
    explain = sub.add_parser("explain", help="which backend a flow gets, and why", parents=[options])
    explain.add_argument("client", nargs="?", help="CLIENT_ADDR:PORT ([v6]:port)")
    explain.add_argument("vip", nargs="?", help="VIP_ADDR:PORT/PROTO")
    explain.add_argument("--batch", metavar="FILE", help='lines "CLIENT_ADDR:PORT VIP_ADDR:PORT/PROTO"; - = stdin')
    sub.add_parser("drain", help="withdraw every VIP from BGP; forwarding goes on", parents=[options])
    sub.add_parser("undrain", help="announce the VIPs again (where the rules allow)", parents=[options])
    sub.add_parser("teardown", help="detach, unpin, stop lbd", parents=[options])
    args = parser.parse_args(argv)
    if args.command == "explain" and not args.batch and not (args.client and args.vip):
        parser.error("explain needs CLIENT:PORT VIP:PORT/PROTO, or --batch FILE")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "check":
        return run_check(args)
    args.socket = socket_path(args)
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
