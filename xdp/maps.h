/* maps.h: every map of the balancer, one comment line each.
 *
 * With LBD_PIN_DIR defined (the daemon passes -DLBD_PIN_DIR="/sys/fs/bpf/lbd")
 * bcc opens the map pinned at LBD_PIN_DIR/<name> if it exists and creates and
 * pins it otherwise: that is how a restarted daemon adopts the running
 * datapath's connection table and counters. Tests leave it undefined to get
 * private maps.
 */
#ifndef LBD_MAPS_H
#define LBD_MAPS_H

#include "lbd_shared.h"

#ifdef LBD_PIN_DIR
#define LBD_MAP(type, key, value, name, size, flags) \
	BPF_TABLE_PINNED7(type, key, value, name, size, LBD_PIN_DIR "/" #name, flags)
#else
#define LBD_MAP(type, key, value, name, size, flags) \
	BPF_F_TABLE(type, key, value, name, size, flags)
#endif

/* bitmap of VIP addresses (prefilter.h): the first test of every packet */
LBD_MAP("array", u32, u64, prefilter, LBD_PREFILTER_WORDS, 0);
/* bitmap of QUIC VIP addresses, same bits as prefilter's: a UDP datagram to one
 * is tried for its CID before its connection-table entry (balancer.c lbd_quic_first) */
LBD_MAP("array", u32, u64, quic_prefilter, LBD_PREFILTER_WORDS, 0);
/* (VIP address, proto) -> what the address accepts: fragments, malformed packets, ICMP */
LBD_MAP("hash", struct lbd_addr_key, struct lbd_addr_info, addrs, LBD_MAX_ADDRS, BPF_F_NO_PREALLOC);
/* (VIP address, port or 0, proto) -> VIP id and flags: the lookup of well-formed packets */
LBD_MAP("hash", struct lbd_vip_key, struct lbd_vip_info, vips, LBD_MAX_VIPS, BPF_F_NO_PREALLOC);
/* backend id -> where and how to send a packet */
LBD_MAP("array", u32, struct lbd_backend, backends, LBD_MAX_BACKENDS, 0);
/* Template for the per-VIP Maglev tables: slot -> backend id. Userspace builds
 * a new one off to the side and swaps it into rings in one update, so a packet
 * sees the old table or the new one, never half of each. Mmapable, so that
 * userspace fills a table with one memory copy instead of 65537 updates. */
BPF_F_TABLE("array", u32, u32, ring_template, LBD_RING_SIZE, BPF_F_MMAPABLE);
/* VIP id -> that VIP's Maglev table (an inner map shaped like ring_template) */
LBD_MAP("array_of_maps$ring_template", int, int, rings, LBD_MAX_VIPS, 0);
/* VIP id -> its second-choice table (slot -> backend id, 0 none), read at the same slot as rings */
LBD_MAP("array_of_maps$ring_template", int, int, second_rings, LBD_MAX_VIPS, 0);
/* 5-tuple -> backend: one key space, so a flow whose packets move to another
 * CPU keeps its backend. The common LRU (flags 0), not per-CPU LRU lists
 * (BPF_F_NO_COMMON_LRU): a per-CPU list rotates its active and inactive lists
 * on every insert, touching cold nodes each time, while the common LRU pops
 * from a per-CPU local free list refilled in batches. Measured side by side
 * (bench/xdp_cost.py cases, interleaved, 2-vCPU KVM, kernel 6.18): a new
 * flow about 400 ns cheaper (1,858 -> 1,450 ns per call with four programs
 * loaded), established flows unchanged. The insert still dominates a new
 * flow's cost (cold element memory, the bucket lock with interrupts off). */
LBD_MAP("lru_hash", struct lbd_flow_key, struct lbd_flow_entry, conntrack, LBD_CT_SIZE, 0);
/* UDP flows' entries, apart: UDP has no handshake to prove a flow real, so
 * every first datagram makes an entry, and a UDP flood must evict only UDP
 * entries, never a TCP connection's. */
LBD_MAP("lru_hash", struct lbd_flow_key, struct lbd_flow_entry, conntrack_udp, LBD_CT_UDP_SIZE, 0);
/* ipip: backend id -> cached FIB answer (encap.h), per CPU so no entry is
 * shared between CPUs. Not pinned: a new program starts with an empty cache.
 * 32 bytes x LBD_MAX_BACKENDS per CPU (4 MiB at the default). */
BPF_F_TABLE("percpu_array", u32, struct lbd_nexthop, nexthops, LBD_MAX_BACKENDS, 0);
/* one entry: ipip outer sources, layout version */
LBD_MAP("array", u32, struct lbd_settings, settings, 1, 0);
/* QUIC VIPs (xdp/quic.h): VIP id -> its CID format; (VIP id, server ID) -> backend id.
 * New maps beside layout 4's: a pinned datapath of layout 4 adopts them. */
LBD_MAP("array", u32, struct lbd_quic_config, quic_configs, LBD_MAX_VIPS, 0);
LBD_MAP("hash", struct lbd_quic_server_key, u32, quic_servers, LBD_MAX_BACKENDS, BPF_F_NO_PREALLOC);
/* quic_servers' entries in open-addressed slots: read first, inlined (quic.h lbd_quic_sid_slot_of);
 * 24 bytes x LBD_MAX_BACKENDS (3 MiB at the default) */
LBD_MAP("array", u32, struct lbd_quic_sid_slot, quic_sid_slots, LBD_MAX_BACKENDS, 0);
/* per-CPU counters, summed at scrape time */
/* SYNs placed by a settled slot, without a connection-table lookup
 * (lbd_syns_without_lookup_total). A map of its own beside layout 4's. */
LBD_MAP("percpu_array", u32, u64, syn_settled, 1, 0);
LBD_MAP("percpu_array", u32, struct lbd_vip_stats, vip_stats, LBD_MAX_VIPS, 0);
LBD_MAP("percpu_array", u32, struct lbd_backend_stats, backend_stats, LBD_MAX_BACKENDS, 0);
LBD_MAP("percpu_array", u32, struct lbd_global_stats, global_stats, 1, 0);
LBD_MAP("percpu_array", u32, struct lbd_quic_stats, quic_stats, 1, 0);
/* per backend id: packets placed by their CID's server ID (0 while its server ignores its ID) */
LBD_MAP("percpu_array", u32, u64, quic_routed, LBD_MAX_BACKENDS, 0);

#endif /* LBD_MAPS_H */
