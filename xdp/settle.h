/* settle.h: settled slots, read by a SYN and cleared by a client's close.
 *
 * A SYN's connection-table lookup touches a random bucket of a 16 MiB array,
 * a cache and TLB miss that is most of a new connection's cost, and its
 * answer changes where the SYN goes only when the 4-tuple has an entry that
 * disagrees with the table (docs/design.md, "What a SYN looks up"). The
 * daemon's walk (lbd/dataplane/settle.py) marks a slot SETTLED once no entry
 * of the slot disagrees: every one names the slot's backend, its generation
 * and its second choice, and none is marked finished by its client. A SYN in
 * a settled slot goes to the table without the lookup, as it would with it.
 *
 * What can make a settled slot's entry disagree, and who clears the slot:
 * - the table or the second table changes: the daemon clears the VIP's
 *   bitmap before it swaps the table in (lbd/dataplane/maps.py);
 * - a client sends FIN or RST: its entry is marked finished, which a SYN on
 *   the 4-tuple would remove; lbd_unsettle below clears the slot first, once
 *   per connection (the mark is written once).
 * Every other entry a packet makes or replaces takes the slot's backend and
 * second choice, and so agrees. */
#ifndef LBD_SETTLE_H
#define LBD_SETTLE_H

#include "lbd_shared.h"

/* The byte of slot `hash % LBD_RING_SIZE` in a VIP's settled map (the inner
 * map settled holds for it: bcc rewrites map names in balancer.c only, so
 * the caller looks it up), or NULL while the VIP has none (every slot
 * unsettled). */
static __always_inline __u8 *lbd_settled_byte(void *bytes, __u32 hash)
{
	__u32 slot = hash % LBD_RING_SIZE, word = slot / LBD_SETTLED_SLOTS_PER_WORD;
	__u8 *value;

	if (!bytes)
		return NULL;
	value = bpf_map_lookup_elem(bytes, &word);
	return value ? value + slot % LBD_SETTLED_SLOTS_PER_WORD : NULL;
}

static __always_inline int lbd_slot_settled(void *bytes, __u32 hash)
{
	__u8 *state = lbd_settled_byte(bytes, hash);

	return state && *state == LBD_SLOT_SETTLED;
}

/* A client ended a connection of this slot: unsettle it, and end a walk's
 * candidacy (its compare and swap then fails). A plain store of the slot's
 * own byte: no other slot's state is touched. */
static __always_inline void lbd_unsettle(void *bytes, __u32 hash)
{
	__u8 *state = lbd_settled_byte(bytes, hash);

	if (state && *state != LBD_SLOT_UNSETTLED)
		*state = LBD_SLOT_UNSETTLED;
}

#endif /* LBD_SETTLE_H */
