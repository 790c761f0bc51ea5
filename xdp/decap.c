/* decap.c: backend-side IP-in-IP decapsulation, for backends whose kernel has
 * no IPIP tunnel devices (like these test hosts). Attached to the backend's
 * interface, it strips the outer IPv4 (protocol 4) or IPv6 (next header 41)
 * header and passes the original packet, byte for byte, to the kernel, which
 * delivers it to the VIP on the loopback. Everything else passes untouched.
 *
 * Like a kernel ipip device without a fixed remote, it accepts any outer
 * source: filter tunnel sources at the edge if that matters to you. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>

#include "lbd_shared.h"

/* Move the L2 header (14, 18 or 22 bytes: 0-2 VLAN tags) forward over the
 * outer header, then drop the bytes in front of it. Two tags and an IPv4
 * outer header (20 bytes) overlap: they go through a stack copy. */
static __always_inline int lbd_strip(struct xdp_md *ctx, __u32 l2_len, __u32 outer_len)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 l2[sizeof(struct ethhdr) + 8];

	if (data + outer_len + sizeof(l2) > data_end)
		return XDP_PASS;
	if (l2_len == sizeof(struct ethhdr)) {
		__builtin_memcpy(data + outer_len, data, sizeof(struct ethhdr));
	} else if (l2_len == sizeof(struct ethhdr) + 4) {
		__builtin_memcpy(data + outer_len, data, sizeof(struct ethhdr) + 4);
	} else {
		__builtin_memcpy(l2, data, sizeof(l2));
		__builtin_memcpy(data + outer_len, l2, sizeof(l2));
	}
	if (bpf_xdp_adjust_head(ctx, (int)outer_len))
		return XDP_DROP; /* cannot happen: the bytes were checked above */
	return XDP_PASS;
}

int lbd_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 l2_len = sizeof(*eth);
	__u16 proto;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	proto = eth->h_proto;
	/* as the balancer parses it: an outer 802.1ad or 802.1Q tag, then at most one 802.1Q */
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(0x88A8)) {
		__be16 *inner_proto = data + sizeof(*eth) + 2;

		if ((void *)(inner_proto + 1) > data_end)
			return XDP_PASS;
		proto = *inner_proto;
		l2_len += 4;
		if (proto == bpf_htons(ETH_P_8021Q)) {
			inner_proto = data + sizeof(*eth) + 6;
			if ((void *)(inner_proto + 1) > data_end)
				return XDP_PASS;
			proto = *inner_proto;
			l2_len += 4;
		}
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *outer = data + l2_len;
		struct iphdr *inner;

		if ((void *)(outer + 1) > data_end || outer->protocol != IPPROTO_IPIP || outer->ihl < 5)
			return XDP_PASS;
		/* fragmented tunnel packets are left to the kernel to reassemble */
		if (outer->frag_off & bpf_htons(0x3fff))
			return XDP_PASS;
		inner = (void *)outer + outer->ihl * 4;
		if ((void *)(inner + 1) > data_end || inner->version != 4)
			return XDP_PASS;
		return lbd_strip(ctx, l2_len, outer->ihl * 4);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *outer = data + l2_len;
		struct ipv6hdr *inner = (void *)(outer + 1);

		if ((void *)(inner + 1) > data_end || outer->nexthdr != IPPROTO_IPV6 ||
		    inner->version != 6)
			return XDP_PASS;
		return lbd_strip(ctx, l2_len, sizeof(*outer));
	}
	return XDP_PASS;
}
