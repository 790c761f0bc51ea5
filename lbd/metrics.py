"""Prometheus metrics: the program's per-CPU counters summed at scrape time,
plus the daemon's own state. Labels are VIP names and backend addresses,
never client addresses."""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from lbd import __version__

if TYPE_CHECKING:
    from lbd.daemon import Daemon


class HealthCollector:
    """Each backend's two checks (lbd.healthview) and the health-path program's
    counters, read at scrape time."""

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon

    def collect(self):
        from lbd import healthview

        d = self.daemon
        if d.health is None:
            return
        checks = d.health.snapshot()
        up = GaugeMetricFamily("lbd_health_check_up",
                               "1 if the check passes (its rise/fall state counts as up); via: vip (to the "
                               "VIP through the data path) or address (the backend's own)",
                               labels=["vip", "backend", "via"])
        verdicts = GaugeMetricFamily("lbd_health_verdict",
                                     "1 for the backend's current verdict from both checks: ok, path_broken "
                                     "(only the check through the VIP fails), service_down (both fail), "
                                     "address_failing (only the backend's own address fails), unchecked",
                                     labels=["vip", "backend", "verdict"])
        for vip in d.config.vips:
            if vip.health is None:
                continue
            for backend in vip.backends:
                view = healthview.verdict(vip, backend, checks)
                label = [vip.name, str(backend.address)]
                for via, check in (("vip", view["vip_check"]), ("address", view["address_check"])):
                    if check is not None:
                        up.add_metric([*label, via], 1 if check["up"] else 0)
                verdicts.add_metric([*label, view["verdict"]], 1)
        yield up
        yield verdicts
        if d.healthpath is not None and d.healthpath.stats is not None:
            packets = CounterMetricFamily("lbd_health_path_packets",
                                          "Health-check packets the TC program sent through the data path, "
                                          "or dropped and why", labels=["result"])
            for result, value in d.healthpath.counters().items():
                packets.add_metric([result], value)
            yield packets


