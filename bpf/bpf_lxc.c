/* Endpoint program: tc clsact on the host side of one endpoint's veth.
 *
 * from_container (tc ingress: packets leaving the pod) applies the pod's
 * egress policy and, when the destination is a local endpoint, that
 * endpoint's ingress policy too, so a pod-to-pod packet is decided once,
 * where it enters the node. to_container (tc egress: packets entering the
 * pod) applies the pod's ingress policy to traffic that was not already
 * decided: from the host, the world, or unmanaged interfaces; its ingress
 * redirects go to the proxy through lo (see bpf_lo.c). The proxy's upstream
 * connections (mark 0x0B00) keep the client's address: to_container applies
 * the pod's ingress policy to the client's identity (from_proxy), and
 * from_container hands the pod's replies back to the proxy's socket.
 *
 * Order: conntrack first (established flows and replies pass; a redirected
 * TCP flow stays redirected, a UDP flow's redirect follows the current
 * policy: udp_follow_policy), then policy. A TCP SYN without ACK is always a new
 * connection and is policed again even when its 5-tuple is still tracked.
 * Established flows are kept across a policy change that denies new ones (as
 * Cilium does): they end when the connection closes or its entry expires.
 *
 * Audit mode: when the endpoint whose policy denies a new flow (the source's
 * egress, the destination's ingress) has LXC_F_AUDIT, the flow is passed and
 * tracked as allowed, and its event says EV_AUDIT with the reason it would
 * have been dropped, in the deciding direction. A redirect stays a redirect:
 * the proxy audits L7. Switching audit off polices the next new flow.
 *
 * Restore: conntrack is an LRU, so an idle flow's entries may be evicted
 * (a flood of new flows) or expire. The flow's next packet is policed again
 * in its own direction; a TCP packet other than a SYN that this drops is
 * passed and tracked again if it is a reply of a flow the current policy
 * admits the other way (reason CT_RESTORED): the server that may not open
 * connections speaking first, the client that admits nothing in receiving.
 * The proxy's connections are found by their sockets in the node: the
 * proxy's answer on a redirected flow, a pod's reply on a proxy upstream.
 *
 * ICMP: policed like any other protocol, with port 0: only an L3 (all
 * protocols, all ports) rule, or an ICMP all-ports rule, admits it. Echo
 * replies pass via conntrack: a request is tracked as (id, 0), a reply as
 * (0, id), so the peer's request that reuses a pod's echo id is not taken
 * for its reply (Cilium's GHSA-c66w-hq56-4q97). An ICMP error (unreachable, time exceeded,
 * parameter problem, IPv6's packet too big) about a TCP or UDP flow
 * conntrack holds passes as that flow's packets do ("related", as in
 * Cilium): path MTU discovery works without an L3 allow for the world, which
 * IPv6 needs (its routers never fragment). Other ICMP errors are policed. ARP always passes, and so do IPv6
 * neighbour discovery and MLD (lib/common.h says which packets count).
 * Other ethertypes are dropped, as are non-first fragments.
 *
 * IPv6: the same decisions on the same policy maps, with the family's own
 * ipcache, endpoint table and conntrack (ciliate_ipcache6, ciliate_lxc6,
 * ciliate_ct6). A pod may send from its own global IPv6 address only (the
 * lxc6 entry of that address must be this veth's endpoint); its link-local
 * address serves neighbour discovery, which never reaches policy.
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

/* The generated shared config header (pin dir, sizes, proxy address) arrives
 * with -include; without it (tests that only compile) the checked-in dummy
 * stands in. Nothing endpoint-specific is compiled in: one program serves
 * every endpoint and looks its endpoint up by skb->ifindex (ciliate_ifindex),
 * so attaching another endpoint needs no compile. */
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

/* The endpoint this veth belongs to; NULL (no entry) drops, fail closed. */
static __always_inline struct ifindex_value *endpoint_of(struct __sk_buff *skb)
{
	struct ifindex_key k = { .ifindex = skb->ifindex };

	return endpoint_of_if.lookup(&k);
}

