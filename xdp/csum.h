/* csum.h: Internet checksums for headers the program writes itself. */
#ifndef LBD_CSUM_H
#define LBD_CSUM_H

static __always_inline __u16 lbd_csum_fold(__u64 sum)
{
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return ~sum;
}

/* Sum of the 16-bit words of a 20-byte IPv4 header (check field zeroed). */
static __always_inline __u16 lbd_ipv4_csum(struct iphdr *ip)
{
	__u16 *words = (__u16 *)ip;
	__u64 sum = 0;

#pragma unroll
	for (int i = 0; i < (int)sizeof(struct iphdr) / 2; i++)
		sum += words[i];
	return lbd_csum_fold(sum);
}

/* Add WORDS 16-bit words at p to sum. WORDS must be a literal constant: the
 * loop is unrolled at its use, where the caller has already checked
 * p + 2 * WORDS against data_end. (A function would see WORDS as a variable
 * before inlining and keep a loop whose pointer the verifier loses track of.) */
#define LBD_CSUM_ADD_WORDS(sum, p, WORDS)                 \
	do {                                              \
		const __u16 *_w = (const __u16 *)(p);     \
		_Pragma("unroll")                         \
		for (int _i = 0; _i < (WORDS); _i++)      \
			(sum) += _w[_i];                  \
	} while (0)

#endif /* LBD_CSUM_H */
