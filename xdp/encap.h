/* encap.h: IPv4-in-IPv4 and IPv6-in-IPv6 encapsulation toward a backend, with
 * the next hop (and its MTU) from the kernel's FIB; and the GUE variant that
 * names a second choice (second-chance forwarding, wire format in
 * lbd_shared.h: outer IP | UDP | GUE | private data | the client's packet).
 *
 * bpf_fib_lookup() is the dearest step of an ipip packet, so balancer.c keeps
 * its answer per backend and per CPU (struct lbd_nexthop) for
 * LBD_NEXTHOP_TTL_NS (1 s unless the loader passes -D), counted in jiffies
 * (LBD_KERNEL_HZ), and checks the MTU against the cached one itself. The trade-off: a route, neighbour (MAC) or
 * MTU change, and routing by TOS or ingress interface, is seen up to that
 * long after the first packet that filled the entry. Only successful lookups
 * are cached: an unresolved next hop is asked again on every packet.
 *
 * Two programs encapsulate with this file: the balancer (XDP, a client's
 * packet) and the health-path program (xdp/healthpath.c, TC egress, a health
 * check's packet), so a check travels in exactly the headers a client's packet
 * would. What differs between the hooks is how room is made in front of the
 * packet (bpf_xdp_adjust_head vs bpf_skb_adjust_room); everything written
 * into that room is lbd_write_encap's, and the next hop lbd_route_to_backend's,
 * which take the hook's context as an opaque pointer for bpf_fib_lookup(). */
#ifndef LBD_ENCAP_H
#define LBD_ENCAP_H

#include "lbd_shared.h"
#include "csum.h"
#include "parse.h"
#include "frame.h"

/* The cache's lifetime in jiffies: bpf_jiffies64() is a load, the ns clocks a call. */
#define LBD_NEXTHOP_TTL_JIFFIES ((__u64)LBD_NEXTHOP_TTL_NS * LBD_KERNEL_HZ / 1000000000)

enum lbd_route_result {
	LBD_ROUTE_OK = 0,
	LBD_ROUTE_TOO_BIG,  /* the encapsulated packet would exceed the MTU */
	LBD_ROUTE_NO_NEIGH, /* route found, next hop's MAC unknown */
	LBD_ROUTE_FORWARDING_OFF, /* the kernel refuses: forwarding is off */
	LBD_ROUTE_FAILED,
};

static __always_inline __u32 lbd_outer_len(const struct lbd_packet *pkt)
{
	return pkt->flow.family == LBD_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
}

/* What follows the outer IP header of a GUE packet: UDP, GUE, private data. */
struct lbd_gue_v4 {
	struct udphdr udp;
	struct lbd_gue_hdr gue;
	struct lbd_gue_second_v4 second;
};
struct lbd_gue_v6 {
	struct udphdr udp;
	struct lbd_gue_hdr gue;
	struct lbd_gue_second_v6 second;
};
_Static_assert(sizeof(struct iphdr) + sizeof(struct lbd_gue_v4) == LBD_GUE_OVERHEAD_V4, "GUE v4");
_Static_assert(sizeof(struct ipv6hdr) + sizeof(struct lbd_gue_v6) == LBD_GUE_OVERHEAD_V6, "GUE v6");

/* lbd_set_macs reads both MACs as one 12-byte run */
_Static_assert(__builtin_offsetof(struct lbd_nexthop, src_mac) ==
	       __builtin_offsetof(struct lbd_nexthop, dst_mac) + ETH_ALEN, "next hop: MACs adjacent");
_Static_assert(__builtin_offsetof(struct lbd_backend, src_mac) ==
	       __builtin_offsetof(struct lbd_backend, dst_mac) + ETH_ALEN, "backend: MACs adjacent");

/* Bytes a VIP's packets grow by on the way to the backend, the figure every MTU
 * check counts: a second-chance VIP always counts GUE's, also for a packet
 * that goes as plain IP-in-IP, so a flow's path MTU never changes with its
 * slot's second choice. */
static __always_inline __u32 lbd_tunnel_overhead(const struct lbd_packet *pkt, __u32 vip_flags)
{
	if (vip_flags & LBD_VIP_SECOND_CHANCE)
		return pkt->flow.family == LBD_FAMILY_V4 ? LBD_GUE_OVERHEAD_V4 : LBD_GUE_OVERHEAD_V6;
	return lbd_outer_len(pkt);
}

/* GUE's UDP source port: entropy from the flow for ECMP on the way and RSS at
 * the backend, the same for every packet of a flow (SYN, established, moved)
 * so a flow stays on one path and one queue. Not the flow hash: the IPv4
 * established path does not compute it (a full MurmurHash3 per packet), and
 * this needs spread, not the hash's agreement between hosts. A fold of the
 * client's address and both ports (the VIP adds nothing within one VIP), one
 * multiply to mix it, into the ephemeral range 49152-65535 (RFC 8085 5.1.1,
 * as RFC 7510 asks of tunnels over UDP). Network order in, any order out. */