/* The endpoint behind this veth as the receiver of the packet: by the
 * address the veth was attached with (IPv4), or by the packet's destination,
 * which must be this endpoint's own (IPv6). NULL: not ours. */
static __always_inline struct lxc_value *self_as_receiver(struct pkt *p, struct lxc_key *self_key,
							  __u32 endpoint_id)
{
	struct lxc_value *self;

	if (!p->v6)
		return lxc.lookup(self_key);
	self = lxc_of(p, SIDE_DST);
	if (self && self->endpoint_id != endpoint_id)
		return 0;
	return self;
}

/* A TCP packet (not a SYN) that matched no entry and that policy drops in
 * its own direction: if `rev` (the current policy of the flow the other way)
 * admits it, it is that flow's reply, its entries evicted or expired. It is
 * tracked like a flow its own direction allowed, so it takes the SYN-only
 * lifetime until the peer's next packet marks it answered (a pod sending
 * reply-shaped packets gains no long-lived entries). A redirected flow's
 * replies come from the proxy, not from its server pod: not restored here.
 * Returns 1 when restored (the caller passes the packet). */
static __always_inline int restore_reply(struct pkt *p, struct ev_ctx *c, struct verdict *rev, __u64 now,
					 __u8 direction)
{
	if (rev->verdict != VERDICT_ALLOW)
		return 0;
	/* A FIN or RST (often what a peer sends into a flow it lost) closes. */
	ct_create(p, (p->tcp_flags & (TCP_FIN | TCP_RST)) ? CT_F_CLOSING : 0, 0, now, CT_SCOPE_FLOW);
	c->direction = direction;
	emit_event(p, c, EV_FORWARD, R_CT_RESTORED, 0);
	return 1;
}

/* A pod's packet on one of the proxy's upstream connections (the node holds
 * the socket, marked 0x0B00; original source) whose entries are gone.
 * Judged as from_proxy judges the upstream, by this pod's ingress for the
 * client (`in`), then tracked again and handed back to the proxy; never
 * routed on to the client pod, which knows nothing of the connection. */
static __always_inline int restore_upstream_reply(struct __sk_buff *skb, struct pkt *p, struct ev_ctx *c,
						  struct pkt *fwd, struct verdict *in, __u64 now)
{
	c->direction = 0;
	c->src_identity = identity_of(p, SIDE_SRC);
	c->dst_identity = identity_of(p, SIDE_DST);
	if (!in->verdict)
		return drop(p, c, in->reason);
	ct_create(fwd, CT_F_PROXY | CT_F_ANSWERED, 0, now, CT_SCOPE_PROXY);
	emit_event(p, c, EV_FORWARD, R_CT_RESTORED, 0);
	return reply_to_proxy_upstream(skb);
}

/* A UDP datagram of a tracked flow, leaving the pod. UDP has no connection
 * for a proxy to hold, so where a datagram goes follows the current egress
 * policy, not the verdict its tuple got first: a DNS rule added after the pod
 * opened its socket sends the next query to the DNS proxy, and a removed one
 * sends it straight to the resolver again (Cilium keeps the first verdict
 * for the flow's life: cilium/cilium#17459). Only the redirect follows; an
 * allowed flow that policy now denies keeps running until it idles out, as
 * any established flow does. Both entries keep the port, so a restored or
 * reply lookup agrees. */
