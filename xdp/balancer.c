/* balancer.c: lbd's XDP entry point. It only dispatches: parsing, hashing,
 * encapsulation, ICMP and the maps live in their own headers.
 *
 * For each packet: one bit of the prefilter says whether the destination can
 * be a VIP address at all (everything else leaves untouched with XDP_PASS,
 * having cost no hash lookup); a UDP datagram to a QUIC VIP's address (a bit
 * of quic_prefilter) first tries the server ID in its connection ID (quic.h);
 * then the connection table, whose backend entry
 * names the flow's VIP and its flags (one hash lookup for an established
 * flow); on a miss the VIP (its port, else the address's port-0 VIP) and its
 * Maglev table; then the packet goes to the backend by L2 DSR or IP-in-IP
 * (for a second-chance VIP in GUE, naming the second choice its entry or the
 * same slot of second_rings holds, or, for a flow moved off a held backend,
 * that backend).
 * Packets without a usable 5-tuple (fragments, malformed, ICMP errors) look
 * up the address itself (addrs), which says what such packets may do.
 *
 * Length (over 450 lines, on purpose): the packet path's decisions, in the
 * order a packet meets them, read best in one file; every helper they use
 * lives in a header of its own concern. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmp.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "lbd_shared.h"
#include "maps.h"
#include "parse.h"
#include "flowhash.h"
#include "prefilter.h"
#include "csum.h"
#include "encap.h"
#include "icmp.h"
#include "quic.h"
#include "settle.h"
#include "capture.h"

/* 1 only in the tests' control runs: SYNs make entries as they did before
 * lbd left no state for unproven flows, to show what a flood then breaks. */
#ifndef LBD_SYN_MAKES_ENTRY
#define LBD_SYN_MAKES_ENTRY 0
#endif

static __always_inline int lbd_verdict(struct lbd_global_stats *gs, int action)
{
	if (action == XDP_TX)
		gs->actions[LBD_ACT_TX]++;
	else if (action == XDP_REDIRECT)
		gs->actions[LBD_ACT_REDIRECT]++;
	else if (action == XDP_PASS)
		gs->actions[LBD_ACT_PASS]++;
	else
		gs->actions[LBD_ACT_DROP]++;
	return action;
}

static __always_inline int lbd_drop(struct lbd_global_stats *gs, int reason)
{
	if (reason >= 0 && reason < LBD_DROP__MAX)
		gs->drops[reason]++;
	return lbd_verdict(gs, XDP_DROP);
}

/* 0 if no VIP uses this destination address; 1 if one may (prefilter.h). */
static __always_inline int lbd_maybe_vip(const __u32 addr[4])
{
	__u32 bit = lbd_prefilter_bit(addr);
	__u32 word = bit / 64;

	return lbd_prefilter_has(prefilter.lookup(&word), bit);
}

/* 0 if no QUIC VIP uses this destination address; 1 if one may (prefilter.h). */
static __always_inline int lbd_maybe_quic(const __u32 addr[4])
{
	__u32 bit = lbd_prefilter_bit(addr);
	__u32 word = bit / 64;

	return lbd_prefilter_has(quic_prefilter.lookup(&word), bit);
}

/* The backend id in slot hash % ring size of one of a VIP's tables (an inner
 * map of rings or second_rings, or NULL). */
static __always_inline __u32 lbd_table_slot(void *table, __u32 hash)
{
	__u32 slot = hash % LBD_RING_SIZE;
	__u32 *id;

	if (!table)
		return LBD_NO_BACKEND;
	id = bpf_map_lookup_elem(table, &slot);
	return id ? *id & LBD_SLOT_BACKEND : LBD_NO_BACKEND; /* without settle.h's marks */
}

/* The first choice: the VIP's current Maglev table. */
static __always_inline __u32 lbd_ring_pick(__u32 vip_id, __u32 hash)
{
	int outer_key = vip_id;

	return lbd_table_slot(rings.lookup(&outer_key), hash);
}

/* The second choice of the same slot, for a flow the table places now; 0 for
 * a VIP without second chance (whose table is not even looked up). */
static __always_inline __u32 lbd_second_pick(__u32 vip_id, __u32 vip_flags, __u32 hash)
{
	int outer_key = vip_id;

	if (!(vip_flags & LBD_VIP_SECOND_CHANCE))
		return LBD_NO_BACKEND;
	return lbd_table_slot(second_rings.lookup(&outer_key), hash);
}

/* The backend a packet of a second-chance VIP names as its second choice, or
 * NULL if it must go as plain IP-in-IP: none, the first choice itself, or an
 * id that is no second choice of the first's VIP (any more). */
static __always_inline struct lbd_backend *lbd_second_choice(__u32 second_id, __u32 first_id,
							      const struct lbd_backend *first)
{
	struct lbd_backend *second;

	if (second_id == LBD_NO_BACKEND || second_id == first_id)
		return NULL;
	second = backends.lookup(&second_id);
	if (!second || second->second_until == 0 || second->vip_id != first->vip_id)
		return NULL;
	return second;
}

