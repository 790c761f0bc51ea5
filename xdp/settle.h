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
 * - the table changes: a new table comes without marks;
 * - the second table changes: the daemon clears the marks of the VIP's
 *   table before it swaps the second table in (lbd/dataplane/maps.py);
 * - a client sends FIN or RST: its entry is marked finished, which a SYN on
 *   the 4-tuple would remove; lbd_unsettle below clears the slot first, once
 *   per connection (the mark is written once).
 * Every other entry a packet makes or replaces takes the slot's backend and
 * second choice, and so agrees. */
#ifndef LBD_SETTLE_H
#define LBD_SETTLE_H

#include "lbd_shared.h"

/* Marks live in the top bits of a table slot (lbd_shared.h). */
static __always_inline int lbd_slot_settled(__u32 value)
{
	return (value & LBD_SLOT_MARKS) == LBD_SLOT_SETTLED;
}

/* A client ended a connection of this slot of `table` (a VIP's inner map of
 * rings): unsettle it, and end a walk's candidacy (its compare and swap then
 * fails). A plain store: the backend id never changes in place, and marks
 * are only ever cleared here. */
static __always_inline void lbd_unsettle(void *table, __u32 hash)
{
	__u32 slot = hash % LBD_RING_SIZE, *value;

	if (!table)
		return;
	value = bpf_map_lookup_elem(table, &slot);
	if (value && (*value & LBD_SLOT_MARKS))
		*value &= LBD_SLOT_BACKEND;
}

#endif /* LBD_SETTLE_H */