static __always_inline int udp_follow_policy(struct __sk_buff *skb, struct pkt *p, struct ev_ctx *c,
					     struct ct_value *ctv, struct lxc_key *self_key, __u32 endpoint_id,
					     __u64 now)
{
	struct lxc_value *self = p->v6 ? lxc_of(p, SIDE_SRC) : lxc.lookup(self_key);
	struct verdict eg = {};
	struct ct_value *twin;
	__u16 port;

	if (!self)
		return drop(p, c, R_ENDPOINT_UNKNOWN);
	c->src_identity = self->identity;
	c->dst_identity = identity_of(p, SIDE_DST);
	c->direction = 1;
	policy_decide(endpoint_id, self->flags & LXC_F_EGRESS_ENFORCED, c->dst_identity, 1, p, &eg);
	port = eg.verdict == VERDICT_REDIRECT ? eg.proxy_port : 0;
	if (port != ctv->proxy_port || !(ctv->flags & CT_F_REDIRECT) != !port) {
		ctv->flags = port ? (ctv->flags | CT_F_REDIRECT) : (ctv->flags & ~CT_F_REDIRECT);
		ctv->proxy_port = port;
		twin = ct_find(p, 1, now, CT_SCOPE_FLOW);
		if (twin) {
			twin->flags = port ? (twin->flags | CT_F_REDIRECT) : (twin->flags & ~CT_F_REDIRECT);
			twin->proxy_port = port;
		}
		if (port)
			emit_event(p, c, EV_REDIRECT, R_POLICY_REDIRECT, port);
	}
	if (!port)
		return pass_decided(skb);
	if (redirect_to_proxy(skb, p, port) == 0)
		return TC_ACT_OK;
	return drop(p, c, R_PROXY_NOT_LISTENING);
}

static __always_inline int parse_or_verdict(struct __sk_buff *skb, struct pkt *p, struct ev_ctx *c)
{
	int r = parse_packet(skb, p);

	switch (r) {
	case PARSE_IPV4:
	case PARSE_IPV6:
		return -1;
	case PARSE_PASS:
		return TC_ACT_OK;
	case PARSE_LINK_CONTROL:
		/* Into the pod ND comes from the node itself (hop limit 255:
		 * nothing forwarded it). Out of the pod it passes only to a
		 * destination the node never forwards; ND addressed further
		 * (a covert channel past egress policy) is policed as ICMPv6. */
		if (c->hook == HOOK_TO_ENDPOINT || is_link_scoped(p->daddr6))
			return TC_ACT_OK;
		return -1;
	case PARSE_UNSUPPORTED:
		return TC_ACT_SHOT; /* no event: other ethertypes' chatter would flood the ring */
	case PARSE_FRAGMENT:
		return drop(p, c, R_FRAGMENT);
	default:
		return drop(p, c, R_MALFORMED);
	}
}

/* Both hooks start alike: find the endpoint behind this veth (none: drop,
 * fail closed), then parse. Returns a TC verdict to return at once, or -1
 * with *self_key and c->endpoint_id filled in. */
static __always_inline int enter_endpoint(struct __sk_buff *skb, struct pkt *p, struct ev_ctx *c,
					  struct lxc_key *self_key, __u32 *endpoint_id)
{
	struct ifindex_value *me = endpoint_of(skb);

	if (!me) {
		parse_packet(skb, p);
		return drop(p, c, R_ENDPOINT_UNKNOWN);
	}
	*endpoint_id = me->endpoint_id;
	self_key->addr = me->addr;
	c->endpoint_id = me->endpoint_id;
	return parse_or_verdict(skb, p, c);
}

