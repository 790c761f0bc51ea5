"""Load lbd's YAML config into immutable objects, or say exactly what is wrong.

Every problem names the file, the line, the field and the bad value, and all
of them are reported at once:

    configs/x.yaml:12: vips[2].backends[0].weight: must be 0..65535, got 70000

pydantic checks each field; the loader then checks what spans fields (address
families, duplicates, limits) and maps every problem back to its YAML line
through the composed node tree. `lbd check FILE...` (lbd.cli) runs the same
code without touching a running daemon.

Length (over 450 lines, on purpose): the whole schema is in one place, so a
reader sees every key beside its default, its validation and its error
message, and the checks that span fields read the same models.
"""
from __future__ import annotations

import functools
import json
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Annotated, Any, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, PlainValidator, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from lbd.dataplane.layout import constant
from lbd.dataplane.maglev import is_prime
from lbd.yamlbounds import BoundedLoader, YamlTooBig, read_bounded
from lbd.yamlbounds import safe_load as bounded_safe_load

IPAddress = IPv4Address | IPv6Address

# Settings that size maps or pick what the program is attached to: changing
# one needs the program reloaded, so the daemon refuses it on a config reload.
# The `protocol:` values and their IP protocol numbers (what the program's keys hold).
PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP}

BOOT_ONLY = (
    "interfaces",
    "bpffs",
    "limits.max_vips",
    "limits.max_backends",
    "limits.ring_size",
    "limits.conntrack_size",
    "limits.conntrack_udp_size",
)


# ---------------------------------------------------------------------------
# Field checks. Each raises PydanticCustomError with the words an operator
# reads after the field's path; the loader appends ", got <value>".

def _fail(expected: str) -> PydanticCustomError:
    return PydanticCustomError("lbd", expected)


def _int_in(lo: int, hi: int, note: str = "") -> PlainValidator:
    def check(value: Any) -> int:
        # bool is an int in Python; `port: yes` is a mistake, not 1.
        if isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi:
            return value
        raise _fail(f"must be {lo}..{hi}{note}")
    return PlainValidator(check)


def _one_of(*choices: str) -> PlainValidator:
    def check(value: Any) -> str:
        if isinstance(value, str) and value in choices:
            return value
        raise _fail("must be one of: " + ", ".join(choices))
    return PlainValidator(check)


def _text(value: Any) -> str:
    if isinstance(value, str) and value.strip():
        return value
    raise _fail("must be non-empty text")


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _fail("must be true or false")


def _rooted(what: str) -> PlainValidator:
    def check(value: Any) -> str:
        if isinstance(value, str) and value.startswith("/"):
            return value
        raise _fail(f"must be {what} starting with /")
    return PlainValidator(check)


def _group(value: Any) -> str | None:
    return None if value is None else _text(value)


def _ifname(value: Any) -> str:
    # The kernel's own rule (dev_valid_name): 1..15 bytes, no '/', ':' or space.
    if isinstance(value, str) and re.fullmatch(r"[^/:\s]{1,15}", value) and value not in (".", ".."):
        return value
    raise _fail("must be a network interface name (1..15 characters, no '/', ':' or spaces)")


def _unicast(value: Any) -> IPAddress:
    try:
        addr = ip_address(value) if isinstance(value, str) else None
    except ValueError:
        addr = None
    if addr is None or addr.is_unspecified or addr.is_multicast:
        raise _fail("must be a unicast IPv4 or IPv6 address")
    return addr


def _source(version: int) -> Callable[[Any], IPAddress | None]:
    def check(value: Any) -> IPAddress | None:
        if value is None:
            return None
        try:
            addr = _unicast(value)
        except PydanticCustomError:
            addr = None
        if addr is None or addr.version != version:
            raise _fail(f"must be a unicast IPv{version} address")
        return addr
    return check


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0}


def _duration(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value.strip())):
        seconds = float(match.group(1)) * _UNIT_S[match.group(2)]
    else:
        seconds = 0.0
    if seconds > 0:
        return seconds
    raise _fail('must be a duration above zero such as "500ms", "1s", "1.5s", "2m", or a number of seconds')


def _listen(value: Any) -> tuple[str, int]:
    # host:port with an IP literal host; IPv6 in brackets as in URLs.
    match = re.fullmatch(r"\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+)", value) if isinstance(value, str) else None
    if match:
        host, port = (match.group(1), match.group(2)) if match.group(1) else (match.group(3), match.group(4))
        try:
            addr = ip_address(host)
        except ValueError:
            addr = None
        if addr and (addr.version == 6) == bool(match.group(1)) and 1 <= int(port) <= 65535:
            return str(addr), int(port)
    raise _fail('must be IP:port such as "127.0.0.1:9100", or "[::1]:9100" for IPv6 (quoted)')