static __always_inline __u32 lbd_hash_for(const struct lbd_flow_key *flow, __u32 vip_flags)
{
	if (vip_flags & LBD_VIP_CLIENT_AFFINITY)
		return lbd_client_hash(flow);
	return lbd_flow_hash(flow);
}

static __always_inline int lbd_backend_usable(const struct lbd_backend *be, __u32 generation)
{
	return be->generation == generation &&
	       (be->state == LBD_BACKEND_ACTIVE || be->state == LBD_BACKEND_DRAINING);
}

/* TCP and UDP entries live in tables of their own (maps.h says why). */
static __always_inline struct lbd_flow_entry *lbd_flow_lookup(struct lbd_flow_key *flow)
{
	struct lbd_flow_entry *entry;

	if (flow->proto == IPPROTO_TCP) {
		entry = conntrack.lookup(flow);
		/* Keeps clang from merging the two lookups into one call on a map
		 * chosen at run time: the verifier inlines a lookup only on a map
		 * it knows, and the generic helper measured ~100 ns dearer per
		 * established packet (bench/notes/xdp_cost.md). */
		asm volatile("" : "+r"(entry));
		return entry;
	}
	return conntrack_udp.lookup(flow);
}

/* Two things an entry keeps tell a live flow from an idle one (the daemon,
 * lbd/dataplane/flowtable.py) and a finished connection from a live one (a SYN,
 * lbd_flow_finished): when its latest packet came (seen, in jiffies:
 * bpf_jiffies64() is one load, inlined by the verifier, where a ns clock is a
 * helper call) and whether its client has ended it with a FIN or an RST (the
 * only direction lbd sees). Both are written only when they change, so a busy
 * flow dirties its entry at most once per jiffy, not once per packet. The
 * mark stays until the entry goes: a SYN never follows a marked entry (it
 * removes it), and UDP has no flags and is never marked. Returns 1 when it
 * marks the entry. */
static __always_inline int lbd_flow_seen(struct lbd_flow_entry *entry,
					 const struct lbd_packet *pkt)
{
	__u32 now = bpf_jiffies64();

	if (entry->seen != now)
		entry->seen = now;
	if ((pkt->tcp_flags & (LBD_TCP_FIN | LBD_TCP_RST)) && !(entry->flags & LBD_FLOW_CLIENT_CLOSED)) {
		entry->flags |= LBD_FLOW_CLIENT_CLOSED;
		return 1; /* marked now: its slot is no longer settled (settle.h) */
	}
	return 0;
}

/* The idle time after which a SYN finds its entry's connection finished, in
 * jiffies of the highest HZ the kernel may run at: never shorter than stated. */
#define LBD_FLOW_FINISHED_IDLE_JIFFIES ((__u32)LBD_FLOW_FINISHED_IDLE_S * LBD_KERNEL_HZ_MAX)

/* Asked for SYNs only (README "A SYN on a finished connection's 4-tuple"):
 * the entry's connection is over, so a SYN on its 4-tuple opens a new one,
 * which the table places. Over once its client sent FIN or RST, or once the
 * entry saw nothing for longer than a live handshake's SYNs can be apart
 * (each SYN that follows the entry stamps it, so a handshake whose first SYN
 * followed the entry is never split). The age wraps as seen does (49 days
 * at HZ=1000): an entry idle for a multiple of that looks fresh again. */
static __always_inline int lbd_flow_finished(const struct lbd_flow_entry *entry)
{
	__u32 idle = (__u32)bpf_jiffies64() - entry->seen;

	return (entry->flags & LBD_FLOW_CLIENT_CLOSED) || idle > LBD_FLOW_FINISHED_IDLE_JIFFIES;
}

static __always_inline void lbd_flow_insert(struct lbd_global_stats *gs,
					    struct lbd_flow_key *flow,
					    struct lbd_flow_entry *entry,
					    const struct lbd_packet *pkt, __u32 flags)
{
	/* as lbd_flow_seen would leave it (an RST never makes an entry; a FIN may) */
	entry->seen = bpf_jiffies64();
	entry->flags = flags | (pkt->tcp_flags & (LBD_TCP_FIN | LBD_TCP_RST) ? LBD_FLOW_CLIENT_CLOSED : 0);
	if (flow->proto == IPPROTO_TCP) {
		long err = conntrack.update(flow, entry);

		asm volatile("" : "+r"(err)); /* two calls, each on its map: as above */
		gs->ct_inserts_tcp++;
	} else {
		conntrack_udp.update(flow, entry);
		gs->ct_inserts_udp++;
	}
}

/* The VIP's Maglev table (an inner map of rings), or NULL. */
static __always_inline void *lbd_ring_of(__u32 vip_id)
{
	int outer_key = vip_id;

	return rings.lookup(&outer_key);
}

/* The VIP's table's backend for `hash`, if it takes new flows (else NULL). */
static __always_inline struct lbd_backend *lbd_table_backend(__u32 vip_id, __u32 hash,
							      __u32 *backend_id)
{
	struct lbd_backend *be;

	*backend_id = lbd_ring_pick(vip_id, hash);
	if (*backend_id == LBD_NO_BACKEND)
		return NULL;
	be = backends.lookup(backend_id);
	if (!be || be->state != LBD_BACKEND_ACTIVE)
		return NULL;
	return be;
}

