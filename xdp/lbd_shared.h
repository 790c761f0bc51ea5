/* lbd_shared.h: every struct, flag, limit, stat slot and drop reason that the
 * XDP program and the Python control plane share. This header is the only
 * definition: Python takes the layouts from bcc's table types (which bcc
 * builds from these declarations) and the enums by parsing this file
 * (lbd/dataplane/layout.py), never by restating them.
 *
 * Byte order: addresses and ports are kept in network byte order exactly as
 * they appear on the wire; everything else is host order.
 * Limits are behind #ifndef so the loader can override them with -D.
 */
#ifndef LBD_SHARED_H
#define LBD_SHARED_H

#include <linux/types.h>

/* Bumped whenever a pinned map's key, value or meaning changes: a daemon that
 * finds pinned maps of another version replaces them (and says so). */
#define LBD_LAYOUT_VERSION 4

#ifndef LBD_MAX_VIPS
#define LBD_MAX_VIPS 1024          /* VIP ids are 1..LBD_MAX_VIPS-1 */
#endif
#ifndef LBD_MAX_BACKENDS
#define LBD_MAX_BACKENDS 131072    /* backend ids 1..; one per (VIP, backend) */
#endif
#ifndef LBD_RING_SIZE
#define LBD_RING_SIZE 65537        /* Maglev table size per VIP: a prime */
#endif
#ifndef LBD_CT_SIZE
#define LBD_CT_SIZE 1048576        /* TCP connection-table entries (all CPUs) */
#endif
#ifndef LBD_CT_UDP_SIZE
#define LBD_CT_UDP_SIZE 262144     /* UDP flows have a table of their own */
#endif
#ifndef LBD_NEXTHOP_TTL_NS
#define LBD_NEXTHOP_TTL_NS 1000000000 /* ipip: how long a cached next hop is used */
#endif
#ifndef LBD_KERNEL_HZ
#define LBD_KERNEL_HZ 100 /* the running kernel's HZ (the loader passes it); the lowest, 100, makes cached next hops expire early, never late */
#endif
#ifndef LBD_KERNEL_HZ_MAX
#define LBD_KERNEL_HZ_MAX 1000 /* the running kernel's HZ where known (the loader passes it), else the highest Linux offers: times that must not be shorter than stated count in it */
#endif
/* A TCP SYN finds its entry's connection finished (README "A SYN on a
 * finished connection's 4-tuple") once its client sent FIN or RST, or once
 * the entry saw no packet for longer than this: longer than any gap between
 * two SYNs of one handshake (Linux caps every retransmission timeout at
 * TCP_RTO_MAX, 120 s) and than a duplicate SYN can trail its handshake's ACK
 * (RFC 9293's MSL, 2 min). */
#define LBD_FLOW_FINISHED_IDLE_S 120
#define LBD_MAX_ADDRS (2 * LBD_MAX_VIPS)

/* IPv6 extension headers parsed before the upper-layer header: RFC 8200's
 * recommended order (hop-by-hop, destination options, routing, fragment,
 * destination options) plus one. A longer chain to a VIP address is dropped
 * (LBD_DROP_IPV6_EXT_CHAIN). Not overridable: it is a promise of docs/design.md. */
#define LBD_IPV6_MAX_EXT_HDRS 6

/* Prefilter: a bitmap of VIP addresses (xdp/prefilter.h), 1 << LBD_PREFILTER_LOG2
 * bits in LBD_PREFILTER_WORDS 64-bit words. An address's bit is the top
 * LBD_PREFILTER_LOG2 bits of (the XOR of its four __u32 words, as loaded
 * from memory) * LBD_PREFILTER_HASH_MUL, in 32-bit arithmetic. Fixed here,
 * not overridable: lbd/dataplane/maps.py computes the same bits. */
#define LBD_PREFILTER_LOG2 16
#define LBD_PREFILTER_WORDS 1024     /* (1 << LBD_PREFILTER_LOG2) / 64 */
#define LBD_PREFILTER_HASH_MUL 0x9e3779b1 /* 2^32 / golden ratio, odd */

/* Seed of the flow hash (MurmurHash3 x86_32). Fixed, never host-local, so
 * every lbd host picks the same backend for a flow (lbd/dataplane/flowhash.py). */
#define LBD_HASH_SEED 0x6c626431

/* Id 0 means "none" in the Maglev table and in connection-table entries. */
#define LBD_NO_BACKEND 0

