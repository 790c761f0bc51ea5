/* parse.h: Ethernet (up to two VLAN tags: frame.h's walk, shared with
 * decap.c), IPv4 (with options), IPv6 (with a bounded extension-header
 * chain), the TCP/UDP ports and TCP's flags.
 *
 * Two bounds hold for every read: the frame (data_end, which the verifier
 * needs) and the IP packet as its own header declares it (IPv4 total length,
 * IPv6 40 + payload length). Bytes after the IP packet (Ethernet padding)
 * are never read, so a length field that ends before the L4 header makes the
 * packet malformed instead of having its ports read from the padding.
 * Nothing here writes. */
#ifndef LBD_PARSE_H
#define LBD_PARSE_H

#include "lbd_shared.h"
#include "frame.h"

#ifndef IP_MF
#define IP_MF 0x2000
#endif
#ifndef IP_OFFSET
#define IP_OFFSET 0x1fff
#endif
#define LBD_TCP_FIN 0x01
#define LBD_TCP_SYN 0x02
#define LBD_TCP_RST 0x04
#define LBD_TCP_ACK 0x10

/* How far parsing got. Only LBD_PARSED_L4 and LBD_PARSED_FRAGMENT are
 * forwardable; the others tell the caller whether a VIP address was involved. */
enum lbd_parse_result {
	LBD_NOT_IP = 0,       /* not IPv4/IPv6, or IP header cut short: pass */
	LBD_PARSED_L3_BAD,    /* addresses read, but the IP header is inconsistent */
	LBD_PARSED_L4_SHORT,  /* an extension or the TCP/UDP header ends past the IP packet */
	LBD_PARSED_EXT_CHAIN, /* IPv6 chain longer than LBD_IPV6_MAX_EXT_HDRS */
	LBD_PARSED_FRAGMENT,  /* a fragment: no ports */
	LBD_PARSED_L4,        /* TCP or UDP: full 5-tuple */
	LBD_PARSED_ICMP,      /* ICMP/ICMPv6 header inside the IP packet at l4 */
	LBD_PARSED_OTHER,     /* a well-formed packet of another protocol: no VIP takes it */
};

struct lbd_packet {
	struct lbd_flow_key flow; /* addresses, ports, proto, family */
	void *l3;                 /* IP header */
	void *l4;                 /* first byte after the IP (and ext) headers */
	__u32 l2_len;             /* 14, 18 or 22: Ethernet and 0-2 VLAN tags */
	__u32 l3_len;             /* IP length from the header (v6: 40 + payload) */
	__u32 l4_off;             /* l4 - l3: bytes of IP (and ext) headers */
	__u32 frame_len;          /* bytes in the frame as received */
	__u8 tos;                 /* v4 TOS / v6 traffic class */
	__u8 ipv4_df;             /* v4 don't-fragment bit */
	__u8 tcp_flags;           /* TCP: byte 13 of the header (LBD_TCP_*) */
	__u8 no_icmp_error;       /* RFC 1122 3.2.2: never answer this with an ICMP error */
	__u8 forwarded;           /* set once the packet left for a backend (balancer.c) */
};

