/* The source port of the proxy's upstream connections that keep a client's
 * address (cgroup/connect4 and cgroup/connect6, one each per install,
 * attached to the node's cgroup v2 root through pinned bpf_links).
 *
 * Envoy's original_src filter binds such a socket to the client pod's
 * address with IP_BIND_ADDRESS_NO_PORT and SO_MARK 0x0B00, so the kernel
 * would pick the port at connect() from the node's ip_local_port_range. Pods
 * pick theirs from their own namespace's range (Linux's default
 * 32768-60999); where the two overlap, an upstream can hold the 4-tuple of a
 * connection the client pod later opens itself (a policy that stops
 * redirecting while Envoy keeps its pooled upstream), and the server then
 * sees two connections with one 4-tuple: the pod's stalls. Here the port
 * comes from the agent's range instead, whatever the node's sysctl says:
 *
 * - only sockets of the node's network namespace (its cookie, in
 *   ciliate_upstream_cfg), marked 0x0B00, bound to an address and no port;
 *   every other connect() passes untouched;
 * - a port is taken only if no socket of the namespace holds the 4-tuple
 *   (established, TIME_WAIT or a listener on the port: bpf_skc_lookup_tcp
 *   sees them all) and no other connect claimed it in the last second
 *   (ciliate_upstream_claims, atomic insert): the kernel's own choice makes
 *   the same two checks;
 * - SO_REUSEADDR lets upstreams to different servers share a port, as the
 *   kernel's connect-time choice does; connect() still refuses a 4-tuple
 *   that is taken;
 * - ports are probed at random (linear probing from one random start
 *   would grow runs of taken ports); no free port after UPSTREAM_PROBES
 *   probes (a range ~90% full) and connect() fails (EPERM): the proxy
 *   answers 503, as when the kernel runs out of ports; counted.
 */
#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>

#ifndef CILIATE_EP_CONFIG_H
#include "lib/dummy_config.h"
#endif
#include "lib/layout.h"

#ifdef CILIATE_LAYOUT_CHECK
#include CILIATE_LAYOUT_CHECK
#endif

#define PIN(name) CILIATE_PIN_DIR "/" name
#ifndef AF_INET6
#define AF_INET6 10
#endif
#define MARK_MAGIC_MASK         0x0f00
#define MARK_MAGIC_PROXY_ORIGIN 0x0b00
#define SOL_SOCKET_ 1
#define SO_REUSEADDR_ 2
#define UPSTREAM_PROBES 64
#define UPSTREAM_CLAIM_NS 1000000000ULL
#define CONNECT_PROCEED 1
#define CONNECT_REFUSE  0

BPF_TABLE_PINNED("array", __u32, struct upstream_cfg, upstream_cfg, 1,
		 PIN("ciliate_upstream_cfg"));
BPF_TABLE_PINNED("percpu_array", __u32, __u64, upstream_stats, UPSTREAM_STATS,
		 PIN("ciliate_upstream_stats"));
BPF_TABLE_PINNED("lru_hash", struct upstream_claim_key, __u64, upstream_claims,
		 UPSTREAM_CLAIMS_MAX, PIN("ciliate_upstream_claims"));

static __always_inline void count(__u32 slot)
{
	__u64 *v = upstream_stats.lookup(&slot);

	if (v)
		*v += 1;
}

/* Does a socket of this namespace hold client:sport <-> server:dport? Asked
 * as the server's answer would arrive. Addresses in network order; IPv4 in
 * the first word. */
static __always_inline int tuple_taken(struct bpf_sock_addr *ctx, int v6, __u32 *client, __u16 sport,
				       __u32 *server, __u16 dport)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	__u32 size;

	if (v6) {
		__builtin_memcpy(t.ipv6.saddr, server, 16);
		__builtin_memcpy(t.ipv6.daddr, client, 16);
		t.ipv6.sport = htons(dport);
		t.ipv6.dport = htons(sport);
		size = sizeof(t.ipv6);
	} else {
		t.ipv4.saddr = server[0];
		t.ipv4.daddr = client[0];
		t.ipv4.sport = htons(dport);
		t.ipv4.dport = htons(sport);
		size = sizeof(t.ipv4);
	}
	sk = bpf_skc_lookup_tcp(ctx, &t, size, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	bpf_sk_release(sk);
	return 1;
}

/* Claim the port for this connect; 0 if another claimed it within a second. */
static __always_inline int claim(struct upstream_claim_key *key, __u64 now)
{
	__u64 *at = upstream_claims.lookup(key);

	if (at) {
		if (now - *at < UPSTREAM_CLAIM_NS)
			return 0;
		upstream_claims.delete(key);
	}
	return upstream_claims.insert(key, &now) == 0;
}

