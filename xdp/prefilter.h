/* prefilter.h: is the destination possibly a VIP address at all?
 *
 * Most traffic through the interface is not for a VIP. Before any hash-map
 * lookup, one bit of a small array (8 KiB, one inlined array access) answers
 * "certainly not a VIP address" for nearly all of it. The control plane sets
 * the bit of every VIP address (any port, any protocol) before the VIP
 * appears and clears it only after the last VIP on it is gone, so there are
 * no false negatives; a false positive (another address sharing the bit)
 * only costs the hash lookups that every packet paid before.
 *
 * Hash: multiplicative (Fibonacci) over the XOR of the address's four words,
 * so IPv4 (words 1-3 zero) and IPv6 need no branch. lbd/dataplane/maps.py
 * (prefilter_bit) is the Python side of the same formula. The map access
 * itself is in balancer.c: bcc rewrites map calls in the main file only.
 *
 * quic_prefilter is a second bitmap of the same bits, set for the addresses
 * of QUIC VIPs (xdp/quic.h): a UDP datagram to one tries its connection ID
 * before any connection-table lookup; a false positive costs one VIP lookup. */
#ifndef LBD_PREFILTER_H
#define LBD_PREFILTER_H

#include "lbd_shared.h"

_Static_assert(LBD_PREFILTER_WORDS * 64 == 1 << LBD_PREFILTER_LOG2,
	       "prefilter words must hold exactly 1 << LBD_PREFILTER_LOG2 bits");

static __always_inline __u32 lbd_prefilter_bit(const __u32 addr[4])
{
	__u32 folded = addr[0] ^ addr[1] ^ addr[2] ^ addr[3];

	return (__u32)(folded * LBD_PREFILTER_HASH_MUL) >> (32 - LBD_PREFILTER_LOG2);
}

/* Whether a bitmap word (prefilter's or quic_prefilter's, NULL if out of
 * range) has the bit of lbd_prefilter_bit(). */
static __always_inline int lbd_prefilter_has(const __u64 *word, __u32 bit)
{
	return word && (*word >> (bit % 64)) & 1;
}

#endif /* LBD_PREFILTER_H */