/* Settled slots (xdp/settle.h, lbd/dataplane/settle.py; docs/design.md "What a
 * SYN looks up"): two marks in the top bits of a slot of a VIP's Maglev table
 * (rings; backend ids stay below them, LBD_MAX_BACKENDS is far smaller), so a
 * SYN reads its slot's backend and whether it is settled in one load.
 * LBD_SLOT_SETTLED: no connection-table entry of the slot can send a SYN
 * elsewhere than the table, so a SYN there skips its entry lookup;
 * LBD_SLOT_CANDIDATE: the daemon's walk is judging the slot. Only the daemon
 * sets a mark, and only by compare and swap (none to CANDIDATE, CANDIDATE to
 * SETTLED); the program and the daemon clear them with plain stores of the
 * slot's backend id. A table is written without marks. Every reader of a
 * table masks them (LBD_SLOT_BACKEND). A daemon before them never meets one:
 * its first apply writes every table afresh before it attaches its program. */
#define LBD_SLOT_CANDIDATE 0x40000000
#define LBD_SLOT_SETTLED 0x80000000
#define LBD_SLOT_MARKS 0xc0000000
#define LBD_SLOT_BACKEND 0x3fffffff

/* vip_key.family, addr_key.family, flow_key.family, backend.family */
enum lbd_family {
	LBD_FAMILY_V4 = 4,
	LBD_FAMILY_V6 = 6,
};

/* vip_info.flags */
enum lbd_vip_flags {
	LBD_VIP_CLIENT_AFFINITY = 1 << 0, /* hash the client address only */
	LBD_VIP_MODE_IPIP       = 1 << 1, /* encapsulate; otherwise L2 DSR */
	LBD_VIP_SECOND_CHANCE   = 1 << 2, /* ipip TCP: packets carry the slot's second choice (GUE) */
	/* In the vips map only, never in a backend's vip_flags: the VIP's first
	 * table changed and its second table is not yet the one that goes with
	 * it (being written, or built in the background). An entry made now gets
	 * LBD_FLOW_SECOND_PROVISIONAL. (This bit and that one came without a
	 * layout bump: pinned entries made before have them clear, and a program
	 * from before ignores them, so nothing pinned needs replacing.) */
	LBD_VIP_SECOND_PENDING  = 1 << 3,
	LBD_VIP_QUIC            = 1 << 4, /* UDP: QUIC placed by the server ID in its CID (xdp/quic.h) */
};

/* addr_info.flags: what a VIP address as a whole accepts */
enum lbd_addr_flags {
	LBD_ADDR_HAS_PORTS    = 1 << 0, /* at least one VIP with a port on it */
	LBD_ADDR_HAS_WILDCARD = 1 << 1, /* a port-0 VIP (every port) on it */
	LBD_ADDR_FRAG_VIP     = 1 << 2, /* frag_vip_id is a client-affinity VIP */
};

/* backend.state */
enum lbd_backend_state {
	LBD_BACKEND_EMPTY    = 0, /* slot unused: flows pinned here move on */
	LBD_BACKEND_ACTIVE   = 1, /* in its VIP's Maglev table */
	LBD_BACKEND_DRAINING = 2, /* out of the table, keeps established flows */
	LBD_BACKEND_DOWN     = 3, /* failed health checks: flows move on */
	LBD_BACKEND_HELD     = 4, /* removed from the config: only a second choice, until second_until */
};

/* backend.second_until while the backend is active or draining: no end. */
#define LBD_SECOND_FOREVER 0xffffffff

/* Second-chance forwarding (ipip VIPs, TCP; docs/second-chance.md
 * forwarding"). A packet whose slot names a second choice travels in GUE
 * (draft-ietf-intarea-gue, variant 0) instead of plain IP-in-IP:
 *
 *   outer IPv4/IPv6 | UDP to LBD_GUE_PORT, checksum 0 | struct lbd_gue_hdr |
 *   struct lbd_gue_second_v4 or _v6 (GUE private data) | the client's packet
 *
 * The backend program (xdp/decap.c) keeps a packet its host has a connection
 * for (a SYN, a local socket, a valid SYN cookie) and sends any other on to
 * the second choice once, with hops set to 1: never again from there. */
