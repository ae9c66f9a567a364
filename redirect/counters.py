"""Read what the kernel counts: per-CPU verdict counters and how full each map is.

Does I/O (bpf() syscalls on the pinned maps). Called at scrape time, in a
worker thread (agent/adapters/kernel_datapath.py).

Verdict counters: bpf/lib/events.h adds one packet to this CPU's slot of the
ciliate_metrics entry (verdict, reason, direction) for every verdict event it
emits (every dropped packet, every new flow forwarded or redirected). A
lookup of a per-CPU map returns one 8-byte-aligned value per possible CPU;
the sum is the count.

Map fill: entries / the capacity that matters to the user. For the
per-endpoint policy maps that is the per-endpoint limit the reconciler
enforces (MapSizes.policy_entries), not the kernel's max_entries, which is
twice that so a rewrite can add before it deletes. For conntrack it is the
live entries: an LRU map never empties, expired entries stay until their slot
is reused, so counting keys would show a flood's leftovers as pressure long
after they died (see redirect/conntrack.py). Counting walks the keys, one
syscall per entry; conntrack, the big one, is read a few thousand entries
per syscall (a full 64k table: ~50 ms, where walking its keys took ~220 ms).
Once per scrape and per `ciliate status`.
"""

from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass
from pathlib import Path

from redirect import bpfsys, conntrack, layout, policymap
from redirect.maps import PinnedMaps

_POSSIBLE = Path("/sys/devices/system/cpu/possible")


@dataclass(frozen=True, slots=True)
class VerdictCount:
    verdict: layout.EventVerdict | int
    reason: layout.Reason | int
    direction: int  # 0 ingress, 1 egress, layout.DIR_NONE
    packets: int


@dataclass(frozen=True, slots=True)
class MapFill:
    name: str  # the pin's name, e.g. ciliate_ct, ciliate_policy_7
    entries: int
    capacity: int


def parse_cpu_list(text: str) -> int:
    """How many CPUs a kernel cpu list ("0-3,5,8-9") names, counted up to the
    highest id: per-CPU values are laid out for ids 0..max."""
    top = -1
    for part in text.strip().split(","):
        if not part:
            continue
        hi = part.split("-")[-1]
        top = max(top, int(hi))
    if top < 0:
        raise ValueError(f"no CPU in cpu list {text!r}")
    return top + 1


def possible_cpus() -> int:
    return parse_cpu_list(_POSSIBLE.read_text())


def _enum(kind: type, value: int) -> object:
    try:
        return kind(value)
    except ValueError:
        return value


def decode_percpu(raw: bytes, ncpus: int) -> int:
    """Sum of the per-CPU packet counts in one lookup's value buffer."""
    stride = (ctypes.sizeof(layout.MetricsValue) + 7) // 8 * 8
    return sum(struct.unpack_from("=Q", raw, i * stride)[0] for i in range(ncpus))


def read_verdict_counts(maps: PinnedMaps, ncpus: int | None = None) -> list[VerdictCount]:
    n = ncpus or possible_cpus()
    stride = (ctypes.sizeof(layout.MetricsValue) + 7) // 8 * 8
    out: list[VerdictCount] = []
    raw = bpfsys.items(maps.fds["metrics"], ctypes.sizeof(layout.MetricsKey), stride * n)
    for k, v in raw.items():
        key = layout.MetricsKey.from_buffer_copy(k)
        out.append(
            VerdictCount(
                _enum(layout.EventVerdict, key.verdict),  # type: ignore[arg-type]
                _enum(layout.Reason, key.reason),  # type: ignore[arg-type]
                key.direction,
                decode_percpu(v, n),
            )
        )
    return out


# PinnedMaps key -> (pin name, key size) of the maps whose keys are counted
# (the ring buffer has no entries, the verdict counters are not state;
# conntrack counts live entries, below).
_COUNTED = {
    "ipcache": ("ciliate_ipcache", ctypes.sizeof(layout.IpcacheKey)),
    "ipcache6": ("ciliate_ipcache6", ctypes.sizeof(layout.Ipcache6Key)),
    "lxc": ("ciliate_lxc", ctypes.sizeof(layout.LxcKey)),
    "lxc6": ("ciliate_lxc6", ctypes.sizeof(layout.Lxc6Key)),
    "ifindex": ("ciliate_ifindex", ctypes.sizeof(layout.IfindexKey)),
    "policy": ("ciliate_policy", 4),
}


def map_fill(maps: PinnedMaps, now_ns: int | None = None) -> list[MapFill]:
    """Every map's fill; conntrack counts the entries live at now_ns (default:
    now; a later time answers what the fill will be once entries expire)."""
    out: list[MapFill] = []
    for key, (name, key_size) in _COUNTED.items():
        fd = maps.fds[key]
        out.append(MapFill(name, len(bpfsys.keys(fd, key_size)), bpfsys.map_info(fd).max_entries))
    for table, name in (("ct", "ciliate_ct"), ("ct6", "ciliate_ct6")):  # each family's LRU fills on its own
        cap = bpfsys.map_info(maps.fds[table]).max_entries
        out.append(MapFill(name, conntrack.live_count(maps, now_ns, (table,)), cap))
    for eid in maps.policy_endpoints():
        fd = maps.policy_fd(eid, create=False)
        if fd is None:
            continue
        entries = len(bpfsys.keys(fd, policymap.KEY_SIZE))
        out.append(MapFill(maps.policy_pin(eid).name, entries, maps.sizes.policy_entries))
    return out
