"""The shared header polices itself: every struct's size is held by a
_Static_assert, and a size that changes without a new LBD_LAYOUT_VERSION
fails here. The version decides whether a restarted or upgraded daemon
adopts the pinned maps (their directory is named after it), so a layout
change that kept the version would have a new program read old maps."""
from __future__ import annotations

import re

import pytest

from lbd.dataplane import layout

pytestmark = pytest.mark.unit

# The sizes of each released layout. A change to a struct: bump
# LBD_LAYOUT_VERSION in xdp/lbd_shared.h and add its sizes here.
RELEASED_LAYOUTS = {
    3: {"lbd_vip_key": 20, "lbd_vip_info": 8, "lbd_addr_key": 20, "lbd_addr_info": 16,
        "lbd_backend": 48, "lbd_nexthop": 32, "lbd_flow_key": 40, "lbd_flow_entry": 16,
        "lbd_settings": 28, "lbd_vip_stats": 32, "lbd_backend_stats": 24, "lbd_global_stats": 176},
    # second-chance forwarding: flow entries name a second choice, backends a hold
    4: {"lbd_vip_key": 20, "lbd_vip_info": 8, "lbd_addr_key": 20, "lbd_addr_info": 16,
        "lbd_backend": 48, "lbd_nexthop": 32, "lbd_flow_key": 40, "lbd_flow_entry": 20,
        "lbd_settings": 28, "lbd_vip_stats": 32, "lbd_backend_stats": 24, "lbd_global_stats": 184,
        "lbd_gue_hdr": 4, "lbd_gue_second_v4": 8, "lbd_gue_second_v6": 20,
        # the backend program's own (never pinned with the balancer's maps);
        # added before layout 4 was first released
        "lbd_forward_prefix": 20,
        # QUIC by CID: maps of their own, added beside layout 4's (whose
        # pinned maps are unchanged, so a daemon adopts them as they are)
        "lbd_quic_config": 4, "lbd_quic_server_key": 24, "lbd_quic_stats": 96,
        # the same for the QUIC fast path's server-ID slots (quic_sid_slots)
        "lbd_quic_sid_slot": 24},
}
# Structs of maps that are never pinned (a capture belongs to the daemon that
# runs it, xdp/capture.h): held to their sizes, but no reason for a new layout.
NEVER_PINNED = {"lbd_capture_ctl": 72, "lbd_capture_record": 328}
_ASSERT = re.compile(r"_Static_assert\(sizeof\(struct (\w+)\) == (\d+),")
_STRUCT = re.compile(r"^struct (\w+) \{", re.M)


def header_sizes() -> dict[str, int]:
    return {name: int(size) for name, size in _ASSERT.findall(layout.SHARED_HEADER.read_text())}


def test_every_shared_struct_has_its_size_asserted():
    structs = set(_STRUCT.findall(layout.SHARED_HEADER.read_text()))
    assert structs and structs == set(header_sizes())


def test_sizes_change_only_with_a_new_layout_version():
    version = layout.constant("LBD_LAYOUT_VERSION")
    assert version in RELEASED_LAYOUTS, (
        f"LBD_LAYOUT_VERSION {version} has no recorded sizes: add them to RELEASED_LAYOUTS")
    sizes = header_sizes()
    assert {name: sizes.get(name) for name in NEVER_PINNED} == NEVER_PINNED
    assert {name: size for name, size in sizes.items() if name not in NEVER_PINNED} == \
        RELEASED_LAYOUTS[version], (
        "a shared struct changed size: bump LBD_LAYOUT_VERSION (pinned maps of the old layout "
        "must not be adopted) and record the new sizes")


def test_size_comments_agree_with_the_asserts():
    """The comment above each struct says its size; the compiler holds the
    assert; the two must not drift apart."""
    text = layout.SHARED_HEADER.read_text()
    for name, size in header_sizes().items():
        block = text[:text.index(f"struct {name} {{")]
        comment = block[block.rindex("/*"):]
        stated = re.search(r"(\d+) bytes", comment)
        if stated:
            assert int(stated.group(1)) == size, f"struct {name}: comment says {stated.group(1)}, assert {size}"
