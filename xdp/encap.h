/* encap.h: IPv4-in-IPv4 and IPv6-in-IPv6 encapsulation toward a backend, with
 * the next hop (and its MTU) from the kernel's FIB.
 *
 * bpf_fib_lookup() is the dearest step of an ipip packet, so balancer.c keeps
 * its answer per backend and per CPU (struct lbd_nexthop) for
 * LBD_NEXTHOP_TTL_NS (1 s unless the loader passes -D), counted in jiffies
 * (LBD_KERNEL_HZ), and checks the MTU against the cached one itself. The trade-off: a route, neighbour (MAC) or
 * MTU change, and routing by TOS or ingress interface, is seen up to that
 * long after the first packet that filled the entry. Only successful lookups
 * are cached: an unresolved next hop is asked again on every packet. */
#ifndef LBD_ENCAP_H
#define LBD_ENCAP_H

#include "lbd_shared.h"
#include "csum.h"
#include "parse.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

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

/* Ask the FIB for the next hop to the backend, sized for the encapsulated
 * packet so that the kernel also checks the egress MTU. Fills `nh` (all but
 * generation and expiry) on LBD_ROUTE_OK, and nh->mtu on LBD_ROUTE_TOO_BIG. */
static __always_inline int lbd_route_to_backend(struct xdp_md *ctx, const struct lbd_packet *pkt,
						 const struct lbd_backend *be,
						 const struct lbd_settings *st,
						 struct lbd_nexthop *nh)
{
	struct bpf_fib_lookup fib_storage, *fib = &fib_storage;
	int rc;

	__builtin_memset(fib, 0, sizeof(*fib));
	fib->ifindex = ctx->ingress_ifindex;
	fib->tot_len = pkt->l3_len + lbd_outer_len(pkt);
	if (pkt->flow.family == LBD_FAMILY_V4) {
		fib->family = AF_INET;
		fib->tos = pkt->tos;
		fib->l4_protocol = IPPROTO_IPIP;
		fib->ipv4_src = st->ipip_src_v4;
		fib->ipv4_dst = be->addr[0];
	} else {
		fib->family = AF_INET6;
		fib->l4_protocol = IPPROTO_IPV6;
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

/* Copy the L2 header (14, 18 or 22 bytes: 0-2 VLAN tags) from `from` to
 * `to`, both packet memory, at least 20 bytes apart (an outer header). Only
 * two tags (22 bytes) can overlap, so only they go through a stack copy. */
static __always_inline int lbd_move_l2(void *to, void *from, __u32 l2_len, void *data_end)
{
	__u8 l2[sizeof(struct ethhdr) + 8];

	if (l2_len == sizeof(struct ethhdr)) {
		if (from + sizeof(struct ethhdr) > data_end || to + sizeof(struct ethhdr) > data_end)
			return -1;
		__builtin_memcpy(to, from, sizeof(struct ethhdr));
		return 0;
	}
	if (l2_len == sizeof(struct ethhdr) + 4) {
		if (from + sizeof(struct ethhdr) + 4 > data_end || to + sizeof(struct ethhdr) + 4 > data_end)
			return -1;
		__builtin_memcpy(to, from, sizeof(struct ethhdr) + 4);
		return 0;
	}
	if (from + sizeof(l2) > data_end || to + sizeof(l2) > data_end)
		return -1;
	__builtin_memcpy(l2, from, sizeof(l2));
	__builtin_memcpy(to, l2, sizeof(l2));
	return 0;
}

/* Put an outer IP header between the L2 header and the packet, addressed from
 * our configured source to the backend, with the next hop's MACs. Returns 0 or -1. */
static __always_inline int lbd_encapsulate(struct xdp_md *ctx, const struct lbd_packet *pkt,
					   const struct lbd_backend *be,
					   const struct lbd_settings *st,
					   const struct lbd_nexthop *nh, __u32 flow_hash)
{
	__u32 outer_len = lbd_outer_len(pkt);
	__u32 l2_len = pkt->l2_len;
	void *data, *data_end;
	struct ethhdr *eth;

	if (bpf_xdp_adjust_head(ctx, -(int)outer_len))
		return -1;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (lbd_move_l2(data, data + outer_len, l2_len, data_end))
		return -1;
	eth = data;
	__builtin_memcpy(eth->h_dest, nh->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, nh->src_mac, ETH_ALEN);

	if (pkt->flow.family == LBD_FAMILY_V4) {
		struct iphdr *outer = data + (l2_len & 0x1f);

		if ((void *)(outer + 1) > data_end)
			return -1;
		outer->version = 4;
		outer->ihl = sizeof(*outer) / 4;
		outer->tos = pkt->tos;
		outer->tot_len = bpf_htons(pkt->l3_len + sizeof(*outer));
		outer->id = 0;
		/* keep the client's DF: a DF packet must not be fragmented on the way */
		outer->frag_off = pkt->ipv4_df ? bpf_htons(0x4000) : 0;
		outer->ttl = 64;
		outer->protocol = IPPROTO_IPIP;
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
		outer->version = 6;
		outer->priority = pkt->tos >> 4;
		/* flow label from the flow hash: entropy for ECMP and RSS at the backend */
		outer->flow_lbl[0] = ((pkt->tos & 0xf) << 4) | ((flow_hash >> 16) & 0xf);
		outer->flow_lbl[1] = flow_hash >> 8;
		outer->flow_lbl[2] = flow_hash;
		outer->payload_len = bpf_htons(pkt->l3_len);
		outer->nexthdr = IPPROTO_IPV6;
		outer->hop_limit = 64;
		__builtin_memcpy(&outer->saddr, st->ipip_src_v6, 16);
		__builtin_memcpy(&outer->daddr, be->addr, 16);
	}
	return 0;
}

#endif /* LBD_ENCAP_H */
