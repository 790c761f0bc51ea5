/* healthpath.c: lbd's health checks through the data path (TC egress, clsact).
 *
 * The daemon's checker opens each check's socket with SO_MARK =
 * LBD_HEALTH_MARK_BASE | n; policy routing by that mark sends the check's
 * packets to the VIP out of lbd's interface (lbd/healthpath.py sets up the
 * rule, the route and a static neighbour for the VIP). Here, on the way out,
 * the mark names the backend the check is for (health_paths: the backend's
 * entry as the balancer has it) and the packet is sent exactly as the
 * balancer sends a client's packet placed on that backend:
 *   dsr   the backend's MAC as destination, ours as source (same as
 *         lbd_forward_dsr), out of the backend's interface;
 *   ipip  the same IP-in-IP, or GUE on a second-chance VIP's TCP packet,
 *         written by encap.h's lbd_write_encap (the one definition the
 *         balancer uses) to the next hop lbd_route_to_backend finds.
 * A second-chance check names the backend itself as the second choice: the
 * backend program keeps such a packet (KEPT_OTHER), so the check proves the
 * GUE path without asking any other backend.
 *
 * Packets without a mark of the range pass untouched (one AND and compare),
 * so nothing the host forwards or sends is disturbed. Egress never passes
 * XDP, and the backend's answer (VIP:port to this host's address) is no VIP
 * packet, so lbd's own balancer passes it to the checker's socket. */
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>

#include "lbd_shared.h"
#include "parse.h"
#include "flowhash.h"
#include "encap.h"

/* check mark -> the backend's entry (address, MACs, interface, VIP flags) */
BPF_HASH(health_paths, u32, struct lbd_backend, LBD_HEALTH_MAX_PATHS);
/* one entry: the ipip outer sources, as the balancer's settings */
BPF_ARRAY(health_settings, struct lbd_settings, 1);
/* per-CPU counters by enum lbd_health_slot */
BPF_PERCPU_ARRAY(health_stats, u64, LBD_HPATH__MAX);

static __always_inline int lbd_health_count(__u32 slot, int verdict)
{
	u64 *n = health_stats.lookup(&slot);

	if (n)
		(*n)++;
	return verdict;
}

static __always_inline int lbd_health_out(struct __sk_buff *skb, __u32 ifindex, __u32 slot)
{
	lbd_health_count(slot, TC_ACT_OK);
	if (ifindex == 0 || ifindex == skb->ifindex)
		return TC_ACT_OK;
	return bpf_redirect(ifindex, 0);
}

/* dsr: as lbd_forward_dsr, on the skb. */
static __always_inline int lbd_health_dsr(struct __sk_buff *skb, const struct lbd_backend *be)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return lbd_health_count(LBD_HPATH_UNPARSED, TC_ACT_SHOT);
	__builtin_memcpy(eth->h_dest, be->dst_mac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, be->src_mac, ETH_ALEN);
	return lbd_health_out(skb, be->ifindex, LBD_HPATH_DSR);
}

/* ipip: the balancer's lbd_forward_ipip without its cache: route, check the
 * MTU against the VIP's tunnel overhead, make room, write the headers. */
static __always_inline int lbd_health_ipip(struct __sk_buff *skb, struct lbd_packet *pkt,
					   const struct lbd_backend *be)
{
	__u32 zero = 0;
	struct lbd_settings *st = health_settings.lookup(&zero);
	const struct lbd_backend *second = NULL;
	struct lbd_nexthop nh = {};
	__u32 overhead = lbd_tunnel_overhead(pkt, be->vip_flags);
	int gue_vip = !!(be->vip_flags & LBD_VIP_SECOND_CHANCE);
	__u32 outer_len;
	__u64 flags;
	void *data, *data_end;
	int route;

	if (!st)
		return lbd_health_count(LBD_HPATH_NO_ROUTE, TC_ACT_SHOT);
	route = lbd_route_to_backend(skb, skb->ifindex, pkt, be, st, &nh, overhead, gue_vip);
	if (route == LBD_ROUTE_TOO_BIG)
		return lbd_health_count(LBD_HPATH_TOO_BIG, TC_ACT_SHOT);
	if (route == LBD_ROUTE_NO_NEIGH)
		return lbd_health_count(LBD_HPATH_NO_NEIGHBOUR, TC_ACT_SHOT);
	if (route != LBD_ROUTE_OK)
		return lbd_health_count(LBD_HPATH_NO_ROUTE, TC_ACT_SHOT);
	if (pkt->l3_len + overhead > nh.mtu)
		return lbd_health_count(LBD_HPATH_TOO_BIG, TC_ACT_SHOT);
	/* the balancer's rule: GUE for a second-chance VIP's TCP packets */
	if (gue_vip && pkt->flow.proto == IPPROTO_TCP)
		second = be;
	outer_len = lbd_encap_len(pkt, second);
	flags = pkt->flow.family == LBD_FAMILY_V4 ? BPF_F_ADJ_ROOM_ENCAP_L3_IPV4 : BPF_F_ADJ_ROOM_ENCAP_L3_IPV6;
	if (second)
		flags |= BPF_F_ADJ_ROOM_ENCAP_L4_UDP;
	/* room after the MAC header: the L2 header stays in front, as
	 * lbd_move_l2 leaves it in the balancer */
	if (bpf_skb_adjust_room(skb, outer_len, BPF_ADJ_ROOM_MAC, flags))
		return lbd_health_count(LBD_HPATH_ENCAP_FAILED, TC_ACT_SHOT);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data + sizeof(struct ethhdr) > data_end)
		return lbd_health_count(LBD_HPATH_ENCAP_FAILED, TC_ACT_SHOT);
	if (lbd_write_encap(data, data_end, pkt, be, second, st, &nh, lbd_flow_hash(&pkt->flow), outer_len))
		return lbd_health_count(LBD_HPATH_ENCAP_FAILED, TC_ACT_SHOT);
	return lbd_health_out(skb, nh.ifindex, second ? LBD_HPATH_GUE : LBD_HPATH_IPIP);
}

int lbd_health_egress(struct __sk_buff *skb)
{
	__u32 mark = skb->mark;
	struct lbd_backend *be;
	struct lbd_packet pkt = {};
	void *data, *data_end;
	int parsed;

	if ((mark & LBD_HEALTH_MARK_MASK) != LBD_HEALTH_MARK_BASE)
		return TC_ACT_OK; /* not a check: untouched */
	be = health_paths.lookup(&mark);
	if (!be)
		return lbd_health_count(LBD_HPATH_UNKNOWN_MARK, TC_ACT_SHOT);
	/* the whole packet in the linear part, where direct access reads it:
	 * lbd_parse bounds its reads by the IP length too, and a socket's data
	 * sits in page fragments (a check's packets are small) */
	if (bpf_skb_pull_data(skb, skb->len))
		return lbd_health_count(LBD_HPATH_UNPARSED, TC_ACT_SHOT);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	parsed = lbd_parse(&pkt, data, data_end);
	if (parsed != LBD_PARSED_L4 || pkt.flow.family != be->family)
		return lbd_health_count(LBD_HPATH_UNPARSED, TC_ACT_SHOT);
	if (be->vip_flags & LBD_VIP_MODE_IPIP)
		return lbd_health_ipip(skb, &pkt, be);
	return lbd_health_dsr(skb, be);
}