def _ring_size(value: Any) -> int:
    # Maglev fills a VIP's table by stepping through it with a per-backend
    # stride; only a prime size makes every stride visit every slot.
    if isinstance(value, int) and not isinstance(value, bool) and 101 <= value <= 1 << 24 and is_prime(value):
        return value
    raise _fail(f"must be a prime number 101..{1 << 24} such as 65537 (Maglev needs a prime table size)")


def _community(value: Any) -> tuple[int, ...]:
    # BGP communities as operators write them: "65001:100" (standard, two
    # 16-bit halves) or "65001:1:2" (large, RFC 8092, three 32-bit parts).
    parts = value.split(":") if isinstance(value, str) else []
    if len(parts) in (2, 3) and all(p.isdigit() for p in parts):
        numbers = tuple(int(p) for p in parts)
        if all(n <= (0xFFFF if len(parts) == 2 else 0xFFFFFFFF) for n in numbers):
            return numbers
    raise _fail('must be a BGP community "ASN:VALUE" (each 0..65535) or a large community '
                '"ASN:X:Y" (each 0..4294967295), quoted')


def _password(value: Any) -> str | None:
    # BIRD reads it inside double quotes: printable ASCII without " or \
    if value is None or (isinstance(value, str) and re.fullmatch(r'[ !#-\[\]-~]{1,80}', value)):
        return value
    raise _fail('must be 1..80 printable ASCII characters without " or \\')


def _hold_time(value: Any) -> int:
    # RFC 4271: 0 (no keepalives) or at least 3 seconds
    if isinstance(value, int) and not isinstance(value, bool) and (value == 0 or 3 <= value <= 65535):
        return value
    raise _fail("must be 0 or 3..65535 (seconds; RFC 4271)")


Port = Annotated[int, _int_in(0, 65535, " (0 = every port)")]
CheckPort = Annotated[int, _int_in(1, 65535)]
Address = Annotated[IPAddress, PlainValidator(_unicast)]
Duration = Annotated[float, PlainValidator(_duration)]


# ---------------------------------------------------------------------------
# The objects the daemon uses. Frozen, hence hashable and comparable, so a
# reload can diff old and new with == and sets.

class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Interface(_Model):
    name: Annotated[str, PlainValidator(_ifname)]
    # native fails loudly on a driver without XDP support; auto falls back
    # to generic (slower) and the daemon reports which one it got.
    mode: Annotated[str, _one_of("native", "generic", "auto")] = "native"


class Limits(_Model):
    """Map sizes. Defaults are the header's, so the program needs no -D."""
    max_vips: Annotated[int, _int_in(2, 65536)] = constant("LBD_MAX_VIPS")  # vip_id is 16 bits
    max_backends: Annotated[int, _int_in(2, 1 << 24)] = constant("LBD_MAX_BACKENDS")
    ring_size: Annotated[int, PlainValidator(_ring_size)] = constant("LBD_RING_SIZE")
    conntrack_size: Annotated[int, _int_in(1024, 1 << 30)] = constant("LBD_CT_SIZE")
    conntrack_udp_size: Annotated[int, _int_in(1024, 1 << 30)] = constant("LBD_CT_UDP_SIZE")


UDP_CHECK_BYTES = 1400


def _check_bytes(value: Any) -> bytes:
    # a udp check's datagram or expected answer: text as UTF-8, or "hex:..."
    # for binary (a DNS query)
    # at most UDP_CHECK_BYTES either way: a check is one small datagram, never a fragmented one
    if isinstance(value, str) and value.startswith("hex:"):
        try:
            data = bytes.fromhex(value[4:])
        except ValueError:
            data = None
        if data is not None and len(data) <= UDP_CHECK_BYTES:
            return data
        raise _fail(f'must be text, or "hex:" and an even number of hex digits (at most {UDP_CHECK_BYTES} '
                    'bytes) such as "hex:0a1b"')
    if isinstance(value, str) and len(value.encode()) <= UDP_CHECK_BYTES:
        return value.encode()
    raise _fail(f'must be text (at most {UDP_CHECK_BYTES} bytes), or "hex:" and hex digits for binary data')


def _host_header(value: Any) -> str:
    # an HTTP Host / TLS server name: printable ASCII, no spaces (RFC 9110 7.2)
    if isinstance(value, str) and re.fullmatch(r"[!-~]{1,255}", value):
        return value
    raise _fail("must be a host name such as www.example.com (printable ASCII, no spaces)")


