"""`lbctl`: read and drive a running lbd over its control socket.

  lbctl status [--stats|--rate] [--json] [--watch]   VIPs and backends, like `ipvsadm -Ln [--rate]`;
                                      --watch redraws it every second until Ctrl-C
  lbctl wait-drained VIP BACKEND [--timeout 10m] [--idle 30s]
                                      wait until a drained backend has no live flow: 0 when it
                                      has none, 1 (with the count) at the timeout, 2 if it never can
  lbctl reload                        re-read the config (like SIGHUP), print what moved
  lbctl check FILE... [--diff]        validate; with --diff, what a reload would move
  lbctl explain CLIENT:PORT VIP:PORT/PROTO   which backend this flow gets, and why
  lbctl explain ... --quic-cid HEX    a QUIC VIP's datagram with that CID: which rule placed it
  lbctl explain --batch FILE          the same for many flows (lines "CLIENT VIP"; - = stdin), JSON
  lbctl capture -w FILE|- [--vip V] [--backend A] [--client A] [--action a,b] [--reason r,s]
                [--count N] [--duration 60s] [--rate N]
                                      the packets the XDP program handled (tcpdump cannot see
                                      them), as they arrived and left, with each decision, as pcapng
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
import re
import sys
import time
import urllib.parse

from lbd.cli import check_arguments, run_check
from lbd.control_client import UnixConnection, call, quic_moved_text, second_found_text, socket_options, socket_path

WAIT_EVERY_S = 2.0  # wait-drained asks this often (or every 5 walks' time, if a walk takes longer)


def format_status(status: dict, stats: bool, rate: bool = False) -> str:
    if rate:
        return format_rates(status)
    lines = [f"lbd {'ready' if status['ready'] else 'NOT READY'}  attached: "
             + ", ".join(f"{k} ({v})" for k, v in status["attached"].items())]
    reload = status["reload"]
    if reload.get("last_error"):
        lines.append(f"last reload: {reload['last_result']}: {reload['last_error']}")
    for name, table in sorted(status.get("conntrack", {}).items()):
        warn = "  NEAR FULL" if table["used"] >= 0.9 else ""
        lines.append(f"connection table {name}: {table['entries']} of {table['capacity']} entries "
                     f"({table['used']:.0%}){warn}")
    lines += _sample_lines(status.get("flows_sample"))
    header = "Prot VIP                          Mode Affinity Fingerprint (second choices' after /)"
    lines.append(header)
    backend_header = ("  -> Backend                      Weight State      Health     Flows   Idle   Packets     Bytes"
                      if stats else "  -> Backend                      Weight State      Health     Flows   Idle")
    lines.append(backend_header)
    for vip in status["vips"]:
        endpoint = f"{vip['address']}:{vip['port']}" if ":" not in vip["address"] else \
            f"[{vip['address']}]:{vip['port']}"
        extra = "  FAIL-OPEN" if vip["fail_open"] else ""
        second = f" / {vip['second_fingerprint'] or '-'}" if vip.get("second_chance") else ""
        if vip.get("second_pending"):
            second += " (second table being built)"
        lines.append(f"{vip['protocol'].upper():4} {endpoint:28} {vip['mode']:4} {vip['affinity']:8} "
                     f"{vip['fingerprint']}{second}{extra}")
        if stats:
            c = vip.get("counters", {})
            lines.append(f"     packets {c.get('packets', 0)}  bytes {c.get('bytes', 0)}  "
                         f"entries made {c.get('new_flows', 0)}  rescheduled {c.get('rescheduled', 0)}")
        for b in vip["backends"]:
            flows = "-" if b.get("flows") is None else b["flows"]  # "-": not sampled yet
            idle = "-" if b.get("idle_flows") is None else b["idle_flows"]
            row = f"  -> {b['address']:28} {b['weight']:6} {b['state']:10} {health_word(b):9} {flows:>6} {idle:>6}"
            if stats:
                row += f" {b.get('packets', 0):9} {b.get('bytes', 0):9}"
            notes = [b["note"]] if b.get("note") else []
            if b.get("hold_until"):
                notes.append(f"second choice until {_clock(b['hold_until'])}")
            if b.get("server_id"):  # a QUIC VIP's backend: the ID its CIDs carry
                routed = "" if b.get("quic_routed") is None else f", {b['quic_routed']} packets by CID"
                notes.append(f"server ID {b['server_id']}{routed}")
            if notes:
                row += f"  ({'; '.join(notes)})"
            lines.append(row)
            checks = b.get("checks") or {}
            if checks.get("reason"):  # which check fails and why (lbd.healthview)
                lines.append(f"       {checks['reason']}")
        for b in vip.get("held", []):
            flows = "-" if b.get("flows") is None else b["flows"]
            idle = "-" if b.get("idle_flows") is None else b["idle_flows"]
            lines.append(f"  -> {b['address']:28} {'-':>6} {'held':10} {'-':9} {flows:>6} {idle:>6}  "
                         f"(removed from the config; second choice until {_clock(b['hold_until'])})")
    lines += _format_bgp(status.get("bgp"))
    return "\n".join(lines)


def health_word(backend: dict) -> str:
    """What the Health column says: the check's verdict; "checking" until the
    first one (the checker's INIT, in which a backend takes traffic: trusted
    until proven down); "unchecked" where the VIP has no health check."""
    return {"INIT": "checking", "none": "unchecked"}.get(backend["health"], backend["health"])


def _sample_lines(sample: dict | None) -> list[str]:
    """When Flows and Idle were counted: the tables are walked every few
    seconds, not at each status."""
    if not sample or sample.get("at") is None:
        return []
    return [f"flows counted at {_clock(sample['at'])} ({sample['age_s']:.0f} s ago; the tables are walked every "
            f"{sample['every_s']:g} s): Flows are live, Idle had no packet for {sample['idle_after_s']:g} s "
            f"or {sample['closed_after_s']:g} s after the client's FIN or RST"]


def _clock(unix_s: int) -> str:
    """A hold's end as the operator's local time of day."""
    return time.strftime("%H:%M:%S", time.localtime(unix_s))


def _endpoint(vip: dict) -> str:
    host = f"[{vip['address']}]" if ":" in vip["address"] else vip["address"]
    return f"{host}:{vip['port']}"


def _per_s(rate: dict | None, field: str) -> str:
    if rate is None:
        return "-"  # the daemon has not two snapshots yet
    value = rate[f"{field}_per_s"]
    return f"{value:.1f}" if value < 100 else f"{value:.0f}"


def format_rates(status: dict) -> str:
    """`lbctl status --rate`, like `ipvsadm -Ln --rate`: per VIP and per
    backend, entries made (new flows), packets and bytes per second over the
    daemon's last few seconds."""
    window = status.get("rate_window_s")
    lines = [f"lbd {'ready' if status['ready'] else 'NOT READY'}  rates per second over the last "
             + (f"{window:g} s" if window else "- s (the daemon has sampled its counters once or not yet)")]
    lines.append(f"{'Prot VIP':33} {'NewFlows/s':>11} {'Packets/s':>11} {'Bytes/s':>13}")
    lines.append(f"{'  -> Backend':33} {'NewFlows/s':>11} {'Packets/s':>11} {'Bytes/s':>13}")
    for vip in status["vips"]:
        r = vip.get("rate")
        lines.append(f"{vip['protocol'].upper():4} {_endpoint(vip):28} {_per_s(r, 'new_flows'):>11} "
                     f"{_per_s(r, 'packets'):>11} {_per_s(r, 'bytes'):>13}  {vip['name']}")
        for b in vip["backends"]:
            r = b.get("rate")
            lines.append(f"  -> {b['address']:28} {_per_s(r, 'new_flows'):>11} {_per_s(r, 'packets'):>11} "
                         f"{_per_s(r, 'bytes'):>13}")
    return "\n".join(lines)


