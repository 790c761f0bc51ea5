"""lbd.config: every rule rejects a bad file with file, line, path and value;
valid files load into immutable objects; boot-only changes are named."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from ipaddress import ip_address
from pathlib import Path

import pydantic
import pytest

from lbd.dataplane import layout
from tests import yamlbombs
from lbd.cli import check_files
from lbd.config import (
    BOOT_ONLY,
    Config,
    ConfigError,
    Problem,
    boot_only_changes,
    load_config,
    parse_config,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
# lbd configs; the Prometheus alert rules beside them (lbd-alerts*.yaml) are not
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("lbd-alerts"))

GOOD = """\
interfaces:
  - {name: eth0, mode: native}
ipip:
  source_v4: 198.18.0.1
vips:
  - name: web
    address: 198.18.0.10
    port: 443
    protocol: tcp
    mode: dsr
    affinity: client
    health:
      type: http
      port: 8080
      path: /healthz
      interval: 1s
      timeout: 500ms
    backends:
      - {address: 198.18.1.11, weight: 100}
      - {address: 198.18.1.12, weight: 50, drain: true}
  - address: fd00::10
    port: 53
    protocol: udp
    mode: dsr
    backends:
      - {address: "fd00::11"}
"""


def line_of(text: str, snippet: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if snippet in line)


def edit(*old_new: str, text: str = GOOD) -> str:
    """text with each old replaced by the new that follows it (once)."""
    for old, new in zip(old_new[::2], old_new[1::2]):
        assert old in text, old
        text = text.replace(old, new, 1)
    return text


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    lines = str(err.value).splitlines()
    assert len(lines) == len(err.value.problems)
    return lines


def one_problem(tmp_path: Path, text: str, line: int, path: str, *words: str) -> str:
    """The single problem in text, checked to name file, line, path and words."""
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    message = found[0]
    assert message.startswith(f"{tmp_path / 'bad.yaml'}:{line}: {path}: "), message
    for word in words:
        assert word in message, (word, message)
    return message


# ---------------------------------------------------------------------------
# Valid files

def test_good_config_loads():
    config = parse_config(GOOD)
    web, dns = config.vips
    assert config.interfaces[0].name == "eth0" and config.interfaces[0].mode == "native"
    assert web.name == "web" and web.address == ip_address("198.18.0.10")
    assert web.key == (ip_address("198.18.0.10"), 443, "tcp") and web.proto_number == 6
    assert web.affinity == "client" and web.mode == "dsr"
    assert web.health.port == 8080 and web.health.interval_s == 1.0 and web.health.timeout_s == 0.5
    assert [b.effective_weight for b in web.backends] == [100, 0]
    assert dns.name == "[fd00::10]:53/udp" and dns.proto_number == 17 and dns.health is None
    assert config.ipip_source_v4 == ip_address("198.18.0.1") and config.ipip_source_v6 is None


def test_defaults():
    config = parse_config("""\
interfaces: [{name: eth0}]
vips:
  - address: 198.18.0.10
    port: 80
    protocol: tcp
    mode: dsr
    health: {type: tcp}
    backends: [{address: 198.18.1.11}]
""")
    assert config.interfaces[0].mode == "native"
    assert config.http_listen == ("127.0.0.1", 9100)
    assert config.control_socket == "/run/lbd/lbd.sock" and config.control_group is None
    assert config.bpffs == "/sys/fs/bpf/lbd"
    assert config.limits.max_vips == layout.constant("LBD_MAX_VIPS")
    assert config.limits.max_backends == layout.constant("LBD_MAX_BACKENDS")
    assert config.limits.ring_size == layout.constant("LBD_RING_SIZE")
    assert config.limits.conntrack_size == layout.constant("LBD_CT_SIZE")
    vip = config.vips[0]
    assert vip.name == "198.18.0.10:80/tcp" and vip.affinity == "flow"
    assert vip.health.port == 80 and vip.health.path == "/" and vip.health.expect_status == 200
    assert (vip.health.rise, vip.health.fall) == (2, 3)
    assert vip.backends[0].weight == 100 and not vip.backends[0].drain


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    assert load_config(path).vips


def test_shipped_configs_exist():
    assert {p.name for p in CONFIGS} >= {"lbd.yaml", "dsr.yaml", "ipip.yaml", "client-affinity.yaml"}


def test_vip_without_backends_is_allowed():
    config = parse_config(edit("""    backends:
      - {address: "fd00::11"}