int from_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ev_ctx c = { .hook = HOOK_FROM_ENDPOINT, .direction = DIR_NONE };
	struct ct_value *ctv;
	struct lxc_key self_key = {};
	struct lxc_value *self = 0, *dst;
	struct verdict eg = {}, in = {};
	struct verdict rev_eg = {}, rev_in = {}, rev = {};
	struct pkt fwd = {};
	__u32 endpoint_id;
	__u64 now;
	int r;
	/* Each direction's audit is reported on its own: both may be relaxed. */
	int audit_eg = 0, audit_in = 0;
	int restorable = 0;
	__u32 dst_id = 0;

	r = enter_endpoint(skb, &p, &c, &self_key, &endpoint_id);
	if (r >= 0)
		return r;
	if (p.v6) {
		/* Only an address the agent gave this endpoint: no lxc6 entry
		 * (a forged or link-local source) or another endpoint's. */
		self = lxc_of(&p, SIDE_SRC);
		if (!self || self->endpoint_id != endpoint_id)
			return drop(&p, &c, R_SOURCE_SPOOFED);
	} else if (p.saddr != self_key.addr) {
		return drop(&p, &c, R_SOURCE_SPOOFED);
	}

	now = bpf_ktime_get_coarse_ns(); /* tick resolution is plenty for expiry */
	if (p.inner_off && related_error(skb, &p, 0, now))
		return pass_decided(skb);
	int new_conn = p.protocol == IPPROTO_TCP &&
		       (p.tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN;
	if (!new_conn) {
		ctv = ct_lookup_flow(&p, now, CT_SCOPE_FLOW);
		/* A redirected flow's reply twin never matches a pod's own packet
		 * (the proxy answers that flow), except when a proxy upstream
		 * connection happens to have the same tuple: look there too. */
		if (!ctv || (ctv->flags & (CT_F_REDIRECT | CT_F_REPLY)) == (CT_F_REDIRECT | CT_F_REPLY)) {
			struct ct_value *up = ct_lookup_flow(&p, now, CT_SCOPE_PROXY);

			if (up && (up->flags & CT_F_REPLY)) {
				ct_refresh(up, &p, now, CT_SCOPE_PROXY);
				return reply_to_proxy_upstream(skb);
			}
		}
		if (ctv) {
			ct_refresh(ctv, &p, now, CT_SCOPE_FLOW);
			if (p.protocol == IPPROTO_UDP && !(ctv->flags & CT_F_REPLY))
				return udp_follow_policy(skb, &p, &c, ctv, &self_key, endpoint_id, now);
			/* replies, and flows that were not redirected, pass */
			if ((ctv->flags & (CT_F_REDIRECT | CT_F_REPLY)) != CT_F_REDIRECT)
				return pass_decided(skb);
			if (redirect_to_proxy(skb, &p, ctv->proxy_port) == 0)
				return TC_ACT_OK;
			return drop(&p, &c, R_PROXY_NOT_LISTENING);
		}
		if (p.protocol == IPPROTO_TCP) {
			/* Untracked and not a SYN: maybe a reply whose entries
			 * are gone (see restore_reply). */
			restorable = 1;
			pkt_reverse(&fwd, &p);
			flow_policy(&fwd, &rev_eg, &rev_in);
			flow_verdict(&rev_eg, &rev_in, &rev);
			if (is_proxy_upstream(skb, &p))
				return restore_upstream_reply(skb, &p, &c, &fwd, &rev_in, now);
		}
	}

	if (!p.v6)
		self = lxc.lookup(&self_key);
	if (!self)
		return drop(&p, &c, R_ENDPOINT_UNKNOWN);
	c.src_identity = self->identity;
	c.dst_identity = identity_of(&p, SIDE_DST);

	c.direction = 1; /* egress */
	policy_decide(endpoint_id, self->flags & LXC_F_EGRESS_ENFORCED, c.dst_identity, 1, &p, &eg);
	audit_eg = audit_pass(self->flags, &eg);
	if (!eg.verdict) {
		if (restorable && restore_reply(&p, &c, &rev, now, 0))
			return pass_decided(skb);
		return drop(&p, &c, eg.reason);
	}

	dst = lxc_of(&p, SIDE_DST);
	if (dst) {
		dst_id = dst->endpoint_id;
		c.peer_endpoint_id = dst_id;
		c.direction = 0; /* the destination's ingress */
		policy_decide(dst_id, dst->flags & LXC_F_INGRESS_ENFORCED,
			      self->identity, 0, &p, &in);
		audit_in = audit_pass(dst->flags, &in);
		if (!in.verdict) {
			if (restorable && restore_reply(&p, &c, &rev, now, 0))
				return pass_decided(skb);
			return drop(&p, &c, in.reason);
		}
	}

	/* The source's egress proxy wins when both directions redirect. */
	struct verdict *v = &eg;
	c.direction = 1;
	if (eg.verdict != VERDICT_REDIRECT && dst && in.verdict == VERDICT_REDIRECT) {
		v = &in;
		c.direction = 0;
	}
	if (v->verdict == VERDICT_REDIRECT) {
		if (redirect_to_proxy(skb, &p, v->proxy_port) != 0)
			return drop(&p, &c, R_PROXY_NOT_LISTENING);
		ct_create(&p, CT_F_REDIRECT, v->proxy_port, now, CT_SCOPE_FLOW);
		if (audit_eg)
			emit_audit(&p, &c, 1, eg.reason, endpoint_id, dst_id);
		if (audit_in)
			emit_audit(&p, &c, 0, in.reason, dst_id, endpoint_id);
		emit_event(&p, &c, EV_REDIRECT, R_POLICY_REDIRECT, v->proxy_port);
		return TC_ACT_OK;
	}
	ct_create(&p, 0, 0, now, CT_SCOPE_FLOW);
	if (audit_eg)
		emit_audit(&p, &c, 1, eg.reason, endpoint_id, dst_id);
	if (audit_in)
		emit_audit(&p, &c, 0, in.reason, dst_id, endpoint_id);
	if (!audit_eg && !audit_in)
		emit_event(&p, &c, EV_FORWARD, v->reason, 0);
	return pass_decided(skb);
}