# ANSI: cursor home, erase to the end of the line, erase below, erase the screen
HOME, ERASE_LINE, ERASE_BELOW, ERASE_SCREEN = "\x1b[H", "\x1b[K", "\x1b[J", "\x1b[2J"


def watch_frame(text: str, title: str, first: bool = False) -> str:
    """One redraw of `lbctl status --watch`, without curses: home the cursor
    and write each line over the last frame's, erasing what is left of each
    line and below the last one (the first frame clears the screen), so a
    frame never scrolls or flickers."""
    lines = [title, "", *text.splitlines()]
    return (ERASE_SCREEN if first else "") + HOME + "".join(f"{line}{ERASE_LINE}\n" for line in lines) \
        + ERASE_BELOW


def watch(fetch, render, out, every_s: float = 1.0, count: int | None = None, sleep=time.sleep,
          clock=time.strftime) -> int:
    """Redraw render(fetch()) every `every_s` until Ctrl-C (or `count`
    frames). A daemon that stops answering is shown in the frame, and the
    watch goes on."""
    shown = 0
    try:
        while count is None or shown < count:
            try:
                text = render(fetch())
            except SystemExit as err:  # control_client's "cannot reach lbd ..."
                text = str(err)
            out.write(watch_frame(text, f"every {every_s:g}s, {clock('%H:%M:%S')}  (Ctrl-C to stop)",
                                  first=shown == 0))
            out.flush()
            shown += 1
            if count is None or shown < count:
                sleep(every_s)
    except KeyboardInterrupt:
        out.write("\n")
    return 0


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)?")


