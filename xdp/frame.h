/* frame.h: what both XDP programs (balancer.c and decap.c) need of a frame's
 * L2 header: the walk over Ethernet and its VLAN tags to the IP header, the
 * address-family numbers bpf_fib_lookup() takes, and moving the L2 header
 * over (or in front of) outer headers to rewrite a frame in place, and setting
 * its MACs. */
#ifndef LBD_FRAME_H
#define LBD_FRAME_H

/* the kernel's AF_INET and AF_INET6 (include/linux/socket.h): no userspace
 * socket header is included in BPF C */
#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define LBD_ETH_P_8021AD 0x88A8

/* The L2 header: Ethernet, then an outer tag (802.1ad service tag or 802.1Q)
 * and at most one 802.1Q inside it. Sets *l2_len (14, 18 or 22) and *proto
 * (the ethertype after the tags, network order); -1 if the frame ends inside
 * them. Both programs take the same frames as IP: what the balancer sends a
 * backend on, the backend's program reads. */
static __always_inline int lbd_parse_l2(void *data, void *data_end, __u32 *l2_len, __u16 *proto)
{
	struct ethhdr *eth = data;
	struct lbd_vlan_hdr { __be16 tci; __be16 proto; } *vlan;

	if ((void *)(eth + 1) > data_end)
		return -1;
	*proto = eth->h_proto;
	*l2_len = sizeof(*eth);
	if (*proto == bpf_htons(ETH_P_8021Q) || *proto == bpf_htons(LBD_ETH_P_8021AD)) {
		vlan = data + sizeof(*eth);
		if ((void *)(vlan + 1) > data_end)
			return -1;
		*proto = vlan->proto;
		*l2_len += sizeof(*vlan);
		if (*proto == bpf_htons(ETH_P_8021Q)) {
			vlan = data + sizeof(*eth) + sizeof(*vlan);
			if ((void *)(vlan + 1) > data_end)
				return -1;
			*proto = vlan->proto;
			*l2_len += sizeof(*vlan);
		}
	}
	return 0;
}

/* Set a frame's two MAC addresses from `macs`: 12 bytes, destination then
 * source, as struct lbd_backend and struct lbd_nexthop hold them (2-byte
 * aligned). In 16-bit words: a memcpy into a packet, whose alignment clang
 * cannot know, becomes twelve byte loads and stores, the longest stretch of
 * an encapsulated packet's code (every JITed byte of it is fetched per packet).
 * 16 bits, not 32: a frame's start is 2-byte aligned for the verifier's strict
 * alignment too (NET_IP_ALIGN), so the program loads on every architecture. */
static __always_inline void lbd_set_macs(struct ethhdr *eth, const __u8 *macs)
{
	typedef __u16 __attribute__((may_alias)) lbd_u16_alias;
	lbd_u16_alias *to = (lbd_u16_alias *)eth;
	const lbd_u16_alias *from = (const lbd_u16_alias *)macs;

#pragma unroll
	for (int i = 0; i < 2 * ETH_ALEN / 2; i++)
		to[i] = from[i];
}

/* Copy the L2 header (14, 18 or 22 bytes: 0-2 VLAN tags) from `from` to
 * `to`, both packet memory, at least 20 bytes apart (an outer header). Only
 * two tags (22 bytes) can overlap, so only they go through a stack copy.
 * Both ends are checked: the verifier tracks the two pointers apart. */
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

/* lbd_move_l2 for a caller that writes both MACs itself (lbd_set_macs):
 * only what follows them, the VLAN tags and the ethertype (2, 6 or 10 bytes),
 * in 16-bit words. `to` and `from` at least 10 bytes apart, so nothing
 * overlaps. */
static __always_inline int lbd_move_l2_tail(void *to, void *from, __u32 l2_len, void *data_end)
{
	typedef __u16 __attribute__((may_alias)) lbd_u16_alias;
	lbd_u16_alias *t = to + 2 * ETH_ALEN;
	const lbd_u16_alias *f = from + 2 * ETH_ALEN;

	if (l2_len == sizeof(struct ethhdr)) {
		if (from + sizeof(struct ethhdr) > data_end || to + sizeof(struct ethhdr) > data_end)
			return -1;
		t[0] = f[0];
		return 0;
	}
	if (l2_len == sizeof(struct ethhdr) + 4) {
		if (from + sizeof(struct ethhdr) + 4 > data_end || to + sizeof(struct ethhdr) + 4 > data_end)
			return -1;
#pragma unroll
		for (int i = 0; i < 3; i++)
			t[i] = f[i];
		return 0;
	}
	if (from + sizeof(struct ethhdr) + 8 > data_end || to + sizeof(struct ethhdr) + 8 > data_end)
		return -1;
#pragma unroll
	for (int i = 0; i < 5; i++)
		t[i] = f[i];
	return 0;
}

#endif
