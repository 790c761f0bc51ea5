/* quic.h: QUIC by connection ID (docs/quic.md).
 *
 * A QUIC VIP's backends issue connection IDs in the plaintext format of the
 * IETF QUIC-LB draft (draft-ietf-quic-load-balancers): first octet = 3 config
 * rotation bits (0b111 unroutable) + 5 bits of length or randomness, then the
 * server ID (quic_configs[vip].server_id_len octets), then a nonce. A packet
 * whose destination CID the server chose (a short header, a long-header
 * Handshake) and that carries the VIP's config ID goes to the usable backend
 * with that server ID: whatever its 4-tuple and the Maglev table say, so a
 * connection survives client migration, NAT rebinding, backend changes and
 * host changes with no state anywhere. Everything else falls back to the UDP
 * path (LBD_QUIC_STATELESS says which fallbacks make no entry). The check
 * runs before the connection-table lookup, for datagrams to an address whose
 * quic_prefilter bit is set (docs/design.md says why).
 *
 * Reads: the UDP payload (the datagram) ends at the UDP length or the IP
 * packet's end, whichever is first; nothing past it is read, and each read
 * is also checked against data_end for the verifier. Nothing here writes
 * the packet.
 */
#ifndef LBD_QUIC_H
#define LBD_QUIC_H

#include "lbd_shared.h"
#include "parse.h"

_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the server ID masks assume little-endian");

#define LBD_QUIC_FORM_LONG 0x80 /* header form bit (RFC 9000 17.2) */
#define LBD_QUIC_FIXED_BIT 0x40 /* 1 in every QUIC v1/v2 packet (RFC 9000 17.2, 17.3) */

/* What the UDP path does with a QUIC VIP's packet: three values only. The
 * eleven lbd_quic_slot values go to the counters through map memory
 * (*slot_out, this CPU's quic_stats.slot), which the verifier does not
 * follow: had the program branched on them or indexed by them, the verifier
 * would tell the slots' states apart through the rest of the program
 * (measured with the capture hook: 957,000 of its 1,000,000 instructions
 * that way, 740,000 this way when the check ran after the entry lookup;
 * 639,918 with the check first, balancer.c lbd_quic_first; without QUIC
 * 449,000). */
enum lbd_quic_way {
	LBD_QUIC_UNCHECKED = -1, /* not a QUIC VIP's UDP packet */
	LBD_QUIC_TODAY = 0,      /* a fallback under today's UDP rule: the table, an entry made */
	LBD_QUIC_NO_ENTRY,       /* a fallback that leaves no state (LBD_QUIC_STATELESS) */
	LBD_QUIC_BY_CID,         /* routed by the CID's server ID */
};

#define LBD_QUIC_STATELESS ((1 << LBD_QUIC_PKT_FB_UNKNOWN_VERSION) | (1 << LBD_QUIC_PKT_FB_CLIENT_CID) | \
			    (1 << LBD_QUIC_PKT_FB_RETRY) | (1 << LBD_QUIC_PKT_FB_SHORT_CID) |          \
			    (1 << LBD_QUIC_PKT_FB_UNKNOWN_SERVER) | (1 << LBD_QUIC_PKT_FB_UNUSABLE_SERVER))

/* Record the slot, return its way; slot is a constant at every call, so the
 * way folds to a constant there. */
static __always_inline int lbd_quic_out(volatile __u64 *slot_out, int slot)
{
	*slot_out = slot;
	if (slot == LBD_QUIC_PKT_ROUTED_SHORT || slot == LBD_QUIC_PKT_ROUTED_HANDSHAKE)
		return LBD_QUIC_BY_CID;
	return (LBD_QUIC_STATELESS >> slot) & 1 ? LBD_QUIC_NO_ENTRY : LBD_QUIC_TODAY;
}

/* The long-header packet type of v1 and v2 (RFC 9369 3.2 renumbered them). */
enum lbd_quic_long_type {
	LBD_QUIC_INITIAL,
	LBD_QUIC_0RTT,
	LBD_QUIC_HANDSHAKE,
	LBD_QUIC_RETRY,
};

static __always_inline int lbd_quic_long_type(__u32 version, __u8 first)
{
	__u8 bits = (first >> 4) & 3;

	if (version == LBD_QUIC_V1)
		return bits; /* 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry */
	return (bits + 3) & 3; /* v2: 1 Initial, 2 0-RTT, 3 Handshake, 0 Retry */
}

/* Read the server ID of a UDP packet to a QUIC VIP whose CID format is cfg.
 * Returns a routed slot (LBD_QUIC_PKT_ROUTED_*) with key->server_id filled
 * when the packet's DCID was chosen by a server and carries the VIP's config
 * ID, else the fallback slot that says why not. (Map lookups stay in
 * balancer.c: bcc rewrites them in the main file only.) */