#ifndef LBD_GUE_PORT
#define LBD_GUE_PORT 6080           /* UDP destination port of lbd's GUE packets */
#endif
#define LBD_GUE_MAGIC 0x6c62        /* "lb": the first private-data bytes (network order) */
#define LBD_GUE_OVERHEAD_V4 40      /* IPv4 20 + UDP 8 + GUE 4 + private data 8 */
#define LBD_GUE_OVERHEAD_V6 72      /* IPv6 40 + UDP 8 + GUE 4 + private data 20 */

/* Why a packet for a VIP was dropped: becomes lbd_drops_total{reason}. */
enum lbd_drop_reason {
	LBD_DROP_MALFORMED = 0,   /* truncated or inconsistent headers to a VIP */
	LBD_DROP_FRAGMENT,        /* fragment to a VIP without client affinity */
	LBD_DROP_NO_BACKEND,      /* VIP's table is empty */
	LBD_DROP_FIB_FAILED,      /* ipip: no route to the backend */
	LBD_DROP_NO_NEIGHBOUR,    /* ipip: next hop's MAC not resolved yet */
	LBD_DROP_FORWARDING_OFF,  /* ipip: IP forwarding disabled on the interface */
	LBD_DROP_ENCAP_FAILED,    /* ipip: no headroom for the outer header */
	LBD_DROP_IPV6_EXT_CHAIN,  /* IPv6 chain longer than LBD_IPV6_MAX_EXT_HDRS */
	LBD_DROP_TOO_BIG,         /* ipip: too big, and RFC 1122/4443 forbid an ICMP error about it */
	LBD_DROP__MAX,
};

/* What the backend program (xdp/decap.c) did with a tunnelled packet: the
 * index of its per-CPU counters (lbd-backend metrics, lbd-backend check). */
enum lbd_decap_slot {
	LBD_DECAP_IPIP = 0,          /* plain IP-in-IP, decapsulated */
	LBD_DECAP_KEPT_SYN,          /* GUE: a SYN opens a connection here */
	LBD_DECAP_KEPT_SOCKET,       /* GUE: a local socket has the flow */
	LBD_DECAP_KEPT_SYNCOOKIE,    /* GUE: completes a valid SYN cookie of a local listener */
	LBD_DECAP_KEPT_FORWARDED,    /* GUE: forwarded once already, never again */
	LBD_DECAP_KEPT_OTHER,        /* GUE: not TCP, or the second choice is this host */
	LBD_DECAP_FORWARDED,         /* GUE: sent on to the second choice */
	LBD_DECAP_FORWARD_FAILED,    /* GUE: no way to the second choice: dropped */
	LBD_DECAP_MALFORMED,         /* GUE to our port and magic, but inconsistent: dropped */
	LBD_DECAP_FORWARD_REFUSED,   /* GUE: the second choice is outside forward_to: kept */
	LBD_DECAP__MAX,
};

/* Health checks through the data path (xdp/healthpath.c, docs/operating.md "Health
 * checks"). The daemon's checker marks each check's socket (SO_MARK) with
 * LBD_HEALTH_MARK_BASE | n, one n per (VIP, backend) check; policy routing by
 * that mark sends the check's packets out of lbd's interface, where the TC
 * egress program looks the mark up in health_paths (a copy of the backend's
 * entry as the balancer has it) and rewrites (dsr) or encapsulates (ipip,
 * GUE on a second-chance VIP) the packet exactly as the balancer would a
 * client's. Packets whose mark is outside the range are never touched. */
#define LBD_HEALTH_MARK_BASE 0x6c620000 /* "lb" in the top 16 bits */
#define LBD_HEALTH_MARK_MASK 0xffff0000 /* the low 16 bits number the checks */
#define LBD_HEALTH_MAX_PATHS 65535

/* What the health-path program did with a marked packet: its per-CPU counters
 * (lbd_health_path_packets_total{result}); the failures also explain a failing
 * check ("no route to the backend from this host"). */
enum lbd_health_slot {
	LBD_HPATH_DSR = 0,         /* MACs rewritten toward a dsr backend */
	LBD_HPATH_IPIP,            /* encapsulated in IP-in-IP */
	LBD_HPATH_GUE,             /* encapsulated in GUE (second-chance VIP) */
	LBD_HPATH_UNKNOWN_MARK,    /* a mark of the range that names no check: dropped */
	LBD_HPATH_UNPARSED,        /* not a TCP/UDP packet of the mark's family: dropped */
	LBD_HPATH_NO_ROUTE,        /* ipip: no route (or forwarding off) to the backend: dropped */
	LBD_HPATH_NO_NEIGHBOUR,    /* ipip: the next hop's MAC is not resolved: dropped */
	LBD_HPATH_TOO_BIG,         /* ipip: the encapsulated packet exceeds the MTU: dropped */
	LBD_HPATH_ENCAP_FAILED,    /* no room for the outer headers: dropped */
	LBD_HPATH__MAX,
};

