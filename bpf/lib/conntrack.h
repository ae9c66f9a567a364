/* Conntrack: an LRU hash of flows keyed by 5-tuple, one entry per direction;
 * one table per family (ciliate_ct, ciliate_ct6), the same entries in both.
 *
 * ct_create writes the flow's entry and its reply twin (CT_F_REPLY), so an
 * established packet in either direction is one lookup. If the twin was
 * evicted, the slow path (a miss) still finds the flow by the reversed
 * tuple and restores the twin.
 *
 * Scopes: the proxy's upstream connections keep the client's address (Envoy's
 * original_src), so an upstream C:p2 -> S:80 can share its 5-tuple with a
 * flow the node tracks at C's veth (C's own connection C:p2 -> S:80, or its
 * leftover entries). They are kept apart by the scope in the key's first pad
 * byte (ct_key.pad[0]): CT_SCOPE_FLOW for flows seen at the sender's veth,
 * CT_SCOPE_PROXY for the proxy's upstream connections, which only the
 * destination's veth consults (bpf_lxc.c from_proxy / the reply steering).
 *
 * Lifetimes: TCP 6 h idle once answered, 60 s until then (Cilium's SYN
 * timeout), 10 s after a FIN or RST; everything else 60 s. "Answered"
 * (CT_F_ANSWERED, on both entries) means a packet other than a SYN-ACK was
 * seen in the reply direction: the peer took part in the flow. A pod that
 * sends SYNs nobody answers (a flood) fills the table with entries that are
 * dead a minute later; a SYN-ACK alone does not count, so neither do floods
 * whose answers the sender never acknowledges. An expired entry counts as
 * absent, so the flow is policed again. The expiry is rewritten at most once
 * a second per entry, keeping the hot path mostly read-only.
 *
 * The table is an LRU: an insert never fails, it evicts the least recently
 * used entry, which under a flood can be an idle flow of another pod. Such a
 * flow is policed again on its next packet; bpf_lxc.c's restore path covers
 * the packets that are only admissible as replies. */
#ifndef CILIATE_CONNTRACK_H
#define CILIATE_CONNTRACK_H

/* NSEC and the CT_LIFETIME_* values live in layout.h, next to the expiry
 * they set (Python reads entries back with the same values). */

#define CT_SCOPE_FLOW  0
#define CT_SCOPE_PROXY 1

static __always_inline void ct_fill_key(struct ct_key *k, struct pkt *p, int reverse, __u8 scope)
{
	k->protocol = p->protocol;
	k->pad[0] = scope;
	if (reverse) {
		k->saddr = p->daddr;
		k->daddr = p->saddr;
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		k->saddr = p->saddr;
		k->daddr = p->daddr;
		k->sport = p->sport;
		k->dport = p->dport;
	}
}

static __always_inline void ct6_fill_key(struct ct6_key *k, struct pkt *p, int reverse, __u8 scope)
{
	k->protocol = p->protocol;
	k->pad[0] = scope;
	if (reverse) {
		__builtin_memcpy(k->saddr, p->daddr6, 16);
		__builtin_memcpy(k->daddr, p->saddr6, 16);
		k->sport = p->dport;
		k->dport = p->sport;
	} else {
		__builtin_memcpy(k->saddr, p->saddr6, 16);
		__builtin_memcpy(k->daddr, p->daddr6, 16);
		k->sport = p->sport;
		k->dport = p->dport;
	}
}

/* The family's table: ciliate_ct for IPv4, ciliate_ct6 for IPv6. */
static __always_inline struct ct_value *ct_get(struct pkt *p, int reverse, __u8 scope)
{
	if (p->v6) {
		struct ct6_key k = {};

		ct6_fill_key(&k, p, reverse, scope);
		return ct6.lookup(&k);
	}
	struct ct_key k = {};

	ct_fill_key(&k, p, reverse, scope);
	return ct.lookup(&k);
}

static __always_inline void ct_put(struct pkt *p, int reverse, __u8 scope, struct ct_value *v)
{
	if (p->v6) {
		struct ct6_key k = {};

		ct6_fill_key(&k, p, reverse, scope);
		ct6.update(&k, v);
		return;
	}
	struct ct_key k = {};

	ct_fill_key(&k, p, reverse, scope);
	ct.update(&k, v);
}

static __always_inline void ct_del(struct pkt *p, int reverse, __u8 scope)
{
	if (p->v6) {
		struct ct6_key k = {};

		ct6_fill_key(&k, p, reverse, scope);
		ct6.delete(&k);
		return;
	}
	struct ct_key k = {};

	ct_fill_key(&k, p, reverse, scope);
	ct.delete(&k);
}

