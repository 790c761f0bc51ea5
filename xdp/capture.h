/* capture.h: `lbctl capture`, the packets the program handled (XDP_TX,
 * redirect and drop never reach the kernel's packet taps, so tcpdump cannot
 * see them), each as it arrived and as it left, with the decision.
 *
 * balancer.c's entry reads capture_ctl.on, which is all a packet pays while
 * no capture runs, and around the balancer calls two hooks:
 *   lbd_capture_arrive(): a packet that matches the capture's client and VIP
 *     filter has its first bytes and this CPU's counters copied aside
 *     (capture_scratch).
 *   lbd_capture_keep(): after the decision, whether its action and drop
 *     reason are asked for; if the rate allows too (lbd_capture_within_rate),
 *     the entry sends the record and the frame as it left to userspace (capture_events, a perf
 *     event array: bpf_perf_event_output copies the frame from the context
 *     itself, as xdpdump does).
 * (bcc rewrites map calls in the main file only: the lookups and the output
 * stay in balancer.c, these helpers take what they found.)
 * The decision is read from which per-CPU counters the packet moved: XDP runs
 * a packet to its end on one CPU without preemption, so the difference
 * between the copy and the counters is this packet's alone, and the packet
 * path needs no line of its own for capture. The backend is where the packet
 * went: the daemon reads it from the frame as it left. A way of placing a
 * packet that moves none of the counters lbd_capture_decision reads shows as
 * LBD_PLACED_NONE until it is added there.
 */
#ifndef LBD_CAPTURE_H
#define LBD_CAPTURE_H

#include "lbd_shared.h"
#include "maps.h"
#include "parse.h"

/* bcc 0.26's helper list predates bpf_xdp_load_bytes (kernel 5.18): declared
 * here from the UAPI's helper number. */
#define lbd_xdp_load_bytes(ctx, offset, buf, len) \
	((long (*)(struct xdp_md *, __u32, void *, __u32))BPF_FUNC_xdp_load_bytes)(ctx, offset, buf, len)

/* What a packet being captured keeps until the decision: per CPU, one entry. */
struct lbd_capture_scratch {
	struct lbd_global_stats before; /* this CPU's counters as the packet arrived */
	__u32 actions;      /* the capture's, as it arrived (capture_ctl's) */
	__u32 drop_reasons; /* the capture's, as it arrived */
	struct lbd_capture_record record;
};

/* one entry: on, the filter and the rate (struct lbd_capture_ctl). An array
 * map, not a global variable (bcc 0.26 has no global data sections): the
 * verifier inlines the lookup, so reading `on` is a few instructions. */
BPF_F_TABLE("array", u32, struct lbd_capture_ctl, capture_ctl, 1, 0);
/* the packet being captured on this CPU, between begin and end */
BPF_F_TABLE("percpu_array", u32, struct lbd_capture_scratch, capture_scratch, 1, 0);
/* records to the daemon, one perf ring per CPU */
BPF_PERF_OUTPUT(capture_events);

static __always_inline int lbd_capture_same_addr(const __u32 a[4], const __u32 b[4])
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* The capture's client and VIP filter, on the packet as it arrived. */
static __always_inline int lbd_capture_wanted(const struct lbd_capture_ctl *ctl,
					      const struct lbd_flow_key *flow)
{
	if (ctl->client_family &&
	    (flow->family != ctl->client_family || !lbd_capture_same_addr(flow->src, ctl->client)))
		return 0;
	if (!ctl->vip_family)
		return 1;
	return flow->family == ctl->vip_family && lbd_capture_same_addr(flow->dst, ctl->vip) &&
	       (!ctl->vip_port || flow->dport == ctl->vip_port) &&
	       (!ctl->vip_proto || flow->proto == ctl->vip_proto);
}

/* A capture runs (ctl->on): the packet's first bytes and this CPU's counters
 * into `scratch` if the filter wants it; returns scratch then, else NULL. */
