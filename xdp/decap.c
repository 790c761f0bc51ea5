/* decap.c: the backend's XDP program, for backends whose kernel has no IPIP,
 * FOU or GUE devices (like these test hosts). Attached by `lbd-backend
 * prepare --mode ipip` to the interface lbd's packets arrive on.
 *
 * Plain IP-in-IP (outer IPv4 protocol 4, IPv6 next header 41): the outer
 * header is stripped and the client's packet passed, byte for byte, to the
 * kernel, which delivers it to the VIP on the loopback.
 *
 * GUE (lbd_shared.h, "Second-chance forwarding"): the packet names the slot's
 * second choice. It is decapsulated the same way and kept when this host has
 * the connection: a SYN (a new connection starts here), a local socket of the
 * flow (established, request or time-wait; a listener alone does not count),
 * or an ACK that completes a valid SYN cookie of a local listener. Any other
 * TCP packet belongs to a connection this host never had, which its second
 * choice may have: it is sent there once, rewritten in place (outer addresses
 * and hops = 1), and a packet with hops >= 1 is always kept, so a packet moves
 * at most once and never ping-pongs.
 *
 * Everything else passes untouched, UDP to LBD_GUE_PORT that is not lbd's
 * (another version, no magic) included: a service may use that port.
 * Like a kernel ipip device without a fixed remote, it accepts any outer
 * source. A packet is sent on only to an address inside forward_to (by
 * default the interface's own prefixes: `lbd-backend prepare --forward-to`),
 * so a forged GUE packet cannot make this host send to anyone else; one
 * naming an address outside is kept (counted), as if it named none.
 *
 * decap_stats counts what it did (enum lbd_decap_slot, per CPU); decap_build
 * holds the build id lbd-backend writes after loading (0 until then), which
 * tells `lbd-backend check` and `prepare` a current build from an old one.
 *
 * Length (over 450 lines, on purpose): one program, the backend's: one parse
 * per family feeding one keep-or-forward policy, which reads best whole. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "lbd_shared.h"
#include "csum.h"
#include "frame.h"
#define LBD_TCP_LISTEN 10          /* the kernel's TCP_LISTEN (include/net/tcp_states.h) */
#define LBD_GUE_VERSION_MASK 0xe0  /* version (2 bits) and C, the control bit: 0 for data */
#define LBD_FORWARD_TTL 64

/* what the program did, per CPU: enum lbd_decap_slot */
BPF_PERCPU_ARRAY(decap_stats, __u64, LBD_DECAP__MAX);
/* where a packet may be sent on (struct lbd_forward_prefix; value unused):
 * empty until lbd-backend writes it, and an empty trie forwards nothing */
BPF_LPM_TRIE(forward_to, struct lbd_forward_prefix, __u8, LBD_FORWARD_PREFIXES);
/* one entry: the build id (lbd.backend.cli.decap_source_hash()), written and bound
 * to the program (BPF_PROG_BIND_MAP) after load: the code never reads it */
BPF_ARRAY(decap_build, __u64, 1);

static __always_inline void lbd_count(__u32 slot)
{
	__u64 *n = decap_stats.lookup(&slot);

	if (n)
		*n += 1;
}

/* Move the L2 header forward over the outer headers, then drop the bytes in
 * front of it. A frame too short for that passes untouched. */
static __always_inline int lbd_strip(struct xdp_md *ctx, __u32 l2_len, __u32 outer_len)
{
	void *data = (void *)(long)ctx->data;

	if (lbd_move_l2(data + outer_len, data, l2_len, (void *)(long)ctx->data_end))
		return XDP_PASS;
	if (bpf_xdp_adjust_head(ctx, (int)outer_len))
		return XDP_DROP; /* cannot happen: the bytes were checked above */
	return XDP_PASS;
}

/* Whether forward_to holds the address (16 bytes: IPv6, or IPv4-mapped). */
static __always_inline int lbd_may_forward_to(const __u32 addr[4])
{
	struct lbd_forward_prefix key = {.prefixlen = 128};

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	return forward_to.lookup(&key) != NULL;
}

/* Keep a GUE packet: strip outer IP, UDP, GUE and private data. */
static __always_inline int lbd_keep(struct xdp_md *ctx, __u32 l2_len, __u32 overhead, __u32 slot)
{
	lbd_count(slot);
	return lbd_strip(ctx, l2_len, overhead);
}

static __always_inline int lbd_malformed(void)
{
	lbd_count(LBD_DECAP_MALFORMED);
	return XDP_DROP;
}

