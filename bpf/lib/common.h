/* Packet parsing into the 5-tuple the datapath works on. */
#ifndef CILIATE_COMMON_H
#define CILIATE_COMMON_H

#define TCP_FIN 0x01
#define TCP_SYN 0x02
#define TCP_RST 0x04
#define TCP_ACK 0x10

#define PARSE_IPV4        0
#define PARSE_PASS       -1 /* ARP: always passes */
#define PARSE_UNSUPPORTED -2
#define PARSE_FRAGMENT   -3
#define PARSE_MALFORMED  -4

struct pkt {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* network order; ICMP echo: the echo id on both sides */
	__u16 dport;
	__u8 protocol;
	__u8 tcp_flags;
	__u8 ported; /* TCP or UDP: policy looks at the port */
};

static __always_inline int parse_packet(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;

	if ((void *)(eth + 1) > data_end)
		return PARSE_MALFORMED;
	if (eth->h_proto == htons(ETH_P_ARP))
		return PARSE_PASS;
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

	void *l4 = (void *)ip + ihl;
	if (p->protocol == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > data_end)
			return PARSE_MALFORMED;
		p->sport = th->source;
		p->dport = th->dest;
		p->tcp_flags = ((__u8 *)th)[13];
		p->ported = 1;
	} else if (p->protocol == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > data_end)
			return PARSE_MALFORMED;
		p->sport = uh->source;
		p->dport = uh->dest;
		p->ported = 1;
	} else if (p->protocol == IPPROTO_ICMP) {
		struct icmphdr *ic = l4;
		if ((void *)(ic + 1) > data_end)
			return PARSE_MALFORMED;
		/* Echo request and reply share the id, so a reply finds the
		 * request's conntrack entry by the reversed tuple. */
		if (ic->type == ICMP_ECHO || ic->type == ICMP_ECHOREPLY) {
			p->sport = ic->un.echo.id;
			p->dport = ic->un.echo.id;
		}
	}
	return PARSE_IPV4;
}

/* The same flow seen from the other end (a reply's tuple -> its flow's). */
static __always_inline void pkt_reverse(struct pkt *out, struct pkt *p)
{
	*out = *p;
	out->saddr = p->daddr;
	out->daddr = p->saddr;
	out->sport = p->dport;
	out->dport = p->sport;
}

#endif