def parse_duration(text: str) -> float:
    """"500ms", "30s", "10m", "1h", or seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration above zero (500ms, 30s, 10m, 1h): {text!r}")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}[match.group(2)]


def wait_drained(socket: str, vip: str, backend: str, timeout_s: float, idle_s: float,
                 every_s: float = WAIT_EVERY_S, out=None, sleep=time.sleep,
                 clock=time.monotonic) -> int:
    """Ask the daemon for the backend's live flows (a fresh walk of its
    VIP's table) until there are none (0) or the timeout (1, with the count);
    2 if it can never drain (no such VIP or backend, or one that takes new
    flows); 130 on Ctrl-C."""
    out = out or sys.stdout
    try:
        return _wait_drained(socket, vip, backend, timeout_s, idle_s, every_s, out, sleep, clock)
    except KeyboardInterrupt:
        print("\nlbctl wait-drained: interrupted", file=sys.stderr)
        return 130


def _wait_drained(socket, vip, backend, timeout_s, idle_s, every_s, out, sleep, clock) -> int:
    query = urllib.parse.urlencode({"vip": vip, "backend": backend, "idle": idle_s})
    deadline = clock() + timeout_s
    last = None
    while True:
        code, body = call(socket, "GET", f"/flows?{query}")
        if code != 200:
            print(f"lbctl wait-drained: {body.get('error')}", file=sys.stderr)
            return 2
        if body["state"] == "active":
            print(f"lbctl wait-drained: {body['backend']} of {body['vip']} is active: it takes new flows, so "
                  "it never drains. Set drain: true (or weight: 0) and reload first", file=sys.stderr)
            return 2
        where = f"{body['backend']} of {body['vip']} ({body['state']})"
        if body["live"] == 0:
            print(f"{where}: drained, no live flow ({body['idle']} idle entries: {_idle_means(body, idle_s)})",
                  file=out)
            return 0
        now = clock()
        if now >= deadline:
            print(f"{where}: {body['live']} live flows left after {timeout_s:g} s "
                  f"({body['idle']} idle)", file=out)
            return 1
        if body["live"] != last:
            print(f"{where}: {body['live']} live flows, waiting", file=out, flush=True)
            last = body["live"]
        sleep(min(max(every_s, 5 * body.get("walk_seconds", 0)), deadline - now))


def capture(socket: str, args: argparse.Namespace, out=None) -> int:
    """Stream GET /capture into the output (a file, or stdout with -w -)
    until the daemon ends it (count, duration), Ctrl-C, or the reader of
    stdout goes away; then say how it ended."""
    query = {"vip": args.vip, "backend": args.backend, "client": args.client, "action": args.action,
             "reason": args.reason, "count": args.count, "duration": args.duration, "rate": args.rate}
    query = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
    # no read timeout shorter than the capture: it may stay silent for its whole duration
    connection = UnixConnection(socket, timeout=(args.duration or 60.0) + 30)
    ended = None
    try:
        try:
            connection.request("GET", f"/capture?{query}")
            response = connection.getresponse()
        except (FileNotFoundError, ConnectionRefusedError, PermissionError) as err:
            print(f"lbctl capture: cannot reach lbd at {socket} ({err})", file=sys.stderr)
            return 1
        if response.status != 200:
            body = json.loads(response.read() or b"{}")
            print(f"lbctl {body.get('error', response.status)}", file=sys.stderr)
            return 1
        out = out or (sys.stdout.buffer if args.write == "-" else open(args.write, "wb"))
        try:
            while chunk := response.read1(65536):
                out.write(chunk)
                out.flush()
        except KeyboardInterrupt:
            ended = "interrupted (Ctrl-C)"
        except BrokenPipeError:
            ended = "the reader of the output went away"
        finally:
            if out is not sys.stdout.buffer:
                out.close()
    finally:
        connection.close()
    # the daemon's own account: packets written, why it ended, what the rate held back
    time.sleep(0.5 if ended else 0)  # it notices a closed connection within its poll
    last = call(socket, "GET", "/status")[1].get("capture") or {}
    where = "stdout" if args.write == "-" else args.write
    print(f"lbctl capture: {last.get('packets', '?')} packets to {where}; ended: {ended or last.get('ended')}"
          f"; over the rate: {last.get('over_rate', '?')}; lost (ring full): {last.get('lost', '?')}",
          file=sys.stderr)
    return 0


def _idle_means(body: dict, idle_s: float) -> str:
    """What made the backend's entries idle, in its VIP's protocol's words."""
    if body.get("protocol") == "udp":
        # no close in UDP: a flow ends only by going quiet
        return f"no packet for {idle_s:g} s; a UDP flow has no close, only silence"
    return f"no packet for {idle_s:g} s, or {body['closed_after_s']:g} s after the client's FIN or RST"


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
    shown = status.add_mutually_exclusive_group()
    shown.add_argument("--stats", action="store_true", help="packets and bytes since the program started")
    shown.add_argument("--rate", action="store_true",
                       help="new flows, packets and bytes per second over the last few seconds")
    status.add_argument("--json", action="store_true")
    status.add_argument("--watch", action="store_true", help="redraw every second until Ctrl-C")
    status.add_argument("--count", type=int, metavar="N", help="with --watch: stop after N frames")
    wait = sub.add_parser("wait-drained", parents=[options],
                          help="wait until a drained backend has no live flow left")
    wait.add_argument("vip", help="the VIP's name or ADDR:PORT/PROTO")
    wait.add_argument("backend", help="the backend's address")
    wait.add_argument("--timeout", type=parse_duration, default=600.0, metavar="DURATION",
                      help="give up after this long, exit 1 (default 10m)")
    wait.add_argument("--idle", type=parse_duration, default=30.0, metavar="DURATION",
                      help="a flow without a packet for this long is not live (default 30s)")
    sub.add_parser("reload", help="re-read the config", parents=[options])
    check_arguments(sub.add_parser("check", help="validate config files", parents=[options]))
    explain = sub.add_parser("explain", help="which backend a flow gets, and why", parents=[options])
    explain.add_argument("client", nargs="?", help="CLIENT_ADDR:PORT ([v6]:port)")
    explain.add_argument("vip", nargs="?", help="VIP_ADDR:PORT/PROTO")
    explain.add_argument("--batch", metavar="FILE", help='lines "CLIENT_ADDR:PORT VIP_ADDR:PORT/PROTO"; - = stdin')
    explain.add_argument("--quic-cid", metavar="HEX",
                         help="a QUIC VIP: the next datagram is a short-header packet with this CID")
    cap = sub.add_parser("capture", parents=[options],
                         help="the packets the XDP program handled, with its decisions, as pcapng")
    cap.add_argument("-w", "--write", required=True, metavar="FILE",
                     help="pcapng file to write; - for stdout (| tcpdump -r -, | wireshark -k -i -)")
    cap.add_argument("--vip", help="only packets to this VIP (NAME or ADDR:PORT/PROTO)")
    cap.add_argument("--backend", help="only packets sent to this backend (address)")
    cap.add_argument("--client", help="only packets from this client address")
    cap.add_argument("--action", help="comma list of tx, redirect, drop, pass, aborted "
                                      "(default: all but pass, which tcpdump sees)")
    cap.add_argument("--reason", help="only drops for these reasons (comma list: no_backend, malformed, ...)")
    cap.add_argument("--count", type=int, default=1000, help="stop after N packets (default 1000)")
    cap.add_argument("--duration", type=parse_duration, default=60.0, metavar="DURATION",
                     help="stop after this long (default 60s, at most 1h)")
    cap.add_argument("--rate", type=int, default=1000,
                     help="keep at most N packets a second (default 1000); the rest are counted")
    sub.add_parser("drain", help="withdraw every VIP from BGP; forwarding goes on", parents=[options])
    sub.add_parser("undrain", help="announce the VIPs again (where the rules allow)", parents=[options])
    sub.add_parser("teardown", help="detach, unpin, stop lbd", parents=[options])
    args = parser.parse_args(argv)
    if args.command == "explain" and not args.batch and not (args.client and args.vip):
        parser.error("explain needs CLIENT:PORT VIP:PORT/PROTO, or --batch FILE")
    if args.command == "status" and args.watch and args.json:
        parser.error("--watch redraws the table for a terminal: not with --json")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "check":
        return run_check(args)
    args.socket = socket_path(args)
    if args.command == "status" and args.watch:
        return watch(lambda: call(args.socket, "GET", "/status")[1],
                     lambda body: format_status(body, args.stats, args.rate), sys.stdout, count=args.count)
    if args.command == "status":
        code, body = call(args.socket, "GET", "/status")
        print(json.dumps(body, indent=2) if args.json else format_status(body, args.stats, args.rate))
        return 0 if code == 200 else 1
    if args.command == "wait-drained":
        return wait_drained(args.socket, args.vip, args.backend, args.timeout, args.idle)
    if args.command == "reload":
        code, body = call(args.socket, "POST", "/reload")
        if body.get("result") != "success":
            print(f"reload {body.get('result')}: {body.get('error')}", file=sys.stderr)
            return 1
        for vip in body["vips"]:
            print(f"{vip['name']}: {vip['action']}, moved {vip['moved_share'] * 100:.2f}% of flows"
                  f"{second_found_text(vip)}{quic_moved_text(vip)}")
        return 0
    if args.command == "explain" and args.batch:
        with (sys.stdin if args.batch == "-" else open(args.batch, encoding="utf-8")) as f:
            flows = [line.split() for line in f if line.strip()]
        code, body = call(args.socket, "POST", "/explain", {"flows": flows})
        print(json.dumps(body))
        return 0 if code == 200 else 1
    if args.command == "explain":
        query = urllib.parse.urlencode({"client": args.client, "vip": args.vip,
                                        **({"quic_cid": args.quic_cid} if args.quic_cid else {})})
        code, body = call(args.socket, "GET", f"/explain?{query}")
        print(json.dumps(body, indent=2))
        return 0 if code == 200 else 1
    if args.command == "capture":
        return capture(args.socket, args)
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