/* Send the (unchanged) packet to the backend's MAC: L2 direct server return. */
static __always_inline int lbd_forward_dsr(struct xdp_md *ctx, const struct lbd_backend *be)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	lbd_set_macs(eth, be->dst_mac);
	if (be->ifindex == 0 || be->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	/* A redirect that fails does so after the program returns (in the
	 * driver), where only the kernel sees it: `ip -s link` xdp counters,
	 * the xdp:xdp_redirect_err tracepoint. */
	return bpf_redirect(be->ifindex, 0);
}

/* RFC 1122 3.2.2 and RFC 4443 2.4(e): no ICMP error about an ICMP error, a
 * non-first fragment, a frame to a link-layer multicast or broadcast
 * address, or a packet whose source is not one host. */
static __always_inline int lbd_may_answer_with_icmp(struct xdp_md *ctx, const struct lbd_packet *pkt)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	const __u8 *src = (const __u8 *)pkt->flow.src;

	if (pkt->no_icmp_error)
		return 0;
	if ((void *)(eth + 1) > data_end || (eth->h_dest[0] & 1))
		return 0;
	if (pkt->flow.family == LBD_FAMILY_V4)
		/* 0/8 "this network", 127/8 loopback, 224/4 multicast, 240/4 and broadcast */
		return src[0] != 0 && src[0] != 127 && src[0] < 224;
	if (src[0] == 0xff) /* multicast */
		return 0;
	/* :: and ::1 */
	return pkt->flow.src[0] || pkt->flow.src[1] || pkt->flow.src[2] ||
	       (pkt->flow.src[3] && pkt->flow.src[3] != bpf_htonl(1));
}

/* `overhead`: what encapsulation adds (lbd_tunnel_overhead), which the client
 * must leave room for. */
static __always_inline int lbd_too_big(struct xdp_md *ctx, struct lbd_global_stats *gs,
				       const struct lbd_packet *pkt, __u32 mtu, __u32 overhead)
{
	if (!lbd_may_answer_with_icmp(ctx, pkt))
		return lbd_drop(gs, LBD_DROP_TOO_BIG);
	gs->icmp_too_big_sent++;
	return lbd_verdict(gs, lbd_reply_too_big(ctx, pkt, mtu - overhead));
}

/* Encapsulate toward the backend's next hop: from this CPU's next-hop cache,
 * asking the FIB when the entry is empty, expired or for an older generation
 * of the backend id (encap.h says what the cache trades). A second-chance
 * VIP's packet goes in GUE when it names a valid second choice. */
static __always_inline int lbd_forward_ipip(struct xdp_md *ctx, struct lbd_global_stats *gs,
					    struct lbd_packet *pkt, __u32 backend_id,
					    const struct lbd_backend *be, __u32 vip_flags,
					    __u32 hash, __u32 second_id)
{
	__u32 zero = 0;
	struct lbd_settings *st = settings.lookup(&zero);
	struct lbd_nexthop *nh = nexthops.lookup(&backend_id);
	struct lbd_backend *second = NULL;
	int gue_vip = !!(vip_flags & LBD_VIP_SECOND_CHANCE);
	__u32 overhead = lbd_tunnel_overhead(pkt, vip_flags);
	__u64 now;
	int route;

	/* __builtin_expect: the cache's refresh and every failure off the
	 * packet's straight line. No faster measurably (bench/xdp_cost.py), but
	 * clang then emits a smaller program: 111,696 bytes of BPF instead of
	 * 128,104, and the verifier processes 690k instructions instead of 731k
	 * (of its 1M), room the other paths need. */
	if (__builtin_expect(!st || !nh, 0))
		return lbd_drop(gs, LBD_DROP_FIB_FAILED);
	/* jiffies, not bpf_ktime_get_coarse_ns(): the verifier inlines
	 * bpf_jiffies64() into one load, where a helper call measured ~50 ns
	 * (every kernel return is a mitigated one on this CPU) */
	now = bpf_jiffies64();
	if (__builtin_expect(nh->generation != be->generation || now >= nh->expires_jiffies, 0)) {
		struct lbd_nexthop fresh;

		route = lbd_route_to_backend(ctx, ctx->ingress_ifindex, pkt, be, st, &fresh, overhead, gue_vip);
		if (route == LBD_ROUTE_TOO_BIG)
			return lbd_too_big(ctx, gs, pkt, fresh.mtu, overhead);
		if (route == LBD_ROUTE_NO_NEIGH)
			return lbd_drop(gs, LBD_DROP_NO_NEIGHBOUR);
		if (route == LBD_ROUTE_FORWARDING_OFF)
			return lbd_drop(gs, LBD_DROP_FORWARDING_OFF);
		if (route != LBD_ROUTE_OK)
			return lbd_drop(gs, LBD_DROP_FIB_FAILED);
		fresh.generation = be->generation;
		fresh.expires_jiffies = now + LBD_NEXTHOP_TTL_JIFFIES;
		*nh = fresh;
	}
	/* the check the FIB makes when asked, made against the cached MTU */
	if (__builtin_expect(pkt->l3_len + overhead > nh->mtu, 0))
		return lbd_too_big(ctx, gs, pkt, nh->mtu, overhead);
	/* TCP only, also should a UDP VIP carry the flag: a backend has no UDP
	 * state to tell its flows by (the design's rule; config refuses it) */
	if (gue_vip && pkt->flow.proto == IPPROTO_TCP)
		second = lbd_second_choice(second_id, backend_id, be);
	if (__builtin_expect(lbd_encapsulate(ctx, pkt, be, second, st, nh, hash), 0))
		return lbd_drop(gs, LBD_DROP_ENCAP_FAILED);
	pkt->forwarded = 1;
	if (second)
		gs->second_choice_carried++;
	if (nh->ifindex == ctx->ingress_ifindex)
		return lbd_verdict(gs, XDP_TX);
	return lbd_verdict(gs, bpf_redirect(nh->ifindex, 0));
}

