/* Packet parsing into the 5-tuple the datapath works on, for both families.
 *
 * IPv4 and IPv6 share one struct pkt: the IPv4 addresses in saddr/daddr, the
 * IPv6 ones in saddr6/daddr6 with v6 set. Everything past parsing (policy,
 * conntrack, events, the proxy's socket lookups) is family-free and picks
 * the family's map through the helpers that take a struct pkt. */
#ifndef CILIATE_COMMON_H
#define CILIATE_COMMON_H

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define PARSE_IPV4        0
#define PARSE_IPV6        1
#define PARSE_PASS       -1 /* ARP, IPv6 neighbour discovery: always pass */
#define PARSE_UNSUPPORTED -2
#define PARSE_FRAGMENT   -3
#define PARSE_MALFORMED  -4
#define PARSE_LINK_CONTROL -5 /* IPv6 ND/MLD: the hook decides (bpf_lxc.c parse_or_verdict) */

#ifndef ETH_P_IPV6
#define ETH_P_IPV6 0x86DD
#endif
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP_ 132
/* IPv6 extension headers walked to find the transport header */
#define NEXTHDR_HOP_      0
#define NEXTHDR_ROUTING_  43
#define NEXTHDR_FRAGMENT_ 44
#define NEXTHDR_AUTH_     51
#define NEXTHDR_DEST_     60
#define IPV6_EXT_MAX      4 /* more in one packet: malformed (dropped) */

#define ICMPV6_ECHO_REQUEST_ 128
#define ICMPV6_ECHO_REPLY_   129

struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u32 saddr6[4]; /* network order; v6 only */
	__u32 daddr6[4];
	__u16 sport; /* network order; ICMP echo: see parse_l4 */
	__u16 dport;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 ported; /* TCP, UDP or SCTP: policy looks at the port */
	__u8 v6;
	/* ICMP and ICMPv6: the message type, which policy looks at in the
	 * port's place (icmps rules); 0 for other protocols */
	__u8 icmp_type;
	/* ICMP errors: offset from skb->data of the packet they quote (its IP
	 * header), so the flow it belongs to can be found; 0 otherwise */
	__u16 inner_off;
};

#define INNER_OFF_MAX 1023 /* a mask too: the verifier needs the bound */

/* ICMP error types: they quote the packet they report on */
static __always_inline int icmp_is_error(__u8 v6, __u8 type)
{
	if (v6)
		return type >= 1 && type <= 4; /* unreachable, packet too big, time exceeded, parameter problem */
	return type == 3 || type == 11 || type == 12; /* unreachable, time exceeded, parameter problem */
}

/* Transport header at l4 (both families). */
static __always_inline int parse_l4(void *l4, void *data_end, struct pkt *p, void *data)
{
	if (p->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return PARSE_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->ported = 1;
	} else if (p->protocol == IPPROTO_UDP || p->protocol == IPPROTO_SCTP_) {
		/* SCTP's common header starts with the two ports, as UDP's does;
		 * the rest (verification tag, checksum) is the endpoints' business */
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return PARSE_MALFORMED;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->ported = 1;
	} else if (p->protocol == IPPROTO_ICMP || p->protocol == IPPROTO_ICMPV6_) {
		/* type, code, checksum, then the echo id: the same in both */
		struct icmphdr *ic = l4;
		if ((void *)(ic + 1) > data_end)
			return PARSE_MALFORMED;
		/* A request carries its id as the source "port", a reply as
		 * the destination one: a reply finds its request's entry by the
		 * reversed tuple, and a request with the same id from the peer
		 * (id, 0) never matches that entry's reply twin (0, id), which
		 * would admit it past the pod's ingress (Cilium's
		 * GHSA-c66w-hq56-4q97). */
		int v4 = p->protocol == IPPROTO_ICMP;
		p->icmp_type = ic->type;
		if (v4 ? ic->type == ICMP_ECHO : ic->type == ICMPV6_ECHO_REQUEST_) {
			p->sport = ic->un.echo.id;
		} else if (v4 ? ic->type == ICMP_ECHOREPLY : ic->type == ICMPV6_ECHO_REPLY_) {
			p->dport = ic->un.echo.id;
		} else if (icmp_is_error(p->v6, ic->type) && (p->protocol == IPPROTO_ICMPV6_) == p->v6) {
			/* the quoted packet follows the 8-byte header; one deeper
			 * than INNER_OFF_MAX is not looked at (policed as it is) */
			__u32 off = (void *)(ic + 1) - data;
			p->inner_off = off <= INNER_OFF_MAX ? off : 0;
		}
	}
	return p->v6 ? PARSE_IPV6 : PARSE_IPV4;
}

/* Neighbour discovery (RS, RA, NS, NA, redirect) with hop limit 255, which
 * no router forwards (RFC 4861), and MLD with hop limit 1: link-local
 * control traffic the path needs, passed like ARP where it stays on the link
 * (see is_link_scoped). Anything else that claims to be one is policed as
 * ICMPv6. */
static __always_inline int ipv6_link_control(void *l4, void *data_end, __u8 hop_limit)
{
	__u8 *type = l4;

	if ((void *)(type + 1) > data_end)
		return 0;
	if (*type >= 133 && *type <= 137)
		return hop_limit == 255;
	if ((*type >= 130 && *type <= 132) || *type == 143)
		return hop_limit == 1;
	return 0;
}

/* A destination the node never forwards: link-local unicast (fe80::/10) or
 * multicast of interface- or link-local scope (ff01::/16, ff02::/16). */