class DatapathCollector:
    """Reads the maps on every scrape (per-CPU values summed here, not in C)."""

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon

    def collect(self):
        d = self.daemon
        if d.datapath is None:
            return
        dp, programmer = d.datapath, d.programmer
        vip_metrics = {
            "packets": CounterMetricFamily("lbd_vip_packets", "Packets to the VIP seen by XDP", labels=["vip"]),
            "bytes": CounterMetricFamily("lbd_vip_bytes", "Bytes to the VIP seen by XDP", labels=["vip"]),
            "new_flows": CounterMetricFamily("lbd_vip_new_flows",
                                             "Connection-table entries made for flows the Maglev table "
                                             "placed (TCP: at the handshake's ACK)", labels=["vip"]),
            "rescheduled": CounterMetricFamily("lbd_vip_rescheduled_flows",
                                               "Flows moved off a removed or failed backend", labels=["vip"]),
        }
        be_packets = CounterMetricFamily("lbd_backend_packets", "Packets sent to the backend",
                                         labels=["vip", "backend"])
        be_bytes = CounterMetricFamily("lbd_backend_bytes", "Bytes sent to the backend",
                                       labels=["vip", "backend"])
        be_up = GaugeMetricFamily("lbd_backend_up", "1 if the backend is in its VIP's table",
                                  labels=["vip", "backend"])
        be_weight = GaugeMetricFamily("lbd_backend_weight", "Configured weight (0 when draining)",
                                      labels=["vip", "backend"])
        vip_up = GaugeMetricFamily("lbd_vip_backends_up", "Backends in the VIP's table", labels=["vip"])
        fail_open = GaugeMetricFamily("lbd_vip_fail_open",
                                      "1 if every backend failed health checks and lbd kept them in",
                                      labels=["vip"])
        table = GaugeMetricFamily("lbd_vip_table_info", "Fingerprint of the VIP's Maglev table",
                                  labels=["vip", "fingerprint"])
        second_table = GaugeMetricFamily("lbd_vip_second_table_info",
                                         "Fingerprint of the VIP's second-choice table (second-chance VIPs)",
                                         labels=["vip", "fingerprint"])
        held = GaugeMetricFamily("lbd_vip_held_backends",
                                 "Backends removed from the VIP's config that are still second choices "
                                 "(hold running)", labels=["vip"])
        be_new = CounterMetricFamily("lbd_backend_new_flows",
                                     "Connection-table entries made for flows the Maglev table placed on "
                                     "the backend (TCP: at the handshake's ACK)", labels=["vip", "backend"])
        be_flows = GaugeMetricFamily("lbd_backend_flows",
                                     "The backend's live flows at the last sample (a packet within the "
                                     "idle window, and not ended by the client's FIN or RST)",
                                     labels=["vip", "backend"])
        be_quic = CounterMetricFamily("lbd_backend_quic_routed_packets",
                                      "QUIC packets placed on the backend by the server ID in their "
                                      "connection ID (QUIC VIPs)", labels=["vip", "backend", "server_id"])
        be_idle = GaugeMetricFamily("lbd_backend_idle_flows",
                                    "The backend's connection-table entries that are not live flows, at "
                                    "the last sample", labels=["vip", "backend"])
        usage = getattr(d, "table_usage", None) or {}
        flows_of, idle_of = {}, {}
        for table_usage in usage.values():
            for backend_id, count in table_usage.by_backend.items():
                flows_of[backend_id] = flows_of.get(backend_id, 0) + count
            for backend_id, count in table_usage.idle_by_backend.items():
                idle_of[backend_id] = idle_of.get(backend_id, 0) + count
        for key, applied in programmer.applied().items():
            name = applied.plan.name
            counters = dp.vip_counters(applied.vip_id)
            for field, family in vip_metrics.items():
                family.add_metric([name], counters[field])
            in_table = 0
            for backend in applied.plan.backends:
                backend_id = applied.backend_ids[backend.address]
                stats = dp.backend_counters(backend_id)
                label = [name, str(backend.address)]
                be_packets.add_metric(label, stats["packets"])
                be_bytes.add_metric(label, stats["bytes"])
                be_new.add_metric(label, stats["new_flows"])
                be_up.add_metric(label, 1 if backend.in_table else 0)
                be_weight.add_metric(label, backend.weight)
                if applied.plan.quic and backend.server_id is not None:
                    be_quic.add_metric(label + [backend.server_id.hex()], dp.quic_routed_count(backend_id))
                if usage:
                    be_flows.add_metric(label, flows_of.get(backend_id, 0))
                    be_idle.add_metric(label, idle_of.get(backend_id, 0))
                in_table += backend.in_table
            vip_up.add_metric([name], in_table)
            status = d.vip_status.get(name)
            fail_open.add_metric([name], 1 if status and status.fail_open else 0)
            table.add_metric([name, applied.fingerprint], 1)
            if applied.plan.second_chance:
                second_table.add_metric([name, applied.second_fingerprint], 1)
                held.add_metric([name], len(programmer.held(key)))
        yield from vip_metrics.values()
        yield from (be_packets, be_bytes, be_new, be_up, be_weight, vip_up, fail_open, table, second_table, held,
                    be_quic)
        if usage:
            yield be_flows
            yield be_idle
            yield from _table_usage_metrics(usage)

        totals = dp.global_counters()
        drops = CounterMetricFamily("lbd_drops", "Packets to a VIP dropped, by reason", labels=["reason"])
        for reason, value in totals["drops"].items():
            drops.add_metric([reason], value)
        actions = CounterMetricFamily("lbd_xdp_actions", "XDP verdicts returned", labels=["action"])
        for action, value in totals["actions"].items():
            actions.add_metric([action], value)
        yield drops
        yield actions
        for name, field, text in (
                ("lbd_conntrack_hits", "ct_hits", "Packets whose flow was in the connection table"),
                ("lbd_conntrack_misses", "ct_misses", "Packets whose flow was not in the connection table"),
                ("lbd_icmp_too_big_sent", "icmp_too_big_sent", "ICMP too-big sent to clients (ipip MTU)"),
                ("lbd_icmp_to_backend", "icmp_to_backend", "ICMP errors about a VIP flow sent to its backend"),
                ("lbd_fragments_forwarded", "fragments_forwarded", "Fragments forwarded (client affinity)"),
                ("lbd_stateless_forwards", "stateless_forwards",
                 "TCP SYNs and RSTs placed by the Maglev table without making an entry"),
                ("lbd_conntrack_removed_by_syn", "ct_removed_by_syn",
                 "Entries a SYN removed: their backend takes no new flows, or their connection "
                 "finished (a new connection on an old 4-tuple)"),
                ("lbd_second_choice_carried", "second_choice_carried",
                 "Packets sent in GUE naming a second choice (second-chance VIPs)")):
            family = CounterMetricFamily(name, text)
            family.add_metric([], totals[field])
            yield family
        skipped = CounterMetricFamily("lbd_syns_without_lookup", "TCP SYNs a settled slot placed by the "
                                      "table without a connection-table lookup (docs/design.md)")
        skipped.add_metric([], dp.syns_without_lookup())
        yield skipped
        walk = d.settled
        settled = GaugeMetricFamily("lbd_settled_slots_ratio", "Share of the TCP VIPs' table slots "
                                    "settled at the last settle walk (a SYN there skips its lookup)")
        settled.add_metric([], walk.settled / walk.slots if walk.slots else 0.0)
        yield settled
        quic = CounterMetricFamily("lbd_quic_packets", "Datagrams to QUIC VIPs by what placed them: "
                                   "routed_* by the CID's server ID, fb_* the table, by reason (docs/quic.md)",
                                   labels=["how"])
        for how, value in dp.quic_counters().items():
            quic.add_metric([how], value)
        yield quic
        made = CounterMetricFamily("lbd_conntrack_entries_made", "Connection-table entries made",
                                   labels=["table"])
        made.add_metric(["tcp"], totals["ct_inserts_tcp"])
        made.add_metric(["udp"], totals["ct_inserts_udp"])
        yield made
        attached = GaugeMetricFamily("lbd_xdp_attached",
                                     "1 if lbd's program is attached to the interface now (per the kernel)",
                                     labels=["interface", "mode"])
        ours = _our_program_id(dp)
        for ifname, mode in d.attached.items():
            attached.add_metric([ifname, mode], 1 if ours and _attached_program(ifname) == ours else 0)
        yield attached