static __always_inline __u64 ct_lifetime(struct pkt *p, __u8 flags)
{
	if (p->protocol != IPPROTO_TCP)
		return CT_LIFETIME_OTHER;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_CLOSE;
	if (!(flags & CT_F_ANSWERED))
		return CT_LIFETIME_SYN;
	return CT_LIFETIME_TCP;
}

static __always_inline struct ct_value *ct_find(struct pkt *p, int reverse, __u64 now, __u8 scope)
{
	struct ct_value *v = ct_get(p, reverse, scope);

	if (v && v->expires_ns < now)
		return 0;
	return v;
}

static __always_inline void ct_write(struct pkt *p, int reverse, __u8 flags, __u16 proxy_port, __u64 now,
				     __u8 scope)
{
	struct ct_value v = {};

	v.flags = flags;
	v.proxy_port = proxy_port;
	v.expires_ns = now + ct_lifetime(p, flags);
	ct_put(p, reverse, scope, &v);
}

/* The flow was answered: both entries get the answered lifetime (once per
 * flow). */
static __always_inline void ct_answered(struct ct_value *v, struct pkt *p, __u64 now, __u8 scope)
{
	struct ct_value *twin;

	v->flags |= CT_F_ANSWERED;
	v->expires_ns = now + ct_lifetime(p, v->flags);
	twin = ct_find(p, 1, now, scope);
	if (twin && !(twin->flags & CT_F_CLOSING)) {
		twin->flags |= CT_F_ANSWERED;
		twin->expires_ns = v->expires_ns;
	}
}

/* A packet of a tracked flow. A FIN or RST closes both directions' entries
 * (slow path, once per flow); the first packet in the reply direction that
 * is not a SYN-ACK marks the flow answered. */
static __always_inline void ct_refresh(struct ct_value *v, struct pkt *p, __u64 now, __u8 scope)
{
	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)) &&
	    !(v->flags & CT_F_CLOSING)) {
		v->flags |= CT_F_CLOSING;
		v->expires_ns = now + CT_LIFETIME_CLOSE;
		struct ct_value *twin = ct_find(p, 1, now, scope);
		if (twin) {
			twin->flags |= CT_F_CLOSING;
			twin->expires_ns = now + CT_LIFETIME_CLOSE;
		}
		return;
	}
	if (v->flags & CT_F_CLOSING)
		return;
	if ((v->flags & (CT_F_REPLY | CT_F_ANSWERED)) == CT_F_REPLY &&
	    !(p->protocol == IPPROTO_TCP && (p->tcp_flags & TCP_SYN))) {
		ct_answered(v, p, now, scope);
		return;
	}
	__u64 want = now + ct_lifetime(p, v->flags);
	if (want > v->expires_ns + NSEC)
		v->expires_ns = want;
}

static __always_inline void ct_create(struct pkt *p, __u8 flags, __u16 proxy_port, __u64 now, __u8 scope)
{
	ct_write(p, 0, flags, proxy_port, now, scope);
	ct_write(p, 1, flags | CT_F_REPLY, proxy_port, now, scope);
}

/* A proxy upstream C:p -> S:dport was just opened: a CT_SCOPE_FLOW entry
 * with that tuple that is not a redirected flow is a leftover of an old
 * direct connection (S cannot hold both connections at once) and would
 * catch S's replies before the upstream's own entry; forget it. A redirected
 * flow's entry is live (C's connection to the proxy) and stays. */
static __always_inline void ct_forget_stale_flow(struct pkt *p, __u64 now)
{
	struct ct_value *v = ct_find(p, 0, now, CT_SCOPE_FLOW);

	if (v && (v->flags & CT_F_REDIRECT))
		return;
	ct_del(p, 0, CT_SCOPE_FLOW);
	ct_del(p, 1, CT_SCOPE_FLOW);
}

/* The entry for this packet's direction; restored from its twin when the
 * LRU evicted it. NULL: the flow is not tracked (or expired). */
static __always_inline struct ct_value *ct_lookup_flow(struct pkt *p, __u64 now, __u8 scope)
{
	struct ct_value *v = ct_find(p, 0, now, scope);
	struct ct_value *twin;

	if (v)
		return v;
	twin = ct_find(p, 1, now, scope);
	if (!twin)
		return 0;
	ct_write(p, 0, twin->flags ^ CT_F_REPLY, twin->proxy_port, now, scope);
	return ct_find(p, 0, now, scope);
}

#endif
