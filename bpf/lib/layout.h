/* Map key/value and event layouts shared with Python.
 *
 * Mirrored in redirect/layout.py (the single Python definition); the test
 * tests/datapath/test_layout.py compiles this header and checks that every
 * size and field offset agrees. Change both or neither.
 */
#ifndef CILIATE_LAYOUT_H
#define CILIATE_LAYOUT_H

/* ipcache: LPM trie, IPv4 prefix -> identity. addr in network order. */
struct ipcache_key {
	__u32 prefixlen;
	__u32 addr;
};
struct ipcache_value {
	__u32 identity;
	__u32 reserved;
};

/* ipcache6: LPM trie, IPv6 prefix -> identity (value: ipcache_value). A
 * separate map, not a wider key: installs pinned by an IPv4-only version
 * are adopted as they are. */
struct ipcache6_key {
	__u32 prefixlen;
	__u32 addr[4]; /* network order */
};

/* lxc: local endpoints by IPv4 (network order); lxc6 by IPv6, same value. */
/* The node itself as an endpoint (host policies): policy/compiled.py */
#define HOST_ENDPOINT_ID 65535
#define LXC_F_INGRESS_ENFORCED 0x1
#define LXC_F_EGRESS_ENFORCED  0x2
/* Audit (Cilium's policy-audit-mode): a packet this endpoint's policy would
 * drop (policy-deny, no-policy-match) passes and is reported as EV_AUDIT. */
#define LXC_F_AUDIT            0x4
struct lxc_key {
	__u32 addr;
};
struct lxc6_key {
	__u32 addr[4];
};
struct lxc_value {
	__u32 endpoint_id;
	__u32 identity;
	__u32 flags;
	__u32 reserved;
};

/* ifindex: host-side veth ifindex -> the endpoint whose veth it is. Every
 * endpoint runs the same compiled program; it finds its own endpoint id and
 * address here by skb->ifindex (identity and flags stay in lxc). */
struct ifindex_key {
	__u32 ifindex;
};
struct ifindex_value {
	__u32 endpoint_id;
	__u32 addr; /* network order */
};

/* policy: one LPM trie per endpoint (inner map of a hash-of-maps keyed by
 * endpoint id). The identity, direction and protocol are always matched in
 * full (POLICY_FIXED_BITS); the port is the only prefix-matched part, so a
 * port range is stored as the aligned power-of-two blocks covering it. */
#define POLICY_FIXED_BITS 48
struct policy_key {
	__u32 prefixlen;
	__u32 identity;
	__u8 direction;
	__u8 protocol;
	__u16 dport; /* network order: prefix bits are the port's high bits */
};
#define VERDICT_ALLOW    1
#define VERDICT_REDIRECT 2
#define VERDICT_DENY     3
struct policy_value {
	__u16 proxy_port; /* host order */
	__u8 verdict;
	__u8 reserved;
};

/* conntrack: LRU hash keyed by 5-tuple. A flow has two entries, one per
 * direction (the reply twin carries CT_F_REPLY), so every established
 * packet costs exactly one lookup. */
struct ct_key {
	__u32 saddr;
	__u32 daddr;
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 protocol;
	__u8 pad[3];
};
/* conntrack of IPv6 flows (ciliate_ct6): the same entries, wider addresses */
struct ct6_key {
	__u32 saddr[4];
	__u32 daddr[4];
	__u16 sport; /* network order */
	__u16 dport; /* network order */
	__u8 protocol;
	__u8 pad[3]; /* pad[0]: scope, as in ct_key */
};
#define CT_F_REDIRECT 0x1 /* flow goes to proxy_port, for its whole life */
#define CT_F_PROXY    0x2 /* opened by the proxy (SO_MARK 0x0B00) */
#define CT_F_CLOSING  0x4 /* FIN or RST seen: short lifetime */
#define CT_F_REPLY    0x8 /* the reverse-tuple twin of a flow's entry */
#define CT_F_ANSWERED 0x10 /* a non-SYN packet was seen in the reply direction */
struct ct_value {
	__u64 expires_ns; /* bpf_ktime_get_coarse_ns() clock (CLOCK_MONOTONIC) */
	__u16 proxy_port;
	__u8 flags;
	__u8 pad[5];
};
/* expires_ns = last refresh + one of these (lib/conntrack.h says when). */
#define NSEC 1000000000ULL
#define CT_LIFETIME_TCP   (21600ULL * NSEC) /* answered TCP, idle */
#define CT_LIFETIME_SYN   (60ULL * NSEC)    /* TCP nobody answered yet */
#define CT_LIFETIME_CLOSE (10ULL * NSEC)    /* after a FIN or RST */
#define CT_LIFETIME_OTHER (60ULL * NSEC)    /* UDP, ICMP */