# The protocol each check type speaks to the backend (lbd.health): tcp, http
# and https connect over TCP, udp sends a datagram. A check of another
# protocol than its VIP's cannot go to the VIP's port (a UDP service does not
# listen on that TCP port, nor a TCP one on that UDP port), so it must name
# its port; a udp check of a udp VIP speaks the VIP's own protocol.
CHECK_PROTOCOLS = {"tcp": "tcp", "http": "tcp", "https": "tcp", "udp": "udp"}


class HealthCheck(_Model):
    type: Annotated[str, _one_of(*CHECK_PROTOCOLS)]
    port: CheckPort | None = None  # the loader fills in the VIP's port
    # vip: to the VIP through the data path (the deciding check), the
    # backend's own address as a second signal; address: only the latter
    # decides (docs/operating.md "Health checks")
    via: Annotated[str, _one_of("vip", "address")] = "vip"
    path: Annotated[str, _rooted("a URL path")] = "/"
    expect_status: Annotated[int, _int_in(100, 599)] = 200
    host: Annotated[str, PlainValidator(_host_header)] | None = None  # http(s) Host header
    sni: Annotated[str, PlainValidator(_host_header)] | None = None  # https server name (default: host)
    verify: Annotated[bool, PlainValidator(_flag)] = False  # https: verify the certificate
    payload: Annotated[bytes, PlainValidator(_check_bytes)] | None = None  # udp: the datagram
    expect: Annotated[bytes, PlainValidator(_check_bytes)] = b""  # udp: bytes the answer contains
    interval_s: Duration = Field(1.0, alias="interval")
    timeout_s: Duration = Field(0.5, alias="timeout")
    rise: Annotated[int, _int_in(1, 100)] = 2
    fall: Annotated[int, _int_in(1, 100)] = 3


def _server_id(value: Any) -> str:
    # hex as operators copy it from a server's config: "c4605e" (no 0x, no
    # separators); kept lower-case so "C4605E" and "c4605e" are one ID
    if isinstance(value, str) and re.fullmatch(r"(?:[0-9a-fA-F]{2}){1,15}", value):
        return value.lower()
    raise _fail('must be 1..15 octets in hex, quoted, such as "c4605e"')


class Backend(_Model):
    address: Address
    weight: Annotated[int, _int_in(0, 65535)] = 100
    drain: Annotated[bool, PlainValidator(_flag)] = False
    # QUIC VIPs: the server ID its QUIC server puts into every connection ID
    # it issues (docs/quic.md); exactly quic.server_id_length octets
    server_id: Annotated[str, PlainValidator(_server_id)] | None = None

    @property
    def effective_weight(self) -> int:
        """Weight in the Maglev table: 0 (out of it) while draining."""
        return 0 if self.drain else self.weight


class Quic(_Model):
    """A UDP VIP's QUIC-LB plaintext CID format (draft-ietf-quic-load-balancers):
    first octet = 3 config-rotation bits, 5 bits length or random; then the
    server ID; then the nonce. docs/quic.md."""
    config_id: Annotated[int, _int_in(0, 6, " (7, 0b111, marks unroutable connection IDs)")]
    server_id_length: Annotated[int, _int_in(1, 15)]
    nonce_length: Annotated[int, _int_in(4, 18, " (the draft's minimum nonce is 4 octets)")]
    # the first octet's low 5 bits carry the CID length minus one (else random)
    self_encode_length: Annotated[bool, PlainValidator(_flag)] = True

    @property
    def cid_length(self) -> int:
        return 1 + self.server_id_length + self.nonce_length


