"""Map key/value and event layouts: the one Python definition of what
bpf/lib/layout.h declares in C.

Pure (no I/O). `c_asserts()` renders `_Static_assert`s of every size and
offset; they are compiled into every endpoint program (see redirect/config.py)
so a drift between this file and the header fails the build with a message
naming the struct and field, and tests/datapath/test_layout.py checks it too.
"""

from __future__ import annotations

import ctypes
import enum

from policy.compiled import HOST_ENDPOINT_ID

POLICY_FIXED_BITS = 48  # identity(32) + direction(8) + protocol(8)
IPCACHE_FIXED_BITS = 0


class IpcacheKey(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]


class IpcacheValue(ctypes.Structure):
    _fields_ = [("identity", ctypes.c_uint32), ("reserved", ctypes.c_uint32)]


class Ipcache6Key(ctypes.Structure):
    _fields_ = [("prefixlen", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 16)]


class Lxc6Key(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 16)]


class LxcKey(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_uint8 * 4)]


LXC_F_INGRESS_ENFORCED = 0x1
LXC_F_EGRESS_ENFORCED = 0x2
LXC_F_AUDIT = 0x4  # policy audit mode: would-be policy drops pass as EV_AUDIT


class LxcValue(ctypes.Structure):
    _fields_ = [
        ("endpoint_id", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32),
    ]


class IfindexKey(ctypes.Structure):
    _fields_ = [("ifindex", ctypes.c_uint32)]


class IfindexValue(ctypes.Structure):
    _fields_ = [("endpoint_id", ctypes.c_uint32), ("addr", ctypes.c_uint8 * 4)]  # addr: network order


class PolicyKey(ctypes.Structure):
    _fields_ = [
        ("prefixlen", ctypes.c_uint32),
        ("identity", ctypes.c_uint32),
        ("direction", ctypes.c_uint8),
        ("protocol", ctypes.c_uint8),
        ("dport", ctypes.c_uint8 * 2),  # network order
    ]


class PolicyValue(ctypes.Structure):
    _fields_ = [("proxy_port", ctypes.c_uint16), ("verdict", ctypes.c_uint8), ("reserved", ctypes.c_uint8)]


class CtKey(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint8 * 4),
        ("daddr", ctypes.c_uint8 * 4),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


class Ct6Key(ctypes.Structure):
    _fields_ = [
        ("saddr", ctypes.c_uint8 * 16),
        ("daddr", ctypes.c_uint8 * 16),
        ("sport", ctypes.c_uint8 * 2),
        ("dport", ctypes.c_uint8 * 2),
        ("protocol", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 3),
    ]


CT_F_REDIRECT = 0x1
CT_F_PROXY = 0x2
CT_F_CLOSING = 0x4
CT_F_REPLY = 0x8
CT_F_ANSWERED = 0x10  # a packet was seen in the reply direction

# Lifetimes (bpf/lib/conntrack.h), in ns of the datapath's clock.
CT_LIFETIME_TCP_NS = 21600 * 10**9  # answered TCP, idle
CT_LIFETIME_SYN_NS = 60 * 10**9  # TCP nobody answered yet (Cilium's SYN timeout)
CT_LIFETIME_CLOSE_NS = 10 * 10**9  # after a FIN or RST
CT_LIFETIME_OTHER_NS = 60 * 10**9  # UDP, ICMP


class CtValue(ctypes.Structure):
    _fields_ = [
        ("expires_ns", ctypes.c_uint64),
        ("proxy_port", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8 * 5),
    ]