static __always_inline int bind_port(struct bpf_sock_addr *ctx, int v6, __u32 *src, __u16 port)
{
	if (v6) {
		struct sockaddr_in6 a6 = {};

		a6.sin6_family = AF_INET6;
		__builtin_memcpy(&a6.sin6_addr, src, 16);
		a6.sin6_port = htons(port);
		return bpf_bind(ctx, (struct sockaddr *)&a6, sizeof(a6));
	}
	struct sockaddr_in a4 = {};

	a4.sin_family = AF_INET;
	a4.sin_addr.s_addr = src[0];
	a4.sin_port = htons(port);
	return bpf_bind(ctx, (struct sockaddr *)&a4, sizeof(a4));
}

/* The claim key names the 4-tuple; an IPv6 address is folded into its
 * 32-bit field. Two tuples that fold alike only share a claim: the probe
 * skips a port it could have had, never hands out a taken one (the socket
 * lookup above is exact). */
static __always_inline __u32 fold(int v6, __u32 *a)
{
	return v6 ? a[0] ^ a[1] ^ a[2] ^ a[3] : a[0];
}

static __always_inline int choose_port(struct bpf_sock_addr *ctx, int v6, __u32 *src, __u32 *dst, __u16 dport)
{
	struct upstream_claim_key key = {};
	struct upstream_cfg *cfg;
	__u32 zero = 0, span, i;
	__u16 port;
	__u64 now;
	int one = 1;

	cfg = upstream_cfg.lookup(&zero);
	/* the agent refuses a range narrower than this (PortRange.parse) */
	if (!cfg || !cfg->port_lo || cfg->port_hi < cfg->port_lo + UPSTREAM_PROBES)
		return CONNECT_PROCEED;
	if (bpf_get_netns_cookie(ctx) != cfg->netns_cookie)
		return CONNECT_PROCEED;

	if (bpf_setsockopt(ctx, SOL_SOCKET_, SO_REUSEADDR_, &one, sizeof(one)))
		return CONNECT_PROCEED; /* cannot share ports: leave it to the kernel */
	key.saddr = fold(v6, src);
	key.daddr = fold(v6, dst);
	key.dport = dport;
	span = (__u32)cfg->port_hi - cfg->port_lo + 1;
	now = bpf_ktime_get_ns();

	for (i = 0; i < UPSTREAM_PROBES; i++) {
		port = cfg->port_lo + bpf_get_prandom_u32() % span;
		key.sport = port;
		if (tuple_taken(ctx, v6, src, port, dst, dport) || !claim(&key, now)) {
			count(UPSTREAM_BUSY);
			continue;
		}
		if (bind_port(ctx, v6, src, port) == 0) {
			count(UPSTREAM_ASSIGNED);
			return CONNECT_PROCEED;
		}
		/* bound elsewhere without SO_REUSEADDR (a node service on the port) */
		upstream_claims.delete(&key);
		count(UPSTREAM_BUSY);
	}
	count(UPSTREAM_EXHAUSTED);
	return CONNECT_REFUSE;
}

/* Only the proxy's upstreams (mark 0x0B00) bound to an address, no port. */
static __always_inline int is_upstream(struct bpf_sock *sk)
{
	return (sk->mark & MARK_MAGIC_MASK) == MARK_MAGIC_PROXY_ORIGIN && !sk->src_port;
}

int upstream_connect4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 src[4] = {}, dst[4] = {};

	if (!sk || ctx->protocol != IPPROTO_TCP || !is_upstream(sk) || !sk->src_ip4)
		return CONNECT_PROCEED;
	src[0] = sk->src_ip4;
	dst[0] = ctx->user_ip4;
	return choose_port(ctx, 0, src, dst, ntohs((__u16)ctx->user_port));
}

int upstream_connect6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	__u32 src[4], dst[4];

	if (!sk || ctx->protocol != IPPROTO_TCP || !is_upstream(sk))
		return CONNECT_PROCEED;
	src[0] = sk->src_ip6[0];
	src[1] = sk->src_ip6[1];
	src[2] = sk->src_ip6[2];
	src[3] = sk->src_ip6[3];
	if (!(src[0] | src[1] | src[2] | src[3]))
		return CONNECT_PROCEED;
	dst[0] = ctx->user_ip6[0];
	dst[1] = ctx->user_ip6[1];
	dst[2] = ctx->user_ip6[2];
	dst[3] = ctx->user_ip6[3];
	return choose_port(ctx, 1, src, dst, ntohs((__u16)ctx->user_port));
}
