"""A restarted daemon adopts the pinned maps: same ids, same generations,
the same connection table, flows still on their backends."""
import os
import shutil

import pytest
from scapy.layers.l2 import Ether

from lbd.dataplane.maps import Datapath, Limits
from lbd.dataplane.programmer import Programmer
from tests.bpf import scenario as sc

pytestmark = pytest.mark.bpf


def test_adopting_pinned_maps_keeps_flows_and_ids(fib_namespace):
    pin_dir = f"/sys/fs/bpf/lbdt-adopt-{os.getpid()}"
    limits = Limits(max_vips=64, max_backends=1024, conntrack_size=65536)
    try:
        first = Datapath(limits, pin_dir)
        programmer = Programmer(first)
        plans = [sc.vip(sc.DSR_V4, 80, 6), sc.vip(sc.DSR_V6, 53, 17)]
        programmer.apply(plans)
        flows = [bytes(sc.client_packet(sc.DSR_V4, 80, sport=p)) for p in range(30000, 30100)]
        before = [Ether(first.test_run(f, fib_namespace).packet).dst for f in flows]
        table_before = first.conntrack_snapshot()
        ids_before = {k: (a.vip_id, a.backend_ids) for k, a in programmer.applied().items()}
        del programmer, first  # the daemon dies; the pins stay

        second = Datapath(limits, pin_dir)
        adopted = Programmer(second)
        assert adopted.adopt() == 2
        assert second.conntrack_snapshot() == table_before
        results = adopted.apply(plans)
        ids_after = {k: (a.vip_id, a.backend_ids) for k, a in adopted.applied().items()}
        assert ids_after == ids_before
        # the same config rebuilds byte-identical tables: nothing moves
        assert all(r.moved_share == 0.0 for r in results)
        assert [Ether(second.test_run(f, fib_namespace).packet).dst for f in flows] == before
    finally:
        shutil.rmtree(pin_dir, ignore_errors=True)
