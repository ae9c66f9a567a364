/* Verdict events into the pinned ring buffer. Emitted for a flow's first
 * packet (the policy decision) and for every drop, never for established
 * traffic, so the hot path pays nothing for observability. Each emitted
 * verdict also counts one packet in the per-CPU metrics map: the ring buffer
 * may overflow or have no reader, the counters never lose a packet. */
#ifndef CILIATE_EVENTS_H
#define CILIATE_EVENTS_H

struct ev_ctx {
	__u32 endpoint_id; /* the endpoint whose veth saw the packet, 0 if none */
	__u32 src_identity;
	__u32 dst_identity;
	__u32 peer_endpoint_id;
	__u8 direction;
	__u8 hook;
};

static __always_inline void count_verdict(__u8 verdict, __u8 reason, __u8 direction)
{
	struct metrics_key k = { .verdict = verdict, .reason = reason, .direction = direction };
	struct metrics_value one = { .packets = 1 };
	struct metrics_value *v = metrics.lookup(&k);

	if (v) {
		v->packets += 1; /* this CPU's copy: no other CPU writes it */
		return;
	}
	/* First packet of this key on any CPU. NOEXIST: when another CPU
	 * inserted it first, count into the entry it made. */
	if (metrics.insert(&k, &one) == 0)
		return;
	v = metrics.lookup(&k);
	if (v)
		v->packets += 1;
}

static __always_inline void emit_event(struct pkt *p, struct ev_ctx *c, __u8 verdict,
				       __u8 reason, __u16 proxy_port)
{
	struct flow_event e = {};

	e.ts_ns = bpf_ktime_get_ns();
	if (p->v6) {
		__builtin_memcpy(e.saddr, p->saddr6, 16);
		__builtin_memcpy(e.daddr, p->daddr6, 16);
		e.family = EV_FAMILY_IPV6;
	} else {
		e.saddr[0] = p->saddr;
		e.daddr[0] = p->daddr;
		e.family = EV_FAMILY_IPV4;
	}
	e.src_identity = c->src_identity;
	e.dst_identity = c->dst_identity;
	e.endpoint_id = c->endpoint_id;
	e.peer_endpoint_id = c->peer_endpoint_id;
	e.sport = ntohs(p->sport);
	e.dport = ntohs(p->dport);
	e.proxy_port = proxy_port;
	e.protocol = p->protocol;
	e.verdict = verdict;
	e.reason = reason;
	e.direction = c->direction;
	e.hook = c->hook;
	events.ringbuf_output(&e, sizeof(e), 0);
	count_verdict(verdict, reason, c->direction);
}

#endif
