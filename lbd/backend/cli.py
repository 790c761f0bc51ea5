"""Prepare a backend host for lbd, check one, or undo it: the `lbd-backend` command.

lbd forwards a client's packet to a backend unchanged (L2 direct server return)
or wrapped in IP-in-IP; either way the backend answers the client directly,
from the VIP. So every backend needs:

- each VIP on its loopback (/32, /128), so the kernel accepts packets to it
  and answers from it;
- ARP for those VIPs suppressed (arp_ignore=1, arp_announce=2), so the
  backend never claims a VIP on the LAN and steals traffic from lbd;
- no strict reverse-path filter (rp_filter=1): a packet from a client arrives
  with the client's address, and a multi-homed backend whose route back to
  the client leaves by another interface would drop it;
- ipip mode only: the backend program (xdp/decap.c, function lbd_decap) on
  the interface, since these kernels have no IPIP or GUE tunnel devices: it
  decapsulates IP-in-IP, and keeps or forwards once the GUE packets of
  second-chance VIPs (see the program's comment).

    lbd-backend prepare --mode dsr --vip 198.18.100.1 --vip fd00:100::1
    lbd-backend check   --mode ipip --vip 198.18.100.1 [--port 80]
    lbd-backend metrics [--textfile /var/lib/prometheus/node-exporter/lbd_backend.prom]
    lbd-backend undo

On a native program, `check` also reads what the interface's driver did with
the frames the program sent back out (XDP_TX; lbd.dataplane.xdpstats): a veth whose
other end takes no XDP frames loses them while the program counts them as
forwarded, and check says so.

The command's modules: this one (the commands and their output),
lbd.backend.host (sysctls, the VIPs on lo, prefixes; the IFA_PROTO that
lets `undo` remove only what prepare added) and lbd.backend.decap (build,
load, pin with --pin-dir, attach and read the backend program). `undo`
leaves sysctls as they are, and `undo --vip` leaves the program and its pins
while another VIP prepare added is still on lo (see undo()).
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import time
from dataclasses import dataclass

from lbd.backend import forwardto
from lbd.backend.decap import (DECAP_FUNCTION, attach_decap, counter_summary, decap_source_hash,
                               decap_state, require_bpffs, write_forward_to, xdp_state)
from lbd.backend.host import (LBD_ADDR_PROTO, IPAddress, PrepError, add_vip, conf, default_interface,
                              effective_conf, interface_prefixes, iproute, link_index, lo_up,
                              loopback_addresses, read_sysctl, remove_vip, tcp_listeners, write_sysctl)
from lbd.dataplane import xdplink, xdpstats

XDP_TX_WATCH_SECONDS = 1.0


# --- the three commands --------------------------------------------------------
def prepare(mode: str, vips: list[IPAddress], ifname: str, xdp_mode: str = "auto",
            pin_dir: str | None = None, forward_to: list | None = None) -> list[str]:
    """Make the host ready; returns one line per change made (none when already ready).
    forward_to: where second-chance packets may go on to (lbd.backend.forwardto; None:
    the interface's own prefixes)."""
    done: list[str] = []
    on_lo = loopback_addresses()
    for vip in vips:
        if vip.version == 6 and read_sysctl("net.ipv6.conf.lo.disable_ipv6"):
            write_sysctl("net.ipv6.conf.lo.disable_ipv6", 0)
            done.append("enabled IPv6 on lo")
        if vip not in on_lo:
            add_vip(vip)
            done.append(f"added {vip}/{vip.max_prefixlen} to lo")
    if not lo_up():
        with iproute() as ipr:
            ipr.link("set", index=link_index(ipr, "lo"), state="up")
        done.append("set lo up")
    # ARP and rp_filter are IPv4 knobs; they are harmless on an IPv6-only backend
    if effective_conf(ifname, "arp_ignore") == 0:
        write_sysctl(conf("ipv4", "all", "arp_ignore"), 1)
        done.append("net.ipv4.conf.all.arp_ignore=1 (answer ARP only for addresses "
                    "on the asked interface, never for VIPs on lo)")
    if effective_conf(ifname, "arp_announce") < 2:
        write_sysctl(conf("ipv4", "all", "arp_announce"), 2)
        done.append("net.ipv4.conf.all.arp_announce=2 (never use a VIP as ARP source)")
    for device in ("all", ifname):
        if read_sysctl(conf("ipv4", device, "rp_filter")) == 1:
            write_sysctl(conf("ipv4", device, "rp_filter"), 2)
            done.append(f"{conf('ipv4', device, 'rp_filter')}=2 (loose)")
    if mode == "ipip":
        state = xdp_state(ifname)
        if state and state.name != DECAP_FUNCTION:
            raise PrepError(f"{ifname} already runs XDP program {state.name!r} (id "
                            f"{state.prog_id}); detach it first (`ip link set {ifname} "
                            f"xdp off`) or pick another --interface")
        wanted = interface_prefixes(ifname) if forward_to is None else forward_to
        if state is None:
            used = attach_decap(ifname, xdp_mode, wanted, pin_dir)
            done.append(f"attached {DECAP_FUNCTION} to {ifname} (xdp mode {used}); it sends "
                        f"second-chance packets on to {forwardto.describe(wanted)}")
        else:
            old = decap_state(ifname)
            if old is not None and not old.current:
                # in the mode it runs in: the kernel refuses native beside generic
                how = old.mode if old.mode in xdplink.MODE_FLAGS else xdp_mode
                used = attach_decap(ifname, how, wanted, pin_dir)
                done.append(f"replaced {DECAP_FUNCTION} on {ifname} ({old.build_text()}) with "
                            f"build {decap_source_hash()} (xdp mode {used}); it sends "
                            f"second-chance packets on to {forwardto.describe(wanted)}")
            elif old is not None and old.forward_to != wanted:
                write_forward_to(old.prog_id, wanted)
                done.append(f"{DECAP_FUNCTION} on {ifname} now sends second-chance packets on "
                            f"to {forwardto.describe(wanted)} (was {forwardto.describe(old.forward_to)})")
    return done


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""

    def line(self) -> str:
        return f"ok       {self.what}" if self.ok else f"PROBLEM  {self.what}: {self.fix}"


def check(mode: str, vips: list[IPAddress], ifname: str, ports: list[int] = (),
          watch: float = XDP_TX_WATCH_SECONDS) -> list[Finding]:
    """Diagnose without changing anything; watch: seconds to watch an interface
    that lost XDP_TX frames before (_xdp_tx_finding)."""
    findings: list[Finding] = []
    again = f"run `lbd-backend prepare --mode {mode} " + \
        " ".join(f"--vip {v}" for v in vips) + f" --interface {ifname}`"
    on_lo = loopback_addresses()
    for vip in vips:
        if vip in on_lo:
            findings.append(Finding(True, f"VIP {vip} is on lo"))
        else:
            findings.append(Finding(False, f"VIP {vip} is not on lo",
                                    f"{again}, or `ip addr add {vip}/{vip.max_prefixlen} dev lo`"))
    if not lo_up():
        findings.append(Finding(False, "lo is down", "`ip link set lo up`"))
    if any(v.version == 6 for v in vips) and read_sysctl("net.ipv6.conf.lo.disable_ipv6"):
        findings.append(Finding(False, "IPv6 is disabled on lo",
                                "`sysctl -w net.ipv6.conf.lo.disable_ipv6=0`"))
    ignore = effective_conf(ifname, "arp_ignore")
    findings.append(Finding(ignore != 0, f"arp_ignore is {ignore} on {ifname}",
                            "the host answers ARP for the VIPs on lo and steals their "
                            "traffic: `sysctl -w net.ipv4.conf.all.arp_ignore=1`"))
    announce = effective_conf(ifname, "arp_announce")
    findings.append(Finding(announce >= 2, f"arp_announce is {announce} on {ifname}",
                            "ARP requests may carry a VIP as sender: "
                            "`sysctl -w net.ipv4.conf.all.arp_announce=2`"))
    rp = effective_conf(ifname, "rp_filter")
    findings.append(Finding(rp != 1, f"rp_filter is {rp} on {ifname}" + (" (strict)" if rp == 1 else ""),
                            f"strict reverse-path filtering drops client packets whose route "
                            f"back leaves by another interface: `sysctl -w "
                            f"{conf('ipv4', 'all', 'rp_filter')}=2 "
                            f"{conf('ipv4', ifname, 'rp_filter')}=2`"))
    if mode == "ipip":
        state = xdp_state(ifname)
        if state is None:
            findings.append(Finding(False, f"no XDP program on {ifname}",
                                    f"IP-in-IP packets from lbd are not decapsulated: {again}"))
        elif state.name != DECAP_FUNCTION:
            findings.append(Finding(False, f"{ifname} runs XDP program {state.name!r}, not "
                                    f"{DECAP_FUNCTION}", f"detach it, then {again}"))
        else:
            findings += _decap_findings(ifname, again, watch)
    for port in ports:
        listening = tcp_listeners(port)
        for vip in vips:
            # a [::] socket also takes IPv4 unless it is v6only, which /proc does not show
            served = vip in listening or ipaddress.ip_address("::") in listening or (
                vip.version == 4 and ipaddress.ip_address("0.0.0.0") in listening)
            findings.append(Finding(served, f"TCP port {port} on {vip} has "
                                    f"{'a' if served else 'no'} listener",
                                    "start the service bound to 0.0.0.0/[::] or to the VIP"))
    return findings


def _decap_findings(ifname: str, again: str, watch: float) -> list[Finding]:
    decap = decap_state(ifname)
    if decap is None:   # detached between the two looks
        return [Finding(False, f"no {DECAP_FUNCTION} on {ifname}", again)]
    what = (f"{DECAP_FUNCTION} attached to {ifname} (xdp mode {decap.mode}, id "
            f"{decap.prog_id}, {decap.build_text()})")
    found = [Finding(True, what) if decap.current else
             Finding(False, what, f"it predates this lbd (no second-chance forwarding, or "
                                  f"another one): {again} replaces it atomically")]
    if decap.forward_to is not None:
        where = f"{DECAP_FUNCTION} sends second-chance packets on to {forwardto.describe(decap.forward_to)}"
        found.append(Finding(True, where) if decap.forward_to else
                     Finding(False, where, f"no second choice gets a packet from here: {again} "
                                           f"with --forward-to CIDR (the other backends' networks)"))
    if decap.counters is not None:
        found.append(Finding(True, f"{DECAP_FUNCTION} counters: {counter_summary(decap.counters)}"))
    if decap.mode == "native" and decap.xdp_tx is not None:
        found.append(_xdp_tx_finding(ifname, decap.xdp_tx, watch))
    return found


def _xdp_tx_finding(ifname: str, first: xdpstats.XdpTx, watch: float) -> Finding:
    """Whether the frames lbd_decap sends back out of ifname (XDP_TX: second-chance
    packets to a second choice reached through the interface they came in on) leave it.

    The driver's counters count since the interface was made, so a loss
    fixed since stays in them. An interface that lost frames is watched for
    `watch` seconds: a new loss is a problem; so is a loss with not one
    frame ever sent (nothing shows it was fixed; a fix clears it with the
    next frame that leaves). Lost frames with others sent and none lost while
    watched are reported, not judged: the rate of
    lbd_backend_xdp_tx_frames_total{result="lost"} (and its alert) tells
    whether it goes on; so does a longer --watch while second-chance traffic flows."""
    sent_out = f"frames {DECAP_FUNCTION} sent back out (XDP_TX: second-chance packets it forwarded)"
    if first.lost == 0:
        return Finding(True, f"{ifname} lost none of the {first.sent} {sent_out}")
    time.sleep(watch)
    later = xdpstats.xdp_tx(ifname) or first
    lost, sent = later.lost - first.lost, later.sent - first.sent
    if not lost and later.sent:
        return Finding(True, f"{ifname} lost {later.lost} {sent_out} earlier and sent {later.sent}; "
                             f"none lost in the last {watch:g} s")
    if later.peer_ifindex is not None:
        why = (f"{ifname} is a veth whose other end (ifindex {later.peer_ifindex} in its namespace: "
               f"the host's side of a container's or VM's veth) takes no XDP frames, so the "
               f"second-chance packets it forwards vanish and their flows are reset: attach an XDP "
               f"program to that end (an XDP_PASS one is enough) or turn GRO on there (`ethtool -K "
               f"PEER gro on`), or run {DECAP_FUNCTION} in generic mode (`ip link set dev {ifname} "
               f"xdp off`, then lbd-backend prepare with --xdp-mode generic)")
    else:
        why = (f"the driver drops them (see `ethtool -S {ifname}`), so the second-chance packets "
               f"it forwards vanish and their flows are reset: run {DECAP_FUNCTION} in generic "
               f"mode (`ip link set dev {ifname} xdp off`, then lbd-backend prepare with "
               f"--xdp-mode generic) or see the driver's XDP support")
    if lost:
        return Finding(False, f"{ifname} lost {lost} of the {lost + sent} {sent_out} in the last "
                              f"{watch:g} s ({later.lost} lost, {later.sent} sent in all)", why)
    return Finding(False, f"{ifname} lost all {later.lost} {sent_out}; none left", why +
                   " (a fix made since shows once a frame leaves)")


def undo(vips: list[IPAddress] | None = None, pin_dir: str | None = None) -> list[str]:
    """Remove the VIPs prepare put on lo (all, or only `vips`); with the last
    of them, any lbd_decap program and its pins. Sysctls stay.

    Which VIPs remain is read from the host, not from a record of earlier
    prepares: lo's addresses that carry prepare's IFA_PROTO (LBD_ADDR_PROTO)
    after the removal. While one remains, everything prepare set up for the
    VIPs together stays (the program on every interface, with its forward
    list, and its pins), since which interface and mode each VIP needs is
    recorded nowhere; a VIP added to lo by hand (no IFA_PROTO) counts for
    nothing, as prepare did not put it there."""
    done: list[str] = []
    for address, proto in loopback_addresses().items():
        if proto == LBD_ADDR_PROTO and (vips is None or address in vips):
            remove_vip(address)
            done.append(f"removed {address}/{address.max_prefixlen} from lo")
    if done:
        done.append("sysctls (arp_ignore, arp_announce, rp_filter) stay as they are: undo never "
                    "changes them, since other services may rely on them")
    remaining = sorted((a for a, proto in loopback_addresses().items() if proto == LBD_ADDR_PROTO),
                       key=lambda a: (a.version, a))
    with iproute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    attached = [ifname for ifname in names
                if (state := xdp_state(ifname)) and state.name == DECAP_FUNCTION]
    pins = sorted(os.path.join(pin_dir, name) for name in os.listdir(pin_dir)
                  if name.startswith(DECAP_FUNCTION + "-")) if pin_dir and os.path.isdir(pin_dir) else []
    if remaining:
        why = (f"{', '.join(map(str, remaining))} (added by lbd-backend prepare) "
               f"{'is' if len(remaining) == 1 else 'are'} still on lo and may need it; "
               f"undo {'it' if len(remaining) == 1 else 'them'} too to remove it")
        done += [f"kept {DECAP_FUNCTION} on {ifname} and its forward list: {why}" for ifname in attached]
        done += [f"kept {pin}: {why}" for pin in pins]
        return done
    for ifname in attached:
        xdplink.detach(ifname)
        done.append(f"detached {DECAP_FUNCTION} from {ifname}")
    for pin in pins:
        os.unlink(pin)
        done.append(f"unpinned {pin}")
    return done


# --- command line --------------------------------------------------------------
def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds <= 3600:
        raise argparse.ArgumentTypeError(f"{value!r}: seconds from 0 to 3600")
    return seconds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lbd-backend", description="Prepare, check or undo a backend host for lbd.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("prepare", "put VIPs on lo, suppress ARP, loosen rp_filter, "
                                   "attach the decap program (ipip); idempotent"),
                       ("check", "diagnose without changing anything; exit 1 on a problem")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--mode", choices=("dsr", "ipip"), required=True)
        cmd.add_argument("--vip", action="append", required=True, type=ipaddress.ip_address,
                         help="a VIP this backend serves (repeatable)")
        cmd.add_argument("--interface", help="where lbd's packets arrive "
                                             "(default: the default route's interface)")
        if name == "prepare":
            cmd.add_argument("--xdp-mode", choices=("auto", "native", "generic"), default="auto",
                             help="decap attach mode (auto: native, else generic)")
            cmd.add_argument("--pin-dir", help="bpffs directory where the decap program is "
                                               "pinned and reused from (skips compiling)")
            cmd.add_argument("--forward-to", action="append", metavar="CIDR",
                             help="where the decap program may send a second-chance packet on "
                                  "(repeatable; `any` for everywhere; default: the interface's "
                                  "own prefixes)")
        else:
            cmd.add_argument("--port", action="append", type=int, default=[],
                             help="also check a TCP listener serves the VIPs on this port")
            cmd.add_argument("--watch", type=_seconds, default=XDP_TX_WATCH_SECONDS, metavar="SECONDS",
                             help="ipip: how long to watch an interface that lost frames the "
                                  "program sent back out (XDP_TX) before, for new losses "
                                  f"(default {XDP_TX_WATCH_SECONDS:g})")
            quic = cmd.add_argument_group("QUIC VIPs (docs/quic.md)")
            quic.add_argument("--quic", action="store_true",
                              help="also check the QUIC server on each VIP issues CIDs carrying --server-id")
            quic.add_argument("--quic-port", type=int, default=443)
            quic.add_argument("--config-id", type=int, default=0, help="the VIP's quic.config_id")
            quic.add_argument("--server-id", default="", help="this backend's server_id (hex)")
            quic.add_argument("--nonce-length", type=int, default=4, help="the VIP's quic.nonce_length")
    cmd = sub.add_parser("metrics", help="the decap program's counters as Prometheus text",
                         description="Print the decap program's counters as Prometheus text, "
                                     "or write them atomically to a file for node_exporter's "
                                     "textfile collector.")
    cmd.add_argument("--interface", action="append",
                     help="where the program runs (repeatable; default: the default route's "
                          "interface)")
    cmd.add_argument("--textfile", metavar="PATH",
                     help="write here (e.g. /var/lib/prometheus/node-exporter/lbd-backend.prom) "
                          "instead of stdout")
    cmd = sub.add_parser("undo", help="remove the VIPs prepare added; the decap program and its "
                                      "pins go with the last of them")
    cmd.add_argument("--vip", action="append", type=ipaddress.ip_address,
                     help="only these VIPs (default: every one prepare added); while other VIPs "
                          "prepare added stay on lo, the decap program and its pins stay too")
    cmd.add_argument("--pin-dir", help="also remove the decap pins in this directory")
    return parser


def _metrics(interfaces: list[str], textfile: str | None) -> int:
    from lbd.backend import metrics as backend_metrics

    with iproute() as ipr:
        for ifname in interfaces:
            link_index(ipr, ifname)
    states = {ifname: decap_state(ifname) for ifname in interfaces}
    if textfile:
        backend_metrics.write(textfile, states, decap_source_hash())
    else:
        sys.stdout.write(backend_metrics.text(states, decap_source_hash()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "undo":
            for line in undo(args.vip, args.pin_dir) or ["nothing to undo"]:
                print(line)
            return 0
        if args.command == "metrics":
            return _metrics(args.interface or [default_interface()], args.textfile)
        ifname = args.interface or default_interface()
        with iproute() as ipr:
            link_index(ipr, ifname)      # a missing interface is named, not a traceback
        if args.command == "prepare":
            if args.mode == "ipip" and args.pin_dir:
                require_bpffs(args.pin_dir)   # before changing anything
            forward_to = None if args.forward_to is None else forwardto.parse(args.forward_to)
            changes = prepare(args.mode, args.vip, ifname, args.xdp_mode, args.pin_dir, forward_to)
            for line in changes or ["already prepared"]:
                print(line)
            if args.mode == "ipip":
                state = decap_state(ifname)
                print(f"decap: {DECAP_FUNCTION} on {ifname}, xdp mode {state.mode}, "
                      f"{state.build_text()}")
            return 0
        findings = check(args.mode, args.vip, ifname, args.port, args.watch)
        for finding in findings:
            print(finding.line())
        quic_ok = True
        if args.quic:
            from lbd.backend import quiccheck
            from lbd.dataplane.quiclb import CidFormat

            server_id = bytes.fromhex(args.server_id)
            cid_format = CidFormat(args.config_id, len(server_id), args.nonce_length)
            for vip in args.vip:
                result = quiccheck.check_quic(str(vip), args.quic_port, cid_format, server_id)
                quic_ok &= result.ok
                print("\n".join(quiccheck.report(result, cid_format, server_id)))
        return 0 if all(f.ok for f in findings) and quic_ok else 1
    except (PrepError, OSError, ValueError) as err:
        print(f"lbd-backend: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