static __always_inline struct lbd_capture_scratch *
lbd_capture_arrive(struct xdp_md *ctx, const struct lbd_capture_ctl *ctl,
		   struct lbd_capture_scratch *scratch, const struct lbd_global_stats *gs)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct lbd_packet pkt = {};
	__u32 len = data_end - data, caplen;

	if (!scratch || !gs)
		return NULL;
	lbd_parse(&pkt, data, data_end); /* a second parse, paid only while capturing */
	if (!lbd_capture_wanted(ctl, &pkt.flow))
		return NULL;
	scratch->actions = ctl->actions;
	scratch->drop_reasons = ctl->drop_reasons;
	scratch->before = *gs;
	scratch->record.ktime_ns = bpf_ktime_get_ns();
	scratch->record.flow = pkt.flow;
	scratch->record.ifindex = ctx->ingress_ifindex;
	scratch->record.arrived_len = len;
	if (len == 0)
		return NULL;
	caplen = len < LBD_CAPTURE_SNAP ? len : LBD_CAPTURE_SNAP;
	/* 1..LBD_CAPTURE_SNAP (a power of two) in a form the verifier can bound */
	caplen = ((caplen - 1) & (LBD_CAPTURE_SNAP - 1)) + 1;
	if (lbd_xdp_load_bytes(ctx, 0, scratch->record.arrived, caplen))
		return NULL;
	scratch->record.arrived_caplen = caplen;
	return scratch;
}

/* The decision, from the counters the packet moved (see the top of this file). */
static __always_inline void lbd_capture_decision(struct lbd_capture_record *rec,
						 const struct lbd_global_stats *before,
						 const struct lbd_global_stats *after)
{
	int i;

	rec->drop_reason = LBD_DROP__MAX;
#pragma unroll
	for (i = 0; i < LBD_DROP__MAX; i++)
		if (after->drops[i] != before->drops[i])
			rec->drop_reason = i;
	if (after->ct_hits != before->ct_hits)
		rec->placed = LBD_PLACED_ENTRY;
	else if (after->ct_inserts_tcp != before->ct_inserts_tcp ||
		 after->ct_inserts_udp != before->ct_inserts_udp)
		/* an entry made without a miss: the flow had one, for a backend gone */
		rec->placed = after->ct_misses != before->ct_misses ? LBD_PLACED_TABLE :
								      LBD_PLACED_TABLE_MOVED;
	else if (after->stateless_forwards != before->stateless_forwards)
		rec->placed = LBD_PLACED_TABLE_NO_ENTRY;
	else if (after->icmp_to_backend != before->icmp_to_backend)
		rec->placed = LBD_PLACED_ICMP_FLOW;
	else if (after->fragments_forwarded != before->fragments_forwarded)
		rec->placed = LBD_PLACED_FRAGMENT;
	else
		rec->placed = LBD_PLACED_NONE;
	rec->flags = 0;
	if (after->second_choice_carried != before->second_choice_carried)
		rec->flags |= LBD_CAPTURED_SECOND_CHOICE;
	if (after->icmp_too_big_sent != before->icmp_too_big_sent)
		rec->flags |= LBD_CAPTURED_TOO_BIG;
}

/* Within the capture's rate: records this second (all CPUs share the count,
 * not under a lock: CPUs at the limit at once may let a few more through). */
static __always_inline int lbd_capture_within_rate(struct lbd_capture_ctl *ctl)
{
	__u64 second = bpf_jiffies64() / LBD_KERNEL_HZ;

	if (ctl->window != second) {
		ctl->window = second;
		ctl->window_count = 0;
	}
	/* read, then add: CPUs checking at once may each pass the last slot */
	if (ctl->window_count >= ctl->rate_per_s) {
		__sync_fetch_and_add(&ctl->over_rate, 1);
		return 0;
	}
	__sync_fetch_and_add(&ctl->window_count, 1);
	return 1;
}

/* After the decision: 1 if the capture wants the packet (its action, its drop
 * reason); the record is completed for the frame as it left, `len` bytes. */
static __always_inline int lbd_capture_keep(struct lbd_capture_scratch *scratch,
					    const struct lbd_global_stats *gs, int action, __u32 len)
{
	struct lbd_capture_record *rec = &scratch->record;
	__u32 caplen = 0;

	if (!gs || action < 0 || action > XDP_REDIRECT || !(scratch->actions & (1u << action)))
		return 0;
	lbd_capture_decision(rec, &scratch->before, gs);
	if (scratch->drop_reasons && rec->drop_reason < LBD_DROP__MAX &&
	    !(scratch->drop_reasons & (1u << rec->drop_reason)))
		return 0;
	rec->action = action;
	rec->left_len = len;
	/* a frame leaves only by tx or redirect; a passed one goes on unchanged */
	if (action == XDP_TX || action == XDP_REDIRECT)
		caplen = len < LBD_CAPTURE_SNAP ? len : LBD_CAPTURE_SNAP;
	rec->left_caplen = caplen;
	return 1;
}

#endif /* LBD_CAPTURE_H */
