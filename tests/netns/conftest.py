"""Fixtures of the netns tier: one namespace lab (lbd.testing.lab) shared by the session.

Building the lab takes a few seconds, so every netns test module shares one;
a test that breaks something in it (a stopped server, a removed VIP) puts it
back before it ends. Tests that need another shape build their own `Lab`.
"""
from __future__ import annotations

import os

import pytest

from lbd.testing.lab import Lab


@pytest.fixture(scope="session")
def lab():
    """The lab with its default VIPs (lbd.testing.topology.DEFAULT_VIPS_V4/_V6); always torn down."""
    if os.geteuid() != 0:
        pytest.skip("the netns tier needs root (namespaces, veth, XDP)")
    with Lab() as built:
        yield built