/* Which XDP verdicts the program returned: lbd_xdp_actions_total{action}. */
enum lbd_action_slot {
	LBD_ACT_PASS = 0,
	LBD_ACT_TX,
	LBD_ACT_REDIRECT,
	LBD_ACT_DROP,
	LBD_ACT__MAX,
};

/* vips map key: one VIP, or (with port 0) every port of an address. 20 bytes. */
struct lbd_vip_key {
	__u32 addr[4]; /* network order; IPv4 in addr[0], rest zero */
	__u16 port;    /* network order; 0 = every port */
	__u8 proto;    /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family;   /* enum lbd_family */
};

/* vips map value. 8 bytes. */
struct lbd_vip_info {
	__u32 vip_id; /* index into rings, vip_stats */
	__u32 flags;  /* enum lbd_vip_flags */
};

/* addrs map key: a VIP address and protocol, whatever the port. 20 bytes. */
struct lbd_addr_key {
	__u32 addr[4]; /* network order */
	__u16 pad;     /* always 0 */
	__u8 proto;
	__u8 family;
};

/* addrs map value: looked up for packets without a usable 5-tuple, so that
 * fragments, malformed packets and ICMP errors to a VIP address know what
 * the address accepts (well-formed packets go to vips directly). */
struct lbd_addr_info {
	__u32 flags;       /* enum lbd_addr_flags */
	__u32 frag_vip_id; /* client-affinity VIP that takes fragments, or 0 */
	__u32 frag_vip_flags; /* that VIP's enum lbd_vip_flags */
	__u32 pad;
};

/* backends array value, indexed by backend id. 48 bytes. A packet of an
 * established flow reads its VIP's id and flags here, not from vips. */
struct lbd_backend {
	__u32 addr[4];     /* network order: ipip outer destination */
	__u8 dst_mac[6];   /* dsr: the backend's MAC */
	__u8 src_mac[6];   /* dsr: our MAC on the egress interface */
	__u32 ifindex;     /* dsr: egress interface (XDP_TX when it is ingress); HELD (ipip only): its configured weight, for a restarted daemon's second table */
	__u32 generation;  /* bumped when the id is reused: stale flows move on */
	__u8 state;        /* enum lbd_backend_state */
	__u8 family;       /* enum lbd_family */
	__u16 vip_id;      /* owner VIP (ids fit 16 bits: LBD_MAX_VIPS <= 65536) */
	__u32 vip_flags;   /* the owner VIP's enum lbd_vip_flags */
	__u32 second_until; /* unix time (s) until which it may be a second choice: 0 never, LBD_SECOND_FOREVER while active or draining */
};

/* ipip next-hop cache (nexthops, per CPU, indexed by backend id): what
 * bpf_fib_lookup() answered for the backend, reused until expires_jiffies. A zero
 * entry is empty (generations start at 1). 32 bytes. */
struct lbd_nexthop {
	__u8 dst_mac[6];   /* next hop's MAC */
	__u8 src_mac[6];   /* our MAC on the egress interface */
	__u16 mtu;         /* egress MTU: bigger encapsulated packets get ICMP */
	__u16 pad;
	__u32 ifindex;     /* egress interface */
	__u32 generation;  /* the backend's generation it was looked up for */
	__u64 expires_jiffies; /* bpf_jiffies64() time to ask the FIB again */
};

/* Connection-table key: the flow's 5-tuple as seen from the client. 40 bytes. */
struct lbd_flow_key {
	__u32 src[4];  /* client address, network order */
	__u32 dst[4];  /* VIP address, network order */
	__u16 sport;   /* network order */
	__u16 dport;   /* network order */
	__u8 proto;
	__u8 family;
	__u16 pad;     /* always 0 (hashed) */
};

/* flow_entry.flags */
enum lbd_flow_flags {
	LBD_FLOW_CLIENT_CLOSED = 1 << 0, /* the client sent FIN or RST: a SYN on the 4-tuple is a new connection */
	/* second_id was read from a second table still pending (LBD_VIP_SECOND_PENDING):
	 * the flow's first packet after the VIP's second table is in place reads
	 * the slot's second again, stores it and clears this bit */
	LBD_FLOW_SECOND_PROVISIONAL = 1 << 1,
};

