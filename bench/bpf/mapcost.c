/* mapcost.c: the kernel map operations lbd's program makes, one kind per
 * function, on maps shaped like lbd's (bench/xdp_cost.py). Each call makes
 * N operations (N from the frame's first byte, 1..128) on keys never used
 * before (a per-CPU sequence number and the CPU's id), so every operation
 * meets cold memory as a new flow's does.
 *  - lru_insert:        update of a new key in an LRU hash, common LRU lists
 *                       (lbd's conntrack: 40-byte key, 8-byte value, flags 0)
 *  - lru_percpu_insert: the same in an LRU hash with per-CPU lists
 *                       (BPF_F_NO_COMMON_LRU)
 *  - lru_lookup_miss:   lookup of a key the (full) common-LRU table does not hold
 *  - lru_lookup_empty:  the same in a table that holds nothing (only the
 *                       bucket is read: its share of a miss)
 *  - lru_lookup_empty_64k: the same in an empty 65,536-entry table (1 MiB of
 *                       buckets instead of 16 MiB)
 *  - nothing:           what every function does around its operations
 *                       (reads N, takes the sequence numbers): the baseline
 *  - ring_slot:         lookup of a pseudo-random slot of a 65,537-entry u32
 *                       array (a Maglev table), through an array of maps as
 *                       lbd does
 * MAPCOST_SIZE entries per table (-DMAPCOST_SIZE=...). */
#include <uapi/linux/bpf.h>

#ifndef MAPCOST_SIZE
#define MAPCOST_SIZE 1048576
#endif
#define MAPCOST_RING 65537
#define MAPCOST_MAX_OPS 128

struct mc_key {
	u32 src[4];
	u32 dst[4];
	u16 sport;
	u16 dport;
	u8 proto;
	u8 family;
	u16 pad;
};

struct mc_value {
	u32 backend_id;
	u32 generation;
};

BPF_F_TABLE("lru_hash", struct mc_key, struct mc_value, common_lru, MAPCOST_SIZE, 0);
BPF_F_TABLE("lru_hash", struct mc_key, struct mc_value, percpu_lru, MAPCOST_SIZE, BPF_F_NO_COMMON_LRU);
BPF_F_TABLE("lru_hash", struct mc_key, struct mc_value, empty_lru, MAPCOST_SIZE, 0);
BPF_F_TABLE("lru_hash", struct mc_key, struct mc_value, empty_lru_64k, 65536, 0);
BPF_F_TABLE("array", u32, u32, ring_inner, MAPCOST_RING, BPF_F_MMAPABLE);
BPF_ARRAY_OF_MAPS(rings, "ring_inner", 1);
BPF_PERCPU_ARRAY(seq, u64, 1);

static __always_inline u32 mc_ops(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	u8 *n = data;

	if ((void *)(n + 1) > data_end)
		return 0;
	return *n > MAPCOST_MAX_OPS ? MAPCOST_MAX_OPS : *n;
}

static __always_inline u64 mc_next(u32 count)
{
	u32 zero = 0;
	u64 *s = seq.lookup(&zero);
	u64 base;

	if (!s)
		return 0;
	base = *s;
	*s = base + count;
	return base;
}

static __always_inline void mc_key_for(struct mc_key *k, u64 n)
{
	k->src[0] = (u32)n;
	k->src[1] = (u32)(n >> 32);
	k->src[2] = bpf_get_smp_processor_id();
	k->dst[0] = 0x016412c6; /* 198.18.100.1 */
	k->sport = (u16)n;
	k->dport = 0x5000;
	k->proto = 6;
	k->family = 4;
}

int nothing(struct xdp_md *ctx)
{
	struct mc_key k = {};
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count);

	mc_key_for(&k, base);
	return k.src[0] == 0xffffffff && k.src[1] == 0xffffffff ? XDP_DROP : XDP_PASS;
}

int lru_insert(struct xdp_md *ctx)
{
	struct mc_key k = {};
	struct mc_value v = {1, 1};
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count);

	for (u32 i = 0; i < MAPCOST_MAX_OPS; i++) {
		if (i >= count)
			break;
		mc_key_for(&k, base + i);
		common_lru.update(&k, &v);
	}
	return XDP_PASS;
}

int lru_percpu_insert(struct xdp_md *ctx)
{
	struct mc_key k = {};
	struct mc_value v = {1, 1};
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count);

	for (u32 i = 0; i < MAPCOST_MAX_OPS; i++) {
		if (i >= count)
			break;
		mc_key_for(&k, base + i);
		percpu_lru.update(&k, &v);
	}
	return XDP_PASS;
}

int lru_lookup_miss(struct xdp_md *ctx)
{
	struct mc_key k = {};
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count) | (1ULL << 63); /* never inserted */
	u32 found = 0;

	for (u32 i = 0; i < MAPCOST_MAX_OPS; i++) {
		if (i >= count)
			break;
		mc_key_for(&k, base + i);
		if (common_lru.lookup(&k))
			found = 1;
	}
	return found ? XDP_DROP : XDP_PASS;
}

int lru_lookup_empty(struct xdp_md *ctx)
{
	struct mc_key k = {};
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count) | (1ULL << 63);
	u32 found = 0;

	for (u32 i = 0; i < MAPCOST_MAX_OPS; i++) {
		if (i >= count)
			break;
		mc_key_for(&k, base + i);
		if (empty_lru.lookup(&k))
			found = 1;
	}
	return found ? XDP_DROP : XDP_PASS;
}

int lru_lookup_empty_64k(struct xdp_md *ctx)
{
	struct mc_key k = {};
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count) | (1ULL << 63);
	u32 found = 0;

	for (u32 i = 0; i < MAPCOST_MAX_OPS; i++) {
		if (i >= count)
			break;
		mc_key_for(&k, base + i);
		if (empty_lru_64k.lookup(&k))
			found = 1;
	}
	return found ? XDP_DROP : XDP_PASS;
}

int ring_slot(struct xdp_md *ctx)
{
	int outer = 0;
	u32 count = mc_ops(ctx);
	u64 base = mc_next(count);
	u32 sum = 0;
	void *ring = rings.lookup(&outer);

	if (!ring)
		return XDP_ABORTED;
	for (u32 i = 0; i < MAPCOST_MAX_OPS; i++) {
		u32 slot;
		u32 *id;

		if (i >= count)
			break;
		slot = (u32)(((base + i) * 2654435761ULL) % MAPCOST_RING);
		id = bpf_map_lookup_elem(ring, &slot);
		if (id && *id == 0xffffffff)
			sum = 1;
	}
	return sum ? XDP_DROP : XDP_PASS;
}