static __always_inline __u16 lbd_gue_source_port(const struct lbd_flow_key *flow)
{
	__u32 x = flow->src[0] ^ flow->src[1] ^ flow->src[2] ^ flow->src[3] ^
		  ((__u32)flow->sport << 16 | flow->dport);

	x *= 0x9e3779b1; /* 2^32 / golden ratio: the top bits depend on every input bit */
	return bpf_htons(0xc000 | (x >> 18));
}

/* Ask the FIB for the next hop to the backend, sized for the encapsulated
 * packet so that the kernel also checks the egress MTU. Fills `nh` (all but
 * generation and expiry) on LBD_ROUTE_OK, and nh->mtu on LBD_ROUTE_TOO_BIG. */
static __always_inline int lbd_route_to_backend(void *ctx, __u32 ifindex, const struct lbd_packet *pkt,
						 const struct lbd_backend *be,
						 const struct lbd_settings *st,
						 struct lbd_nexthop *nh, __u32 overhead, int gue)
{
	struct bpf_fib_lookup fib_storage, *fib = &fib_storage;
	int rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	/* XDP: the ingress interface; TC egress: the interface the check leaves by */
	fib->ifindex = ifindex;
	fib->tot_len = pkt->l3_len + overhead;
	/* a second-chance VIP's packets are nearly all GUE: its answer serves them */
	if (gue)
		fib->dport = bpf_htons(LBD_GUE_PORT);
	if (pkt->flow.family == LBD_FAMILY_V4) {
		fib->family = AF_INET;
		fib->tos = pkt->tos;
		fib->l4_protocol = gue ? IPPROTO_UDP : IPPROTO_IPIP;
		fib->ipv4_src = st->ipip_src_v4;
		fib->ipv4_dst = be->addr[0];
	} else {
		fib->family = AF_INET6;
		fib->l4_protocol = gue ? IPPROTO_UDP : IPPROTO_IPV6;
		__builtin_memcpy(fib->ipv6_src, st->ipip_src_v6, 16);
		__builtin_memcpy(fib->ipv6_dst, be->addr, 16);
	}
	rc = bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		/* on success too, mtu_result holds the egress MTU (kernel >= 5.12) */
		__builtin_memcpy(nh->dst_mac, fib->dmac, ETH_ALEN);
		__builtin_memcpy(nh->src_mac, fib->smac, ETH_ALEN);
		nh->mtu = fib->mtu_result;
		nh->pad = 0;
		nh->ifindex = fib->ifindex;
		return LBD_ROUTE_OK;
	}
	if (rc == BPF_FIB_LKUP_RET_FRAG_NEEDED) {
		nh->mtu = fib->mtu_result;
		return LBD_ROUTE_TOO_BIG;
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return LBD_ROUTE_NO_NEIGH;
	if (rc == BPF_FIB_LKUP_RET_FWD_DISABLED)
		return LBD_ROUTE_FORWARDING_OFF;
	return LBD_ROUTE_FAILED;
}

/* GUE after the outer IPv4 header at `at`: to LBD_GUE_PORT, naming `second`. */
static __always_inline int lbd_write_gue_v4(void *at, void *data_end, const struct lbd_packet *pkt,
					    const struct lbd_backend *second)
{
	struct lbd_gue_v4 *g = at;

	if ((void *)(g + 1) > data_end)
		return -1;
	g->udp.source = lbd_gue_source_port(&pkt->flow);
	g->udp.dest = bpf_htons(LBD_GUE_PORT);
	g->udp.len = bpf_htons(pkt->l3_len + sizeof(*g));
	g->udp.check = 0; /* the inner packet carries its own; the outer IPv4 header has one */
	g->gue.ver_c_hlen = sizeof(g->second) / 4;
	g->gue.proto = IPPROTO_IPIP;
	g->gue.flags = 0;
	g->second.magic = bpf_htons(LBD_GUE_MAGIC);
	g->second.hops = 0;
	g->second.pad = 0;
	g->second.addr = second->addr[0];
	return 0;
}

static __always_inline int lbd_write_gue_v6(void *at, void *data_end, const struct lbd_packet *pkt,
					    const struct lbd_backend *second)
{
	struct lbd_gue_v6 *g = at;

	if ((void *)(g + 1) > data_end)
		return -1;
	g->udp.source = lbd_gue_source_port(&pkt->flow);
	g->udp.dest = bpf_htons(LBD_GUE_PORT);
	g->udp.len = bpf_htons(pkt->l3_len + sizeof(*g));
	/* zero over IPv6 too: a tunnel's choice RFC 6935 allows (the design's wire format) */
	g->udp.check = 0;
	g->gue.ver_c_hlen = sizeof(g->second) / 4;
	g->gue.proto = IPPROTO_IPV6;
	g->gue.flags = 0;
	g->second.magic = bpf_htons(LBD_GUE_MAGIC);
	g->second.hops = 0;
	g->second.pad = 0;
	__builtin_memcpy(g->second.addr, second->addr, 16);
	return 0;
}