/* new_flow: 1 when this packet made the flow's entry (a constant 0 on every
 * other path, so the compiler drops the add there). second_id: the flow's
 * second choice (its entry's, or its slot's when the table places it; 0 for
 * none). Sets pkt->forwarded when the packet leaves for the backend (not
 * when it is answered or dropped). */
static __always_inline int lbd_forward(struct xdp_md *ctx, struct lbd_global_stats *gs,
				       struct lbd_packet *pkt, __u32 backend_id,
				       const struct lbd_backend *be, __u32 vip_flags, __u32 hash,
				       __u32 new_flow, __u32 second_id)
{
	struct lbd_backend_stats *bs = backend_stats.lookup(&backend_id);
	int action;

	if (bs) {
		bs->packets++;
		bs->bytes += pkt->frame_len;
		if (new_flow)
			bs->new_flows++;
	}
	if (vip_flags & LBD_VIP_MODE_IPIP)
		return lbd_forward_ipip(ctx, gs, pkt, backend_id, be, vip_flags, hash, second_id);
	action = lbd_forward_dsr(ctx, be);
	pkt->forwarded = action != XDP_DROP;
	return lbd_verdict(gs, action);
}

/* The VIP of the flow's port, else the address's port-0 VIP. addr_flags
 * (from addrs, when the caller has it) skips lookups that cannot match. */
static __always_inline struct lbd_vip_info *lbd_vip_lookup(const struct lbd_flow_key *flow,
							    __u32 addr_flags)
{
	struct lbd_vip_key key = {};
	struct lbd_vip_info *vip = NULL;

	__builtin_memcpy(key.addr, flow->dst, sizeof(key.addr));
	key.proto = flow->proto;
	key.family = flow->family;
	if (addr_flags & LBD_ADDR_HAS_PORTS) {
		key.port = flow->dport;
		vip = vips.lookup(&key);
	}
	if (!vip && (addr_flags & LBD_ADDR_HAS_WILDCARD)) {
		key.port = 0;
		vip = vips.lookup(&key);
	}
	return vip;
}

/* Without addrs: both lookups may be needed. Still cheaper for the common
 * case (a port VIP) than the addrs lookup that used to come first. */
#define LBD_ADDR_ANY_VIP (LBD_ADDR_HAS_PORTS | LBD_ADDR_HAS_WILDCARD)

static __always_inline struct lbd_addr_info *lbd_addr_lookup(const struct lbd_flow_key *flow)
{
	struct lbd_addr_key key = {};

	__builtin_memcpy(key.addr, flow->dst, sizeof(key.addr));
	key.proto = flow->proto;
	key.family = flow->family;
	return addrs.lookup(&key);
}

/* A packet to a VIP address, any protocol: for packets whose L4 header
 * cannot be trusted, so their protocol cannot pick the VIP. */
static __always_inline int lbd_is_vip_address(const struct lbd_flow_key *flow)
{
	struct lbd_addr_key key = {};

	__builtin_memcpy(key.addr, flow->dst, sizeof(key.addr));
	key.family = flow->family;
	key.proto = IPPROTO_TCP;
	if (addrs.lookup(&key))
		return 1;
	key.proto = IPPROTO_UDP;
	return addrs.lookup(&key) != NULL;
}

/* The second choice an established flow names: its entry's. An entry made
 * while its VIP's second table was pending (LBD_FLOW_SECOND_PROVISIONAL) holds
 * the second of the table before, which may name nothing or the wrong
 * backend: once the VIP's second table is in place, the flow's next packet
 * reads its slot's second, stores it and clears the mark (one VIP lookup,
 * once per such flow). While the table is still pending, the stored one. */
