/* Map declarations. Every map is created and pinned by redirect/maps.py
 * before any program is compiled; BPF_TABLE_PINNED makes bcc open the pin
 * (bpf_obj_get) instead of creating a map, so all endpoint programs and a
 * restarted agent share the same maps. Sizes here only type the table for
 * bcc; the kernel object created by Python is authoritative. */
#ifndef CILIATE_MAPS_H
#define CILIATE_MAPS_H

#include "lib/layout.h"

#define PIN(name) CILIATE_PIN_DIR "/" name

BPF_TABLE_PINNED("lpm_trie", struct ipcache_key, struct ipcache_value, ipcache,
		 IPCACHE_MAX, PIN("ciliate_ipcache"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("lpm_trie", struct ipcache6_key, struct ipcache_value, ipcache6,
		 IPCACHE_MAX, PIN("ciliate_ipcache6"), BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("hash", struct lxc_key, struct lxc_value, lxc, LXC_MAX,
		 PIN("ciliate_lxc"));
BPF_TABLE_PINNED("hash", struct lxc6_key, struct lxc_value, lxc6, LXC_MAX,
		 PIN("ciliate_lxc6"));
BPF_TABLE_PINNED("hash", struct ifindex_key, struct ifindex_value, endpoint_of_if, LXC_MAX,
		 PIN("ciliate_ifindex"));
/* A hash-of-maps in the kernel (endpoint id -> that endpoint's policy LPM
 * trie); declared as a hash of u32 because bcc only needs the fd here and the
 * verifier types the lookup from the real map. */
BPF_TABLE_PINNED("hash", __u32, __u32, policy_maps, LXC_MAX,
		 PIN("ciliate_policy"));
BPF_TABLE_PINNED("lru_hash", struct ct_key, struct ct_value, ct, CT_MAX,
		 PIN("ciliate_ct"));
BPF_TABLE_PINNED("lru_hash", struct ct6_key, struct ct_value, ct6, CT_MAX,
		 PIN("ciliate_ct6"));

/* Per-CPU, so the increment needs no atomic; see lib/events.h. */
BPF_TABLE_PINNED("percpu_hash", struct metrics_key, struct metrics_value, metrics,
		 METRICS_MAX, PIN("ciliate_metrics"));

/* bcc's BPF_RINGBUF_OUTPUT has no pinned form; same table struct, pinned
 * section. */
struct events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, u64, u64);
	void *(*ringbuf_reserve)(u64);
	void (*ringbuf_discard)(void *, u64);
	void (*ringbuf_submit)(void *, u64);
	__u32 max_entries;
};
__attribute__((section("maps/ringbuf:" PIN("ciliate_events"))))
struct events_table_t events = { .max_entries = EVENTS_BYTES };

#endif
