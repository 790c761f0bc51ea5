"""QUIC VIPs through the programmer (FakeMaps, no kernel): the maps get the
VIP's CID format and each server ID -> its backend's id; a removed backend's
ID goes; and a reload (or `lbd check --diff`) that changes a backend's server
ID names it as moving that backend's QUIC connections."""
from __future__ import annotations

import pytest

from lbd.config import parse_config
from lbd.dataplane.programmer import Programmer
from lbd.plan import plans_for
from tests.unit.fakes import FakeMaps

pytestmark = pytest.mark.unit

CONFIG = """\
interfaces: [{name: eth0}]
vips:
  - name: h3
    address: 198.18.100.60
    port: 443
    protocol: udp
    mode: ipip
    quic: {config_id: 2, server_id_length: 3, nonce_length: 4}
    backends:
      - {address: 198.18.20.11, server_id: "c4605e"}
      - {address: 198.18.20.12, server_id: "0a0b0c"}
      - {address: 198.18.20.13, server_id: "111111"}
ipip: {source_v4: 198.18.0.2}
"""


def plans(text: str):
    return plans_for(parse_config(text), lambda vip, backend: True, {})[0]


def servers(maps: FakeMaps, programmer: Programmer, plan) -> dict[str, str]:
    vip_id = programmer.vip_id(plan.key)
    ids = {programmer.backend_id(plan.key, b.address): str(b.address) for b in plan.backends}
    return {sid.rstrip(b"\0").hex(): ids.get(b, f"id {b}") for sid, b in maps.quic_servers_of(vip_id).items()}


def test_the_maps_hold_each_server_id_and_a_changed_id_is_named_as_moving_connections():
    maps = FakeMaps()
    programmer = Programmer(maps)
    first = plans(CONFIG)
    programmer.apply(first)
    vip_id = programmer.vip_id(first[0].key)
    assert maps.quic_configs[vip_id] == (2, 3, 8)
    assert servers(maps, programmer, first[0]) == {"c4605e": "198.18.20.11", "0a0b0c": "198.18.20.12",
                                                   "111111": "198.18.20.13"}

    changed = plans(CONFIG.replace('"0a0b0c"', '"0a0b0d"').replace(
        '      - {address: 198.18.20.13, server_id: "111111"}\n', ""))
    said = programmer.preview(changed)
    assert said[0].quic_moved == {"198.18.20.12": "0a0b0c -> 0a0b0d"}
    done = programmer.apply(changed)
    assert done[0].quic_moved == said[0].quic_moved
    # the old ID and the removed backend's are gone; the new one names the same backend
    assert servers(maps, programmer, changed[0]) == {"c4605e": "198.18.20.11", "0a0b0d": "198.18.20.12"}

    programmer.apply([])
    assert vip_id not in maps.quic_configs and not maps.quic_servers_of(vip_id)