/* events: ring buffer of verdicts on new flows and drops. */
#define EV_DROP     1
#define EV_FORWARD  2
#define EV_REDIRECT 3
#define EV_AUDIT    4 /* would have been dropped (reason says why); passed */
#define HOOK_FROM_ENDPOINT 0
#define HOOK_TO_ENDPOINT   1
#define DIR_NONE 255
#define EV_FAMILY_IPV4 4
#define EV_FAMILY_IPV6 6
struct flow_event {
	__u64 ts_ns;
	__u32 saddr[4]; /* IPv4: saddr[0], the rest zero */
	__u32 daddr[4];
	__u32 src_identity;
	__u32 dst_identity;
	__u32 endpoint_id;      /* the endpoint whose veth saw the packet */
	__u32 peer_endpoint_id; /* local peer endpoint, 0 if none */
	__u16 sport;            /* host order */
	__u16 dport;            /* host order */
	__u16 proxy_port;
	__u8 protocol;
	__u8 verdict;
	__u8 reason;
	__u8 direction;         /* policy direction that decided, DIR_NONE */
	__u8 hook;
	__u8 family;            /* EV_FAMILY_* */
	__u8 pad[4];
};

/* metrics: per-CPU packet counters of every emitted verdict, keyed by what
 * the event says (verdict, reason, policy direction), so drops and forwards
 * are counted even when the ring buffer is full or nobody reads it. The agent
 * sums the CPUs at scrape time (redirect/counters.py). */
#define METRICS_MAX 1024
struct metrics_key {
	__u8 verdict;   /* EV_* */
	__u8 reason;    /* R_* */
	__u8 direction; /* 0 ingress, 1 egress, DIR_NONE */
	__u8 pad;
};
struct metrics_value {
	__u64 packets;
};

/* reasons, mirrored by redirect.events.Reason */
#define R_POLICY_ALLOW        0
#define R_POLICY_DENY         1
#define R_NO_POLICY_MATCH     2
#define R_NOT_ENFORCED        3
#define R_ENDPOINT_UNKNOWN    4
#define R_PROXY_NOT_LISTENING 5
#define R_UNSUPPORTED_L3      6
#define R_FRAGMENT            7
#define R_MALFORMED           8
#define R_POLICY_REDIRECT     9
#define R_PROXY_ORIGINATED    10
#define R_POLICY_MAP_MISSING  11
#define R_SOURCE_SPOOFED      12
#define R_REDIRECT_UNSUPPORTED 13
/* forward: a TCP packet of a flow whose entries were gone (evicted, expired)
 * and that only the opposite direction's policy admits: a reply, passed and
 * tracked again (bpf_lxc.c, restore) */
#define R_CT_RESTORED         14


/* upstream ports (bpf_sock.c): the source ports of the proxy's upstream
 * connections that keep a client's address, chosen from the agent's range
 * instead of the node's ip_local_port_range. */
struct upstream_cfg {
	__u64 netns_cookie; /* the node's network namespace, the only one acted in */
	__u16 port_lo;      /* host order, inclusive */
	__u16 port_hi;
	__u32 pad;
};
/* A port handed out but not yet in the kernel's connection table: claimed
 * for a moment so two connects to the same peer cannot take it at once. */
struct upstream_claim_key {
	__u32 saddr; /* the client address the socket is bound to, network order */
	__u32 daddr; /* network order */
	__u16 sport; /* host order */
	__u16 dport; /* host order */
};
#define UPSTREAM_ASSIGNED  0 /* counter slots of ciliate_upstream_stats */
#define UPSTREAM_BUSY      1 /* a probed port whose 4-tuple was taken */
#define UPSTREAM_EXHAUSTED 2 /* no free port found: connect() refused */
#define UPSTREAM_STATS     3
#define UPSTREAM_CLAIMS_MAX 16384

#endif