/* The keep-or-forward decision for a TCP segment of a flow this GUE packet
 * names a second choice for. Returns the slot that says why it is kept, or
 * LBD_DECAP_FORWARDED. iph/iph_len: the inner IP header (for the SYN cookie
 * check, which reads its addresses). Every socket reference taken is released
 * before returning, on every path. */
static __always_inline __u32 lbd_decide(struct xdp_md *ctx, struct bpf_sock_tuple *tuple,
					__u32 tuple_len, void *iph, __u32 iph_len,
					struct tcphdr *tcp)
{
	struct bpf_sock *sk;
	long cookie;

	if (tcp->syn && !tcp->ack)
		return LBD_DECAP_KEPT_SYN;
	sk = bpf_skc_lookup_tcp(ctx, tuple, tuple_len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return LBD_DECAP_FORWARDED;
	if (sk->state != LBD_TCP_LISTEN) {
		bpf_sk_release(sk);
		return LBD_DECAP_KEPT_SOCKET;
	}
	/* Only a listener: the flow is ours only if this ACK answers a SYN
	 * cookie the listener sent (the kernel would then make the socket). */
	cookie = bpf_tcp_check_syncookie(sk, iph, iph_len, tcp, sizeof(*tcp));
	bpf_sk_release(sk);
	return cookie == 0 ? LBD_DECAP_KEPT_SYNCOOKIE : LBD_DECAP_FORWARDED;
}

/* Send a rewritten packet toward its new outer destination, by what the FIB
 * answered for it (fib). */
static __always_inline int lbd_send(struct xdp_md *ctx, __u32 l2_len, int rc,
				    struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 mac[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_DROP;
	/* A route by another interface is taken only by an untagged frame: a
	 * tagged one came in on a VLAN of this interface, and another
	 * interface's answer is not about that VLAN. */
	if (rc == BPF_FIB_LKUP_RET_SUCCESS &&
	    (fib->ifindex == ctx->ingress_ifindex || l2_len == sizeof(*eth))) {
		__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
		__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
		lbd_count(LBD_DECAP_FORWARDED);
		if (fib->ifindex == ctx->ingress_ifindex)
			return XDP_TX;
		return bpf_redirect(fib->ifindex, 0);
	}
	/* Back to the L2 neighbour the packet came from (the router or lbd
	 * host that delivered it: it routes packets to backends anyway, and
	 * lbd passes a packet to a non-VIP address to its kernel, which
	 * forwards it) when
	 * - the next hop's MAC is unknown (NO_NEIGH): XDP cannot resolve a
	 *   neighbour, and backends rarely have one for each other, since they
	 *   talk to clients, not among themselves;
	 * - the kernel refuses to route for us (FWD_DISABLED): a backend is
	 *   not a router, and turning forwarding on would change what else the
	 *   host does (IPv6 router advertisements, redirects);
	 * - the route leaves by another interface than a tagged frame's.
	 * That costs the packet one more hop; the other answers (no route,
	 * blackhole, a local or too small a route) have no way there: drop. */
	if (rc == BPF_FIB_LKUP_RET_SUCCESS || rc == BPF_FIB_LKUP_RET_NO_NEIGH ||
	    rc == BPF_FIB_LKUP_RET_FWD_DISABLED) {
		__builtin_memcpy(mac, eth->h_source, ETH_ALEN);
		__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
		__builtin_memcpy(eth->h_dest, mac, ETH_ALEN);
		lbd_count(LBD_DECAP_FORWARDED);
		return XDP_TX;
	}
	lbd_count(LBD_DECAP_FORWARD_FAILED);
	return XDP_DROP;
}

/* One family's reading of a GUE packet of lbd's, for the policy
 * (lbd_gue): the family's differences live in the helpers below, which take
 * is_ipv6 as a constant, so each family's copy of the policy compiles to
 * straight code over its own headers (as Katran's decap process_packet). */
struct lbd_gue_packet {
	void *outer;        /* outer IPv4 (no options) or IPv6 header */
	struct udphdr *udp;
	void *second;       /* the private data: struct lbd_gue_second_v4 or _v6 */
	void *inner;        /* the client's IP header */
	__u32 outer_len;    /* the outer IP packet's bytes, as its header says */
};

/* Whether the frame at l2_len is GUE of lbd's, and consistent:
 * XDP_PASS (not ours), XDP_DROP (ours, malformed) or 0, g filled in.
 *   IPv4: outer IPv4 (no options) | UDP | lbd_gue_hdr | lbd_gue_second_v4 | IPv4
 *   IPv6: outer IPv6 (UDP right after it) | UDP | lbd_gue_hdr | lbd_gue_second_v6 | IPv6 */
static __always_inline int lbd_gue_parse(struct xdp_md *ctx, __u32 l2_len,
					 struct lbd_gue_packet *g, const int is_ipv6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (!is_ipv6) {
		struct iphdr *outer = data + l2_len;
		struct udphdr *udp = (void *)(outer + 1);
		struct lbd_gue_hdr *gue = (void *)(udp + 1);
		struct lbd_gue_second_v4 *second = (void *)(gue + 1);
		struct iphdr *inner = (void *)(second + 1);

		/* Not lbd's unless it is GUE version 0 data with our magic. Outer
		 * options and later fragments (no UDP header in them) cannot be told
		 * from anyone's, and lbd's balancer sends neither: they pass. */
		if ((void *)(udp + 1) > data_end || outer->ihl != 5 ||
		    (outer->frag_off & bpf_htons(0x1fff)) || udp->dest != bpf_htons(LBD_GUE_PORT))
			return XDP_PASS;
		if ((void *)&second->hops > data_end || (gue->ver_c_hlen & LBD_GUE_VERSION_MASK) ||
		    second->magic != bpf_htons(LBD_GUE_MAGIC))
			return XDP_PASS;
		/* Ours from here on: what does not add up is dropped and counted. A
		 * first fragment too (its rest would wait for reassembly, after which
		 * the kernel has nothing that takes GUE: a port-unreachable to lbd). */
		g->outer_len = bpf_ntohs(outer->tot_len);
		if ((void *)(inner + 1) > data_end || (outer->frag_off & bpf_htons(0x2000)) ||
		    gue->ver_c_hlen != sizeof(*second) / 4 || gue->proto != IPPROTO_IPIP || gue->flags ||
		    (void *)outer + g->outer_len > data_end ||
		    bpf_ntohs(udp->len) != g->outer_len - sizeof(*outer) ||
		    inner->version != 4 || inner->ihl < 5 ||
		    bpf_ntohs(inner->tot_len) != g->outer_len - LBD_GUE_OVERHEAD_V4)
			return XDP_DROP;
		g->outer = outer, g->udp = udp, g->second = second, g->inner = inner;
		return 0;
	} else {
		struct ipv6hdr *outer = data + l2_len;
		struct udphdr *udp = (void *)(outer + 1);
		struct lbd_gue_hdr *gue = (void *)(udp + 1);
		struct lbd_gue_second_v6 *second = (void *)(gue + 1);
		struct ipv6hdr *inner = (void *)(second + 1);
		__u32 payload;

		if ((void *)&second->hops > data_end || udp->dest != bpf_htons(LBD_GUE_PORT) ||
		    (gue->ver_c_hlen & LBD_GUE_VERSION_MASK) || second->magic != bpf_htons(LBD_GUE_MAGIC))
			return XDP_PASS;
		payload = bpf_ntohs(outer->payload_len);
		if ((void *)(inner + 1) > data_end ||
		    gue->ver_c_hlen != sizeof(*second) / 4 || gue->proto != IPPROTO_IPV6 || gue->flags ||
		    (void *)(outer + 1) + payload > data_end || bpf_ntohs(udp->len) != payload ||
		    inner->version != 6 ||
		    bpf_ntohs(inner->payload_len) + sizeof(*inner) + LBD_GUE_OVERHEAD_V6 !=
			    payload + sizeof(*outer))
			return XDP_DROP;
		g->outer_len = payload + sizeof(*outer);
		g->outer = outer, g->udp = udp, g->second = second, g->inner = inner;
		return 0;
	}
}

/* The private data's hop count: 0 until a backend forwarded the packet once. */
static __always_inline __u8 *lbd_gue_hops(struct lbd_gue_packet *g, const int is_ipv6)
{
	if (!is_ipv6)
		return &((struct lbd_gue_second_v4 *)g->second)->hops;
	return &((struct lbd_gue_second_v6 *)g->second)->hops;
}

static __always_inline int lbd_same_v6(const struct in6_addr *a, const __u32 b[4])
{
	return a->s6_addr32[0] == b[0] && a->s6_addr32[1] == b[1] &&
	       a->s6_addr32[2] == b[2] && a->s6_addr32[3] == b[3];
}

/* Whether the packet may be another host's: TCP whose ports are in this
 * packet, naming a second choice that is not this host. IPv4: a fragment
 * has no ports to look a socket up by (a non-first one) or is the kernel's
 * to reassemble; IPv6: TCP right after the fixed header, as the balancer
 * sends it (a chain of extension headers is the kernel's to read). */
static __always_inline int lbd_gue_names_another(struct lbd_gue_packet *g, const int is_ipv6)
{
	if (!is_ipv6) {
		struct iphdr *outer = g->outer, *inner = g->inner;
		struct lbd_gue_second_v4 *second = g->second;

		return inner->protocol == IPPROTO_TCP && !(inner->frag_off & bpf_htons(0x3fff)) &&
		       second->addr != 0 && second->addr != outer->daddr;
	} else {
		struct ipv6hdr *outer = g->outer, *inner = g->inner;
		struct lbd_gue_second_v6 *second = g->second;

		return inner->nexthdr == IPPROTO_TCP &&
		       (second->addr[0] | second->addr[1] | second->addr[2] | second->addr[3]) &&
		       !lbd_same_v6(&outer->daddr, second->addr);
	}
}

/* The inner TCP header and the socket tuple of its flow; NULL if the TCP
 * header does not fit in the inner packet. *iph_len: the inner IP header's
 * fixed part (what the SYN cookie check reads addresses from). */
static __always_inline struct tcphdr *lbd_gue_flow(struct lbd_gue_packet *g, void *data_end,
						  struct bpf_sock_tuple *tuple, __u32 *tuple_len,
						  __u32 *iph_len, const int is_ipv6)
{
	struct tcphdr *tcp;

	if (!is_ipv6) {
		struct iphdr *inner = g->inner;
		__u32 inner_hlen = (inner->ihl & 0xf) * 4;

		tcp = g->inner + inner_hlen;
		if ((void *)(tcp + 1) > data_end ||
		    bpf_ntohs(inner->tot_len) < inner_hlen + sizeof(*tcp))
			return NULL;
		tuple->ipv4.saddr = inner->saddr;
		tuple->ipv4.daddr = inner->daddr;
		tuple->ipv4.sport = tcp->source;
		tuple->ipv4.dport = tcp->dest;
		*tuple_len = sizeof(tuple->ipv4);
		*iph_len = sizeof(*inner);
	} else {
		struct ipv6hdr *inner = g->inner;

		tcp = (void *)(inner + 1);
		if ((void *)(tcp + 1) > data_end || bpf_ntohs(inner->payload_len) < sizeof(*tcp))
			return NULL;
		__builtin_memcpy(tuple->ipv6.saddr, &inner->saddr, 16);
		__builtin_memcpy(tuple->ipv6.daddr, &inner->daddr, 16);
		tuple->ipv6.sport = tcp->source;
		tuple->ipv6.dport = tcp->dest;
		*tuple_len = sizeof(tuple->ipv6);
		*iph_len = sizeof(*inner);
	}
	return tcp;
}

/* Whether forward_to holds the second choice (IPv4 as ::ffff:a.b.c.d). */
static __always_inline int lbd_gue_may_forward(struct lbd_gue_packet *g, const int is_ipv6)
{
	if (!is_ipv6)
		return lbd_may_forward_to(
			(__u32[4]){0, 0, bpf_htonl(0xffff), ((struct lbd_gue_second_v4 *)g->second)->addr});
	return lbd_may_forward_to(((struct lbd_gue_second_v6 *)g->second)->addr);
}

/* Rewrite the packet to go once more, from this host (the address it was
 * sent to) to the second choice, and ask the FIB the way there. The UDP
 * source port (IPv4) and the flow label (IPv6), the flow's entropy, stay.
 * UDP checksum 0: none in IPv4 (RFC 768), and in IPv6 allowed for tunnels
 * (RFC 6935/6936); lbd's decap reads none. */
static __always_inline long lbd_gue_redirect(struct xdp_md *ctx, struct lbd_gue_packet *g,
					     struct bpf_fib_lookup *fib, const int is_ipv6)
{
	struct udphdr *udp = g->udp;

	if (!is_ipv6) {
		struct iphdr *outer = g->outer;
		struct lbd_gue_second_v4 *second = g->second;
		__be32 self = outer->daddr;

		outer->daddr = second->addr;
		outer->saddr = self;
		outer->ttl = LBD_FORWARD_TTL;
		outer->check = 0;
		outer->check = lbd_ipv4_csum(outer);
		fib->family = AF_INET;
		fib->tos = outer->tos;
		fib->ipv4_src = outer->saddr;
		fib->ipv4_dst = outer->daddr;
	} else {
		struct ipv6hdr *outer = g->outer;
		struct lbd_gue_second_v6 *second = g->second;
		struct in6_addr self;

		__builtin_memcpy(&self, &outer->daddr, sizeof(self));
		__builtin_memcpy(&outer->daddr, second->addr, sizeof(self));
		__builtin_memcpy(&outer->saddr, &self, sizeof(self));
		outer->hop_limit = LBD_FORWARD_TTL;
		fib->family = AF_INET6;
		fib->flowinfo = *(__be32 *)outer & bpf_htonl(0x0fffffff);
		__builtin_memcpy(fib->ipv6_src, &outer->saddr, 16);
		__builtin_memcpy(fib->ipv6_dst, &outer->daddr, 16);
	}
	udp->check = 0;
	*lbd_gue_hops(g, is_ipv6) = 1;
	fib->l4_protocol = IPPROTO_UDP;
	fib->sport = udp->source;
	fib->dport = udp->dest;
	fib->tot_len = g->outer_len;
	fib->ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), 0);
}

