/* Host device programs: tc ingress and egress on the node's own devices.
 *
 * Host policies (nodeSelector) make the node an endpoint, HOST_ENDPOINT_ID
 * with identity host: its addresses have lxc entries of that endpoint, so a
 * pod's packet to the node is decided at the pod's veth against the node's
 * ingress policy too, and the node's packet to a pod against the node's
 * egress policy (bpf_lxc.c). What arrives on or leaves by a device is
 * decided here:
 *
 * - from_netdev (tc ingress): a packet addressed to one of the node's
 *   addresses is judged by the node's ingress policy for the sender's
 *   identity (world, remote-node, a CIDR, a remote pod's identity).
 *   Anything else (forwarded to a local pod, which its veth decides) passes.
 *   In cluster mode the same program also steers the proxy's cross-node
 *   upstream replies (see below).
 * - to_netdev (tc egress): a packet from one of the node's addresses is
 *   judged by the node's egress policy for the receiver's identity. The
 *   proxy's upstream connections (SO_MARK 0x0B00) are not: the pod they
 *   carry was decided at its veth; they are tracked so their replies pass.
 *
 * As at a veth: conntrack first (replies and established flows pass), a TCP
 * SYN is always new, ICMP errors about a tracked flow pass, audit mode
 * (LXC_F_AUDIT on the host entries) lets a would-be drop through and reports
 * it. ARP and IPv6 neighbour discovery always pass: the node needs them.
 * A device is host-firewalled when its ifindex maps to HOST_ENDPOINT_ID in
 * ciliate_ifindex; on any other device (cluster mode's underlay without
 * host policies) both programs only steer, never drop.
 *
 * Safety: traffic the node had before its first host policy is not in
 * conntrack; the agent copies the node's established TCP connections into
 * conntrack when it attaches these programs, so a session that was open
 * (an operator's ssh, the agent's own etcd and API server connections)
 * survives a policy that would not admit it anew.
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
#include "lib/conntrack.h"
#include "lib/policy.h"
#include "lib/events.h"
#include "lib/proxy.h"
#include "lib/decide.h"

#ifdef CILIATE_LAYOUT_CHECK
#include CILIATE_LAYOUT_CHECK
#endif

static __always_inline int host_firewalled(struct __sk_buff *skb)
{
	struct ifindex_key k = { .ifindex = skb->ifindex };
	struct ifindex_value *v = endpoint_of_if.lookup(&k);

	return v && v->endpoint_id == HOST_ENDPOINT_ID;
}

/* The host endpoint's entry for the packet's source or destination, or
 * NULL when that side is not the node. */
static __always_inline struct lxc_value *host_side(struct pkt *p, int side)
{
	struct lxc_value *v = lxc_of(p, side);

	return v && v->endpoint_id == HOST_ENDPOINT_ID ? v : 0;
}

/* One new flow of the node's, judged by its policy in `direction` for the
 * peer `peer`: tracked and passed, or dropped (audit: passed, reported). */
static __always_inline int host_decide(struct pkt *p, struct ev_ctx *c, struct lxc_value *host, __u8 direction,
				       __u32 peer, __u64 now)
{
	struct verdict v = {};
	__u32 enforced = host->flags & (direction ? LXC_F_EGRESS_ENFORCED : LXC_F_INGRESS_ENFORCED);

	c->direction = direction;
	policy_decide(HOST_ENDPOINT_ID, enforced, peer, direction, p, &v);
	int audited = audit_pass(host->flags, &v);
	if (!v.verdict)
		return drop(p, c, v.reason);
	if (v.verdict == VERDICT_REDIRECT)
		return drop(p, c, R_REDIRECT_UNSUPPORTED); /* host policies are L3/L4 only */
	ct_create(p, 0, 0, now, CT_SCOPE_FLOW);
	emit_event(p, c, audited ? EV_AUDIT : EV_FORWARD, v.reason, 0);
	return TC_ACT_OK;
}

