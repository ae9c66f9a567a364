/* Transparent redirect to the proxy with bpf_sk_assign.
 *
 * Cilium's mark encoding is kept (0x0200 | htons(port) << 16) so the
 * `ip rule fwmark 0x200/0xf00 lookup 2004` + `local 0.0.0.0/0 dev lo` route
 * turns the packet into local delivery; the socket itself is chosen here:
 * the flow's own accepted socket if the proxy already has one, else the
 * proxy's listener on PROXY_ADDR:proxy_port (which must be IP_TRANSPARENT
 * because the packet keeps its original destination). A missing listener
 * is a drop with its own reason instead of a silent timeout.
 * Only valid on tc ingress, i.e. for packets coming out of an endpoint. */
#ifndef CILIATE_PROXY_H
#define CILIATE_PROXY_H

#define MARK_MAGIC_TO_PROXY 0x0200
#define MARK_MAGIC_MASK     0x0f00
#define MARK_MAGIC_PROXY_ORIGIN 0x0b00
/* Set by from_container on packets it passed: the source's egress and a local
 * destination's ingress policy (or conntrack) already decided them, so the
 * destination's to_container lets them through without a second lookup. The
 * mark does not survive into the pod's netns (skb_scrub_packet). */
#define MARK_MAGIC_DECIDED 0x0c00

static __always_inline int pass_decided(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_MAGIC_DECIDED;
	return TC_ACT_OK;
}

/* The lookup key (and its size) of the node's socket that receives the
 * packet, or its reply when `reverse`: the family's half of the tuple. */
static __always_inline __u32 sock_tuple(struct bpf_sock_tuple *t, struct pkt *p, int reverse)
{
	if (p->v6) {
		__builtin_memcpy(t->ipv6.saddr, reverse ? p->daddr6 : p->saddr6, 16);
		__builtin_memcpy(t->ipv6.daddr, reverse ? p->saddr6 : p->daddr6, 16);
		t->ipv6.sport = reverse ? p->dport : p->sport;
		t->ipv6.dport = reverse ? p->sport : p->dport;
		return sizeof(t->ipv6);
	}
	t->ipv4.saddr = reverse ? p->daddr : p->saddr;
	t->ipv4.daddr = reverse ? p->saddr : p->daddr;
	t->ipv4.sport = reverse ? p->dport : p->sport;
	t->ipv4.dport = reverse ? p->sport : p->dport;
	return sizeof(t->ipv4);
}

/* The proxy's own address in the lookup key: PROXY_ADDR for IPv4, ::1 for IPv6. */
static __always_inline void to_proxy_address(struct bpf_sock_tuple *t, struct pkt *p, __u16 proxy_port)
{
	if (p->v6) {
		__builtin_memset(t->ipv6.daddr, 0, 16);
		t->ipv6.daddr[3] = htonl(1);
		t->ipv6.dport = htons(proxy_port);
	} else {
		t->ipv4.daddr = htonl(PROXY_ADDR);
		t->ipv4.dport = htons(proxy_port);
	}
}

/* TCP (Envoy, the DNS proxy's TCP side) and UDP (the DNS proxy). A UDP
 * redirect goes to the proxy's one unconnected socket on the proxy port,
 * every datagram of the flow alike: it learns the original destination
 * from IP_RECVORIGDSTADDR and answers from a socket bound to it. */
static __always_inline int redirect_to_proxy(struct __sk_buff *skb, struct pkt *p, __u16 proxy_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;
	long err;

	if (p->protocol == IPPROTO_UDP) {
		size = sock_tuple(&t, p, 0);
		to_proxy_address(&t, p, proxy_port);
		sk = bpf_sk_lookup_udp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
		if (!sk)
			return -1;
		goto assign;
	}
	if (p->protocol != IPPROTO_TCP)
		return -1;
	size = sock_tuple(&t, p, 0);
	sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN && sk->state != BPF_TCP_TIME_WAIT)
			goto assign;
		bpf_sk_release(sk);
	}
	to_proxy_address(&t, p, proxy_port);
	sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -1;
	}
assign:
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err)
		return -1;
	skb->mark = MARK_MAGIC_TO_PROXY | ((__u32)htons(proxy_port) << 16);
	return 0;
}

/* The state (BPF_TCP_*) of the node's socket that receives the packet (its
 * reply when `reverse`), or -1 if there is none.
 * Only the proxy's transparent sockets hold pod and world addresses: its
 * accepted connections the original destination's, its upstream connections
 * (original source) the client's; so a socket found for a pod's tuple is the
 * proxy's. */
static __always_inline int node_socket_state(struct __sk_buff *skb, struct pkt *p, int reverse)
{
	struct bpf_sock_tuple t = {};
	__u32 size = sock_tuple(&t, p, reverse);
	struct bpf_sock *sk;
	int state;

	sk = bpf_skc_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	state = sk->state;
	bpf_sk_release(sk);
	return state;
}

/* A live connection (not a listener, which any tuple may hit, nor TIME_WAIT). */
static __always_inline int node_holds_connection(struct __sk_buff *skb, struct pkt *p, int reverse)
{
	int state = node_socket_state(skb, p, reverse);

	return state >= 0 && state != BPF_TCP_LISTEN && state != BPF_TCP_TIME_WAIT;
}

/* Is the node's socket that receives the packet one of the proxy's upstream
 * connections (SO_MARK 0x0B00)? Its mark tells it from the proxy's accepted
 * connections, which hold pod addresses too. */
static __always_inline int is_proxy_upstream(struct __sk_buff *skb, struct pkt *p)
{
	struct bpf_sock_tuple t = {};
	__u32 size = sock_tuple(&t, p, 0);
	struct bpf_sock *sk;
	int ours;

	sk = bpf_sk_lookup_tcp(skb, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	ours = sk->state != BPF_TCP_LISTEN && (sk->mark & MARK_MAGIC_MASK) == MARK_MAGIC_PROXY_ORIGIN;
	bpf_sk_release(sk);
	return ours;
}

/* A destination pod's reply on one of the proxy's upstream connections. The
 * upstream socket is bound to the client's address (original source), so
 * routing would send the reply on to the client's veth; the to-proxy mark
 * (port 0) makes the `fwmark 0x200/0xf00` rule deliver it locally instead,
 * where the stack finds the upstream socket by its 4-tuple. */
static __always_inline int reply_to_proxy_upstream(struct __sk_buff *skb)
{
	skb->mark = (skb->mark & ~MARK_MAGIC_MASK) | MARK_MAGIC_TO_PROXY;
	return TC_ACT_OK;
}

/* Ingress redirect of a packet that tc egress already has (from the node or
 * the world, routed to the pod): sk_assign is not allowed here, so hand it
 * back to the node through lo's ingress with the to-proxy mark; bpf_lo.c
 * on lo assigns the proxy socket there. lo's address is all zeroes, so the
 * destination MAC becomes that, or the stack would see PACKET_OTHERHOST. */
#define LOOPBACK_IFINDEX 1

static __always_inline int redirect_via_lo(struct __sk_buff *skb, __u16 proxy_port)
{
	__u8 zero[ETH_ALEN] = {};

	if (bpf_skb_store_bytes(skb, 0, zero, ETH_ALEN, 0) < 0)
		return TC_ACT_SHOT;
	skb->mark = MARK_MAGIC_TO_PROXY | ((__u32)htons(proxy_port) << 16);
	return bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS);
}

#endif