/* The keep-or-forward policy of a GUE packet, written once for both
 * families (the file's head comment says what it keeps and why). */
static __always_inline int lbd_gue(struct xdp_md *ctx, __u32 l2_len, const int is_ipv6)
{
	__u32 overhead = is_ipv6 ? LBD_GUE_OVERHEAD_V6 : LBD_GUE_OVERHEAD_V4;
	struct lbd_gue_packet g;
	struct bpf_sock_tuple tuple = {};
	struct bpf_fib_lookup fib = {};
	struct tcphdr *tcp;
	__u32 tuple_len, iph_len, slot;
	int rc;

	rc = lbd_gue_parse(ctx, l2_len, &g, is_ipv6);
	if (rc == XDP_PASS)
		return XDP_PASS;
	if (rc)
		return lbd_malformed();
	if (*lbd_gue_hops(&g, is_ipv6))
		return lbd_keep(ctx, l2_len, overhead, LBD_DECAP_KEPT_FORWARDED);
	if (!lbd_gue_names_another(&g, is_ipv6))
		return lbd_keep(ctx, l2_len, overhead, LBD_DECAP_KEPT_OTHER);
	tcp = lbd_gue_flow(&g, (void *)(long)ctx->data_end, &tuple, &tuple_len, &iph_len, is_ipv6);
	if (!tcp)
		return lbd_malformed();
	slot = lbd_decide(ctx, &tuple, tuple_len, g.inner, iph_len, tcp);
	if (slot != LBD_DECAP_FORWARDED)
		return lbd_keep(ctx, l2_len, overhead, slot);
	if (!lbd_gue_may_forward(&g, is_ipv6))
		return lbd_keep(ctx, l2_len, overhead, LBD_DECAP_FORWARD_REFUSED);
	rc = lbd_gue_redirect(ctx, &g, &fib, is_ipv6);
	return lbd_send(ctx, l2_len, rc, &fib);
}