static __always_inline __u32 lbd_entry_second(struct lbd_flow_entry *entry,
					       const struct lbd_flow_key *flow, __u32 vip_id)
{
	struct lbd_vip_info *vip;
	__u32 second;

	if (!(entry->flags & LBD_FLOW_SECOND_PROVISIONAL))
		return entry->second_id;
	vip = lbd_vip_lookup(flow, LBD_ADDR_ANY_VIP);
	if (vip && vip->vip_id == vip_id) {
		if (vip->flags & LBD_VIP_SECOND_PENDING)
			return entry->second_id;
		second = lbd_second_pick(vip_id, vip->flags, lbd_hash_for(flow, vip->flags));
		entry->second_id = second;
	} else {
		/* the VIP that placed it is gone or shadowed: nothing to read */
		second = entry->second_id;
	}
	entry->flags &= ~LBD_FLOW_SECOND_PROVISIONAL;
	return second;
}

/* An ICMP too-big error about a VIP flow goes to the backend of that flow,
 * found the way the flow's own non-SYN packets find it (its entry while its
 * backend is usable, else the table), without making an entry. */
static __always_inline int lbd_handle_icmp(struct xdp_md *ctx, struct lbd_global_stats *gs,
					   struct lbd_packet *pkt)
{
	struct lbd_flow_key flow = {};
	struct lbd_addr_info *addr;
	struct lbd_vip_info *vip;
	struct lbd_flow_entry *entry;
	struct lbd_backend *be = NULL;
	__u32 backend_id, hash;
	int action;

	if (lbd_icmp_inner_flow(pkt, (void *)(long)ctx->data_end, &flow))
		return lbd_verdict(gs, XDP_PASS);
	/* only errors addressed to the VIP itself, never ones for this host */
	if (flow.dst[0] != pkt->flow.dst[0] || flow.dst[1] != pkt->flow.dst[1] ||
	    flow.dst[2] != pkt->flow.dst[2] || flow.dst[3] != pkt->flow.dst[3])
		return lbd_verdict(gs, XDP_PASS);
	addr = lbd_addr_lookup(&flow);
	if (!addr)
		return lbd_verdict(gs, XDP_PASS);
	vip = lbd_vip_lookup(&flow, addr->flags);
	if (!vip)
		return lbd_verdict(gs, XDP_PASS);
	hash = lbd_hash_for(&flow, vip->flags);
	entry = lbd_flow_lookup(&flow);
	if (entry) {
		backend_id = entry->backend_id;
		be = backends.lookup(&backend_id);
		if (be && !lbd_backend_usable(be, entry->generation))
			be = NULL;
	}
	if (!be)
		be = lbd_table_backend(vip->vip_id, hash, &backend_id);
	if (!be)
		return lbd_drop(gs, LBD_DROP_NO_BACKEND);
	pkt->no_icmp_error = 1; /* never an ICMP error about an ICMP error */
	/* plain IP-in-IP, never naming a second choice: the backend program keeps
	 * every GUE packet that is not TCP (xdp/decap.c), so naming one buys nothing */
	action = lbd_forward(ctx, gs, pkt, backend_id, be, vip->flags, hash, 0, LBD_NO_BACKEND);
	if (pkt->forwarded) /* not when it was too big to encapsulate */
		gs->icmp_to_backend++;
	return action;
}

/* Fragments carry no ports: only a client-affinity VIP, whose hash needs no
 * ports, can send every fragment of a packet to the same backend. */
static __always_inline int lbd_handle_fragment(struct xdp_md *ctx, struct lbd_global_stats *gs,
					       struct lbd_packet *pkt,
					       const struct lbd_addr_info *addr)
{
	__u32 backend_id, hash;
	struct lbd_backend *be;
	int action;

	if (!(addr->flags & LBD_ADDR_FRAG_VIP))
		return lbd_drop(gs, LBD_DROP_FRAGMENT);
	hash = lbd_client_hash(&pkt->flow);
	be = lbd_table_backend(addr->frag_vip_id, hash, &backend_id);
	if (!be)
		return lbd_drop(gs, LBD_DROP_NO_BACKEND);
	/* no second choice, as for ICMP: a fragment is no TCP segment to the backend */
	action = lbd_forward(ctx, gs, pkt, backend_id, be, addr->frag_vip_flags, hash, 0,
			     LBD_NO_BACKEND);
	if (pkt->forwarded) /* not when answered with a too-big, or dropped */
		gs->fragments_forwarded++;
	return action;
}

/* A packet to a VIP, in its per-CPU counters (returned for the flow counters). */
static __always_inline struct lbd_vip_stats *lbd_count_vip(__u32 vip_id, __u32 frame_len)
{
	struct lbd_vip_stats *vs = vip_stats.lookup(&vip_id);

	if (vs) {
		vs->packets++;
		vs->bytes += frame_len;
	}
	return vs;
}

/* Whether `pkt` is a SYN in a settled slot (counted then), which goes to
 * the table without its entry lookup: what the rules of lbd_balance do with
 * a SYN whose 4-tuple has no entry is, in a settled slot, what they do
 * whatever its entry (settle.h). The VIP and slot are read again there: one
 * path through the rules keeps the verifier's count in budget. */