class Vip(_Model):
    name: Annotated[str, PlainValidator(_text)] | None = None  # the loader fills in the default
    address: Address
    port: Port
    protocol: Annotated[str, _one_of("tcp", "udp")]
    mode: Annotated[str, _one_of("dsr", "ipip")]
    affinity: Annotated[str, _one_of("flow", "client")] = "flow"
    health: HealthCheck | None = None
    backends: tuple[Backend, ...] = ()
    # BGP (with a bgp section): announce this VIP at all, and with how many
    # healthy backends at least (default: bgp.min_healthy)
    announce: Annotated[bool, PlainValidator(_flag)] = True
    min_healthy: Annotated[int, _int_in(1, 1 << 24)] | None = None
    # packets name each slot's second choice (GUE), for backends to hand a
    # flow they do not have to the one that may: ipip TCP only, where it is
    # the default (the loader fills it in)
    second_chance: Annotated[bool, PlainValidator(_flag)] | None = None
    # UDP: route QUIC by the server ID in its connection IDs (docs/quic.md)
    quic: Quic | None = None

    @property
    def key(self) -> tuple[IPAddress, int, str]:
        return (self.address, self.port, self.protocol)

    @property
    def proto_number(self) -> int:
        return PROTOCOLS[self.protocol]

    def default_name(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return f"{host}:{self.port}/{self.protocol}"


class _Http(_Model):
    listen: Annotated[tuple[str, int], PlainValidator(_listen)] = ("127.0.0.1", 9100)


class _Control(_Model):
    socket: Annotated[str, _rooted("an absolute path")] = "/run/lbd/lbd.sock"
    group: Annotated[str | None, PlainValidator(_group)] = None


class _SecondChance(_Model):
    # how long a backend that went down, or was removed from its VIP, stays
    # a second choice (its connections may live on): docs/second-chance.md
    hold_s: Duration = Field(120.0, alias="hold")


class _Ipip(_Model):
    source_v4: Annotated[IPv4Address | None, PlainValidator(_source(4))] = None
    source_v6: Annotated[IPv6Address | None, PlainValidator(_source(6))] = None


ASN = Annotated[int, _int_in(1, 4294967295)]


class BgpPeer(_Model):
    """A router this host announces its VIPs to; an IPv4 peer carries the
    IPv4 VIPs, an IPv6 peer the IPv6 ones."""
    address: Address
    asn: ASN = Field(alias="as")
    hold_time: Annotated[int, PlainValidator(_hold_time)] = 9
    password: Annotated[str | None, PlainValidator(_password)] = None
    multihop: Annotated[int, _int_in(1, 255)] | None = None  # TTL; default: a direct neighbour
    bfd: Annotated[bool, PlainValidator(_flag)] = False


class Bgp(_Model):
    local_as: ASN
    router_id: Annotated[IPv4Address, PlainValidator(_source(4))]
    peers: tuple[BgpPeer, ...]
    min_healthy: Annotated[int, _int_in(1, 1 << 24)] = 1
    communities: tuple[Annotated[tuple[int, ...], PlainValidator(_community)], ...] = ()
    med: Annotated[int, _int_in(0, 4294967295)] | None = None
    maintenance_file: Annotated[str, _rooted("an absolute path")] = "/var/lib/lbd/maintenance"
    bird_config: Annotated[str, _rooted("an absolute path")] = "/run/lbd-bgp/bird.conf"
    bird_socket: Annotated[str, _rooted("an absolute path")] = "/run/lbd-bgp/bird.ctl"
    withdraw_delay_s: Duration = Field(2.0, alias="withdraw_delay")


@dataclass(frozen=True)
class Config:
    interfaces: tuple[Interface, ...]
    http_listen: tuple[str, int]  # host without brackets, port
    control_socket: str
    control_group: str | None
    bpffs: str
    limits: Limits
    ipip_source_v4: IPv4Address | None
    ipip_source_v6: IPv6Address | None
    vips: tuple[Vip, ...]
    bgp: Bgp | None = None
    second_chance_hold_s: float = 120.0  # second_chance.hold, seconds

    @property
    def backend_count(self) -> int:
        return sum(len(vip.backends) for vip in self.vips)


# The file's top level: each section is validated on its own (and each VIP on
# its own), so that one broken part doesn't hide the checks on the rest.
_SECTIONS: dict[str, Any] = {
    "interfaces": tuple[Interface, ...],
    "http": _Http,
    "control": _Control,
    "bpffs": Annotated[str, _rooted("an absolute path")],
    "limits": Limits,
    "ipip": _Ipip,
    "vips": tuple[Vip, ...],
    "bgp": Bgp,
    "second_chance": _SecondChance,
}
_DEFAULTS = {"http": _Http(), "control": _Control(), "bpffs": "/sys/fs/bpf/lbd",
             "limits": Limits(), "ipip": _Ipip(), "vips": [], "bgp": None,
             "second_chance": _SecondChance()}


# ---------------------------------------------------------------------------
# Problems

@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None  # 1-based; None when the file could not be read
    path: str         # e.g. "vips[2].backends[0].weight"; "" for the whole file
    value: str | None  # the bad value as shown to the operator; None if there is none
    expected: str

    def __str__(self) -> str:
        parts = [self.file if self.line is None else f"{self.file}:{self.line}"]
        if self.path:
            parts.append(self.path)
        parts.append(self.expected if self.value is None else f"{self.expected}, got {self.value}")
        return ": ".join(parts)


class ConfigError(Exception):
    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(map(str, self.problems)))


_NO_VALUE = object()
Loc = tuple[str | int, ...]


