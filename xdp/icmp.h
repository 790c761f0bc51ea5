/* icmp.h: path MTU discovery through the balancer.
 *  - An ICMP "fragmentation needed" / ICMPv6 "packet too big" about a VIP flow
 *    (sent to the VIP by a router on the return path) names the flow in its
 *    quoted header; lbd_icmp_inner_flow() recovers the client's 5-tuple so the
 *    error goes to the backend that owns the flow.
 *  - In ipip mode a packet too big to encapsulate is answered in place with
 *    such an error, carrying the MTU the client must use. */
#ifndef LBD_ICMP_H
#define LBD_ICMP_H

#include "lbd_shared.h"
#include "csum.h"
#include "parse.h"

#define LBD_ICMP_FRAG_NEEDED_TYPE 3
#define LBD_ICMP_FRAG_NEEDED_CODE 4
#define LBD_ICMPV6_PKT_TOOBIG 2
#define LBD_ICMP_HDR_LEN 8
/* Bytes of the offending packet quoted back. RFC 792 asks for the IP header
 * and the 8 bytes after it (the ports): 68 covers an IPv4 header with full
 * options. RFC 4443 2.4(c) asks for as much as fits in the minimum IPv6 MTU:
 * 1280 - 40 - 8 = 1232, and a packet too big for an IPv6 link (1280 or more)
 * once 40 bytes are added always has that many. Fixed sizes keep the
 * checksum loops constant. */
#define LBD_ICMP_QUOTE_V4 68
#define LBD_ICMP_QUOTE_V6 1232

/* Fill `flow` with the client->VIP flow quoted in a too-big error. Returns 0
 * if the packet is such an error with a readable TCP/UDP header inside. */
static __always_inline int lbd_icmp_inner_flow(const struct lbd_packet *pkt, void *data_end,
					       struct lbd_flow_key *flow)
{
	__u8 *icmp = pkt->l4;
	__u32 quoted = pkt->l3_len - pkt->l4_off - LBD_ICMP_HDR_LEN; /* parse.h: >= 0 */
	__u16 *ports;

	if ((void *)(icmp + LBD_ICMP_HDR_LEN) > data_end)
		return -1;
	if (pkt->flow.family == LBD_FAMILY_V4) {
		struct iphdr *inner = (void *)(icmp + LBD_ICMP_HDR_LEN);

		if (pkt->flow.proto != IPPROTO_ICMP || icmp[0] != LBD_ICMP_FRAG_NEEDED_TYPE ||
		    icmp[1] != LBD_ICMP_FRAG_NEEDED_CODE)
			return -1;
		/* a quoted IPv4 header, not a non-first fragment (whose "ports"
		 * would be payload) */
		if ((void *)(inner + 1) > data_end || inner->version != 4 || inner->ihl < 5 ||
		    (inner->frag_off & bpf_htons(IP_OFFSET)))
			return -1;
		/* the quoted header and ports lie inside the ICMP packet */
		if (inner->ihl * 4 + 4 > quoted)
			return -1;
		ports = (void *)inner + inner->ihl * 4;
		if ((void *)(ports + 2) > data_end)
			return -1;
		flow->family = LBD_FAMILY_V4;
		flow->src[0] = inner->daddr; /* the client */
		flow->dst[0] = inner->saddr; /* the VIP */
		flow->proto = inner->protocol;
	} else {
		struct ipv6hdr *inner = (void *)(icmp + LBD_ICMP_HDR_LEN);

		if (pkt->flow.proto != IPPROTO_ICMPV6 || icmp[0] != LBD_ICMPV6_PKT_TOOBIG)
			return -1;
		if ((void *)(inner + 1) > data_end || inner->version != 6 || sizeof(*inner) + 4 > quoted)
			return -1;
		ports = (void *)(inner + 1);
		if ((void *)(ports + 2) > data_end)
			return -1;
		flow->family = LBD_FAMILY_V6;
		__builtin_memcpy(flow->src, &inner->daddr, 16);
		__builtin_memcpy(flow->dst, &inner->saddr, 16);
		flow->proto = inner->nexthdr;
	}
	if (flow->proto != IPPROTO_TCP && flow->proto != IPPROTO_UDP)
		return -1;
	flow->sport = ports[1];
	flow->dport = ports[0];
	return 0;
}

static __always_inline __u64 lbd_csum_add_addr(__u64 sum, const __u32 *addr)
{
#pragma unroll
	for (int i = 0; i < 4; i++)
		sum += (addr[i] & 0xffff) + (addr[i] >> 16);
	return sum;
}

/* Turn the packet into a too-big error back to its sender and return
 * XDP_TX, or XDP_DROP if the frame cannot be reshaped. `mtu` is the MTU the
 * client must use (egress MTU minus our outer header). */