""", "    backends: []\n"))
    assert config.vips[1].backends == ()
    assert parse_config(edit('      - {address: "fd00::11"}\n', "")).vips[1].backends == ()


@pytest.mark.parametrize("listen, expected", [
    ("127.0.0.1:9100", ("127.0.0.1", 9100)),
    ('"[::1]:9101"', ("::1", 9101)),
    ("0.0.0.0:80", ("0.0.0.0", 80)),
])
def test_http_listen(listen, expected):
    assert parse_config(GOOD + f"http: {{listen: {listen}}}\n").http_listen == expected


@pytest.mark.parametrize("text, seconds", [("500ms", 0.5), ("1s", 1.0), ("1.5s", 1.5), ("2m", 120.0), ("3", 3.0),
                                           ("2.5", 2.5)])
def test_durations(text, seconds):
    config = parse_config(edit("interval: 1s", f"interval: {text}", "timeout: 500ms", "timeout: 100ms"))
    assert config.vips[0].health.interval_s == seconds


# ---------------------------------------------------------------------------
# One test per rule

@pytest.mark.parametrize("where, old, new, path", [
    ("top", "vips:", "vipz: []\nvips:", "vipz"),
    ("vip", "    affinity: client", "    afinity: client", "vips[0].afinity"),
    ("backend", "weight: 50,", "wieght: 50,", "vips[0].backends[1].wieght"),
    ("health", "      path: /healthz", "      pth: /healthz", "vips[0].health.pth"),
    ("interface", "mode: native}", "mode: native, xdp: yes}", "interfaces[0].xdp"),
])
def test_unknown_key(tmp_path, where, old, new, path):
    text = edit(old, new)
    message = one_problem(tmp_path, text, line_of(text, path.rsplit(".", 1)[-1].split("]")[-1] + ":"),
                          path, "unknown key", "allowed")
    allowed = {"top": "interfaces, http, control, bpffs, limits, ipip, vips",
               "vip": "name, address, port, protocol, mode, affinity, health, backends",
               "backend": "address, weight, drain",
               "health": "type, port, via, path, expect_status, host, sni, verify, payload, expect, interval, "
                             "timeout, rise, fall",
               "interface": "name, mode"}[where]
    assert allowed in message
    shown = {"top": "got []", "vip": 'got "client"', "backend": "got 50", "health": 'got "/healthz"',
             "interface": "got true"}[where]
    assert message.endswith(shown), message


@pytest.mark.parametrize("old, new, path, value", [
    ("address: 198.18.0.10", "address: 198.18.0.300", "vips[0].address", '"198.18.0.300"'),
    ("address: 198.18.0.10", "address: example.com", "vips[0].address", '"example.com"'),
    ("address: 198.18.0.10", "address: 0.0.0.0", "vips[0].address", '"0.0.0.0"'),
    ("address: 198.18.0.10", "address: 224.0.0.1", "vips[0].address", '"224.0.0.1"'),
    ("{address: 198.18.1.11,", "{address: 198.18.1,", "vips[0].backends[0].address", '"198.18.1"'),
    ("source_v4: 198.18.0.1", "source_v4: fd00::1", "ipip.source_v4", '"fd00::1"'),
])
def test_bad_address(tmp_path, old, new, path, value):
    text = edit(old, new)
    one_problem(tmp_path, text, line_of(text, new), path, "unicast", f"got {value}")


def test_backend_family_must_match_vip(tmp_path):
    text = edit('{address: "fd00::11"}', "{address: 198.18.1.20}")
    one_problem(tmp_path, text, line_of(text, "198.18.1.20"), "vips[1].backends[0].address",
                "must be an IPv6 address", 'got "198.18.1.20"')


def test_duplicate_vip(tmp_path):
    text = GOOD + """\
  - address: 198.18.0.10
    port: 443
    protocol: tcp
    mode: ipip
"""
    one_problem(tmp_path, text, line_of(text, "mode: ipip") - 3, "vips[2]",
                "same address, port and protocol as vips[0]", 'got "198.18.0.10:443/tcp"')


def test_same_address_and_port_other_protocol_is_not_a_duplicate():
    parse_config(GOOD + "  - {address: 198.18.0.10, port: 443, protocol: udp, mode: dsr}\n")


def test_duplicate_name(tmp_path):
    text = GOOD + "  - {name: web, address: 198.18.0.11, port: 443, protocol: tcp, mode: dsr}\n"
    one_problem(tmp_path, text, len(text.splitlines()), "vips[2].name", "already used by vips[0]", 'got "web"')


def test_explicit_name_clashing_with_a_default_name(tmp_path):
    text = GOOD + '  - {name: "[fd00::10]:53/udp", address: 198.18.0.11, port: 53, protocol: udp, mode: dsr}\n'
    one_problem(tmp_path, text, len(text.splitlines()), "vips[2].name", "already used by vips[1]")


def test_duplicate_backend(tmp_path):
    text = edit("{address: 198.18.1.12,", "{address: 198.18.1.11,")
    one_problem(tmp_path, text, line_of(text, "weight: 50"), "vips[0].backends[1].address",
                "already a backend of this VIP (backends[0])", 'got "198.18.1.11"')


@pytest.mark.parametrize("weight", ["70000", "-1", "1.5", '"heavy"'])
def test_weight_out_of_range(tmp_path, weight):
    text = edit("weight: 100", f"weight: {weight}")
    one_problem(tmp_path, text, line_of(text, "weight: " + weight), "vips[0].backends[0].weight",
                "must be 0..65535", f"got {weight}")


def test_weight_message_reads_as_documented():
    with pytest.raises(ConfigError) as err:
        parse_config(edit("weight: 100", "weight: 70000"), "configs/x.yaml")
    assert str(err.value) == "configs/x.yaml:19: vips[0].backends[0].weight: must be 0..65535, got 70000"


@pytest.mark.parametrize("old, new, path, expected", [
    ("port: 443", "port: 70000", "vips[0].port", "must be 0..65535"),
    ("port: 443", "port: -1", "vips[0].port", "must be 0..65535"),
    ("port: 443", "port: yes", "vips[0].port", "must be 0..65535"),
    ("port: 8080", "port: 0", "vips[0].health.port", "must be 1..65535"),
    ("port: 8080", "port: 65536", "vips[0].health.port", "must be 1..65535"),
])
def test_port_out_of_range(tmp_path, old, new, path, expected):
    text = edit(old, new)
    shown = new.split(": ")[1].replace("yes", "true")  # YAML 1.1 reads yes as true
    one_problem(tmp_path, text, line_of(text, new), path, expected, f"got {shown}")


@pytest.mark.parametrize("old, new, path, choices", [
    ("protocol: tcp", "protocol: sctp", "vips[0].protocol", "tcp, udp"),
    ("protocol: tcp", "protocol: TCP", "vips[0].protocol", "tcp, udp"),
    ("    mode: dsr", "    mode: nat", "vips[0].mode", "dsr, ipip"),
    ("affinity: client", "affinity: source", "vips[0].affinity", "flow, client"),
    ("type: http", "type: icmp", "vips[0].health.type", "tcp, http"),
    ("mode: native}", "mode: turbo}", "interfaces[0].mode", "native, generic, auto"),
])
def test_bad_enum(tmp_path, old, new, path, choices):
    text = edit(old, new)
    bad = new.split(": ")[1].rstrip("}")
    one_problem(tmp_path, text, line_of(text, new), path, f"must be one of: {choices}", f'got "{bad}"')


@pytest.mark.parametrize("value", ['"fast"', '"1h"', '"-1s"', "0", '"0ms"', '"1 s s"', "true"])
def test_bad_duration(tmp_path, value):
    text = edit("interval: 1s", f"interval: {value}")
    one_problem(tmp_path, text, line_of(text, "interval:"), "vips[0].health.interval",
                "must be a duration", '"500ms"', f"got {value}")


# --- second chance ---------------------------------------------------------------

SECOND = """\
interfaces: [{name: eth0}]
ipip: {source_v4: 198.18.0.1}
vips:
  - {address: 198.18.0.10, port: 443, protocol: tcp, mode: ipip, backends: [{address: 198.18.1.11}]}
  - {address: 198.18.0.10, port: 53, protocol: udp, mode: ipip, backends: [{address: 198.18.1.11}]}
  - {address: 198.18.0.11, port: 443, protocol: tcp, mode: dsr, backends: [{address: 198.18.1.11}]}