/* Connection-table value (conntrack for TCP, conntrack_udp for UDP). 20 bytes.
 * An entry lives until the LRU needs its room, long after its connection
 * closed: seen and flags are how the daemon tells a live flow from an idle
 * one (lbd/dataplane/flowtable.py). */
struct lbd_flow_entry {
	__u32 backend_id;
	__u32 generation; /* backend's generation when the flow was placed */
	__u32 seen;       /* bpf_jiffies64() of the flow's latest packet, low 32 bits (wraps: 49 days at HZ=1000) */
	__u32 flags;      /* enum lbd_flow_flags */
	__u32 second_id;  /* the flow's second choice (0: none), carried with each packet: the slot's when the table placed it, or the backend it moved off while that one is held */
};

/* Program-wide settings, one entry written by the daemon. 28 bytes. */
struct lbd_settings {
	__u32 ipip_src_v4;    /* ipip outer source, network order */
	__u32 ipip_src_v6[4]; /* ipip outer source, network order */
	__u32 layout_version; /* LBD_LAYOUT_VERSION of the daemon that wrote it */
	__u32 pad;
};

/* Per-CPU, per VIP; summed by the daemon at scrape time. 32 bytes. */
struct lbd_vip_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;   /* connection-table entries made for flows the table placed */
	__u64 rescheduled; /* flows moved off a removed or failed backend */
};

/* Per-CPU, per backend id. 24 bytes. */
struct lbd_backend_stats {
	__u64 packets;
	__u64 bytes;
	__u64 new_flows;   /* entries made for flows the table placed here (as lbd_vip_stats.new_flows) */
};

/* Per-CPU, one entry: what the program did to every packet it saw. 184 bytes. */
struct lbd_global_stats {
	__u64 actions[LBD_ACT__MAX];  /* enum lbd_action_slot */
	__u64 drops[LBD_DROP__MAX];   /* enum lbd_drop_reason */
	__u64 ct_hits;                /* packets forwarded by their connection-table entry */
	__u64 ct_misses;              /* packets to a VIP port whose flow had no entry (or, a SYN of a settled slot, did not look: syn_settled) */
	__u64 ct_inserts_tcp;         /* entries made (TCP: at a flow's first non-SYN packet) */
	__u64 ct_inserts_udp;
	__u64 stateless_forwards;     /* SYNs and RSTs placed by the table, no entry made */
	__u64 ct_removed_by_syn;      /* a SYN's entry it did not follow: backend takes no new flows, or connection finished */
	__u64 icmp_too_big_sent;      /* ipip: we told a client to lower its MTU */
	__u64 icmp_to_backend;        /* ICMP errors about a VIP flow forwarded */
	__u64 fragments_forwarded;    /* client-affinity VIP fragments */
	__u64 second_choice_carried;  /* ipip: packets sent in GUE, naming a second choice */
};

/* GUE base header (4 bytes), lbd's use of it: no optional fields (flags 0),
 * so all Hlen words are private data (lbd_gue_second_*). */
struct lbd_gue_hdr {
	__u8 ver_c_hlen; /* version 0 (top 2 bits), C 0 (next bit), Hlen (low 5 bits): 2 for IPv4, 5 for IPv6 */
	__u8 proto;      /* the inner packet: IPPROTO_IPIP (4) or IPPROTO_IPV6 (41) */
	__u16 flags;     /* 0 */
};

/* GUE private data for an IPv4 inner packet. 8 bytes. */
struct lbd_gue_second_v4 {
	__u16 magic;     /* LBD_GUE_MAGIC, network order */
	__u8 hops;       /* 0 from the balancer; 1 once a backend sent it on */
	__u8 pad;        /* 0 */
	__u32 addr;      /* the second choice's address, network order */
};

/* GUE private data for an IPv6 inner packet. 20 bytes. */
struct lbd_gue_second_v6 {
	__u16 magic;
	__u8 hops;
	__u8 pad;
	__u32 addr[4];
};

/* A prefix the backend program may send a GUE packet on to (its forward_to
 * LPM trie, written by `lbd-backend prepare --forward-to`). IPv4 prefixes are
 * stored IPv4-mapped (::ffff:a.b.c.d, prefixlen + 96), so one trie holds both
 * families. 20 bytes. */