def _show(value: Any, width: int = 60) -> str:
    # JSON spells values the way YAML does (true, null, "text"); long ones are
    # cut. The encoder yields its text piece by piece: a value of millions of
    # items (an alias shared many times) is read only as far as is shown.
    text = ""
    for piece in json.JSONEncoder(default=str).iterencode(value):
        text += piece
        if len(text) > width:
            return text[:width - 3] + "..."
    return text


@functools.cache
def _adapter(kind: Any) -> TypeAdapter:
    return TypeAdapter(kind)


def _path(loc: Loc) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _model_in(tp: Any) -> type[BaseModel] | None:
    # Digs through tuple[X, ...], X | None and Annotated[...] to the model.
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return tp
    return next(filter(None, map(_model_in, get_args(tp))), None)


def _allowed_keys(loc: Loc) -> list[str]:
    if len(loc) == 1:
        return list(_SECTIONS)
    model = _model_in(_SECTIONS[loc[0]])
    for part in loc[1:-1]:
        if isinstance(part, str):
            field = next(f for n, f in model.model_fields.items() if (f.alias or n) == part)
            model = _model_in(field.annotation)
    return [f.alias or n for n, f in model.model_fields.items()]


class _Checker:
    """Validates one parsed file and collects its problems with their lines."""

    def __init__(self, filename: str):
        self.filename = filename
        self.root: yaml.Node | None = None
        self.raw: Any = None
        self.problems: list[Problem] = []

    def add(self, loc: Loc, expected: str, value: Any = _NO_VALUE) -> None:
        shown = None if value is _NO_VALUE else _show(value)
        self.problems.append(Problem(self.filename, self.line(loc), _path(loc), shown, expected))

    def line(self, loc: Loc) -> int:
        """Line of the value at loc; of its key when the value spans lines;
        of the nearest enclosing mapping when the key is missing."""
        node, line = self.root, self.root.start_mark.line + 1
        for part in loc:
            child = None
            if isinstance(node, yaml.MappingNode):
                for key, value in node.value:  # the last duplicate wins, as in the loaded data
                    if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                        child, line = value, key.start_mark.line + 1
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                child = node.value[part]
                line = child.start_mark.line + 1
            if child is None:
                return line
            node = child
        return node.start_mark.line + 1 if isinstance(node, yaml.ScalarNode) else line

    def raw_at(self, loc: Loc) -> Any:
        value = self.raw
        for part in loc:
            value = value[part]
        return value

    def duplicate_keys(self, node: yaml.Node, loc: Loc = (), seen: set[int] | None = None) -> None:
        # PyYAML keeps the last of two equal keys without a word: two `vips:`
        # sections would silently lose the first one.
        seen = set() if seen is None else seen
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value != "<<":
                    if key.value in keys:
                        self.problems.append(Problem(self.filename, key.start_mark.line + 1,
                                                     _path(loc + (key.value,)), None,
                                                     "key appears twice in the same mapping"))
                    keys.add(key.value)
                    self.duplicate_keys(value, loc + (key.value,), seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.duplicate_keys(item, loc + (i,), seen)

    def validate(self, kind: Any, value: Any, loc: Loc) -> Any:
        """The validated value, or None after recording its problems."""
        try:
            return _adapter(kind).validate_python(value)
        except ValidationError as err:
            for error in err.errors():
                self.pydantic_problem(loc + tuple(error["loc"]), error)
            return None

    def pydantic_problem(self, loc: Loc, error: Any) -> None:
        kind = error["type"]
        if kind == "missing":
            self.add(loc, "is required")
        elif kind == "extra_forbidden":
            # the value too: every problem names file, line, field and value
            self.add(loc, f"unknown key (allowed here: {', '.join(_allowed_keys(loc))})", error["input"])
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            self.add(loc, "must be a mapping of keys to values", error["input"])
        elif kind in ("tuple_type", "list_type"):
            self.add(loc, "must be a list", error["input"])
        else:
            self.add(loc, error["msg"], error["input"])

    def check(self) -> Config | None:
        raw = self.raw
        if not isinstance(raw, dict):
            self.add((), "the top level must be a mapping of settings (interfaces:, vips:, ...)", raw)
            return None
        for key in raw:
            if key not in _SECTIONS:
                self.add((key,), f"unknown key (allowed here: {', '.join(_SECTIONS)})", raw[key])
        got: dict[str, Any] = {}
        for name, kind in _SECTIONS.items():
            value = raw.get(name)
            if value is None:  # missing, or a section whose body is all commented out
                if name == "interfaces":
                    self.add((name,), "is required: list at least one interface, e.g. [{name: eth0}]")
                got[name] = _DEFAULTS.get(name)
            elif name == "interfaces" and isinstance(value, list):
                got[name] = [self.validate(Interface, v, (name, i)) for i, v in enumerate(value)]
            elif name == "vips" and isinstance(value, list):
                got[name] = [self.validate_vip(v, (name, i)) for i, v in enumerate(value)]
            else:
                got[name] = self.validate(kind, value, (name,))
        interfaces = self.check_interfaces(got["interfaces"])
        vips = self.check_vips(got["vips"] or [], got["ipip"], got["limits"])
        self.check_bgp(got["bgp"], vips)
        if self.problems:
            return None
        return Config(
            interfaces=interfaces, http_listen=got["http"].listen,
            control_socket=got["control"].socket, control_group=got["control"].group,
            bpffs=got["bpffs"], limits=got["limits"],
            ipip_source_v4=got["ipip"].source_v4, ipip_source_v6=got["ipip"].source_v6,
            vips=vips, bgp=got["bgp"], second_chance_hold_s=got["second_chance"].hold_s,
        )

    def validate_vip(self, raw: Any, loc: Loc) -> tuple[Vip | None, list[Backend | None]]:
        """The VIP and its backends, each None if invalid. Backends and the
        health check are validated apart from the rest, so that one bad weight
        doesn't hide the cross-checks on everything else."""
        given = raw.get("backends") if isinstance(raw, dict) else None
        given = [] if given is None else given  # also `backends:` with every entry commented out
        if not isinstance(raw, dict) or not isinstance(given, list):
            return self.validate(Vip, raw, loc), []
        vip = self.validate(Vip, {**raw, "backends": (), "health": None}, loc)
        backends = [self.validate(Backend, b, loc + ("backends", j)) for j, b in enumerate(given)]
        health = raw.get("health")
        health = None if health is None else self.validate(HealthCheck, health, loc + ("health",))
        return (vip and vip.model_copy(update={"health": health})), backends

    def check_interfaces(self, interfaces: list[Interface | None] | None) -> tuple[Interface, ...]:
        if interfaces is None:  # reported already
            return ()
        if not interfaces:
            self.add(("interfaces",), "must list at least one interface", interfaces)
        names: dict[str, int] = {}
        for i, iface in enumerate(interfaces):
            if iface and iface.name in names:
                self.add(("interfaces", i, "name"), f"already listed as interfaces[{names[iface.name]}]",
                         iface.name)
            elif iface:
                names[iface.name] = i
        return tuple(filter(None, interfaces))

    def check_vips(self, vips: list[tuple[Vip | None, list[Backend | None]]], ipip: _Ipip | None,
                   limits: Limits | None) -> tuple[Vip, ...]:
        done: list[Vip] = []
        keys: dict[tuple, int] = {}
        names: dict[str, int] = {}
        for i, (vip, backends) in enumerate(vips):
            if vip is None:  # its own problems are reported already
                continue
            vip = self.check_vip(("vips", i), vip, backends, ipip)
            if vip.key in keys:
                self.add(("vips", i), f"same address, port and protocol as vips[{keys[vip.key]}]",
                         vip.default_name())
            elif vip.name in names:
                loc = ("vips", i, "name") if "name" in self.raw_at(("vips", i)) else ("vips", i)
                self.add(loc, f"name already used by vips[{names[vip.name]}]", vip.name)
            keys.setdefault(vip.key, i)
            names.setdefault(vip.name, i)
            done.append(vip)
        if limits is not None:
            # Id 0 means "none" in the maps, so ids run 1..max-1.
            if len(vips) > limits.max_vips - 1:
                self.add(("vips",), f"at most {limits.max_vips - 1} VIPs fit (limits.max_vips - 1)",
                         len(vips))
            total = sum(len(backends) for _, backends in vips)
            if total > limits.max_backends - 1:
                self.add(("vips",), f"at most {limits.max_backends - 1} backends in all VIPs fit "
                         "(limits.max_backends - 1)", total)
        return tuple(done)

    def check_bgp(self, bgp: Bgp | None, vips: tuple[Vip, ...]) -> None:
        if bgp is None:
            return
        if not bgp.peers:
            self.add(("bgp", "peers"), "must list at least one peer (address and as)", [])
        seen: dict[IPAddress, int] = {}
        for i, peer in enumerate(bgp.peers):
            if peer.address in seen:
                self.add(("bgp", "peers", i, "address"), f"already listed as bgp.peers[{seen[peer.address]}]",
                         str(peer.address))
            seen.setdefault(peer.address, i)
        families = {peer.address.version for peer in bgp.peers}
        for i, vip in enumerate(vips):
            if bgp.peers and vip.announce and vip.address.version not in families:
                self.add(("vips", i, "address"),
                         f"an announced IPv{vip.address.version} VIP needs an IPv{vip.address.version} "
                         "peer in bgp.peers (or announce: false on this VIP)", str(vip.address))

    def check_vip(self, loc: Loc, vip: Vip, backends: list[Backend | None], ipip: _Ipip | None) -> Vip:
        """The VIP with its defaults filled in, after checking what spans its fields."""
        family = f"IPv{vip.address.version}"
        if vip.mode == "ipip" and ipip is not None:
            key = f"source_v{vip.address.version}"
            if getattr(ipip, key) is None:
                self.add(loc + ("mode",), f"an {family} ipip VIP needs ipip.{key} (the outer source address)",
                         vip.mode)
        seen: dict[IPAddress, int] = {}
        for j, backend in enumerate(backends):
            if backend is None:
                continue
            if backend.address.version != vip.address.version:
                self.add(loc + ("backends", j, "address"),
                         f"must be an {family} address like the VIP's ({vip.address})", str(backend.address))
            elif backend.address in seen:
                self.add(loc + ("backends", j, "address"),
                         f"already a backend of this VIP (backends[{seen[backend.address]}])",
                         str(backend.address))
            seen.setdefault(backend.address, j)
        health = vip.health
        if health is not None:
            hloc = loc + ("health",)
            given = self.raw_at(hloc)
            if health.timeout_s >= health.interval_s:
                self.add(hloc + ("timeout",),
                         f"must be shorter than interval ({given.get('interval', f'{health.interval_s:g}s')})",
                         given.get("timeout", f"{health.timeout_s:g}s"))
            only = {"path": "http, https", "expect_status": "http, https", "host": "http, https",
                    "sni": "https", "verify": "https", "payload": "udp", "expect": "udp"}
            for key in sorted(only.keys() & given.keys()):
                if health.type not in only[key].split(", "):
                    self.add(hloc + (key,), f"only for type: {only[key]}", given[key])
            if health.type == "udp" and health.payload is None:
                self.add(hloc + ("payload",), "is required for type: udp (the datagram to send)")
            if health.port is None:
                speaks = CHECK_PROTOCOLS[health.type]
                if vip.port == 0:
                    self.add(hloc + ("port",), "is required when the VIP's port is 0 (every port)")
                elif speaks != vip.protocol:
                    self.add(hloc + ("port",),
                             f"is required on a {vip.protocol} VIP: a {health.type} check connects over "
                             f"{speaks.upper()}, and the VIP's port {vip.port} is a {vip.protocol.upper()} "
                             f"port; name the backend's {speaks.upper()} port to check")
                else:
                    health = health.model_copy(update={"port": vip.port})
        second_chance = self.check_second_chance(loc, vip)
        self.check_quic(loc, vip, backends)
        return vip.model_copy(update={
            "name": vip.name or vip.default_name(),
            "second_chance": second_chance,
            "health": health,
            "backends": tuple(filter(None, backends)),
        })

    def check_quic(self, loc: Loc, vip: Vip, backends: list[Backend | None]) -> None:
        """A `quic:` section only on a UDP VIP, whose connection IDs fit QUIC's
        20 octets; then every backend has a server ID of the configured length,
        none twice. Without `quic:`, a server_id is a mistake (it would do nothing)."""
        quic = vip.quic
        if quic is None:
            for j, backend in enumerate(backends):
                if backend is not None and backend.server_id is not None:
                    self.add(loc + ("backends", j, "server_id"),
                             "only for a VIP with a quic: section", backend.server_id)
            return
        if vip.protocol != "udp":
            self.add(loc + ("quic",), "only for protocol: udp (QUIC runs over UDP)", vip.protocol)
            return
        if quic.cid_length > 20:
            self.add(loc + ("quic", "nonce_length"),
                     f"1 + server_id_length ({quic.server_id_length}) + nonce_length must be at most 20 "
                     "(RFC 9000's longest connection ID)", quic.nonce_length)
        seen: dict[str, int] = {}
        for j, backend in enumerate(backends):
            if backend is None:
                continue
            where = loc + ("backends", j, "server_id")
            if backend.server_id is None:
                self.add(loc + ("backends", j), f"needs a server_id ({quic.server_id_length} octets in hex): "
                         "the VIP has a quic: section", str(backend.address))
            elif len(backend.server_id) != 2 * quic.server_id_length:
                self.add(where, f"must be exactly quic.server_id_length = {quic.server_id_length} octets "
                         f"({2 * quic.server_id_length} hex digits)", backend.server_id)
            elif backend.server_id in seen:
                self.add(where, f"already the server ID of backends[{seen[backend.server_id]}]",
                         backend.server_id)
            else:
                seen[backend.server_id] = j

    def check_second_chance(self, loc: Loc, vip: Vip) -> bool:
        """The VIP's second_chance: default on for ipip TCP, off otherwise. A
        dsr frame has no room for a second choice, and a UDP flow no
        connection a backend could be asked about: asking for one there is
        an error, not silently ignored."""
        possible = vip.mode == "ipip" and vip.protocol == "tcp"
        if vip.second_chance and not possible:
            why = "mode: dsr has no room for it in the frame" if vip.mode != "ipip" else \
                "protocol: udp has no connection state on the backend to ask"
            self.add(loc + ("second_chance",), f"only for mode: ipip with protocol: tcp ({why})", True)
        return possible if vip.second_chance is None else vip.second_chance and possible


# ---------------------------------------------------------------------------
# Entry points

def parse_config(text: str, filename: str = "<string>") -> Config:
    """The config in text, or ConfigError listing every problem in it."""
    checker = _Checker(filename)
    try:
        # rejects control characters already; bounds size, nesting and aliases (lbd.yamlbounds)
        loader = BoundedLoader(text)
        try:
            checker.root = loader.get_single_node()
            if checker.root is not None:
                checker.duplicate_keys(checker.root)  # before constructing: merge keys (<<) rewrite the tree
                checker.raw = loader.construct_document(checker.root)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise ConfigError([_yaml_problem(err, text, filename)]) from None
    if checker.raw is None:  # no document at all, or only comments or `---`
        raise ConfigError([Problem(filename, 1, "", None, "the file is empty; it needs at least `interfaces:`")])
    config = checker.check()
    if checker.problems:
        raise ConfigError(sorted(checker.problems, key=lambda p: p.line or 0))
    assert config is not None
    return config


# Contexts in which PyYAML's context_mark is where something was opened and
# never closed: the mistake is there, while problem_mark is wherever the
# parser gave up (the next line, or the end of the file).
_UNCLOSED = {"while parsing a flow mapping": "'{'", "while parsing a flow sequence": "'['",
             "while scanning a quoted scalar": "quote"}


def _yaml_problem(err: yaml.YAMLError, text: str, filename: str) -> Problem:
    """A YAML syntax error as a Problem on the line where the mistake is."""
    if isinstance(err, YamlTooBig):  # valid YAML, but more than a config may cost
        return Problem(filename, err.problem_mark.line + 1, _path(err.loc), None, err.problem)
    context, problem = getattr(err, "context", None), getattr(err, "problem", None)
    context_mark, problem_mark = getattr(err, "context_mark", None), getattr(err, "problem_mark", None)
    if context in _UNCLOSED and context_mark is not None:
        line = context_mark.line + 1
        found = f" on line {problem_mark.line + 1}" if problem_mark and problem_mark.line + 1 != line else ""
        what = f"the {_UNCLOSED[context]} opened on this line is not closed ({problem}{found})"
    else:
        # block structure, tabs, stray colons: the parser stops on the bad line itself
        mark = problem_mark or context_mark
        line = mark.line + 1 if mark else text.count("\n", 0, getattr(err, "position", 0)) + 1
        what = ": ".join(filter(None, [context, problem])) or str(err).splitlines()[0]
    return Problem(filename, line, "", None, f"not valid YAML: {what}")


def read_raw(path: str | Path) -> Any:
    """The file's YAML as plain data without validating it, or None if it
    cannot be read or parsed: for tools that need one setting (the control
    socket, the bpffs path) even from a file the daemon would refuse."""
    try:
        return bounded_safe_load(read_bounded(path))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def raw_setting(raw: Any, *keys: str) -> Any:
    """raw[keys[0]][keys[1]]..., or None where a level is missing or not a mapping."""
    for key in keys:
        raw = raw.get(key) if isinstance(raw, dict) else None
    return raw


def load_config(path: str | Path) -> Config:
    """The config in the file at path, or ConfigError listing every problem."""
    try:
        text = read_bounded(path)
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else "not UTF-8 text"
        raise ConfigError([Problem(str(path), None, "", None, f"cannot read: {reason}")]) from None
    except YamlTooBig as err:
        raise ConfigError([_yaml_problem(err, "", str(path))]) from None
    return parse_config(text, str(path))


def boot_only_changes(old: Config, new: Config) -> list[str]:
    """Names (from BOOT_ONLY) of the settings that differ between old and new."""
    def get(config: Config, name: str) -> Any:
        value: Any = config
        for part in name.split("."):
            value = getattr(value, part)
        return value
    return [name for name in BOOT_ONLY if get(old, name) != get(new, name)]
