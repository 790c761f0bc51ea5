"""Prometheus text of the backend program's counters: `lbd-backend metrics`.

A backend runs no lbd daemon, so there is no endpoint to scrape: the text
goes to stdout, or with --textfile atomically into a file for node_exporter's
textfile collector (systemd/lbd-backend-metrics.timer refreshes it every 15 s).

    lbd_backend_decap_attached{interface}            1 if lbd_decap is attached, else 0
    lbd_backend_decap_build_current{interface}       1 if it is this lbd's build, 0 an older one
    lbd_backend_decap_info{interface,program_id,build,mode}   1
    lbd_backend_decap_packets_total{interface,result}  by enum lbd_decap_slot:
        ipip, kept_syn, kept_socket, kept_syncookie, kept_forwarded, kept_other,
        forwarded, forward_failed, malformed, forward_refused
    lbd_backend_decap_forward_prefixes{interface}    how many prefixes it may send on to
                                                     (0: second chance is off from here)
    lbd_backend_xdp_tx_frames_total{interface,result}  sent, lost: what the interface's driver
        did with the frames the program sent back out (XDP_TX), from its own statistics
        (lbd.dataplane.xdpstats; veth only). The program counts a frame as forwarded when it returns
        XDP_TX: on a veth whose other end takes no XDP frames every one is lost, and only
        result="lost" says so.

Interfaces that share one pinned program (--pin-dir) show the same
counters; program_id in the info tells them apart.
"""
from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, generate_latest, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


class _DecapCollector:
    def __init__(self, states: dict, current_build: str):
        self.states = states              # interface -> backend_prep.DecapState or None
        self.current_build = current_build

    def collect(self):
        attached = GaugeMetricFamily("lbd_backend_decap_attached",
                                     "1 if lbd-backend's decap program (lbd_decap) is attached",
                                     labels=["interface"])
        current = GaugeMetricFamily("lbd_backend_decap_build_current",
                                    "1 if the attached lbd_decap is this lbd's build (with "
                                    "second-chance forwarding), 0 if another: run lbd-backend "
                                    "prepare", labels=["interface"])
        info = GaugeMetricFamily("lbd_backend_decap_info", "the attached lbd_decap",
                                 labels=["interface", "program_id", "build", "mode"])
        packets = CounterMetricFamily("lbd_backend_decap_packets",
                                      "tunnelled packets by what lbd_decap did with them "
                                      "(kept_*: decapsulated here; forwarded: sent on to the "
                                      "second choice; forward_refused: kept, the second choice "
                                      "is outside --forward-to; forward_failed, malformed: dropped)",
                                      labels=["interface", "result"])
        prefixes = GaugeMetricFamily("lbd_backend_decap_forward_prefixes",
                                     "prefixes lbd_decap may send second-chance packets on to "
                                     "(lbd-backend prepare --forward-to; 0: none)",
                                     labels=["interface"])
        xdp_tx = CounterMetricFamily("lbd_backend_xdp_tx_frames",
                                     "frames lbd_decap sent back out of the interface (XDP_TX: "
                                     "second-chance packets it forwarded) by what the driver did: "
                                     "sent, or lost (a veth whose other end takes no XDP frames)",
                                     labels=["interface", "result"])
        for ifname, state in sorted(self.states.items()):
            attached.add_metric([ifname], 1 if state else 0)
            if state is None:
                continue
            current.add_metric([ifname], 1 if state.build == self.current_build else 0)
            info.add_metric([ifname, str(state.prog_id), state.build or "old", state.mode], 1)
            for result, value in (state.counters or {}).items():
                packets.add_metric([ifname, result], value)
            if state.forward_to is not None:
                prefixes.add_metric([ifname], len(state.forward_to))
            if state.xdp_tx is not None:
                xdp_tx.add_metric([ifname, "sent"], state.xdp_tx.sent)
                xdp_tx.add_metric([ifname, "lost"], state.xdp_tx.lost)
        yield from (attached, current, info, packets, prefixes, xdp_tx)


def registry(states: dict, current_build: str) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(_DecapCollector(states, current_build))
    return reg


def text(states: dict, current_build: str) -> str:
    return generate_latest(registry(states, current_build)).decode()


def write(path: str, states: dict, current_build: str) -> None:
    """Write atomically (a temporary file renamed over path): node_exporter
    never reads half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_to_textfile(path, registry(states, current_build))