"""


def test_second_chance_defaults_on_for_ipip_tcp_only():
    config = parse_config(SECOND)
    assert [vip.second_chance for vip in config.vips] == [True, False, False]
    assert config.second_chance_hold_s == 120.0


def test_second_chance_can_be_turned_off_and_the_hold_set():
    config = parse_config(edit("mode: ipip, backends", "mode: ipip, second_chance: false, backends",
                               text=SECOND + "second_chance: {hold: 5m}\n"))
    assert not config.vips[0].second_chance and config.second_chance_hold_s == 300.0
    assert parse_config(SECOND + "second_chance: {hold: 30s}\n").second_chance_hold_s == 30.0
    assert parse_config(SECOND + "second_chance: {hold: 1.5}\n").second_chance_hold_s == 1.5


@pytest.mark.parametrize("old, vip, why", [
    ("port: 53, protocol: udp, mode: ipip,", 1, "protocol: udp"),
    ("port: 443, protocol: tcp, mode: dsr,", 2, "mode: dsr"),
])
def test_second_chance_on_dsr_or_udp_is_an_error(tmp_path, old, vip, why):
    text = edit(old, old + " second_chance: true,", text=SECOND)
    one_problem(tmp_path, text, line_of(text, "second_chance"), f"vips[{vip}].second_chance",
                "only for mode: ipip with protocol: tcp", why, "got true")


@pytest.mark.parametrize("value", ['"soon"', "0", "-5", "true"])
def test_second_chance_hold_must_be_a_duration(tmp_path, value):
    text = SECOND + f"second_chance:\n  hold: {value}\n"
    one_problem(tmp_path, text, line_of(text, "hold:"), "second_chance.hold", "must be a duration",
                f"got {value}")


def test_second_chance_section_names_its_keys(tmp_path):
    text = SECOND + "second_chance: {hodl: 10s}\n"
    one_problem(tmp_path, text, line_of(text, "hodl"), "second_chance.hodl", "unknown key", "hold")


def test_second_chance_flag_must_be_a_boolean(tmp_path):
    text = edit("mode: ipip, backends", "mode: ipip, second_chance: yes please, backends", text=SECOND)
    one_problem(tmp_path, text, line_of(text, "second_chance"), "vips[0].second_chance",
                "must be true or false")


@pytest.mark.parametrize("timeout", ["1s", "2s", "1000ms"])
def test_timeout_not_below_interval(tmp_path, timeout):
    text = edit("timeout: 500ms", f"timeout: {timeout}")
    one_problem(tmp_path, text, line_of(text, "timeout:"), "vips[0].health.timeout",
                "must be shorter than interval (1s)", f'got "{timeout}"')


def test_default_timeout_not_below_interval(tmp_path):
    text = edit("      timeout: 500ms\n", "", "interval: 1s", "interval: 200ms")
    one_problem(tmp_path, text, line_of(text, "health:"), "vips[0].health.timeout",
                "must be shorter than interval (200ms)")


def test_http_only_settings_on_a_tcp_check(tmp_path):
    text = edit("type: http", "type: tcp")
    one_problem(tmp_path, text, line_of(text, "path: /healthz"), "vips[0].health.path", "only for type: http")


@pytest.mark.parametrize("ring", [65536, 100000, 97, 1, 0])
def test_ring_size_must_be_a_prime_of_at_least_101(tmp_path, ring):
    text = GOOD + f"limits:\n  ring_size: {ring}\n"
    one_problem(tmp_path, text, len(text.splitlines()), "limits.ring_size", "prime", "Maglev", f"got {ring}")


def test_ring_size_prime_is_accepted():
    assert parse_config(GOOD + "limits: {ring_size: 101}\n").limits.ring_size == 101


def test_health_port_required_when_vip_port_is_zero(tmp_path):
    text = edit("port: 443", "port: 0", "      port: 8080\n", "")
    one_problem(tmp_path, text, line_of(text, "health:"), "vips[0].health.port",
                "is required when the VIP's port is 0")
    # with a health port, every-port VIPs are fine
    assert parse_config(edit("port: 443", "port: 0")).vips[0].port == 0


@pytest.mark.parametrize("check", ["tcp", "http", "https"])
def test_health_check_of_a_udp_vip_must_name_its_port(tmp_path, check):
    # issue 19: `protocol: udp, port: 4433, health: {type: tcp}` passed `lbd check`, then
    # TCP-connected to 4433, where a QUIC server does not listen: every backend DOWN
    udp = GOOD.replace("""  - address: fd00::10
    port: 53
    protocol: udp
    mode: dsr