#define LBD_FORWARD_PREFIXES 1024
struct lbd_forward_prefix {
	__u32 prefixlen; /* in bits, of the 128 (host order: the LPM trie's key) */
	__u8 addr[16];   /* network order */
};

/* QUIC by connection ID (xdp/quic.h, docs/quic.md): the plaintext CID format
 * of draft-ietf-quic-load-balancers. A CID's first octet holds 3 config
 * rotation bits (0b111: unroutable) and 5 bits of length or randomness; the
 * server ID follows at offset 1, then a nonce of at least 4 octets. */
#define LBD_QUIC_MAX_CID 20          /* RFC 9000: no connection ID is longer */
#define LBD_QUIC_MAX_SERVER_ID 15    /* 1 + server ID + a nonce of 4 or more <= 20 */
#define LBD_QUIC_MIN_NONCE 4
#define LBD_QUIC_UNROUTABLE 7        /* config rotation bits 0b111 */
#define LBD_QUIC_V1 0x00000001       /* RFC 9000 */
#define LBD_QUIC_V2 0x6b3343cf       /* RFC 9369 */
/* RFC 9001 5.4.2: header protection samples 16 octets from 4 past the packet
 * number's offset, so every QUIC packet holds at least this many octets after
 * the end of its header up to the packet number (a short header's DCID; a
 * long header's Length field); shorter ones are no QUIC packets. */
#define LBD_QUIC_HP_SAMPLE_END 20
/* A UDP payload shorter than this is no QUIC packet lbd reads (not QUIC:
 * today's UDP rule): every packet routable by CID is longer (a short header:
 * 1 + a CID of 6 or more + LBD_QUIC_HP_SAMPLE_END; a Handshake: 8 + a DCID of 2
 * or more + LBD_QUIC_HP_SAMPLE_END), and RFC 9000 14.1 has servers discard
 * a client's Initial in a datagram under 1200 octets. It is also what the
 * program may read from the payload's start: a long header's CID (at 6) and
 * 17 octets of it. */
#define LBD_QUIC_MIN_DATAGRAM 23

/* What the program did with a datagram to a QUIC VIP: the index of the
 * per-CPU quic_stats counters (lbd_quic_packets_total{how}). The routed
 * slots go by CID; every other is a fallback to the UDP path, by reason,
 * in the order the program tests them. */
enum lbd_quic_slot {
	LBD_QUIC_PKT_ROUTED_SHORT = 0,     /* short header: the server ID's backend */
	LBD_QUIC_PKT_ROUTED_HANDSHAKE,     /* long-header Handshake: the server chose its DCID */
	LBD_QUIC_PKT_FB_NOT_QUIC,          /* under LBD_QUIC_MIN_DATAGRAM, fixed bit clear, or a long header whose DCID is over 20 or past the end */
	LBD_QUIC_PKT_FB_UNKNOWN_VERSION,   /* long header of a version other than 1 and 2 (0: version negotiation) */
	LBD_QUIC_PKT_FB_CLIENT_CID,        /* Initial or 0-RTT: the client chose the DCID */
	LBD_QUIC_PKT_FB_RETRY,             /* Retry: only servers send one */
	LBD_QUIC_PKT_FB_SHORT_CID,         /* DCID too short for the server ID, or the packet for RFC 9001's sample (LBD_QUIC_HP_SAMPLE_END) */
	LBD_QUIC_PKT_FB_UNROUTABLE,        /* config rotation bits 0b111 */
	LBD_QUIC_PKT_FB_OTHER_CONFIG,      /* a config ID other than the VIP's */
	LBD_QUIC_PKT_FB_UNKNOWN_SERVER,    /* no backend of the VIP has that server ID */
	LBD_QUIC_PKT_FB_UNUSABLE_SERVER,   /* its backend is down, removed or held */
	LBD_QUIC_PKT__MAX,
};

/* quic_configs value, indexed by VIP id: the VIP's CID format. 4 bytes. */
struct lbd_quic_config {
	__u8 config_id;     /* 0..6: the top 3 bits of a routable CID's first octet */
	__u8 server_id_len; /* 1..LBD_QUIC_MAX_SERVER_ID octets at CID offset 1; 0: no QUIC config */
	__u8 cid_len;       /* 1 + server ID + nonce, at most LBD_QUIC_MAX_CID */
	__u8 pad;
};

