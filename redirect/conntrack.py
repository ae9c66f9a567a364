"""Conntrack entries read back from `ciliate_ct` and `ciliate_ct6`
(bpf/lib/conntrack.h): one table per family, the same entries.

`read` and `live_count` do I/O (a chunked read of the pinned map); the rest
is pure. Used by the map-fill counter, which counts only live entries (an
expired entry is dead: the datapath treats it as absent and never touches it
again, so it ages out of the LRU ahead of the entries in use), and by tests
that check what the datapath stored.
"""

from __future__ import annotations

import ctypes
import struct
import time
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from redirect import bpfsys, layout
from redirect.maps import PinnedMaps

_KEY = ctypes.sizeof(layout.CtKey)
_KEY6 = ctypes.sizeof(layout.Ct6Key)
_VALUE = ctypes.sizeof(layout.CtValue)
assert layout.CtValue.expires_ns.offset == 0  # live_count reads it raw


@dataclass(frozen=True, slots=True)
class CtEntry:
    """One direction of one flow: the key's 5-tuple and scope, the value."""

    saddr: IPv4Address | IPv6Address
    daddr: IPv4Address | IPv6Address
    sport: int
    dport: int
    protocol: int
    scope: int  # 0 flows seen at the sender's veth, 1 the proxy's upstream connections
    flags: int  # layout.CT_F_*
    proxy_port: int
    expires_ns: int  # on clock_ns()'s clock

    @property
    def reply(self) -> bool:
        return bool(self.flags & layout.CT_F_REPLY)

    @property
    def answered(self) -> bool:
        return bool(self.flags & layout.CT_F_ANSWERED)

    def live(self, now_ns: int) -> bool:
        return self.expires_ns >= now_ns  # as ct_find: expired only once strictly past


def clock_ns() -> int:
    """The datapath's clock. It reads bpf_ktime_get_coarse_ns(), CLOCK_MONOTONIC
    at tick resolution: the precise clock is at most one tick ahead."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def decode(key: bytes, value: bytes) -> CtEntry:
    k: layout.CtKey | layout.Ct6Key = (layout.Ct6Key if len(key) == _KEY6 else layout.CtKey).from_buffer_copy(key)
    v = layout.CtValue.from_buffer_copy(value)
    return CtEntry(
        ip_address(bytes(k.saddr)),
        ip_address(bytes(k.daddr)),
        int.from_bytes(bytes(k.sport), "big"),
        int.from_bytes(bytes(k.dport), "big"),
        k.protocol,
        k.pad[0],
        v.flags,
        v.proxy_port,
        v.expires_ns,
    )


def _raw(maps: PinnedMaps, tables: tuple[str, ...] = ("ct", "ct6")) -> list[tuple[bytes, bytes]]:
    out: list[tuple[bytes, bytes]] = []
    for t in tables:
        out += bpfsys.items_batch(maps.fds[t], _KEY6 if t == "ct6" else _KEY, _VALUE).items()
    return out


def read(maps: PinnedMaps) -> list[CtEntry]:
    """Both families' entries."""
    return [decode(k, v) for k, v in _raw(maps)]


def live_count(maps: PinnedMaps, now_ns: int | None = None, tables: tuple[str, ...] = ("ct", "ct6")) -> int:
    """Entries not expired at now_ns (default: now), in the given tables
    (both families' by default; each is its own LRU). Reads only the expiry
    (value offset 0): a full 64k table in ~60 ms, where decoding every entry
    takes ~350 ms."""
    now = clock_ns() if now_ns is None else now_ns
    expiry = struct.Struct("=Q")
    return sum(1 for _, v in _raw(maps, tables) if expiry.unpack_from(v)[0] >= now)