/* A packet of the proxy's upstream connection (SO_MARK 0x0B00) entering the
 * destination pod. The upstream keeps the client's address (original
 * source), so the source's identity is the client's: the destination's
 * ingress L3/L4 policy is applied to every new upstream connection, whether
 * the flow was redirected at the client's veth or through lo (from the node
 * or the world); its L7 rules were the proxy's job. A redirect verdict
 * passes (the proxy is where it led). Tracked in CT_SCOPE_PROXY, where
 * from_container finds the replies and hands them back to the proxy. */
static __always_inline int from_proxy(struct __sk_buff *skb, struct pkt *p, struct ev_ctx *c,
				      struct lxc_key *self_key, __u32 endpoint_id, __u64 now)
{
	struct ct_value *ctv;
	struct lxc_value *self;
	struct verdict in = {};

	if (!(p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_SYN | TCP_ACK)) == TCP_SYN)) {
		ctv = ct_lookup_flow(p, now, CT_SCOPE_PROXY);
		if (ctv && !(ctv->flags & CT_F_REPLY)) {
			ct_refresh(ctv, p, now, CT_SCOPE_PROXY);
			return TC_ACT_OK;
		}
	}
	self = self_as_receiver(p, self_key, endpoint_id);
	c->dst_identity = self ? self->identity : 0;
	c->src_identity = identity_of(p, SIDE_SRC);
	if (!self)
		return drop(p, c, R_ENDPOINT_UNKNOWN);
	c->direction = 0;
	policy_decide(endpoint_id, self->flags & LXC_F_INGRESS_ENFORCED, c->src_identity, 0, p, &in);
	int audited = audit_pass(self->flags, &in);
	if (!in.verdict)
		return drop(p, c, in.reason);
	ct_create(p, CT_F_PROXY, 0, now, CT_SCOPE_PROXY);
	ct_forget_stale_flow(p, now);
	if (audited)
		emit_event(p, c, EV_AUDIT, in.reason, 0);
	else
		emit_event(p, c, EV_FORWARD, R_PROXY_ORIGINATED, 0);
	return TC_ACT_OK;
}

