/* Conntrack: an LRU hash of flows keyed by 5-tuple, one entry per direction.
 *
 * ct_create writes the flow's entry and its reply twin (CT_F_REPLY), so an
 * established packet in either direction is one lookup. If the twin was
 * evicted, the slow path (a miss) still finds the flow by the reversed
 * tuple and restores the twin.
 *
 * Lifetimes: TCP 6 h idle, 10 s after a FIN or RST; everything else 60 s.
 * An expired entry counts as absent, so the flow is policed again. The
 * expiry is rewritten at most once a second per entry, keeping the hot path
 * mostly read-only. */
#ifndef CILIATE_CONNTRACK_H
#define CILIATE_CONNTRACK_H

#define NSEC 1000000000ULL
#define CT_LIFETIME_TCP   (21600ULL * NSEC)
#define CT_LIFETIME_CLOSE (10ULL * NSEC)
#define CT_LIFETIME_OTHER (60ULL * NSEC)

static __always_inline void ct_fill_key(struct ct_key *k, struct pkt *p, int reverse)
{
	k->protocol = p->protocol;
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

static __always_inline __u64 ct_lifetime(struct pkt *p, __u8 flags)
{
	if (p->protocol != IPPROTO_TCP)
		return CT_LIFETIME_OTHER;
	if (flags & CT_F_CLOSING)
		return CT_LIFETIME_CLOSE;
	return CT_LIFETIME_TCP;
}

static __always_inline struct ct_value *ct_find(struct pkt *p, int reverse, __u64 now)
{
	struct ct_key k = {};
	struct ct_value *v;

	ct_fill_key(&k, p, reverse);
	v = ct.lookup(&k);
	if (v && v->expires_ns < now)
		return 0;
	return v;
}

static __always_inline void ct_write(struct pkt *p, int reverse, __u8 flags, __u16 proxy_port, __u64 now)
{
	struct ct_key k = {};
	struct ct_value v = {};

	ct_fill_key(&k, p, reverse);
	v.flags = flags;
	v.proxy_port = proxy_port;
	v.expires_ns = now + ct_lifetime(p, flags);
	ct.update(&k, &v);
}

/* A FIN or RST closes both directions' entries (slow path, once per flow). */
static __always_inline void ct_refresh(struct ct_value *v, struct pkt *p, __u64 now)
{
	if (p->protocol == IPPROTO_TCP && (p->tcp_flags & (TCP_FIN | TCP_RST)) &&
	    !(v->flags & CT_F_CLOSING)) {
		v->flags |= CT_F_CLOSING;
		v->expires_ns = now + CT_LIFETIME_CLOSE;
		struct ct_value *twin = ct_find(p, 1, now);
		if (twin) {
			twin->flags |= CT_F_CLOSING;
			twin->expires_ns = now + CT_LIFETIME_CLOSE;
		}
		return;
	}
	if (v->flags & CT_F_CLOSING)
		return;
	__u64 want = now + ct_lifetime(p, v->flags);
	if (want > v->expires_ns + NSEC)
		v->expires_ns = want;
}

static __always_inline void ct_create(struct pkt *p, __u8 flags, __u16 proxy_port, __u64 now)
{
	ct_write(p, 0, flags, proxy_port, now);
	ct_write(p, 1, flags | CT_F_REPLY, proxy_port, now);
}

/* The entry for this packet's direction; restored from its twin when the
 * LRU evicted it. NULL: the flow is not tracked (or expired). */
static __always_inline struct ct_value *ct_lookup_flow(struct pkt *p, __u64 now)
{
	struct ct_value *v = ct_find(p, 0, now);
	struct ct_value *twin;

	if (v)
		return v;
	twin = ct_find(p, 1, now);
	if (!twin)
		return 0;
	ct_write(p, 0, twin->flags ^ CT_F_REPLY, twin->proxy_port, now);
	return ct_find(p, 0, now);
}

#endif
