"""lbd's side of BIRD, the BGP speaker that announces this host's VIPs.

lbd speaks no BGP itself. It owns one file, the whole config BIRD runs with
(bgp.bird_config), renders it from the YAML's bgp section plus the VIPs it
announces right now, and asks BIRD to reread it (`birdc configure`). BIRD
diffs the old and new config: a VIP added to or removed from the static
protocol is announced or withdrawn, and the BGP sessions stay up.

Why a file BIRD keeps, not commands: BIRD holds the announcements, not
lbd. A restart or crash of lbd changes nothing the routers see (the XDP
program keeps forwarding meanwhile), and a restart of BIRD comes back with
exactly what lbd last decided. The first line names the announced prefixes,
so a restarted lbd knows what it had announced. At boot /run is empty and
`lbd bird-config --if-missing` writes a config that announces nothing.
"""
from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

from lbd.config import Bgp

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
MARKER = "# lbd-announced:"
STATIC = {4: "lbd_vips4", 6: "lbd_vips6"}
BIRDC_TIMEOUT_S = 5.0


def render(bgp: Bgp, announced: Iterable[IPAddress], source: str = "") -> str:
    """The complete BIRD config: the VIPs in `announced` go out to every peer
    of their family, with the configured communities and MED."""
    announced = sorted(set(announced), key=lambda a: (a.version, a))
    lines = [f"{MARKER} {' '.join(str(a) for a in announced) or '-'}",
             f"# Written by lbd{f' from {source}' if source else ''}; lbd rewrites it whenever",
             "# what it announces changes: edit lbd's bgp section, not this file.",
             f"router id {bgp.router_id};",
             "log stderr all;",
             "protocol device {}",
             ""]
    for version in (4, 6):
        routes = [f"    route {a}/{a.max_prefixlen} blackhole;" for a in announced if a.version == version]
        # blackhole: never exported to a kernel table (there is no kernel
        # protocol here); it only gives BGP something to announce
        lines += [f"protocol static {STATIC[version]} {{", f"    ipv{version};", *routes, "}", ""]
    actions = [f"bgp_community.add(({a}, {b}));" for a, b in
               (c for c in bgp.communities if len(c) == 2)]
    actions += [f"bgp_large_community.add(({a}, {b}, {c}));" for a, b, c in
                (c for c in bgp.communities if len(c) == 3)]
    if bgp.med is not None:
        actions.append(f"bgp_med = {bgp.med};")
    lines += ["filter lbd_export {",
              f"    if proto = \"{STATIC[4]}\" || proto = \"{STATIC[6]}\" then {{",
              *(f"        {a}" for a in actions),
              "        accept;",
              "    }",
              "    reject;",
              "}", ""]
    if any(peer.bfd for peer in bgp.peers):
        lines += ["protocol bfd {}", ""]
    for peer in bgp.peers:
        version = peer.address.version
        lines += [f"protocol bgp {peer_name(peer.address)} {{",
                  f"    local as {bgp.local_as};",
                  f"    neighbor {peer.address} as {peer.asn};",
                  f"    hold time {peer.hold_time};",
                  *([f"    keepalive time {max(1, peer.hold_time // 3)};"] if peer.hold_time else []),
                  "    connect retry time 1;",
                  "    error wait time 1, 10;",
                  *([f"    multihop {peer.multihop};"] if peer.multihop else []),
                  *([f"    password \"{peer.password}\";"] if peer.password else []),
                  *(["    bfd on;"] if peer.bfd else []),
                  f"    ipv{version} {{ import none; export filter lbd_export; }};",
                  "}", ""]
    return "\n".join(lines)


def peer_name(address: IPAddress) -> str:
    """BIRD's protocol name for a peer: `peer_198_18_0_1`, `peer_fd00__1`."""
    return "peer_" + re.sub(r"[^0-9a-zA-Z]", "_", str(address))


def announced_in(path: str) -> set[IPAddress] | None:
    """The prefixes a config lbd wrote announces (None: no such file)."""
    try:
        with open(path, encoding="utf-8") as f:
            first = f.readline()
    except FileNotFoundError:
        return None
    if not first.startswith(MARKER):
        return set()
    words = first[len(MARKER):].split()
    return {ipaddress.ip_address(w) for w in words if w != "-"}


def write(path: str, text: str) -> bool:
    """Replace the file atomically (BIRD never reads half of it); False if unchanged."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".bird.conf.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o640)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True


def parse_check(bgp: Bgp, announced: Iterable[IPAddress] = (), bird_binary: str = "bird") -> str | None:
    """BIRD's own parser on the config lbd would render announcing
    `announced`: None if it accepts, else its message; "" when BIRD is not
    installed here."""
    if shutil.which(bird_binary) is None:
        return ""
    with tempfile.TemporaryDirectory(prefix="lbd-check-") as tmp:
        path = os.path.join(tmp, "bird.conf")
        with open(path, "w", encoding="utf-8") as f:
            f.write(render(bgp, announced))
        done = subprocess.run([bird_binary, "-p", "-c", path], capture_output=True, text=True,
                              timeout=30, check=False)
    return None if done.returncode == 0 else (done.stderr or done.stdout).strip()


@dataclass(frozen=True)
class Protocol:
    """One line of `birdc show protocols`."""
    name: str
    proto: str
    state: str   # up, down, start, ...
    info: str    # for BGP: Established, Active, Connect, ...

    @property
    def established(self) -> bool:
        return self.state == "up" and self.info.startswith("Established")


class BirdError(Exception):
    """BIRD is not running, not reachable or refused the config."""


class Birdc:
    """birdc on BIRD's control socket (birdc is BIRD's own client: its
    protocol is not ours to speak)."""

    def __init__(self, socket_path: str, birdc: str = "birdc"):
        self.socket_path = socket_path
        self.birdc = birdc

    def _run(self, *command: str) -> str:
        """Blocking (a few ms): the daemon calls it from an executor thread."""
        try:
            done = subprocess.run([self.birdc, "-s", self.socket_path, *command],
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=BIRDC_TIMEOUT_S, check=False)
        except FileNotFoundError as err:
            raise BirdError(f"{self.birdc} not found: install bird2") from err
        except subprocess.TimeoutExpired as err:
            raise BirdError(f"birdc {' '.join(command)}: no answer in {BIRDC_TIMEOUT_S:g}s") from err
        text = done.stdout + done.stderr
        if "Unable to connect" in text:
            raise BirdError(f"BIRD not reachable: {text.strip()}")
        return text   # birdc exits 1 on a refused command too: callers read the text

    def configure(self) -> None:
        """Make BIRD reread its config; BirdError says why it did not."""
        text = self._run("configure")
        if "Reconfigured" not in text and "Reconfiguration in progress" not in text:
            raise BirdError("BIRD refused the config: " + " ".join(
                line for line in text.splitlines() if not line.startswith("BIRD ")).strip())

    def protocols(self) -> list[Protocol]:
        text = self._run("show", "protocols")
        found = []
        for line in text.splitlines():
            fields = line.split(None, 5)
            # Name Proto Table State Since Info; the table column is "---" for BGP
            if len(fields) >= 5 and fields[0] not in ("BIRD", "Name"):
                info = fields[5] if len(fields) > 5 else ""
                found.append(Protocol(fields[0], fields[1], fields[3], info.strip()))
        return found
