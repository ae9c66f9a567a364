/* Policy lookup: mirrors policy/compiled.py lookup() exactly.
 *
 * Four probes into the endpoint's LPM trie: (peer, proto), (peer, ANY),
 * (ANY, proto), (ANY, ANY), each a longest-prefix match on the port. The
 * strongest verdict wins (DENY > REDIRECT > ALLOW); among redirects the
 * first (most specific) probe's proxy port. TCP and UDP look up their
 * destination port; every other protocol (ICMP included) looks up with the
 * key's prefix length cut at POLICY_FIXED_BITS, so only all-ports entries
 * can match it: an L3-only allow admits ICMP, a port rule never does. */
#ifndef CILIATE_POLICY_H
#define CILIATE_POLICY_H

struct verdict {
	__u8 verdict; /* VERDICT_*, or 0 for "drop: nothing allowed it" */
	__u8 reason;
	__u16 proxy_port;
};

static __always_inline void policy_probe(void *pm, struct policy_key *k, __u32 identity,
					 __u8 protocol, struct verdict *best)
{
	struct policy_value *v;

	k->identity = identity;
	k->protocol = protocol;
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
		k.prefixlen = POLICY_FIXED_BITS + 16;
		k.dport = p->dport;
	} else {
		k.prefixlen = POLICY_FIXED_BITS;
	}
	policy_probe(pm, &k, peer, p->protocol, out);
	policy_probe(pm, &k, peer, 0, out);
	policy_probe(pm, &k, 0, p->protocol, out);
	policy_probe(pm, &k, 0, 0, out);

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

static __always_inline __u32 ipcache_identity(__u32 addr)
{
	struct ipcache_key k = { .prefixlen = 32, .addr = addr };
	struct ipcache_value *v = ipcache.lookup(&k);

	return v ? v->identity : 2; /* world */
}

#endif
