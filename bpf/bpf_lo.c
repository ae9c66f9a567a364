/* Node program: tc ingress on lo (one per install). The node's devices
 * have theirs in bpf_host.c.
 *
 * Packets an endpoint's to_container hook sent to a proxy (ingress redirect
 * of traffic from the node or the world) arrive here through
 * bpf_redirect(lo, BPF_F_INGRESS) with the to-proxy mark; this is tc
 * ingress, so the proxy's socket can be assigned. Everything else on lo
 * (the node's own local traffic) passes after one mark test.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/if_ether.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/in.h>
#include <uapi/linux/tcp.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>
#include <uapi/linux/pkt_cls.h>

#ifndef CILIATE_EP_CONFIG_H
#include "lib/dummy_config.h"
#endif
#include "lib/maps.h"
#include "lib/common.h"
#include "lib/events.h"
#include "lib/proxy.h"
#include "lib/policy.h"

#ifdef CILIATE_LAYOUT_CHECK
#include CILIATE_LAYOUT_CHECK
#endif

int from_lo(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ev_ctx c = { .hook = HOOK_TO_ENDPOINT, .direction = 0 };
	__u16 port;
	int r;

	if ((skb->mark & MARK_MAGIC_MASK) != MARK_MAGIC_TO_PROXY)
		return TC_ACT_OK;
	r = parse_packet(skb, &p);
	if ((r != PARSE_IPV4 && r != PARSE_IPV6) || p.protocol != IPPROTO_TCP)
		return TC_ACT_OK;
	port = ntohs((__u16)(skb->mark >> 16));
	if (redirect_to_proxy(skb, &p, port) != 0) {
		emit_event(&p, &c, EV_DROP, R_PROXY_NOT_LISTENING, port);
		return TC_ACT_SHOT;
	}
	return TC_ACT_OK;
}