/* One family's outer header: GUE to the policy; plain IP-in-IP stripped,
 * unless fragmented (left to the kernel to reassemble); the rest passes. */
static __always_inline int lbd_decap_family(struct xdp_md *ctx, __u32 l2_len, const int is_ipv6)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (!is_ipv6) {
		struct iphdr *outer = data + l2_len;
		struct iphdr *inner;

		if ((void *)(outer + 1) > data_end || outer->ihl < 5)
			return XDP_PASS;
		if (outer->protocol == IPPROTO_UDP)
			return lbd_gue(ctx, l2_len, is_ipv6);
		if (outer->protocol != IPPROTO_IPIP || (outer->frag_off & bpf_htons(0x3fff)))
			return XDP_PASS;
		inner = (void *)outer + outer->ihl * 4;
		if ((void *)(inner + 1) > data_end || inner->version != 4)
			return XDP_PASS;
		lbd_count(LBD_DECAP_IPIP);
		return lbd_strip(ctx, l2_len, outer->ihl * 4);
	} else {
		struct ipv6hdr *outer = data + l2_len;
		struct ipv6hdr *inner = (void *)(outer + 1);

		if ((void *)(outer + 1) > data_end)
			return XDP_PASS;
		if (outer->nexthdr == IPPROTO_UDP)
			return lbd_gue(ctx, l2_len, is_ipv6);
		if ((void *)(inner + 1) > data_end || outer->nexthdr != IPPROTO_IPV6 ||
		    inner->version != 6)
			return XDP_PASS;
		lbd_count(LBD_DECAP_IPIP);
		return lbd_strip(ctx, l2_len, sizeof(*outer));
	}
}

int lbd_decap(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l2_len;
	__u16 proto;

	/* the balancer's own L2 walk (frame.h): the frames it sends are read alike */
	if (lbd_parse_l2(data, data_end, &l2_len, &proto))
		return XDP_PASS;
	if (proto == bpf_htons(ETH_P_IP))
		return lbd_decap_family(ctx, l2_len, 0);
	if (proto == bpf_htons(ETH_P_IPV6))
		return lbd_decap_family(ctx, l2_len, 1);
	return XDP_PASS;
}