static __always_inline int lbd_syn_in_settled_slot(const struct lbd_packet *pkt, int syn)
{
	__u32 zero = 0, slot, *value;
	struct lbd_vip_info *vip;
	void *table;
	__u64 *count;

	if (!syn || LBD_SYN_MAKES_ENTRY)
		return 0;
	vip = lbd_vip_lookup(&pkt->flow, LBD_ADDR_ANY_VIP);
	if (!vip)
		return 0;
	table = lbd_ring_of(vip->vip_id);
	if (!table)
		return 0;
	slot = lbd_hash_for(&pkt->flow, vip->flags) % LBD_RING_SIZE;
	value = bpf_map_lookup_elem(table, &slot);
	if (!value || !lbd_slot_settled(*value))
		return 0;
	count = syn_settled.lookup(&zero);
	if (count)
		(*count)++;
	return 1;
}

/* The backend id of a VIP's server ID from quic_sid_slots, or NULL when none of
 * its LBD_QUIC_PROBES slots holds it (then quic_servers, which holds every
 * ID: a hash lookup is a call, dearer than these inlined array reads). */
static __always_inline __u32 *lbd_quic_sid_lookup(const struct lbd_quic_server_key *key)
{
	__u32 home = lbd_quic_sid_slot_of(key), i, at;
	struct lbd_quic_sid_slot *slot;

#pragma unroll
	for (i = 0; i < LBD_QUIC_PROBES; i++) {
		at = (home + i) % LBD_MAX_BACKENDS;
		slot = quic_sid_slots.lookup(&at);
		if (slot && slot->vip_id == key->vip_id && slot->server_id[0] == key->server_id[0] &&
		    slot->server_id[1] == key->server_id[1])
			return &slot->backend_id;
	}
	return NULL;
}

/* The way a UDP packet to QUIC VIP vip_id takes (quic.h), counted by slot in
 * quic_stats (lbd_quic_packets_total{how}). LBD_QUIC_BY_CID comes with
 * *backend_id and *be: the backend with the CID's server ID, of this VIP,
 * active or draining, never one that does not own it; also counted in its
 * quic_routed. */
static __always_inline int lbd_quic_check(const struct lbd_packet *pkt, void *data_end, __u32 vip_id,
					  __u32 *backend_id, struct lbd_backend **be)
{
	struct lbd_quic_server_key key = {};
	__u32 zero = 0, taken;
	struct lbd_quic_stats *qs = quic_stats.lookup(&zero);
	struct lbd_quic_config *cfg = quic_configs.lookup(&vip_id);
	__u32 *id;
	__u64 *routed;
	int way;

	if (!qs)
		return LBD_QUIC_TODAY;
	if (!cfg || cfg->server_id_len == 0 || cfg->server_id_len > LBD_QUIC_MAX_SERVER_ID)
		way = lbd_quic_out(&qs->slot, LBD_QUIC_PKT_FB_NOT_QUIC); /* no format written (yet) */
	else
		way = lbd_quic_read_server_id(pkt, data_end, cfg, &key, &qs->slot);
	if (way == LBD_QUIC_BY_CID) {
		key.vip_id = vip_id;
		id = lbd_quic_sid_lookup(&key);
		if (!id)
			id = quic_servers.lookup(&key);
		if (!id) {
			way = lbd_quic_out(&qs->slot, LBD_QUIC_PKT_FB_UNKNOWN_SERVER);
		} else {
			*backend_id = *id;
			*be = backends.lookup(backend_id);
			if (!*be || (*be)->vip_id != vip_id ||
			    ((*be)->state != LBD_BACKEND_ACTIVE && (*be)->state != LBD_BACKEND_DRAINING))
				way = lbd_quic_out(&qs->slot, LBD_QUIC_PKT_FB_UNUSABLE_SERVER);
		}
	}
	taken = qs->slot;
	if (taken < LBD_QUIC_PKT__MAX)
		qs->packets[taken]++;
	if (way == LBD_QUIC_BY_CID && *be) {
		routed = quic_routed.lookup(backend_id);
		if (routed)
			(*routed)++;
	}
	return way;
}

/* QUIC by CID, before the connection table (docs/design.md, QUIC VIPs): a
 * datagram to a QUIC VIP whose CID names a usable server is forwarded here,
 * whatever its 4-tuple, the table and any entry say, with no connection-table
 * lookup and no entry: LBD_QUIC_BY_CID, its action in *action. Otherwise the
 * way the connection table and the Maglev table take it: LBD_QUIC_UNCHECKED
 * (no QUIC VIP: a false positive of quic_prefilter), else a fallback's. */
static __always_inline int lbd_quic_first(struct xdp_md *ctx, struct lbd_global_stats *gs,
					  struct lbd_packet *pkt, void *data_end, int *action)
{
	struct lbd_vip_info *vip = lbd_vip_lookup(&pkt->flow, LBD_ADDR_ANY_VIP);
	struct lbd_backend *be = NULL;
	__u32 backend_id = 0, vip_flags, hash;
	int way;