static __always_inline int lbd_quic_read_server_id(const struct lbd_packet *pkt, void *data_end,
						   const struct lbd_quic_config *cfg,
						   struct lbd_quic_server_key *key,
						   volatile __u64 *slot_out)
{
	__u8 *udp = pkt->l4, *quic, *cid;
	__u32 len, udp_len, sid_len, version, dcid_len;
	int routed = LBD_QUIC_PKT_ROUTED_SHORT, type; /* constants: folded at each return */
	__u64 lo, hi;

	sid_len = cfg->server_id_len;
	if (sid_len == 0 || sid_len > LBD_QUIC_MAX_SERVER_ID)
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_NOT_QUIC); /* the daemon has not written the config (yet) */
	if ((void *)(udp + 8) > data_end)
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_NOT_QUIC);
	/* the datagram: within both the UDP length and the IP packet */
	udp_len = ((__u32)udp[4] << 8) | udp[5];
	len = pkt->l3_len - pkt->l4_off;
	if (udp_len < len)
		len = udp_len;
	/* One bounds check for every read below: a datagram shorter than
	 * LBD_QUIC_MIN_DATAGRAM is no QUIC packet (lbd_shared.h says why). One
	 * check also keeps the verifier's work small: each distinct bound
	 * proven here would be walked through the rest of the program. */
	if (len < 8 + LBD_QUIC_MIN_DATAGRAM)
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_NOT_QUIC);
	len -= 8;
	quic = udp + 8;
	if ((void *)(quic + LBD_QUIC_MIN_DATAGRAM) > data_end) /* implied by len: for the verifier */
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_NOT_QUIC);
	if (!(quic[0] & LBD_QUIC_FIXED_BIT))
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_NOT_QUIC);

	if (quic[0] & LBD_QUIC_FORM_LONG) {
		/* first octet, version (4), DCID length (1), DCID */
		version = ((__u32)quic[1] << 24) | ((__u32)quic[2] << 16) | ((__u32)quic[3] << 8) | quic[4];
		if (version != LBD_QUIC_V1 && version != LBD_QUIC_V2)
			return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_UNKNOWN_VERSION);
		dcid_len = quic[5];
		if (dcid_len > LBD_QUIC_MAX_CID || 6 + dcid_len > len)
			return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_NOT_QUIC);
		/* ifs, not a switch: clang may turn a switch into a jump table,
		 * which BPF cannot load */
		type = lbd_quic_long_type(version, quic[0]);
		if (type == LBD_QUIC_RETRY)
			return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_RETRY);
		if (type != LBD_QUIC_HANDSHAKE)
			return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_CLIENT_CID);
		/* the DCID must hold the server ID, and the packet RFC 9001's
		 * sample: 6 + DCID, SCID length, a Length of one octet at least */
		if (dcid_len < 1 + sid_len || len < 6 + dcid_len + 2 + LBD_QUIC_HP_SAMPLE_END)
			return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_SHORT_CID);
		cid = quic + 6;
		routed = LBD_QUIC_PKT_ROUTED_HANDSHAKE;
	} else {
		/* a short header's DCID has no length on the wire: the VIP's */
		if (len < 1 + (__u32)cfg->cid_len + LBD_QUIC_HP_SAMPLE_END)
			return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_SHORT_CID);
		cid = quic + 1;
	}
	/* the CID's first octet and 16 more, loaded whole and masked to the
	 * ID: at most 6 + 17 octets from the datagram's start, so inside it */
	if ((cid[0] >> 5) == LBD_QUIC_UNROUTABLE)
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_UNROUTABLE);
	if ((cid[0] >> 5) != cfg->config_id)
		return lbd_quic_out(slot_out, LBD_QUIC_PKT_FB_OTHER_CONFIG);
	__builtin_memcpy(&lo, cid + 1, 8);
	__builtin_memcpy(&hi, cid + 9, 8);
	/* little-endian: the octet at the lowest address is the lowest byte */
	if (sid_len < 8) {
		lo &= (1ULL << (8 * sid_len)) - 1;
		hi = 0;
	} else {
		hi &= (1ULL << (8 * (sid_len - 8))) - 1;
	}
	key->server_id[0] = lo;
	key->server_id[1] = hi;
	return lbd_quic_out(slot_out, routed);
}

/* The home slot in quic_sid_slots of a VIP's server ID; its entry sits there or
 * in one of the next LBD_QUIC_PROBES - 1 (mod LBD_MAX_BACKENDS). Multiplicative
 * hashing in 64-bit arithmetic; lbd/dataplane/maps.py quic_sid_slot_of is the
 * Python side of the same formula. */
static __always_inline __u32 lbd_quic_sid_slot_of(const struct lbd_quic_server_key *key)
{
	__u64 mix = (key->server_id[0] ^ (key->server_id[1] * LBD_QUIC_SLOT_MUL) ^ key->vip_id) * LBD_QUIC_SLOT_MUL;

	return (__u32)(mix >> 32) % LBD_MAX_BACKENDS;
}

#endif /* LBD_QUIC_H */
