/* What both the endpoint programs (bpf_lxc.c) and the host device programs
 * (bpf_host.c) do with a packet once parsed: drop it with an event, report
 * an audit, recognise an ICMP error about a tracked flow. */
#ifndef CILIATE_DECIDE_H
#define CILIATE_DECIDE_H

static __always_inline int same_addr(struct pkt *p, int p_dst, struct pkt *q, int q_dst)
{
	if (!p->v6)
		return (p_dst ? p->daddr : p->saddr) == (q_dst ? q->daddr : q->saddr);
	__u32 *a = p_dst ? p->daddr6 : p->saddr6;
	__u32 *b = q_dst ? q->daddr6 : q->saddr6;

	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3];
}

/* An ICMP error about a tracked flow (see the top of bpf_lxc.c). Into the
 * pod: addressed to the quoted packet's sender, from anyone (a router on the
 * path). Out of the pod: from the quoted packet's receiver back to its
 * sender only, or a pod could carry data in "errors" to any peer it may not
 * reach. The quoted flow must be tracked. */
static __always_inline int related_error(struct __sk_buff *skb, struct pkt *p, int into_pod, __u64 now)
{
	struct pkt quoted = {};

	if (parse_quoted(skb, p, &quoted))
		return 0;
	if (into_pod ? !same_addr(p, 1, &quoted, 0)
		     : !same_addr(p, 0, &quoted, 1) || !same_addr(p, 1, &quoted, 0))
		return 0;
	return ct_find(&quoted, 0, now, CT_SCOPE_FLOW) != 0;
}

static __always_inline int drop(struct pkt *p, struct ev_ctx *c, __u8 reason)
{
	emit_event(p, c, EV_DROP, reason, 0);
	return TC_ACT_SHOT;
}

/* The audit event of a flow passed in audit mode: the direction whose policy
 * would have dropped it, why, and whose policy that was. An ingress audit
 * seen at the sender's veth names the receiver, as the same audit seen at the
 * receiver's own veth would, so a flow reads the same wherever it was judged. */
static __always_inline void emit_audit(struct pkt *p, struct ev_ctx *c, __u8 direction, __u8 reason,
				       __u32 endpoint_id, __u32 peer_endpoint_id)
{
	struct ev_ctx a = *c;

	a.direction = direction;
	a.endpoint_id = endpoint_id;
	a.peer_endpoint_id = peer_endpoint_id;
	emit_event(p, &a, EV_AUDIT, reason, 0);
}

#endif