	if (!vip || !(vip->flags & LBD_VIP_QUIC))
		return LBD_QUIC_UNCHECKED;
	vip_flags = vip->flags;
	way = lbd_quic_check(pkt, data_end, vip->vip_id, &backend_id, &be);
	if (way != LBD_QUIC_BY_CID)
		return way;
	if (!be) /* never: LBD_QUIC_BY_CID comes with its backend (for the verifier) */
		return LBD_QUIC_TODAY;
	lbd_count_vip(vip->vip_id, pkt->frame_len);
	/* only the ipip IPv6 flow label needs a hash here, as for an established flow */
	hash = (vip_flags & LBD_VIP_MODE_IPIP) && pkt->flow.family == LBD_FAMILY_V6 ?
	       lbd_hash_for(&pkt->flow, vip_flags) : 0;
	/* UDP: no second chance */
	*action = lbd_forward(ctx, gs, pkt, backend_id, be, vip_flags, hash, 0, LBD_NO_BACKEND);
	return LBD_QUIC_BY_CID;
}

static __always_inline int lbd_balance(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lbd_packet pkt = {};
	struct lbd_global_stats *gs;
	struct lbd_addr_info *addr;
	struct lbd_vip_info *vip;
	struct lbd_flow_entry *entry, placed;
	struct lbd_vip_stats *vs;
	struct lbd_backend *be;
	__u32 zero = 0, backend_id, vip_id, vip_flags, hash, second_id;
	__u32 held_id = LBD_NO_BACKEND, held_vip = 0, entry_flags = 0;
	int parsed, moved = 0, syn, stateless, quic = LBD_QUIC_UNCHECKED, action;

	gs = global_stats.lookup(&zero);
	if (!gs)
		return XDP_PASS;
	parsed = lbd_parse(&pkt, data, data_end);
	if (parsed == LBD_NOT_IP || parsed == LBD_PARSED_OTHER || !lbd_maybe_vip(pkt.flow.dst))
		return lbd_verdict(gs, XDP_PASS);
	if (parsed == LBD_PARSED_ICMP)
		return lbd_handle_icmp(ctx, gs, &pkt);
	if (parsed == LBD_PARSED_FRAGMENT) {
		addr = lbd_addr_lookup(&pkt.flow);
		if (!addr)
			return lbd_verdict(gs, XDP_PASS);
		return lbd_handle_fragment(ctx, gs, &pkt, addr);
	}
	if (parsed != LBD_PARSED_L4) {
		/* no trustworthy ports or protocol: is the address a VIP address? */
		if (!lbd_is_vip_address(&pkt.flow))
			return lbd_verdict(gs, XDP_PASS);
		return lbd_drop(gs, parsed == LBD_PARSED_EXT_CHAIN ? LBD_DROP_IPV6_EXT_CHAIN :
				    LBD_DROP_MALFORMED);
	}

	/* QUIC by CID first: a CID-routed datagram costs no connection-table lookup */
	if (pkt.flow.proto == IPPROTO_UDP && lbd_maybe_quic(pkt.flow.dst)) {
		quic = lbd_quic_first(ctx, gs, &pkt, data_end, &action);
		if (quic == LBD_QUIC_BY_CID)
			return action;
	}

	/* A SYN opens a connection; an RST ends one: neither proves a flow real,
	 * so neither makes an entry (a SYN flood leaves no state). The flow's
	 * entry is made by its first other packet (the handshake's ACK), which
	 * the unchanged table sends where its SYN went. */
	syn = pkt.flow.proto == IPPROTO_TCP &&
	      (pkt.tcp_flags & (LBD_TCP_SYN | LBD_TCP_ACK)) == LBD_TCP_SYN;
	stateless = (syn && !LBD_SYN_MAKES_ENTRY) ||
		    (pkt.flow.proto == IPPROTO_TCP && (pkt.tcp_flags & LBD_TCP_RST));

	/* A SYN in a settled slot goes to the table without its entry lookup,
	 * a new flow's dearest read: no entry of the slot could send it
	 * elsewhere (settle.h; docs/design.md, "What a SYN looks up"). */
	entry = NULL;
	if (!lbd_syn_in_settled_slot(&pkt, syn))
		entry = lbd_flow_lookup(&pkt.flow);

	/* An established flow: its backend entry carries the VIP's id and flags,
	 * so the VIP lookup is skipped. A removed VIP's backends are emptied by
	 * the same apply that removes it, and a backend id reused for another
	 * VIP has a new generation, so a stale entry never leads elsewhere. */
	if (entry) {
		backend_id = entry->backend_id;
		be = backends.lookup(&backend_id);
		/* a SYN follows only a live connection's entry to a backend that
		 * takes new flows: a retransmitted SYN stays with its handshake, a
		 * new connection on the 4-tuple of a finished one is placed by the
		 * table and never joins a drained backend through an old entry */
		if (be && lbd_backend_usable(be, entry->generation) &&
		    (!syn || (be->state == LBD_BACKEND_ACTIVE && !lbd_flow_finished(entry)))) {
			if (lbd_flow_seen(entry, &pkt))
				lbd_unsettle(lbd_ring_of(be->vip_id),
					     lbd_hash_for(&pkt.flow, be->vip_flags));
			vip_id = be->vip_id;
			vip_flags = be->vip_flags;
			lbd_count_vip(vip_id, pkt.frame_len);
			gs->ct_hits++;
			/* only the ipip IPv6 flow label needs the hash of an established flow */
			hash = (vip_flags & LBD_VIP_MODE_IPIP) && pkt.flow.family == LBD_FAMILY_V6 ?
			       lbd_hash_for(&pkt.flow, vip_flags) : 0;
			/* the second choice the flow was placed with, whatever its slot
			 * names now: the entry may be all that knows where its socket is */
			return lbd_forward(ctx, gs, &pkt, backend_id, be, vip_flags, hash, 0,
					   lbd_entry_second(entry, &pkt.flow, vip_id));
		}
		if (syn) {
			/* a new connection on an old 4-tuple (its backend takes no new
			 * flows, or its connection finished): its ACK must meet the
			 * SYN's backend, not the old entry's */
			conntrack.delete(&pkt.flow);
			gs->ct_removed_by_syn++;
		} else {
			moved = 1; /* its backend was removed or failed: place it again */
			/* the same backend as when the flow was placed, and still a
			 * second choice (down or removed, its hold running) */
			if (be && be->generation == entry->generation && be->second_until != 0) {
				held_id = backend_id;
				held_vip = be->vip_id;
			}
		}
	}

	vip = lbd_vip_lookup(&pkt.flow, LBD_ADDR_ANY_VIP);
	if (!vip)
		return lbd_verdict(gs, XDP_PASS);
	if (!entry)
		gs->ct_misses++;
	vip_id = vip->vip_id;
	vip_flags = vip->flags;
	/* a QUIC fallback without an entry: quic.h says which leave no state */
	if (!entry && quic != LBD_QUIC_UNCHECKED)
		stateless = quic != LBD_QUIC_TODAY;
	vs = lbd_count_vip(vip_id, pkt.frame_len);

	hash = lbd_hash_for(&pkt.flow, vip_flags);
	be = lbd_table_backend(vip_id, hash, &backend_id);
	if (!be)
		return lbd_drop(gs, LBD_DROP_NO_BACKEND);
	/* A flow moved off a held backend names that backend, whatever its slot
	 * names: the entry is the best knowledge of where its connection lives
	 * (a slot taken by a backend added since the flow was placed names the
	 * slot's owner before that, not the flow's). Otherwise the slot's second;
	 * read from a second table that is not yet the first's, it is provisional. */
	if (held_id != LBD_NO_BACKEND && held_vip == vip_id && (vip_flags & LBD_VIP_SECOND_CHANCE)) {
		second_id = held_id;
	} else {
		second_id = lbd_second_pick(vip_id, vip_flags, hash);
		if (vip_flags & LBD_VIP_SECOND_PENDING)
			entry_flags = LBD_FLOW_SECOND_PROVISIONAL;
	}
	if (stateless)
		gs->stateless_forwards++;
	if (!stateless) {
		placed.backend_id = backend_id;
		placed.generation = be->generation;
		placed.second_id = second_id;
		lbd_flow_insert(gs, &pkt.flow, &placed, &pkt, entry_flags);
		if (pkt.tcp_flags & (LBD_TCP_FIN | LBD_TCP_RST)) /* made finished (settle.h) */
			lbd_unsettle(lbd_ring_of(vip_id), hash);
		if (vs) {
			if (moved)
				vs->rescheduled++;
			else
				vs->new_flows++;
		}
	}
	return lbd_forward(ctx, gs, &pkt, backend_id, be, vip_flags, hash, !stateless && !moved,
			   second_id);
}

