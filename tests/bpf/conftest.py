"""The bpf tier: one compiled balancer shared by the tests, run inside a
throwaway network namespace whose routes and neighbours give the program's
bpf_fib_lookup() real answers (ipip next hops, MTU, unresolved neighbours)."""
from __future__ import annotations

import ipaddress
import os

import pytest

from lbd.testing import fibns
from lbd.dataplane.maps import Datapath
from lbd.dataplane.programmer import Programmer
from lbd.testing.fibns import GW_MAC, MAC as LBD_MAC, V4 as IPIP_SRC_V4, V6 as IPIP_SRC_V6  # noqa: F401
from tests.conftest import require_root


NAMESPACE = f"lbdt-bpf-{os.getpid()}"


@pytest.fixture(scope="session")
def fib_namespace():
    require_root("the bpf tier loads XDP programs and")
    with fibns.fib_namespace(NAMESPACE, enter=False) as ifindex:
        yield ifindex


@pytest.fixture(autouse=True)
def _in_fib_namespace(fib_namespace):
    """Each bpf test runs in the namespace (BPF_PROG_TEST_RUN resolves the
    ingress interface in the caller's), and only the test: a thread left in
    it would start later tiers' subprocesses (pip, servers) with no network."""
    with fibns.entered(NAMESPACE):
        yield


@pytest.fixture(scope="session")
def datapath(fib_namespace):
    return Datapath()


class Harness:
    """A clean balancer for one test: programmer, ifindex, packet runner."""

    def __init__(self, dp: Datapath, ifindex: int):
        self.dp = dp
        self.ifindex = ifindex
        self.programmer = Programmer(dp)
        dp.set_settings(ipaddress.ip_address(IPIP_SRC_V4), ipaddress.ip_address(IPIP_SRC_V6))

    def apply(self, plans):
        return self.programmer.apply(list(plans))

    def run(self, packet: bytes):
        return self.dp.test_run(bytes(packet), self.ifindex)

    def reset(self):
        self.programmer.apply([])
        self.dp.clear_flows()


@pytest.fixture
def lb(datapath, fib_namespace):
    harness = Harness(datapath, fib_namespace)
    harness.reset()
    yield harness
    harness.reset()