def _our_program_id(dp) -> int:
    from lbd.dataplane import bpfsys
    try:
        return bpfsys.program_id(dp.prog_fd)
    except (OSError, AttributeError):
        return 0


def _attached_program(ifname: str) -> int:
    """The id of the XDP program on the interface (0: none or no such
    interface): one that was detached or replaced after lbd attached its own
    shows as 0 (the lbd_xdp_attached alert in configs/lbd-alerts.yaml)."""
    import socket

    from lbd.dataplane import bpfsys
    try:
        return bpfsys.xdp_program_id(socket.if_nametoindex(ifname))
    except OSError:
        return 0


def _table_usage_metrics(usage):
    """The connection tables' fill, from the daemon's last sample (lbd.dataplane.flowtable)."""
    entries = GaugeMetricFamily("lbd_conntrack_entries", "Connection-table entries in use at the last sample",
                                labels=["table"])
    capacity = GaugeMetricFamily("lbd_conntrack_capacity", "Connection-table size (limits.*)",
                                 labels=["table"])
    walk = GaugeMetricFamily("lbd_conntrack_sample_seconds", "How long the last sample's walk took",
                             labels=["table"])
    for name, table_usage in usage.items():
        entries.add_metric([name], table_usage.entries)
        capacity.add_metric([name], table_usage.capacity)
        walk.add_metric([name], table_usage.walk_seconds)
    return entries, capacity, walk


class BgpCollector:
    """What this host announces and why not, read from the announcer at scrape time."""

    def __init__(self, daemon: "Daemon"):
        self.daemon = daemon

    def collect(self):
        announcer = self.daemon.announcer
        if announcer is None:
            return
        announced = GaugeMetricFamily("lbd_bgp_vip_announced", "1 if this host announces the VIP",
                                      labels=["vip"])
        healthy = GaugeMetricFamily("lbd_bgp_vip_healthy_backends",
                                    "Healthy backends the announcement rule counted", labels=["vip"])
        for decision in announcer.decisions:
            announced.add_metric([decision.vip], 1 if decision.announce else 0)
            healthy.add_metric([decision.vip], decision.healthy)
        peers = GaugeMetricFamily("lbd_bgp_peer_established", "1 if the BGP session is established",
                                  labels=["peer"])
        for peer in announcer.peers:
            peers.add_metric([peer.name], 1 if peer.established else 0)
        yield announced
        yield healthy
        yield peers
        for name, text, value in (
                ("lbd_bgp_drained", "1 if the host is drained (maintenance file)", announcer.drained),
                ("lbd_bgp_speaker_up", "1 if BIRD answers on its control socket", announcer.speaker_up),
                ("lbd_bgp_config_pending", "1 if BIRD has not taken lbd's latest config", announcer.pending)):
            family = GaugeMetricFamily(name, text)
            family.add_metric([], 1 if value else 0)
            yield family


class Metrics:
    """The registry and the daemon's own instruments."""

    def __init__(self, daemon: "Daemon"):
        self.registry = CollectorRegistry()
        Gauge("lbd_build_info", "lbd version", ["version"], registry=self.registry).labels(__version__).set(1)
        Gauge("lbd_ready", "1 once the program is attached and the config applied (as /readyz)",
              registry=self.registry).set_function(lambda: 1 if getattr(daemon, "ready", False) else 0)
        self.reloads = Counter("lbd_reloads", "Config reloads by result", ["result"], registry=self.registry)
        for result in ("success", "failure", "refused"):
            self.reloads.labels(result)
        self.last_success = Gauge("lbd_last_reload_success_timestamp_seconds",
                                  "When the config was last applied successfully", registry=self.registry)
        self.last_ok = Gauge("lbd_config_last_reload_successful",
                             "1 if the last reload succeeded", registry=self.registry)
        self.check_duration = Histogram("lbd_health_check_duration_seconds", "Health check durations",
                                        ["vip"], registry=self.registry,
                                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5))
        # via: "vip" for a check through the VIP's data path, "address" for one
        # at the backend's own address (docs/operating.md "Health checks")
        self.checks = Counter("lbd_health_checks", "Health checks by result", ["vip", "backend", "via", "result"],
                              registry=self.registry)
        self.bgp_configure_failures = Counter("lbd_bgp_configure_failures",
                                              "birdc configure calls that BIRD did not take",
                                              registry=self.registry)
        self.registry.register(DatapathCollector(daemon))
        self.registry.register(HealthCollector(daemon))
        self.registry.register(BgpCollector(daemon))
