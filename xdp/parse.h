/* parse.h: Ethernet (one optional 802.1Q tag), IPv4 (with options), IPv6
 * (with a few extension headers) and the TCP/UDP ports. Every read is
 * preceded by an explicit check against data_end; nothing here writes. */
#ifndef LBD_PARSE_H
#define LBD_PARSE_H

#include "lbd_shared.h"

#ifndef IP_MF
#define IP_MF 0x2000
#endif
#ifndef IP_OFFSET
#define IP_OFFSET 0x1fff
#endif
#define LBD_IPV6_MAX_EXT_HDRS 4

/* How far parsing got. Only LBD_PARSED_L4 and LBD_PARSED_FRAGMENT are
 * forwardable; the others tell the caller whether a VIP address was involved. */
enum lbd_parse_result {
	LBD_NOT_IP = 0,       /* not IPv4/IPv6, or IP header cut short: pass */
	LBD_PARSED_L3_BAD,    /* addresses read, but the header is inconsistent */
	LBD_PARSED_L4_SHORT,  /* addresses read, L4 header cut short */
	LBD_PARSED_FRAGMENT,  /* a fragment: no ports */
	LBD_PARSED_L4,        /* full 5-tuple */
	LBD_PARSED_ICMP,      /* ICMP/ICMPv6 header readable at l4 */
};

struct lbd_packet {
	struct lbd_flow_key flow; /* addresses, ports, proto, family */
	void *l3;                 /* IP header */
	void *l4;                 /* first byte after the IP (and ext) headers */
	__u32 l2_len;             /* 14, or 18 with an 802.1Q tag */
	__u32 l3_len;             /* IP length from the header (v6: 40 + payload) */
	__u32 frame_len;          /* bytes in the frame as received */
	__u8 tos;                 /* v4 TOS / v6 traffic class */
	__u8 ipv4_df;             /* v4 don't-fragment bit */
};

static __always_inline int lbd_parse_ports(struct lbd_packet *pkt, void *data_end)
{
	__u16 *ports = pkt->l4;

	if (pkt->flow.proto == IPPROTO_ICMP || pkt->flow.proto == IPPROTO_ICMPV6) {
		if (pkt->l4 + sizeof(struct icmphdr) > data_end)
			return LBD_PARSED_L4_SHORT;
		return LBD_PARSED_ICMP;
	}
	if (pkt->flow.proto == IPPROTO_TCP) {
		if (pkt->l4 + sizeof(struct tcphdr) > data_end)
			return LBD_PARSED_L4_SHORT;
	} else if (pkt->flow.proto == IPPROTO_UDP) {
		if (pkt->l4 + sizeof(struct udphdr) > data_end)
			return LBD_PARSED_L4_SHORT;
	} else {
		return LBD_PARSED_L4; /* other protocols never match a VIP key */
	}
	pkt->flow.sport = ports[0];
	pkt->flow.dport = ports[1];
	return LBD_PARSED_L4;
}

static __always_inline int lbd_parse_ipv4(struct lbd_packet *pkt, void *data_end)
{
	struct iphdr *ip = pkt->l3;
	__u32 ihl_bytes;

	if ((void *)(ip + 1) > data_end)
		return LBD_NOT_IP;
	pkt->flow.family = LBD_FAMILY_V4;
	pkt->flow.src[0] = ip->saddr;
	pkt->flow.dst[0] = ip->daddr;
	pkt->flow.proto = ip->protocol;
	pkt->tos = ip->tos;
	pkt->ipv4_df = !!(ip->frag_off & bpf_htons(0x4000));
	ihl_bytes = ip->ihl * 4;
	pkt->l3_len = bpf_ntohs(ip->tot_len);
	if (ip->version != 4 || ihl_bytes < sizeof(*ip) || pkt->l3_len < ihl_bytes ||
	    pkt->l3 + pkt->l3_len > data_end)
		return LBD_PARSED_L3_BAD;
	pkt->l4 = pkt->l3 + ihl_bytes;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET))
		return LBD_PARSED_FRAGMENT;
	return lbd_parse_ports(pkt, data_end);
}

static __always_inline int lbd_parse_ipv6(struct lbd_packet *pkt, void *data_end)
{
	struct ipv6hdr *ip6 = pkt->l3;
	void *cursor;
	__u8 next;

	if ((void *)(ip6 + 1) > data_end)
		return LBD_NOT_IP;
	pkt->flow.family = LBD_FAMILY_V6;
	__builtin_memcpy(pkt->flow.src, &ip6->saddr, 16);
	__builtin_memcpy(pkt->flow.dst, &ip6->daddr, 16);
	pkt->tos = (ip6->priority << 4) | (ip6->flow_lbl[0] >> 4);
	pkt->l3_len = sizeof(*ip6) + bpf_ntohs(ip6->payload_len);
	next = ip6->nexthdr;
	pkt->flow.proto = next;
	if (ip6->version != 6 || pkt->l3 + pkt->l3_len > data_end)
		return LBD_PARSED_L3_BAD;
	cursor = ip6 + 1;

	/* Skip the extension headers a VIP packet may carry; stop at a fragment
	 * header. A chain longer than the bound is treated as malformed. */
#pragma unroll
	for (int i = 0; i < LBD_IPV6_MAX_EXT_HDRS; i++) {
		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS) {
			__u8 *ext = cursor;

			if ((void *)(ext + 2) > data_end)
				return LBD_PARSED_L4_SHORT;
			next = ext[0];
			cursor += (ext[1] + 1) * 8;
			continue;
		}
		if (next == IPPROTO_FRAGMENT) {
			struct lbd_frag_hdr { __u8 nexthdr; __u8 reserved; __be16 frag_off; __be32 id; } *fh = cursor;

			if ((void *)(fh + 1) > data_end)
				return LBD_PARSED_L4_SHORT;
			pkt->flow.proto = fh->nexthdr;
			pkt->l4 = fh + 1;
			/* offset 0 and no more fragments: an atomic fragment, whole packet */
			if (fh->frag_off & bpf_htons(0xfff9))
				return LBD_PARSED_FRAGMENT;
			next = fh->nexthdr;
			cursor = fh + 1;
			continue;
		}
		pkt->flow.proto = next;
		pkt->l4 = cursor;
		return lbd_parse_ports(pkt, data_end);
	}
	pkt->flow.proto = next;
	return LBD_PARSED_L3_BAD;
}

/* Parse from the Ethernet header down to the ports. */
static __always_inline int lbd_parse(struct lbd_packet *pkt, void *data, void *data_end)
{
	struct ethhdr *eth = data;
	__u16 proto;

	pkt->frame_len = data_end - data;
	if ((void *)(eth + 1) > data_end)
		return LBD_NOT_IP;
	proto = eth->h_proto;
	pkt->l2_len = sizeof(*eth);
	if (proto == bpf_htons(ETH_P_8021Q)) {
		struct lbd_vlan_hdr { __be16 tci; __be16 proto; } *vlan = data + sizeof(*eth);

		if ((void *)(vlan + 1) > data_end)
			return LBD_NOT_IP;
		proto = vlan->proto;
		pkt->l2_len += sizeof(*vlan);
	}
	pkt->l3 = data + pkt->l2_len;
	if (proto == bpf_htons(ETH_P_IP))
		return lbd_parse_ipv4(pkt, data_end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return lbd_parse_ipv6(pkt, data_end);
	return LBD_NOT_IP;
}

#endif /* LBD_PARSE_H */