/* Bytes lbd_write_encap puts in front of the packet: the outer IP header, and
 * GUE's when there is a `second` choice. */
static __always_inline __u32 lbd_encap_len(const struct lbd_packet *pkt, const struct lbd_backend *second)
{
	if (pkt->flow.family == LBD_FAMILY_V4)
		return second ? LBD_GUE_OVERHEAD_V4 : sizeof(struct iphdr);
	return second ? LBD_GUE_OVERHEAD_V6 : sizeof(struct ipv6hdr);
}

/* Write the next hop's MACs, and an outer IP header addressed from our
 * configured source to the backend (with a `second` choice, GUE naming it
 * after that header), into a frame whose L2 header is at `data` and which has
 * outer_len (lbd_encap_len) bytes of room between its L2 header and the
 * packet `pkt` describes (parsed before the room was made). The caller has
 * checked that the Ethernet header lies within data_end (the verifier must
 * see it: lbd_move_l2 does for XDP). Returns 0 or -1. */
static __always_inline int lbd_write_encap(void *data, void *data_end, const struct lbd_packet *pkt,
					   const struct lbd_backend *be,
					   const struct lbd_backend *second,
					   const struct lbd_settings *st,
					   const struct lbd_nexthop *nh, __u32 flow_hash, __u32 outer_len)
{
	int v4 = pkt->flow.family == LBD_FAMILY_V4;
	__u32 l2_len = pkt->l2_len;
	struct ethhdr *eth = data;

	lbd_set_macs(eth, nh->dst_mac);

	if (v4) {
		struct iphdr *outer = data + (l2_len & 0x1f);

		if ((void *)(outer + 1) > data_end)
			return -1;
		if (second && lbd_write_gue_v4(outer + 1, data_end, pkt, second))
			return -1;
		outer->version = 4;
		outer->ihl = sizeof(*outer) / 4;
		outer->tos = pkt->tos;
		outer->tot_len = bpf_htons(pkt->l3_len + outer_len);
		outer->id = 0;
		/* keep the client's DF: a DF packet must not be fragmented on the way */
		outer->frag_off = pkt->ipv4_df ? bpf_htons(0x4000) : 0;
		outer->ttl = 64;
		outer->protocol = second ? IPPROTO_UDP : IPPROTO_IPIP;
		outer->saddr = st->ipip_src_v4;
		outer->daddr = be->addr[0];
		outer->check = 0;
		/* a full sum of 10 words: skipping it altogether measured no faster */
		outer->check = lbd_ipv4_csum(outer);
		return 0;
	}
	{
		struct ipv6hdr *outer = data + (l2_len & 0x1f);

		if ((void *)(outer + 1) > data_end)
			return -1;
		if (second && lbd_write_gue_v6(outer + 1, data_end, pkt, second))
			return -1;
		outer->version = 6;
		outer->priority = pkt->tos >> 4;
		/* flow label from the flow hash: entropy for ECMP and RSS at the backend */
		outer->flow_lbl[0] = ((pkt->tos & 0xf) << 4) | ((flow_hash >> 16) & 0xf);
		outer->flow_lbl[1] = flow_hash >> 8;
		outer->flow_lbl[2] = flow_hash;
		outer->payload_len = bpf_htons(pkt->l3_len + outer_len - sizeof(*outer));
		outer->nexthdr = second ? IPPROTO_UDP : IPPROTO_IPV6;
		outer->hop_limit = 64;
		__builtin_memcpy(&outer->saddr, st->ipip_src_v6, 16);
		__builtin_memcpy(&outer->daddr, be->addr, 16);
	}
	return 0;
}

/* XDP: make room for the outer headers between the L2 header and the packet
 * and fill it (lbd_write_encap). Returns 0 or -1. */
static __always_inline int lbd_encapsulate(struct xdp_md *ctx, const struct lbd_packet *pkt,
					   const struct lbd_backend *be,
					   const struct lbd_backend *second,
					   const struct lbd_settings *st,
					   const struct lbd_nexthop *nh, __u32 flow_hash)
{
	__u32 outer_len = lbd_encap_len(pkt, second);
	void *data, *data_end;

	if (bpf_xdp_adjust_head(ctx, -(int)outer_len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	/* the MACs are the next hop's (lbd_write_encap): move only the rest */
	if (lbd_move_l2_tail(data, data + outer_len, pkt->l2_len, data_end))
		return -1;
	return lbd_write_encap(data, data_end, pkt, be, second, st, nh, flow_hash, outer_len);
}

#endif /* LBD_ENCAP_H */
