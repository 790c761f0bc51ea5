/* frame.h: what both XDP programs (balancer.c and decap.c) need to rewrite a
 * frame's headers in place: the address-family numbers bpf_fib_lookup()
 * takes, and moving the L2 header over (or in front of) outer headers. */
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

#endif
