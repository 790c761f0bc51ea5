/* pass.c: helper programs with no logic of their own.
 *  - lbd_pass: XDP_PASS. A native XDP_TX/redirect into a veth only delivers
 *    when the peer veth runs an XDP program too (docs/background.md): the lab puts this
 *    one there. It is also the floor of the per-packet cost benchmark.
 *  - lbd_mac_swap_tx: swaps the MACs and bounces the packet (XDP_TX), the
 *    cheapest balancer hop this machine allows (bench's xdp_floor).
 *  - lbd_count: counts what arrives (bench receivers), then passes. */
#include <uapi/linux/bpf.h>
#include <linux/if_ether.h>

BPF_PERCPU_ARRAY(arrivals, u64, 1);

int lbd_pass(struct xdp_md *ctx)
{
	return XDP_PASS;
}

int lbd_count(struct xdp_md *ctx)
{
	u32 zero = 0;
	u64 *n = arrivals.lookup(&zero);

	if (n)
		(*n)++;
	return XDP_PASS;
}

int lbd_mac_swap_tx(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	unsigned char tmp[ETH_ALEN];

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	__builtin_memcpy(tmp, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, tmp, ETH_ALEN);
	return XDP_TX;
}