static __always_inline int is_link_scoped(__u32 *addr)
{
	__u8 *b = (__u8 *)addr;

	if (b[0] == 0xfe && (b[1] & 0xc0) == 0x80)
		return 1;
	return b[0] == 0xff && (b[1] & 0x0f) <= 2;
}

static __always_inline int parse_ipv6(struct ipv6hdr *ip6, void *data, void *data_end, struct pkt *p)
{
	if ((void *)(ip6 + 1) > data_end)
		return PARSE_MALFORMED;
	p->v6 = 1;
	__builtin_memcpy(p->saddr6, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr6, &ip6->daddr, 16);

	__u8 nh = ip6->nexthdr;
	void *l4 = ip6 + 1;
#pragma unroll
	for (int i = 0; i < IPV6_EXT_MAX; i++) {
		if (nh == NEXTHDR_HOP_ || nh == NEXTHDR_ROUTING_ || nh == NEXTHDR_DEST_ || nh == NEXTHDR_AUTH_) {
			__u8 *h = l4;
			if ((void *)(h + 4) > data_end)
				return PARSE_MALFORMED;
			/* A routing header with segments left sends the packet on
			 * from its destination to another: policy judged the wrong
			 * peer. Not carried (RFC 5095 deprecated type 0 for this). */
			if (nh == NEXTHDR_ROUTING_ && h[3] != 0)
				return PARSE_MALFORMED;
			/* AH counts 4-byte units minus 2, the others 8-byte units minus 1 */
			l4 += nh == NEXTHDR_AUTH_ ? (h[1] + 2) * 4 : (h[1] + 1) * 8;
			nh = h[0];
		} else if (nh == NEXTHDR_FRAGMENT_) {
			__u8 *h = l4;
			if ((void *)(h + 8) > data_end)
				return PARSE_MALFORMED;
			nh = h[0];
			p->protocol = nh;
			/* Non-first fragments carry no ports: dropped, as for IPv4. */
			if ((h[2] << 8 | (h[3] & 0xf8)) != 0)
				return PARSE_FRAGMENT;
			l4 += 8;
		} else {
			break;
		}
	}
	if (nh == NEXTHDR_HOP_ || nh == NEXTHDR_ROUTING_ || nh == NEXTHDR_DEST_ || nh == NEXTHDR_AUTH_ ||
	    nh == NEXTHDR_FRAGMENT_)
		return PARSE_MALFORMED; /* a chain longer than we walk */
	p->protocol = nh;
	if (nh == IPPROTO_ICMPV6_ && ipv6_link_control(l4, data_end, ip6->hop_limit))
		return PARSE_LINK_CONTROL;
	return parse_l4(l4, data_end, p, data);
}

static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto == htons(ETH_P_ARP))
		return PARSE_PASS;
	if (eth->h_proto == htons(ETH_P_IPV6))
		return parse_ipv6((void *)(eth + 1), data, data_end, p);
	if (eth->h_proto != htons(ETH_P_IP))
		return PARSE_UNSUPPORTED;

	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return PARSE_MALFORMED;
	__u32 ihl = ip->ihl * 4;
	if (ihl < sizeof(*ip))
		return PARSE_MALFORMED;
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->protocol = ip->protocol;
	/* Non-first fragments carry no ports: we do not reassemble, so they
	 * cannot be policed and are dropped (documented limitation). */
	if (ip->frag_off & htons(0x1fff))
		return PARSE_FRAGMENT;
	return parse_l4((void *)ip + ihl, data_end, p, data);
}

/* The flow an ICMP error reports on: the quoted packet's tuple (TCP and UDP
 * only; the quote has at least the ports, not always a whole header).
 * Returns 0 when `in` holds it. */
static __always_inline int parse_quoted(struct __sk_buff *skb, struct pkt *outer, struct pkt *in)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u16 off = outer->inner_off & INNER_OFF_MAX;
	void *l4;

	if (!off)
		return -1;
	in->v6 = outer->v6;
	if (outer->v6) {
		struct ipv6hdr *h = data + off;
		if ((void *)(h + 1) > data_end)
			return -1;
		__builtin_memcpy(in->saddr6, &h->saddr, 16);
		__builtin_memcpy(in->daddr6, &h->daddr, 16);
		in->protocol = h->nexthdr;
		l4 = h + 1;
	} else {
		struct iphdr *h = data + off;
		if ((void *)(h + 1) > data_end)
			return -1;
		__u32 ihl = h->ihl * 4;
		if (ihl < sizeof(*h) || ihl > 60)
			return -1;
		in->saddr = h->saddr;
		in->daddr = h->daddr;
		in->protocol = h->protocol;
		l4 = (void *)h + ihl;
	}
	if (in->protocol != IPPROTO_TCP && in->protocol != IPPROTO_UDP && in->protocol != IPPROTO_SCTP_)
		return -1;
	__be16 *ports = l4;
	if ((void *)(ports + 2) > data_end)
		return -1;
	in->sport = ports[0];
	in->dport = ports[1];
	in->ported = 1;
	return 0;
}

/* The same flow seen from the other end (a reply's tuple -> its flow's). */
static __always_inline void pkt_reverse(struct pkt *out, struct pkt *p)
{
	*out = *p;
	out->saddr = p->daddr;
	out->daddr = p->saddr;
	__builtin_memcpy(out->saddr6, p->daddr6, 16);
	__builtin_memcpy(out->daddr6, p->saddr6, 16);
	out->sport = p->dport;
	out->dport = p->sport;
}

#endif
