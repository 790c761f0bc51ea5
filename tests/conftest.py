"""Test tiers: `unit` (no root), `bpf` (the real program through
BPF_PROG_TEST_RUN) and `netns` (a namespace lab with real traffic). The bpf
and netns tiers need root; CI runs all three."""
import os

import pytest


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        pytest.fail(f"{what} needs root (CI runs as root)", pytrace=False)


def pytest_collection_modifyitems(config, items):
    for item in items:
        tiers = {m.name for m in item.iter_markers()} & {"unit", "bpf", "netns"}
        if not tiers:
            raise pytest.UsageError(f"{item.nodeid}: mark it unit, bpf or netns")