""", f"""  - address: fd00::10
    port: 4433
    protocol: udp
    mode: dsr
    health: {{type: {check}, interval: 2s}}
""")
    assert udp != GOOD
    one_problem(tmp_path, udp, line_of(udp, "health: {type:"), "vips[1].health.port",
                "is required on a udp VIP", f"a {check} check connects over TCP", "port 4433")
    # naming the backend's TCP port makes the check what it says
    named = parse_config(udp.replace("health: {type:", "health: {port: 8443, type:")).vips[1].health
    assert (named.type, named.port) == (check, 8443)


def test_health_check_of_a_tcp_vip_defaults_to_its_port():
    assert parse_config(edit("      port: 8080\n", "")).vips[0].health.port == 443


UDP_VIP = """  - address: fd00::10
    port: 53
    protocol: udp
    mode: dsr
"""


def test_udp_check_of_a_udp_vip_defaults_to_its_port():
    # a udp check speaks the VIP's own protocol: the VIP's port is the one to ask (a DNS VIP)
    text = GOOD.replace(UDP_VIP, UDP_VIP + "    health: {type: udp, payload: 'hex:12340100', expect: 'hex:1234'}\n")
    assert text != GOOD
    health = parse_config(text).vips[1].health
    assert (health.type, health.port) == ("udp", 53)


def test_udp_check_of_a_tcp_vip_must_name_its_port(tmp_path):
    # the VIP's TCP port 443 has no UDP listener behind it
    text = edit("type: http", "type: udp", "      path: /healthz\n", "      payload: ping\n", "      port: 8080\n", "")
    one_problem(tmp_path, text, line_of(text, "health:"), "vips[0].health.port",
                "is required on a tcp VIP", "a udp check connects over UDP", "port 443")
    named = parse_config(text.replace("      payload: ping\n", "      payload: ping\n      port: 5353\n"))
    assert (named.vips[0].health.type, named.vips[0].health.port) == ("udp", 5353)


def test_config_knows_every_check_type_the_checker_runs():
    from lbd.config import CHECK_PROTOCOLS
    from lbd.health import CheckType
    assert set(CHECK_PROTOCOLS) == {t.value for t in CheckType}


@pytest.mark.parametrize("family, vip, backend, key", [
    (4, "198.18.0.20", "198.18.1.20", "source_v4"),
    (6, "fd00::20", "fd00::21", "source_v6"),
])
def test_ipip_vip_needs_its_family_source(tmp_path, family, vip, backend, key):
    text = edit("  source_v4: 198.18.0.1\n", "") + \
        f'  - {{address: "{vip}", port: 80, protocol: tcp, mode: ipip, backends: [{{address: "{backend}"}}]}}\n'
    one_problem(tmp_path, text, len(text.splitlines()), "vips[2].mode", f"ipip.{key}", 'got "ipip"')
    with_source = text.replace("ipip:\n", f"ipip:\n  {key}: {'198.18.0.1' if family == 4 else 'fd00::1'}\n")
    assert parse_config(with_source).vips[2].mode == "ipip"


def test_too_many_vips(tmp_path):
    # ids 1..max_vips-1: id 0 means "no VIP"
    text = GOOD + "limits: {max_vips: 2}\n"
    one_problem(tmp_path, text, line_of(text, "vips:"), "vips", "at most 1 VIPs", "got 2")
    assert len(parse_config(GOOD + "limits: {max_vips: 3}\n").vips) == 2


def test_too_many_backends(tmp_path):
    text = GOOD + "limits: {max_backends: 3}\n"
    one_problem(tmp_path, text, line_of(text, "vips:"), "vips", "at most 2 backends", "got 3")
    assert parse_config(GOOD + "limits: {max_backends: 4}\n").limits.max_backends == 4


@pytest.mark.parametrize("interfaces, expected", [
    ("interfaces: []", "must list at least one interface"),
    ("interfaces:", "is required"),
])
def test_interfaces_empty(tmp_path, interfaces, expected):
    text = edit("interfaces:\n  - {name: eth0, mode: native}", interfaces)
    one_problem(tmp_path, text, 1, "interfaces", expected)


def test_interfaces_missing(tmp_path):
    text = edit("interfaces:\n  - {name: eth0, mode: native}\n", "")
    one_problem(tmp_path, text, 1, "interfaces", "is required")


def test_interface_listed_twice_and_bad_name(tmp_path):
    text = edit("  - {name: eth0, mode: native}", "  - {name: eth0}\n  - {name: eth0}\n  - {name: a/b}")
    found = problems(tmp_path, text)
    assert len(found) == 2
    assert found[0].endswith('interfaces[1].name: already listed as interfaces[0], got "eth0"')
    assert 'interfaces[2].name: must be a network interface name' in found[1]


@pytest.mark.parametrize("listen", ['"localhost:9100"', '"127.0.0.1"', '"::1:9100"', '"[127.0.0.1]:80"',
                                    '"127.0.0.1:0"', '"127.0.0.1:70000"', "9100"])
def test_http_listen_unparseable(tmp_path, listen):
    text = GOOD + f"http:\n  listen: {listen}\n"
    one_problem(tmp_path, text, len(text.splitlines()), "http.listen", "must be IP:port", f"got {listen}")


# Each file has one mistake on the line marked "# <-": the error names that
# line (not the line where the parser happened to give up).
SYNTAX_ERRORS = {
    "unclosed {": ("interfaces: [{name: eth0}]\n"
                   "vips:\n"
                   "  - {name: a, address: 198.18.0.10, port: 80, protocol: tcp  # <-\n"
                   "  - {name: b, address: 198.18.0.11, port: 80, protocol: tcp}\n"
                   "bpffs: /sys/fs/bpf/lbd\n", "'{' opened on this line is not closed"),
    "unclosed { at the end": ("interfaces: [{name: eth0}]\n"
                              "http: {listen: 127.0.0.1:9100  # <-\n", "'{' opened on this line"),
    "unclosed [": ("interfaces: [{name: eth0}  # <-\n"
                   "vips: []\n", "'[' opened on this line is not closed"),
    "unclosed quote": ("interfaces: [{name: eth0}]\n"
                       "bpffs: '/sys/fs/bpf/lbd  # <-\n"
                       "vips: []\n", "quote opened on this line"),
    "bad indentation": ("interfaces:\n"
                        "  - name: eth0\n"
                        " mode: native  # <-\n"
                        "vips: []\n", "expected <block end>"),
    "bad indentation in a VIP": ("interfaces: [{name: eth0}]\n"
                                 "vips:\n"
                                 "  - name: a\n"
                                 "    address: 198.18.0.10\n"
                                 "   port: 80  # <-\n", "expected <block end>"),
    "a tab": ("interfaces: [{name: eth0}]\n"
              "vips:\n"
              "  - address: 198.18.0.10\n"
              "\tport: 80  # <-\n", "'\\t' that cannot start any token"),
    "a stray colon": ("interfaces: [{name: eth0}]\n"
                      "bpffs: /sys/fs: bpf  # <-\n", "mapping values are not allowed here"),
}


@pytest.mark.parametrize("name", SYNTAX_ERRORS)
def test_yaml_syntax_error_names_the_line_of_the_mistake(tmp_path, name):
    text, words = SYNTAX_ERRORS[name]
    line = next(i for i, row in enumerate(text.splitlines(), 1) if row.endswith("# <-"))
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    assert found[0].startswith(f"{tmp_path / 'bad.yaml'}:{line}: not valid YAML: "), found[0]
    assert words in found[0], found[0]


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing but a comment\n", "---\n"])
def test_empty_file(tmp_path, text):
    found = problems(tmp_path, text)
    assert found == [f"{tmp_path / 'bad.yaml'}:1: the file is empty; it needs at least `interfaces:`"]


def test_top_level_not_a_mapping(tmp_path):
    found = problems(tmp_path, "- eth0\n")
    assert found == [f"{tmp_path / 'bad.yaml'}:1: the top level must be a mapping of settings "
                     '(interfaces:, vips:, ...), got ["eth0"]']


def test_duplicate_yaml_key(tmp_path):
    # YAML loaders keep the last of two equal keys silently: say so instead.
    text = edit("    mode: dsr\n", "    mode: dsr\n    mode: ipip\n")
    one_problem(tmp_path, text, line_of(text, "mode: ipip"), "vips[0].mode", "appears twice")


@pytest.mark.parametrize("old, new, path, expected, value", [
    ("interfaces:\n  - {name: eth0, mode: native}\n", "interfaces: eth0\n", "interfaces", "must be a list",
     '"eth0"'),
    ("health:\n      type: http\n      port: 8080\n      path: /healthz\n      interval: 1s\n"
     "      timeout: 500ms\n", "health: yes\n", "vips[0].health", "must be a mapping", "true"),
    ("      - {address: 198.18.1.11, weight: 100}\n      - {address: 198.18.1.12, weight: 50, drain: true}\n",
     "      198.18.1.11\n", "vips[0].backends", "must be a list", '"198.18.1.11"'),
    ("{address: 198.18.1.11, weight: 100}", "198.18.1.11", "vips[0].backends[0]", "must be a mapping",
     '"198.18.1.11"'),
])
def test_wrong_shapes(tmp_path, old, new, path, expected, value):
    text = edit(old, new)
    line = line_of(text, new.split("\n")[0].strip())
    one_problem(tmp_path, text, line, path, expected, f"got {value}")


def test_missing_required_key_points_at_the_enclosing_mapping(tmp_path):
    text = edit("    protocol: udp\n", "")
    one_problem(tmp_path, text, line_of(text, "address: fd00::10"), "vips[1].protocol", "is required")


def test_control_character_is_a_yaml_error(tmp_path):
    found = problems(tmp_path, 'interfaces: [{name: eth0}]\nbpffs: "\x07"\n')
    assert found == [f"{tmp_path / 'bad.yaml'}:2: not valid YAML: unacceptable character #x0007: "
                     "special characters are not allowed"]


def test_merged_values_point_at_where_they_are_written(tmp_path):
    text = """\