static __always_inline int lbd_reply_too_big(struct xdp_md *ctx, const struct lbd_packet *pkt,
					     __u32 mtu)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l2_len = pkt->l2_len & 0x1f;
	__u32 ip_len = pkt->flow.family == LBD_FAMILY_V4 ? sizeof(struct iphdr) : sizeof(struct ipv6hdr);
	__u32 room = ip_len + LBD_ICMP_HDR_LEN;
	__u32 quote = pkt->flow.family == LBD_FAMILY_V4 ? LBD_ICMP_QUOTE_V4 : LBD_ICMP_QUOTE_V6;
	__u8 client_mac[ETH_ALEN], our_mac[ETH_ALEN];
	struct ethhdr *eth = data;
	__u8 *icmp;
	__u64 sum;

	if (pkt->l3_len < quote || pkt->l3 + quote > data_end)
		return XDP_DROP;
	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	__builtin_memcpy(client_mac, eth->h_source, ETH_ALEN);
	__builtin_memcpy(our_mac, eth->h_dest, ETH_ALEN);

	/* Keep L2 + quoted bytes, then open room for the new IP and ICMP headers. */
	if (bpf_xdp_adjust_tail(ctx, (int)(l2_len + quote) - (int)(data_end - data)))
		return XDP_DROP;
	if (bpf_xdp_adjust_head(ctx, -(int)room))
		return XDP_DROP;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	if (lbd_move_l2(data, data + room, l2_len, data_end))
		return XDP_DROP;
	eth = data;
	__builtin_memcpy(eth->h_dest, client_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, our_mac, ETH_ALEN);

	if (pkt->flow.family == LBD_FAMILY_V4) {
		struct iphdr *ip = data + l2_len;

		if ((void *)ip + sizeof(*ip) + LBD_ICMP_HDR_LEN + LBD_ICMP_QUOTE_V4 > data_end)
			return XDP_DROP;
		ip->version = 4;
		ip->ihl = 5;
		ip->tos = 0xc0; /* internetwork control, as routers send errors */
		ip->tot_len = bpf_htons(room + quote);
		ip->id = 0;
		ip->frag_off = 0;
		ip->ttl = 64;
		ip->protocol = IPPROTO_ICMP;
		ip->saddr = pkt->flow.dst[0];
		ip->daddr = pkt->flow.src[0];
		ip->check = 0;
		ip->check = lbd_ipv4_csum(ip);
		icmp = (void *)(ip + 1);
		icmp[0] = LBD_ICMP_FRAG_NEEDED_TYPE;
		icmp[1] = LBD_ICMP_FRAG_NEEDED_CODE;
		*(__u16 *)(icmp + 2) = 0;
		*(__u16 *)(icmp + 4) = 0;
		*(__u16 *)(icmp + 6) = bpf_htons(mtu);
		sum = 0;
		LBD_CSUM_ADD_WORDS(sum, icmp, (LBD_ICMP_HDR_LEN + LBD_ICMP_QUOTE_V4) / 2);
		*(__u16 *)(icmp + 2) = lbd_csum_fold(sum);
		return XDP_TX;
	}
	{
		struct ipv6hdr *ip6 = data + l2_len;
		__u32 icmp_len = LBD_ICMP_HDR_LEN + LBD_ICMP_QUOTE_V6;

		if ((void *)ip6 + sizeof(*ip6) + icmp_len > data_end)
			return XDP_DROP;
		*(__u32 *)ip6 = bpf_htonl(0x60000000);
		ip6->payload_len = bpf_htons(icmp_len);
		ip6->nexthdr = IPPROTO_ICMPV6;
		ip6->hop_limit = 64;
		__builtin_memcpy(&ip6->saddr, pkt->flow.dst, 16);
		__builtin_memcpy(&ip6->daddr, pkt->flow.src, 16);
		icmp = (void *)(ip6 + 1);
		icmp[0] = LBD_ICMPV6_PKT_TOOBIG;
		icmp[1] = 0;
		*(__u16 *)(icmp + 2) = 0;
		*(__u32 *)(icmp + 4) = bpf_htonl(mtu);
		/* pseudo-header: addresses, upper-layer length, next header */
		sum = lbd_csum_add_addr(0, pkt->flow.dst);
		sum = lbd_csum_add_addr(sum, pkt->flow.src);
		sum += bpf_htons(icmp_len) + bpf_htons(IPPROTO_ICMPV6);
		LBD_CSUM_ADD_WORDS(sum, icmp, (LBD_ICMP_HDR_LEN + LBD_ICMP_QUOTE_V6) / 2);
		*(__u16 *)(icmp + 2) = lbd_csum_fold(sum);
	}
	return XDP_TX;
}

#endif /* LBD_ICMP_H */