/* quic_servers key: one server ID of one VIP (value: the backend id). 24 bytes. */
struct lbd_quic_server_key {
	__u64 server_id[2]; /* the ID's octets in wire order in memory, then zeros (two words: the program loads them whole) */
	__u32 vip_id;
	__u32 pad;          /* always 0 (hashed) */
};

/* quic_sid_slots value: quic_servers' entries again, in an array the program reads
 * without a call (xdp/quic.h lbd_quic_sid_slot_of says where an entry may sit). A
 * slot is written only while empty (vip_id 0) or to name another backend for
 * its own server ID, and emptied before another ID takes it, so a read that
 * races a write sees this ID's slot or an empty one. 24 bytes. */
struct lbd_quic_sid_slot {
	__u64 server_id[2]; /* as lbd_quic_server_key's */
	__u32 vip_id;       /* 0: an empty slot (VIP ids start at 1) */
	__u32 backend_id;
};
/* quic_sid_slots has LBD_MAX_BACKENDS slots (QUIC VIPs' backends take one each);
 * an entry sits in one of the LBD_QUIC_PROBES slots from its home, or only in
 * quic_servers when they are all taken. */
#define LBD_QUIC_PROBES 4
#define LBD_QUIC_SLOT_MUL 0x9e3779b97f4a7c15 /* 2^64 / golden ratio, odd */

/* Per-CPU, one entry: QUIC datagrams by what happened to them. 96 bytes. */
struct lbd_quic_stats {
	__u64 packets[LBD_QUIC_PKT__MAX]; /* enum lbd_quic_slot */
	__u64 slot;                       /* scratch: the latest packet's slot (balancer.c lbd_quic_check) */
};

/* Capture (`lbctl capture`, xdp/capture.h): packets the program handled, as
 * they arrived and as they left, with its decision. Off unless a capture
 * runs: the packet path then reads capture_ctl.on and nothing else. None of
 * these maps is pinned: a capture belongs to the daemon that runs it. */
#define LBD_CAPTURE_SNAP 256        /* bytes kept of each view of a packet (a power of two) */

/* What placed a forwarded packet, told by which of the per-CPU counters
 * (lbd_global_stats) the packet moved: record.placed, the capture's "placed=". */
enum lbd_capture_placed {
	LBD_PLACED_NONE = 0,      /* not placed: passed, dropped or answered */
	LBD_PLACED_ENTRY,         /* its connection-table entry */
	LBD_PLACED_TABLE,         /* the VIP's Maglev table; the packet made the flow's entry */
	LBD_PLACED_TABLE_NO_ENTRY, /* the table, no entry made (a SYN or RST) */
	LBD_PLACED_TABLE_MOVED,   /* the table again: its entry's backend is gone */
	LBD_PLACED_ICMP_FLOW,     /* an ICMP error, sent where its flow goes */
	LBD_PLACED_FRAGMENT,      /* a fragment, by the client-affinity table */
	LBD_PLACED__MAX,
};

/* record.flags */
enum lbd_capture_flags {
	LBD_CAPTURED_SECOND_CHOICE = 1 << 0, /* sent in GUE, naming a second choice */
	LBD_CAPTURED_TOO_BIG       = 1 << 1, /* answered with an ICMP too-big (action tx) */
};

/* capture_ctl (one entry): written by the daemon to start and stop a capture;
 * the window and counts are the program's. 72 bytes. */
struct lbd_capture_ctl {
	__u32 on;           /* 0: off, the only field a packet reads then */
	__u32 actions;      /* 1 << XDP action for each action to keep */
	__u32 drop_reasons; /* 1 << enum lbd_drop_reason for each drop to keep; 0: every drop */
	__u32 rate_per_s;   /* records per second at most (all CPUs: approximate) */
	__u32 client[4];    /* only packets from this address (network order), if client_family */
	__u32 vip[4];       /* only packets to this address (network order), if vip_family */
	__u16 vip_port;     /* network order; 0: every port */
	__u8 vip_proto;     /* 0: both */
	__u8 vip_family;    /* enum lbd_family; 0: every destination */
	__u8 client_family; /* enum lbd_family; 0: every client */
	__u8 pad[3];
	__u64 window;       /* the program's: the second (jiffies / HZ) being counted */
	__u32 window_count; /* the program's: records in that second so far */
	__u32 over_rate;    /* the program's: packets that matched but exceeded rate_per_s */
};

/* One perf event per captured packet; the frame as it left follows (left_caplen
 * bytes, by bpf_perf_event_output). 328 bytes. */
