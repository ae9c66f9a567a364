/* Policy lookup: mirrors policy/compiled.py lookup() exactly.
 *
 * Four probes into the endpoint's LPM trie: (peer, proto), (peer, ANY),
 * (ANY, proto), (ANY, ANY), each a longest-prefix match on the port. The
 * strongest verdict wins (DENY > REDIRECT > ALLOW); among redirects the
 * first (most specific) probe's proxy port. TCP, UDP and SCTP look up their
 * destination port. ICMP and ICMPv6 look up their message type in the
 * port's place, but only under their own protocol: the ANY probes are cut
 * at POLICY_FIXED_BITS, so a `port: 8` rule of protocol ANY never admits an
 * echo request. Every other protocol looks up with every probe cut there:
 * only all-ports entries match it, so an L3-only allow admits it and a port
 * rule never does. */
#ifndef CILIATE_POLICY_H
#define CILIATE_POLICY_H

struct verdict {
	__u8 verdict; /* VERDICT_*, or 0 for "drop: nothing allowed it" */
	__u8 reason;
	__u16 proxy_port;
};

static __always_inline void policy_probe(void *pm, struct policy_key *k, __u32 identity,
					 __u8 protocol, __u32 prefixlen, struct verdict *best)
{
	struct policy_value *v;

	k->identity = identity;
	k->protocol = protocol;
	k->prefixlen = prefixlen;
	v = bpf_map_lookup_elem(pm, k);
	if (v && v->verdict > best->verdict) {
		best->verdict = v->verdict;
		best->proxy_port = v->proxy_port;
	}
}

/* Decide one direction for one endpoint. Result verdict 0 means drop. */
static __always_inline void policy_decide(__u32 endpoint_id, __u32 enforced, __u32 peer,
					  __u8 direction, struct pkt *p, struct verdict *out)
{
	struct policy_key k = {};
	__u32 own = POLICY_FIXED_BITS, any = POLICY_FIXED_BITS;
	void *pm;

	out->verdict = 0;
	out->proxy_port = 0;
	pm = policy_maps.lookup(&endpoint_id);
	if (!pm) {
		out->reason = R_POLICY_MAP_MISSING; /* fail closed */
		return;
	}
	k.direction = direction;
	if (p->ported) {
		own = any = POLICY_FIXED_BITS + 16;
		k.dport = p->dport;
	} else if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6_) {
		own = POLICY_FIXED_BITS + 16;
		k.dport = bpf_htons(p->icmp_type);
	}
	policy_probe(pm, &k, peer, p->protocol, own, out);
	policy_probe(pm, &k, peer, 0, any, out);
	policy_probe(pm, &k, 0, p->protocol, own, out);
	policy_probe(pm, &k, 0, 0, any, out);

	switch (out->verdict) {
	case VERDICT_DENY:
		out->verdict = 0;
		out->reason = R_POLICY_DENY;
		break;
	case VERDICT_REDIRECT:
		out->reason = R_POLICY_REDIRECT;
		break;
	case VERDICT_ALLOW:
		out->reason = R_POLICY_ALLOW;
		break;
	default:
		if (enforced) {
			out->reason = R_NO_POLICY_MATCH;
		} else {
			out->verdict = VERDICT_ALLOW;
			out->reason = R_NOT_ENFORCED;
		}
	}
}

/* Audit mode (LXC_F_AUDIT in the deciding endpoint's flags): a drop that the
 * policy decided (policy-deny, no-policy-match) becomes an allow; a missing
 * policy map stays a drop (fail closed). Returns 1 when it turned a drop into
 * an allow; out->reason keeps why it would have been dropped. */
static __always_inline int audit_pass(__u32 flags, struct verdict *out)
{
	if (out->verdict || !(flags & LXC_F_AUDIT))
		return 0;
	if (out->reason != R_POLICY_DENY && out->reason != R_NO_POLICY_MATCH)
		return 0;
	out->verdict = VERDICT_ALLOW;
	return 1;
}

#define SIDE_SRC 0
#define SIDE_DST 1
#define WORLD_ID 2

static __always_inline __u32 ipcache_identity(__u32 addr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	struct ipcache_value *v = ipcache.lookup(&k);

	return v ? v->identity : WORLD_ID;
}

/* The identity of the packet's source or destination, from the family's
 * ipcache; world when no prefix covers it. */
static __always_inline __u32 identity_of(struct pkt *p, int side)
{
	if (p->v6) {
		struct ipcache6_key k = { .prefixlen = 128 };
		struct ipcache_value *v;

		__builtin_memcpy(k.addr, side == SIDE_DST ? p->daddr6 : p->saddr6, 16);
		v = ipcache6.lookup(&k);
		return v ? v->identity : WORLD_ID;
	}
	return ipcache_identity(side == SIDE_DST ? p->daddr : p->saddr);
}

/* The local endpoint that owns the packet's source or destination address,
 * or NULL. */
static __always_inline struct lxc_value *lxc_of(struct pkt *p, int side)
{
	if (p->v6) {
		struct lxc6_key k = {};

		__builtin_memcpy(k.addr, side == SIDE_DST ? p->daddr6 : p->saddr6, 16);
		return lxc6.lookup(&k);
	}
	struct lxc_key k = { .addr = side == SIDE_DST ? p->daddr : p->saddr };

	return lxc.lookup(&k);
}

/* What the current policy says of a flow opened as `fwd` (initiator ->
 * responder; fwd->dport is the responder's port), as from_container decides
 * a new flow: the initiator's egress if it is a local endpoint, the
 * responder's ingress if it is one (a side that is not an endpoint has no
 * policy here: allow); audit mode allows. */
static __always_inline void flow_policy(struct pkt *fwd, struct verdict *eg, struct verdict *in)
{
	struct lxc_value *ini = lxc_of(fwd, SIDE_SRC);
	struct lxc_value *res = lxc_of(fwd, SIDE_DST);

	eg->verdict = VERDICT_ALLOW;
	eg->reason = R_NOT_ENFORCED;
	eg->proxy_port = 0;
	*in = *eg;
	if (ini) {
		policy_decide(ini->endpoint_id, ini->flags & LXC_F_EGRESS_ENFORCED, identity_of(fwd, SIDE_DST), 1,
			      fwd, eg);
		audit_pass(ini->flags, eg);
	}
	if (res) {
		policy_decide(res->endpoint_id, res->flags & LXC_F_INGRESS_ENFORCED,
			      ini ? ini->identity : identity_of(fwd, SIDE_SRC), 0, fwd, in);
		audit_pass(res->flags, in);
	}
}

/* Both sides together, as from_container combines them: a drop on either
 * side drops (verdict 0); the initiator's egress proxy wins when both
 * redirect. */
static __always_inline void flow_verdict(struct verdict *eg, struct verdict *in, struct verdict *out)
{
	*out = *eg;
	if (!eg->verdict || !in->verdict) {
		out->verdict = 0;
		out->reason = eg->verdict ? in->reason : eg->reason;
	} else if (eg->verdict != VERDICT_REDIRECT && in->verdict == VERDICT_REDIRECT) {
		*out = *in;
	}
}

#endif