/* The entry point: the balancer between capture.h's two hooks, which cost a
 * packet one array read while no `lbctl capture` runs. */
int lbd_balancer(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct lbd_capture_ctl *capture = capture_ctl.lookup(&zero);
	struct lbd_capture_scratch *scratch = NULL;
	int action;

	if (capture && capture->on)
		scratch = lbd_capture_arrive(ctx, capture, capture_scratch.lookup(&zero),
					     global_stats.lookup(&zero));
	action = lbd_balance(ctx);
	if (scratch &&
	    lbd_capture_keep(scratch, global_stats.lookup(&zero), action, ctx->data_end - ctx->data) &&
	    lbd_capture_within_rate(capture))
		capture_events.perf_submit_skb(ctx, scratch->record.left_caplen, &scratch->record,
					       sizeof(scratch->record));
	return action;
}

/* The daemon's clock for the entries' seen: userspace cannot read jiffies, so
 * lbd/dataplane/maps.py runs this (BPF_PROG_TEST_RUN, never attached) on a blank
 * frame and reads bpf_jiffies64() from its first 8 bytes: the clock the
 * packet path stamps entries with, whatever the kernel's HZ. */
int lbd_clock(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u64 *out = data;

	if ((void *)(out + 1) > data_end)
		return XDP_ABORTED;
	*out = bpf_jiffies64();
	return XDP_PASS;
}