struct lbd_capture_record {
	__u64 ktime_ns;        /* bpf_ktime_get_ns() as it arrived (CLOCK_MONOTONIC) */
	struct lbd_flow_key flow; /* as parsed on arrival; family 0 if not IP */
	__u32 ifindex;         /* ingress interface */
	__u32 arrived_len;     /* the frame's length as it arrived */
	__u32 left_len;        /* its length as the program returned it */
	__u16 arrived_caplen;  /* bytes of arrived[] kept */
	__u16 left_caplen;     /* bytes that follow the record (0 unless tx or redirect) */
	__u8 action;           /* XDP action returned */
	__u8 placed;           /* enum lbd_capture_placed */
	__u8 drop_reason;      /* enum lbd_drop_reason; LBD_DROP__MAX when not dropped for one */
	__u8 flags;            /* enum lbd_capture_flags */
	__u32 pad;
	__u8 arrived[LBD_CAPTURE_SNAP]; /* the frame's first bytes as it arrived */
};

/* The sizes the comments above state, held by the compiler. A pinned map is
 * adopted across a restart or upgrade only by a daemon of the same
 * LBD_LAYOUT_VERSION, so a change to any size here must bump it; the unit
 * tier (tests/unit/test_layout.py) records the sizes of each version and
 * fails when they change without a new version. */
_Static_assert(sizeof(struct lbd_vip_key) == 20, "vip key: 20 bytes");
_Static_assert(sizeof(struct lbd_vip_info) == 8, "vip info: 8 bytes");
_Static_assert(sizeof(struct lbd_addr_key) == 20, "addr key: 20 bytes");
_Static_assert(sizeof(struct lbd_addr_info) == 16, "addr info: 16 bytes");
_Static_assert(sizeof(struct lbd_backend) == 48, "backend: 48 bytes");
_Static_assert(sizeof(struct lbd_nexthop) == 32, "next hop: 32 bytes");
_Static_assert(sizeof(struct lbd_flow_key) == 40, "flow key: 40 bytes");
_Static_assert(sizeof(struct lbd_flow_entry) == 20, "flow entry: 20 bytes");
_Static_assert(sizeof(struct lbd_settings) == 28, "settings: 28 bytes");
_Static_assert(sizeof(struct lbd_vip_stats) == 32, "vip stats: 32 bytes");
_Static_assert(sizeof(struct lbd_backend_stats) == 24, "backend stats: 24 bytes");
_Static_assert(sizeof(struct lbd_global_stats) == 184, "global stats: 184 bytes");
_Static_assert(sizeof(struct lbd_gue_hdr) == 4, "GUE header: 4 bytes");
_Static_assert(sizeof(struct lbd_gue_second_v4) == 8, "GUE private data, IPv4: 8 bytes");
_Static_assert(sizeof(struct lbd_gue_second_v6) == 20, "GUE private data, IPv6: 20 bytes");
_Static_assert(sizeof(struct lbd_forward_prefix) == 20, "forward prefix: 20 bytes");
_Static_assert(sizeof(struct lbd_quic_config) == 4, "QUIC config: 4 bytes");
_Static_assert(sizeof(struct lbd_quic_server_key) == 24, "QUIC server key: 24 bytes");
_Static_assert(sizeof(struct lbd_quic_stats) == 96, "QUIC stats: 96 bytes");
_Static_assert(sizeof(struct lbd_quic_sid_slot) == 24, "QUIC server ID slot: 24 bytes");
_Static_assert(LBD_QUIC_MAX_SERVER_ID < sizeof(((struct lbd_quic_server_key *)0)->server_id), "server id fits");
_Static_assert(LBD_QUIC_HP_SAMPLE_END > LBD_QUIC_MAX_SERVER_ID, "a QUIC packet holds 16 octets after its CID's first");
_Static_assert(sizeof(struct lbd_capture_ctl) == 72, "capture control: 72 bytes");
_Static_assert(sizeof(struct lbd_capture_record) == 328, "capture record: 328 bytes");
_Static_assert(LBD_GUE_OVERHEAD_V4 == 20 + 8 + sizeof(struct lbd_gue_hdr) + sizeof(struct lbd_gue_second_v4), "v4 overhead");
_Static_assert(LBD_GUE_OVERHEAD_V6 == 40 + 8 + sizeof(struct lbd_gue_hdr) + sizeof(struct lbd_gue_second_v6), "v6 overhead");

#endif /* LBD_SHARED_H */