class FlowEventRaw(ctypes.Structure):
    _fields_ = [
        ("ts_ns", ctypes.c_uint64),
        ("saddr", ctypes.c_uint8 * 16),  # IPv4: the first 4 bytes
        ("daddr", ctypes.c_uint8 * 16),
        ("src_identity", ctypes.c_uint32),
        ("dst_identity", ctypes.c_uint32),
        ("endpoint_id", ctypes.c_uint32),
        ("peer_endpoint_id", ctypes.c_uint32),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proxy_port", ctypes.c_uint16),
        ("protocol", ctypes.c_uint8),
        ("verdict", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("hook", ctypes.c_uint8),
        ("family", ctypes.c_uint8),  # 4 or 6
        ("pad", ctypes.c_uint8 * 4),
    ]


METRICS_MAX = 1024  # distinct (verdict, reason, direction) keys; far more than exist


class MetricsKey(ctypes.Structure):
    _fields_ = [
        ("verdict", ctypes.c_uint8),
        ("reason", ctypes.c_uint8),
        ("direction", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
    ]


class MetricsValue(ctypes.Structure):
    """One CPU's share; a lookup returns one per possible CPU (8-byte aligned)."""

    _fields_ = [("packets", ctypes.c_uint64)]


class UpstreamCfg(ctypes.Structure):
    """The connect hook's one configuration entry (bpf_sock.c)."""

    _fields_ = [("netns_cookie", ctypes.c_uint64), ("port_lo", ctypes.c_uint16), ("port_hi", ctypes.c_uint16),
                ("pad", ctypes.c_uint32)]


class UpstreamClaimKey(ctypes.Structure):
    _fields_ = [("saddr", ctypes.c_uint32), ("daddr", ctypes.c_uint32), ("sport", ctypes.c_uint16),
                ("dport", ctypes.c_uint16)]


class UpstreamStat(enum.IntEnum):
    """Slots of ciliate_upstream_stats (per-CPU counters)."""

    ASSIGNED = 0
    BUSY = 1
    EXHAUSTED = 2


UPSTREAM_CLAIMS_MAX = 16384


class EventVerdict(enum.IntEnum):
    DROP = 1
    FORWARD = 2
    REDIRECT = 3
    AUDIT = 4  # policy would have dropped it (the reason says why); passed in audit mode


class Hook(enum.IntEnum):
    FROM_ENDPOINT = 0
    TO_ENDPOINT = 1


class Reason(enum.IntEnum):
    POLICY_ALLOW = 0
    POLICY_DENY = 1
    NO_POLICY_MATCH = 2
    NOT_ENFORCED = 3
    ENDPOINT_UNKNOWN = 4
    PROXY_NOT_LISTENING = 5
    UNSUPPORTED_L3 = 6
    FRAGMENT = 7
    MALFORMED = 8
    POLICY_REDIRECT = 9
    PROXY_ORIGINATED = 10
    POLICY_MAP_MISSING = 11
    SOURCE_SPOOFED = 12
    REDIRECT_UNSUPPORTED = 13
    CT_RESTORED = 14  # forward: a reply whose conntrack entries were gone, admitted by the opposite direction's policy


DIR_NONE = 255

# skb->mark magics in the 0x0F00 nibble (bpf/lib/proxy.h MARK_MAGIC_*), the
# encoding Cilium uses. The one Python home of these values: the ip rule
# (redirect/proxy_route.py) and Envoy's upstream SO_MARK (the agent passes it
# into xds's RenderParams) take them from here. They are macros of proxy.h,
# which needs the program's types, so tests/datapath/test_layout_marks.py
# checks them against the header's text rather than by compiling.
MARK_MAGIC_MASK = 0x0F00
MARK_MAGIC_TO_PROXY = 0x0200  # | htons(proxy_port) << 16: a flow sent to that proxy port
MARK_MAGIC_PROXY_ORIGIN = 0x0B00  # SO_MARK of the proxy's upstream sockets
MARK_MAGIC_DECIDED = 0x0C00  # passed by from_container: the destination's to_container skips its lookup

MARKS: dict[str, int] = {
    "MARK_MAGIC_MASK": MARK_MAGIC_MASK,
    "MARK_MAGIC_TO_PROXY": MARK_MAGIC_TO_PROXY,
    "MARK_MAGIC_PROXY_ORIGIN": MARK_MAGIC_PROXY_ORIGIN,
    "MARK_MAGIC_DECIDED": MARK_MAGIC_DECIDED,
}

# C struct name -> Python mirror. Every field of the Python class must exist
# in C with the same offset, and the sizes must agree.
MIRRORS: dict[str, type[ctypes.Structure]] = {
    "ipcache_key": IpcacheKey,
    "ipcache_value": IpcacheValue,
    "ipcache6_key": Ipcache6Key,
    "lxc6_key": Lxc6Key,
    "ct6_key": Ct6Key,
    "lxc_key": LxcKey,
    "lxc_value": LxcValue,
    "ifindex_key": IfindexKey,
    "ifindex_value": IfindexValue,
    "policy_key": PolicyKey,
    "policy_value": PolicyValue,
    "ct_key": CtKey,
    "ct_value": CtValue,
    "flow_event": FlowEventRaw,
    "metrics_key": MetricsKey,
    "metrics_value": MetricsValue,
    "upstream_cfg": UpstreamCfg,
    "upstream_claim_key": UpstreamClaimKey,
}

# C macro name -> Python value, checked the same way.
CONSTANTS: dict[str, int] = {
    "POLICY_FIXED_BITS": POLICY_FIXED_BITS,
    "METRICS_MAX": METRICS_MAX,
    "LXC_F_INGRESS_ENFORCED": LXC_F_INGRESS_ENFORCED,
    "LXC_F_EGRESS_ENFORCED": LXC_F_EGRESS_ENFORCED,
    "LXC_F_AUDIT": LXC_F_AUDIT,
    "CT_F_REDIRECT": CT_F_REDIRECT,
    "CT_F_PROXY": CT_F_PROXY,
    "CT_F_CLOSING": CT_F_CLOSING,
    "CT_F_REPLY": CT_F_REPLY,
    "CT_F_ANSWERED": CT_F_ANSWERED,
    "CT_LIFETIME_TCP": CT_LIFETIME_TCP_NS,
    "CT_LIFETIME_SYN": CT_LIFETIME_SYN_NS,
    "CT_LIFETIME_CLOSE": CT_LIFETIME_CLOSE_NS,
    "CT_LIFETIME_OTHER": CT_LIFETIME_OTHER_NS,
    "VERDICT_ALLOW": 1,
    "VERDICT_REDIRECT": 2,
    "VERDICT_DENY": 3,
    "EV_DROP": EventVerdict.DROP,
    "EV_FORWARD": EventVerdict.FORWARD,
    "EV_REDIRECT": EventVerdict.REDIRECT,
    "EV_AUDIT": EventVerdict.AUDIT,
    "HOST_ENDPOINT_ID": HOST_ENDPOINT_ID,
    "HOOK_FROM_ENDPOINT": Hook.FROM_ENDPOINT,
    "HOOK_TO_ENDPOINT": Hook.TO_ENDPOINT,
    "DIR_NONE": DIR_NONE,
    "EV_FAMILY_IPV4": 4,
    "EV_FAMILY_IPV6": 6,
    **{f"R_{r.name}": r.value for r in Reason},
    **{f"UPSTREAM_{s.name}": s.value for s in UpstreamStat},
    "UPSTREAM_STATS": len(UpstreamStat),
    "UPSTREAM_CLAIMS_MAX": UPSTREAM_CLAIMS_MAX,
}


def c_asserts() -> str:
    """C `_Static_assert`s that fail compilation if layout.h disagrees."""
    lines = ["/* generated from redirect/layout.py: Python and C layouts must agree */"]
    for cname, py in MIRRORS.items():
        lines.append(
            f'_Static_assert(sizeof(struct {cname}) == {ctypes.sizeof(py)}, '
            f'"layout: sizeof(struct {cname}) differs from redirect/layout.py {py.__name__}");'
        )
        for fname, *_ in py._fields_:
            off = getattr(py, fname).offset
            lines.append(
                f"_Static_assert(__builtin_offsetof(struct {cname}, {fname}) == {off}, "
                f'"layout: struct {cname}.{fname} offset differs from redirect/layout.py");'
            )
    for name, value in CONSTANTS.items():
        lines.append(f'_Static_assert({name} == {int(value)}, "layout: {name} differs from redirect/layout.py");')
    return "\n".join(lines) + "\n"