interfaces: [{name: eth0}]
vips:
  - &web {address: 198.18.0.10, port: 80, protocol: tcp, mode: dsr, health: {type: tcp, timeout: 5s}}
  - {<<: *web, port: 81}
"""
    found = problems(tmp_path, text)
    assert [f.split(": ")[0].rsplit(":", 1)[1] for f in found] == ["3", "3"]
    assert [f.split(": ")[1] for f in found] == ["vips[0].health.timeout", "vips[1].health.timeout"]


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "missing.yaml")
    assert str(err.value) == f"{tmp_path / 'missing.yaml'}: cannot read: No such file or directory"
    (tmp_path / "latin1.yaml").write_bytes("bpffs: /sys/fs/bpf/l\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="latin1.yaml: cannot read: not UTF-8 text"):
        load_config(tmp_path / "latin1.yaml")


# ---------------------------------------------------------------------------
# All problems at once

def test_all_problems_reported_at_once(tmp_path):
    text = edit("weight: 100", "weight: 70000", "protocol: tcp", "protocol: sctp", "port: 53", "port: 99999")
    found = problems(tmp_path, text)
    assert len(found) == 3
    assert [f.split(": ")[1] for f in found] == ["vips[0].protocol", "vips[0].backends[0].weight", "vips[1].port"]


def test_field_problems_do_not_hide_cross_checks(tmp_path):
    # a bad weight in one backend, a wrong family in another, a duplicate VIP
    text = edit("weight: 100", "weight: 70000", "{address: 198.18.1.12,", "{address: fd00::12,")
    text += "  - {address: fd00::10, port: 53, protocol: udp, mode: dsr}\n"
    found = problems(tmp_path, text)
    paths = [f.split(": ")[1] for f in found]
    assert paths == ["vips[0].backends[0].weight", "vips[0].backends[1].address", "vips[2]"]


def test_problems_are_data(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(edit("weight: 100", "weight: 70000"), "x.yaml")
    assert err.value.problems == [Problem("x.yaml", 19, "vips[0].backends[0].weight", "70000", "must be 0..65535")]


# ---------------------------------------------------------------------------
# Immutability

def test_objects_are_frozen():
    config = parse_config(GOOD)
    vip = config.vips[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bpffs = "/tmp"
    for obj, field, value in [(vip, "port", 80), (vip.backends[0], "weight", 1), (vip.health, "rise", 5),
                              (config.limits, "ring_size", 101), (config.interfaces[0], "mode", "generic")]:
        with pytest.raises(pydantic.ValidationError):
            setattr(obj, field, value)
    assert all(isinstance(seq, tuple) for seq in (config.vips, vip.backends, config.interfaces))


def test_objects_are_hashable_and_comparable():
    a, b = parse_config(GOOD), parse_config(GOOD)
    assert a == b and hash(a) == hash(b)
    assert len({*a.vips, *b.vips}) == 2
    assert a != parse_config(edit("weight: 100", "weight: 99"))


# ---------------------------------------------------------------------------
# Boot-only settings

@pytest.mark.parametrize("extra, changed", [
    ("bpffs: /sys/fs/bpf/other\n", ["bpffs"]),
    ("limits: {max_vips: 512}\n", ["limits.max_vips"]),
    ("limits: {max_backends: 1024}\n", ["limits.max_backends"]),
    ("limits: {ring_size: 257}\n", ["limits.ring_size"]),
    ("limits: {conntrack_size: 4096}\n", ["limits.conntrack_size"]),
    ("limits: {ring_size: 257, max_vips: 16}\n", ["limits.max_vips", "limits.ring_size"]),
])
def test_boot_only_changes_detects_each_field(extra, changed):
    assert boot_only_changes(parse_config(GOOD), parse_config(GOOD + extra)) == changed


@pytest.mark.parametrize("new", ["{name: eth1, mode: native}", "{name: eth0, mode: generic}",
                                 "{name: eth0}\n  - {name: eth1}"])
def test_boot_only_changes_detects_interfaces(new):
    new_config = parse_config(edit("{name: eth0, mode: native}", new))
    assert boot_only_changes(parse_config(GOOD), new_config) == ["interfaces"]


def test_boot_only_changes_ignores_the_rest():
    old = parse_config(GOOD)
    new = parse_config(edit("weight: 100", "weight: 1", "port: 443", "port: 444",
                            "source_v4: 198.18.0.1", "source_v4: 198.18.0.2")
                       + "  - {address: 198.18.0.99, port: 1, protocol: tcp, mode: dsr}\n"
                       + 'http: {listen: "127.0.0.1:9200"}\ncontrol: {group: lbd}\n')
    assert old != new
    assert boot_only_changes(old, new) == []
    assert boot_only_changes(old, old) == []
    assert set(BOOT_ONLY) >= {"interfaces", "bpffs", "limits.ring_size"}


# ---------------------------------------------------------------------------
# lbd check

def test_check_files(tmp_path, capsys):
    good = ROOT / "configs" / "dsr.yaml"
    bad = tmp_path / "bad.yaml"
    bad.write_text(edit("weight: 100", "weight: 70000"))
    assert check_files([str(good)]) == 0
    out, err = capsys.readouterr()
    config = load_config(good)
    assert out == f"{good}: OK ({len(config.vips)} VIPs, {config.backend_count} backends)\n" and err == ""
    assert check_files([str(good), str(bad)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(f"{good}: OK")
    assert err == f"{bad}:19: vips[0].backends[0].weight: must be 0..65535, got 70000\n"
    assert check_files([]) == 1


def test_lbd_check_runs_without_a_daemon(tmp_path):
    run = subprocess.run([sys.executable, "-m", "lbd.cli", "check", str(ROOT / "configs" / "lbd.yaml")],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"{ROOT / 'configs' / 'lbd.yaml'}: OK (1 VIPs, 2 backends)")


def test_config_is_a_plain_frozen_dataclass():
    assert dataclasses.is_dataclass(Config)
    assert {f.name for f in dataclasses.fields(Config)} == {
        "interfaces", "http_listen", "control_socket", "control_group", "bpffs", "limits",
        "ipip_source_v4", "ipip_source_v6", "vips", "bgp", "second_chance_hold_s"}


# ---------------------------------------------------------------------------
# Files that cost far more than their size (issue 19: a 12-line alias bomb
# made `lbd check` run past 60 s and 4 GB). The checks run as the operator
# runs them, in a process of their own, bounded in time and memory.

def _bounded_memory() -> None:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def _check_command(argv: list[str], path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv, str(path)], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, preexec_fn=_bounded_memory)


@pytest.mark.parametrize("command", [["lbd.cli", "check"], ["lbd.lbctl", "check"]])
@pytest.mark.parametrize("shape", sorted(yamlbombs.shapes(GOOD)))
def test_yaml_bombs_get_a_quick_clear_error(tmp_path, shape, command):
    bomb = yamlbombs.shapes(GOOD)[shape]
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb.text)
    run = _check_command(command, path)
    assert run.returncode == 1 and run.stdout == "", (run.stdout, run.stderr[-2000:])
    message, = run.stderr.splitlines()
    line = int(message.removeprefix(f"{path}:").split(":")[0])
    assert line in bomb.lines, (message, bomb.lines)
    assert message.startswith(f"{path}:{line}: {bomb.path}"), message
    assert bomb.word in message and len(message) < 400, message


def test_yaml_bomb_in_a_vip_field_names_the_field(tmp_path):
    bomb = yamlbombs.shapes(GOOD)["vip_field"]
    with pytest.raises(ConfigError) as err:
        parse_config(bomb.text, "x.yaml")
    problem, = err.value.problems
    assert problem.path.startswith("vips[2].name[") and problem.line in bomb.lines, problem


def test_shared_values_of_a_real_config_still_load():
    # one health check shared by every VIP, and the first backend's settings
    # merged into every other (<<): what anchors are for, well inside the bounds
    def vip(i: int) -> str:
        health = "&check {type: http, path: /healthz, interval: 2s, timeout: 1s, rise: 3, fall: 3}" \
            if i == 0 else "*check"
        first = "&backend {address: 198.19.0.1, weight: 50, drain: false}" if i == 0 else \
            f"{{<<: *backend, address: 198.19.{i % 250}.1}}"
        return (f"  - {{address: 198.18.{i // 250}.{i % 250 + 1}, port: 80, protocol: tcp, mode: dsr,\n"
                f"     health: {health},\n     backends: [{first},\n" +
                ",\n".join(f"       {{<<: *backend, address: 198.19.{i % 250}.{j + 2}}}" for j in range(9)) +
                "]}")
    vips = "\n".join(vip(i) for i in range(300))
    config = parse_config(f"interfaces: [{{name: eth0}}]\nvips:\n{vips}\n")
    assert len(config.vips) == 300 and config.backend_count == 3000
    assert {vip.health.interval_s for vip in config.vips} == {2.0}
    assert {b.weight for vip in config.vips for b in vip.backends} == {50}


def big_config(vips: int, backends: int) -> str:
    """vips VIPs of `backends` backends each, written out in block style."""
    lines = ["interfaces: [{name: eth0}]", "limits: {max_vips: 2048, max_backends: 131072}",
             "ipip: {source_v4: 198.18.0.1}", "vips:"]
    for i in range(vips):
        lines += [f"  - address: 198.18.{100 + i // 250}.{i % 250 + 1}", "    port: 443", "    protocol: tcp",
                  "    mode: ipip", "    health: {type: http, path: /healthz}", "    backends:"]
        for j in range(backends):
            lines += [f"      - address: 198.19.{i % 250}.{j + 1}", "        weight: 100"]
    return "\n".join(lines) + "\n"


def test_the_largest_config_lbd_supports_loads(tmp_path):
    # 1,000 VIPs x 100 backends: within every bound of lbd.yamlbounds (slow: ~30 s)
    path = tmp_path / "big.yaml"
    path.write_text(big_config(1000, 100))
    config = load_config(path)
    assert len(config.vips) == 1000 and config.backend_count == 100_000


# --- health checks through the data path (issue 21) -------------------------------

def test_health_checks_go_through_the_vip_by_default():
    health = parse_config(GOOD).vips[0].health
    assert health.via == "vip" and health.host is None and health.verify is False
    assert parse_config(edit("      path: /healthz\n", "      path: /healthz\n      via: address\n")
                        ).vips[0].health.via == "address"


def test_https_and_udp_check_settings_load():
    https = parse_config(edit("type: http", "type: https", "      path: /healthz\n",
                              "      path: /healthz\n      host: www.example.com\n      sni: cdn.example.com\n"
                              "      verify: true\n")).vips[0].health
    assert (https.type, https.host, https.sni, https.verify) == ("https", "www.example.com",
                                                                 "cdn.example.com", True)
    # a DNS query for example.com (id 0x1234) in hex, its id expected back
    query = "123401000001000000000000076578616d706c650000010001"
    udp = parse_config(edit("type: http", "type: udp", "      path: /healthz\n",
                            f"      payload: 'hex:{query}'\n      expect: 'hex:1234'\n")).vips[0].health
    assert udp.payload == bytes.fromhex(query) and udp.expect == b"\x12\x34"
    text = parse_config(edit("type: http", "type: udp", "      path: /healthz\n",
                             "      payload: ping\n      expect: pong\n")).vips[0].health
    assert (text.payload, text.expect) == (b"ping", b"pong")


@pytest.mark.parametrize("old, new, where, words", [
    ("      path: /healthz\n", "      path: /healthz\n      via: tunnel\n", "via", ["vip, address", '"tunnel"']),
    ("type: http", "type: udp", "payload", ["required for type: udp"]),
    ("      path: /healthz\n", "      path: /healthz\n      payload: hi\n", "payload", ["only for type: udp"]),
    ("      path: /healthz\n", "      path: /healthz\n      sni: a.example\n", "sni", ["only for type: https"]),
    ("      path: /healthz\n", "      path: /healthz\n      host: 'a b'\n", "host", ["host name", '"a b"']),
])
def test_health_check_setting_errors(tmp_path, old, new, where, words):
    text = edit(old, new)
    if where == "payload" and "required" in words[0]:
        text = edit("      path: /healthz\n", "", text=text)
        line = line_of(text, "health:")
    else:
        line = line_of(text, f"{where}:")
    one_problem(tmp_path, text, line, f"vips[0].health.{where}", *words)


def test_udp_payload_must_be_valid_hex(tmp_path):
    text = edit("type: http", "type: udp", "      path: /healthz\n", "      payload: 'hex:12g4'\n")
    one_problem(tmp_path, text, line_of(text, "payload:"), "vips[0].health.payload", "hex digits",
                '"hex:12g4"')

# QUIC by connection ID (issue 22): a UDP VIP's quic: section and server IDs

QUIC = edit('''    backends:
      - {address: "fd00::11"}''', '''    quic: {config_id: 0, server_id_length: 3, nonce_length: 4}
    backends:
      - {address: "fd00::11", server_id: "c4605e"}
      - {address: "fd00::12", server_id: "0A0B0C"}''')


def test_quic_section_loads():
    dns = parse_config(QUIC).vips[1]
    assert (dns.quic.config_id, dns.quic.cid_length, dns.quic.self_encode_length) == (0, 8, True)
    # hex is one ID whatever its case
    assert [b.server_id for b in dns.backends] == ["c4605e", "0a0b0c"]


@pytest.mark.parametrize("old,new,snippet,path,words", [
    ('server_id: "0A0B0C"', 'server_id: "C4605E"', "fd00::12", "vips[1].backends[1].server_id",
     ["already the server ID of backends[0]", '"c4605e"']),
    ('server_id: "0A0B0C"', 'server_id: "0a0b"', "fd00::12", "vips[1].backends[1].server_id",
     ["exactly quic.server_id_length = 3 octets", '"0a0b"']),
    ('server_id: "0A0B0C"', 'server_id: "0x0a0b0c"', "fd00::12", "vips[1].backends[1].server_id",
     ["octets in hex", '"0x0a0b0c"']),
    (', server_id: "0A0B0C"', "", "fd00::12", "vips[1].backends[1]",
     ["needs a server_id (3 octets in hex)", '"fd00::12"']),
    ("config_id: 0,", "config_id: 7,", "quic:", "vips[1].quic.config_id", ["must be 0..6", "got 7"]),
    ("nonce_length: 4", "nonce_length: 3", "quic:", "vips[1].quic.nonce_length", ["minimum nonce is 4", "got 3"]),
    ("nonce_length: 4", "nonce_length: 17", "quic:", "vips[1].quic.nonce_length",
     ["must be at most 20", "got 17"]),
    ("protocol: udp", "protocol: tcp", "quic:", "vips[1].quic", ["only for protocol: udp", '"tcp"']),
])
def test_quic_mistakes_name_file_line_field_and_value(tmp_path, old, new, snippet, path, words):
    text = edit(old, new, text=QUIC)
    one_problem(tmp_path, text, line_of(text, snippet), path, *words)


def test_server_id_without_quic_section(tmp_path):
    text = edit('{address: 198.18.1.11, weight: 100}', '{address: 198.18.1.11, server_id: "aa"}')
    one_problem(tmp_path, text, line_of(text, "198.18.1.11"), "vips[0].backends[0].server_id",
                "only for a VIP with a quic: section", '"aa"')