/* The L4 header at pkt->l4_off: TCP or UDP must fit inside the IP packet. */
static __always_inline int lbd_parse_ports(struct lbd_packet *pkt, void *data_end)
{
	__u8 *l4 = pkt->l4;
	__u32 need;

	if (pkt->flow.proto == IPPROTO_TCP)
		need = 20; /* the fixed TCP header: ports and flags are read */
	else if (pkt->flow.proto == IPPROTO_UDP)
		need = 8;
	else if (pkt->flow.proto == IPPROTO_ICMP || pkt->flow.proto == IPPROTO_ICMPV6) {
		/* an ICMP header cut short is no error we handle: the host's business */
		if (pkt->l4_off + 8 > pkt->l3_len || (void *)(l4 + 8) > data_end)
			return LBD_PARSED_OTHER;
		return LBD_PARSED_ICMP;
	} else
		return LBD_PARSED_OTHER;
	if (pkt->l4_off + need > pkt->l3_len)
		return LBD_PARSED_L4_SHORT;
	/* the IP packet lies inside the frame (checked), but the verifier wants
	 * each read checked against data_end itself */
	if (need == 20) {
		if ((void *)(l4 + 20) > data_end)
			return LBD_PARSED_L4_SHORT;
		pkt->tcp_flags = l4[13];
	} else if ((void *)(l4 + 8) > data_end) {
		return LBD_PARSED_L4_SHORT;
	}
	pkt->flow.sport = *(__u16 *)l4;
	pkt->flow.dport = *(__u16 *)(l4 + 2);
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
	pkt->l4_off = ihl_bytes;
	pkt->l4 = pkt->l3 + ihl_bytes;
	if (ip->frag_off & bpf_htons(IP_MF | IP_OFFSET)) {
		pkt->no_icmp_error = !!(ip->frag_off & bpf_htons(IP_OFFSET));
		return LBD_PARSED_FRAGMENT;
	}
	return lbd_parse_ports(pkt, data_end);
}

static __always_inline int lbd_parse_ipv6(struct lbd_packet *pkt, void *data_end)
{
	struct ipv6hdr *ip6 = pkt->l3;
	__u32 off = sizeof(*ip6);
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

	/* Up to LBD_IPV6_MAX_EXT_HDRS extension headers, then one more pass that
	 * can only reach the upper-layer header: a chain of exactly the bound is
	 * parsed, a longer one is LBD_PARSED_EXT_CHAIN. Each header must end
	 * inside the IP packet. A non-first fragment ends the walk (what follows
	 * its fragment header is payload); a first fragment carries the rest of
	 * the chain, which is walked to find its upper-layer protocol. */
	int first_fragment = 0;

#pragma unroll
	for (int i = 0; i <= LBD_IPV6_MAX_EXT_HDRS; i++) {
		__u8 *ext = pkt->l3 + (off & 0xffff);

		if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS ||
		    next == IPPROTO_FRAGMENT) {
			if (i == LBD_IPV6_MAX_EXT_HDRS)
				return LBD_PARSED_EXT_CHAIN;
			/* every one of these is at least 8 bytes */
			if (off + 8 > pkt->l3_len || (void *)(ext + 8) > data_end)
				return LBD_PARSED_L4_SHORT;
			if (next == IPPROTO_FRAGMENT) {
				__u16 frag_off = (ext[2] << 8) | ext[3];

				next = ext[0];
				off += 8;
				if (frag_off & 0xfff8) { /* an offset: a non-first fragment */
					pkt->flow.proto = next;
					pkt->l4_off = off;
					pkt->l4 = ext + 8;
					pkt->no_icmp_error = 1;
					return LBD_PARSED_FRAGMENT;
				}
				/* the M flag: a first fragment; neither: an atomic
				 * fragment, a whole packet */
				first_fragment = frag_off & 1;
				continue;
			}
			next = ext[0];
			off += (ext[1] + 1) * 8;
			if (off > pkt->l3_len)
				return LBD_PARSED_L4_SHORT;
			continue;
		}
		pkt->flow.proto = next;
		pkt->l4_off = off;
		pkt->l4 = ext;
		if (first_fragment)
			return LBD_PARSED_FRAGMENT;
		return lbd_parse_ports(pkt, data_end);
	}
	return LBD_PARSED_EXT_CHAIN; /* not reached: the last pass returns */
}

/* Parse from the Ethernet header down to the ports. */
static __always_inline int lbd_parse(struct lbd_packet *pkt, void *data, void *data_end)
{
	__u16 proto;

	pkt->frame_len = data_end - data;
	if (lbd_parse_l2(data, data_end, &pkt->l2_len, &proto))
		return LBD_NOT_IP;
	pkt->l3 = data + pkt->l2_len;
	if (proto == bpf_htons(ETH_P_IP))
		return lbd_parse_ipv4(pkt, data_end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return lbd_parse_ipv6(pkt, data_end);
	return LBD_NOT_IP;
}

#endif /* LBD_PARSE_H */
