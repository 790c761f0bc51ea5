/* flowhash.h: the flow hash, MurmurHash3 x86_32 over 32-bit little-endian
 * words of the flow's bytes as they sit in the packet. lbd/dataplane/flowhash.py is the
 * reference; tests check the kernel and Python pick the same backend. */
#ifndef LBD_FLOWHASH_H
#define LBD_FLOWHASH_H

#include "lbd_shared.h"

static __always_inline __u32 lbd_rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 lbd_murmur_round(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = lbd_rotl32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = lbd_rotl32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 lbd_murmur_final(__u32 h, __u32 len)
{
	h ^= len;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Hash input: v4 src|dst|sport dport|proto 0 0 0 (16 bytes),
 *             v6 src[16]|dst[16]|sport dport|proto 0 0 0 (40 bytes). */
static __always_inline __u32 lbd_flow_hash(const struct lbd_flow_key *f)
{
	__u32 h = LBD_HASH_SEED;
	__u32 ports = (__u32)f->sport | ((__u32)f->dport << 16);

	if (f->family == LBD_FAMILY_V4) {
		h = lbd_murmur_round(h, f->src[0]);
		h = lbd_murmur_round(h, f->dst[0]);
		h = lbd_murmur_round(h, ports);
		h = lbd_murmur_round(h, f->proto);
		return lbd_murmur_final(h, 16);
	}
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = lbd_murmur_round(h, f->src[i]);
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = lbd_murmur_round(h, f->dst[i]);
	h = lbd_murmur_round(h, ports);
	h = lbd_murmur_round(h, f->proto);
	return lbd_murmur_final(h, 40);
}

/* Client affinity: the client address alone (4 or 16 bytes). */
static __always_inline __u32 lbd_client_hash(const struct lbd_flow_key *f)
{
	__u32 h = LBD_HASH_SEED;

	if (f->family == LBD_FAMILY_V4)
		return lbd_murmur_final(lbd_murmur_round(h, f->src[0]), 4);
#pragma unroll
	for (int i = 0; i < 4; i++)
		h = lbd_murmur_round(h, f->src[i]);
	return lbd_murmur_final(h, 16);
}

#endif /* LBD_FLOWHASH_H */