/* Cluster mode's steering of the proxy's cross-node upstream replies.
 *
 * The proxy's upstream connections keep the client's address (original
 * source), so when the upstream goes to a pod on another node, its replies
 * come back over the underlay addressed to a local pod, and routing would
 * hand them to that pod, which knows nothing of the connection. The upstream
 * socket lives in this netns: when an established (or connecting) socket
 * here matches the packet's 4-tuple and the destination is not the node
 * itself, the to-proxy mark (port 0) makes the `fwmark 0x200/0xf00` rule
 * deliver the packet locally, where the stack finds that socket. */
static __always_inline void steer_upstream_reply(struct __sk_buff *skb, struct pkt *p)
{
	if (p->protocol != IPPROTO_TCP || identity_of(p, SIDE_DST) == 1 /* host: delivered locally anyway */)
		return;
	if (node_holds_connection(skb, p, 0))
		skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_MAGIC_TO_PROXY;
}

int from_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ev_ctx c = { .hook = HOOK_TO_ENDPOINT, .direction = DIR_NONE, .endpoint_id = HOST_ENDPOINT_ID };
	struct lxc_value *host;
	struct ct_value *ctv;
	__u64 now;
	int r = parse_packet(skb, &p);

	if (r != PARSE_IPV4 && r != PARSE_IPV6) {
		/* ARP, ND, other ethertypes: the node's business. A non-first
		 * fragment passes: without its first fragment, which carries
		 * the ports and is policed, it is never reassembled. */
		if (r != PARSE_MALFORMED || !host_firewalled(skb) || !host_side(&p, SIDE_DST))
			return TC_ACT_OK;
		return drop(&p, &c, R_MALFORMED);
	}
	steer_upstream_reply(skb, &p);
	if (!host_firewalled(skb))
		return TC_ACT_OK;
	host = host_side(&p, SIDE_DST);
	if (!host)
		return TC_ACT_OK;
	now = bpf_ktime_get_coarse_ns();
	if (p.inner_off && related_error(skb, &p, 1, now))
		return TC_ACT_OK;
	if (!(p.protocol == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)) {
		ctv = ct_lookup_flow(&p, now, CT_SCOPE_FLOW);
		if (ctv) {
			ct_refresh(ctv, &p, now, CT_SCOPE_FLOW);
			return TC_ACT_OK;
		}
	}
	c.src_identity = identity_of(&p, SIDE_SRC);
	c.dst_identity = host->identity;
	return host_decide(&p, &c, host, 0, c.src_identity, now);
}

int to_netdev(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ev_ctx c = { .hook = HOOK_FROM_ENDPOINT, .direction = DIR_NONE, .endpoint_id = HOST_ENDPOINT_ID };
	struct lxc_value *host;
	struct ct_value *ctv;
	__u64 now;
	int r;

	if (!host_firewalled(skb))
		return TC_ACT_OK;
	r = parse_packet(skb, &p);
	if (r != PARSE_IPV4 && r != PARSE_IPV6)
		return TC_ACT_OK; /* ARP, ND, and what the node's own stack built */
	host = host_side(&p, SIDE_SRC);
	if (!host)
		return TC_ACT_OK; /* a pod's packet routed out: its veth decided */
	now = bpf_ktime_get_coarse_ns();
	if (p.inner_off && related_error(skb, &p, 0, now))
		return TC_ACT_OK;
	int new_conn = p.protocol == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	if (!new_conn) {
		ctv = ct_lookup_flow(&p, now, CT_SCOPE_FLOW);
		if (ctv) {
			ct_refresh(ctv, &p, now, CT_SCOPE_FLOW);
			return TC_ACT_OK;
		}
	}
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_PROXY_ORIGIN) {
		/* The proxy's upstream for a pod's flow, decided at that pod's
		 * veth: tracked so the replies pass, not judged again. */
		ct_create(&p, CT_F_PROXY, 0, now, CT_SCOPE_FLOW);
		return TC_ACT_OK;
	}
	c.src_identity = host->identity;
	c.dst_identity = identity_of(&p, SIDE_DST);
	return host_decide(&p, &c, host, 1, c.dst_identity, now);
}