int to_container(struct __sk_buff *skb)
{
	struct pkt p = {};
	struct ev_ctx c = { .hook = HOOK_TO_ENDPOINT, .direction = DIR_NONE };
	struct ct_value *ctv;
	struct lxc_key self_key = {};
	struct lxc_value *self;
	struct verdict in = {};
	struct verdict rev_eg = {}, rev_in = {}, rev = {};
	struct pkt fwd = {};
	__u32 endpoint_id;
	__u64 now;
	int r;

	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_DECIDED)
		return TC_ACT_OK;
	r = enter_endpoint(skb, &p, &c, &self_key, &endpoint_id);
	if (r >= 0)
		return r;

	now = bpf_ktime_get_coarse_ns(); /* tick resolution is plenty for expiry */
	if ((skb->mark & MARK_MAGIC_MASK) == MARK_MAGIC_PROXY_ORIGIN)
		return from_proxy(skb, &p, &c, &self_key, endpoint_id, now);
	if (p.inner_off && related_error(skb, &p, 1, now))
		return TC_ACT_OK;
	ctv = ct_lookup_flow(&p, now, CT_SCOPE_FLOW);
	if (ctv) {
		ct_refresh(ctv, &p, now, CT_SCOPE_FLOW);
		if ((ctv->flags & (CT_F_REDIRECT | CT_F_REPLY)) == CT_F_REDIRECT) {
			/* An ingress redirect through lo: the proxy answers
			 * the client without passing here, so the flow counts
			 * as answered once the proxy's connection for it is
			 * established (a bare ACK does not make it so). */
			if (!(ctv->flags & (CT_F_ANSWERED | CT_F_CLOSING)) &&
			    node_socket_state(skb, &p, 0) == BPF_TCP_ESTABLISHED)
				ct_answered(ctv, &p, now, CT_SCOPE_FLOW);
			return redirect_via_lo(skb, ctv->proxy_port);
		}
		return TC_ACT_OK;
	}

	self = self_as_receiver(&p, &self_key, endpoint_id);
	c.dst_identity = self ? self->identity : 0;
	c.src_identity = identity_of(&p, SIDE_SRC);

	if (!self)
		return drop(&p, &c, R_ENDPOINT_UNKNOWN);

	/* Untracked and not a SYN: maybe a reply whose entries are gone. */
	int restorable = p.protocol == IPPROTO_TCP && (p.tcp_flags & (TCP_SYN | TCP_ACK)) != TCP_SYN;
	if (restorable) {
		pkt_reverse(&fwd, &p);
		flow_policy(&fwd, &rev_eg, &rev_in);
		flow_verdict(&rev_eg, &rev_in, &rev);
		/* The proxy's answer on a redirected flow: the flow's policy
		 * redirects and the node holds the proxy's connection for it.
		 * Tracked again as that flow, so the pod's next packet goes to
		 * the proxy, not to the server. */
		if (rev.verdict == VERDICT_REDIRECT &&
		    node_holds_connection(skb, &p, 1)) {
			ct_create(&fwd, CT_F_REDIRECT | CT_F_ANSWERED, rev.proxy_port, now, CT_SCOPE_FLOW);
			c.direction = 1;
			emit_event(&p, &c, EV_FORWARD, R_CT_RESTORED, 0);
			return TC_ACT_OK;
		}
	}

	/* From the node itself: the node's egress policy too (host policies;
	 * the proxy's upstreams took from_proxy above). */
	struct lxc_value *host = lxc_of(&p, SIDE_SRC);
	if (host && host->endpoint_id == HOST_ENDPOINT_ID) {
		struct verdict heg = {};

		c.direction = 1;
		policy_decide(HOST_ENDPOINT_ID, host->flags & LXC_F_EGRESS_ENFORCED, self->identity, 1, &p, &heg);
		if (audit_pass(host->flags, &heg))
			emit_audit(&p, &c, 1, heg.reason, HOST_ENDPOINT_ID, endpoint_id);
		if (!heg.verdict) {
			if (restorable && restore_reply(&p, &c, &rev, now, 1))
				return TC_ACT_OK;
			c.endpoint_id = HOST_ENDPOINT_ID;
			c.peer_endpoint_id = endpoint_id;
			return drop(&p, &c, heg.reason);
		}
	}

	c.direction = 0;
	policy_decide(endpoint_id, self->flags & LXC_F_INGRESS_ENFORCED, c.src_identity, 0, &p, &in);
	int audited = audit_pass(self->flags, &in);
	if (!in.verdict) {
		if (restorable && restore_reply(&p, &c, &rev, now, 1))
			return TC_ACT_OK;
		return drop(&p, &c, in.reason);
	}
	if (in.verdict == VERDICT_REDIRECT) {
		if (p.protocol != IPPROTO_TCP)
			return drop(&p, &c, R_REDIRECT_UNSUPPORTED);
		ct_create(&p, CT_F_REDIRECT, in.proxy_port, now, CT_SCOPE_FLOW);
		emit_event(&p, &c, EV_REDIRECT, R_POLICY_REDIRECT, in.proxy_port);
		return redirect_via_lo(skb, in.proxy_port);
	}
	ct_create(&p, 0, 0, now, CT_SCOPE_FLOW);
	emit_event(&p, &c, audited ? EV_AUDIT : EV_FORWARD, in.reason, 0);
	return TC_ACT_OK;
}
