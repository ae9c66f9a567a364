"""How full the datapath's connection-tracking table is, as `ciliate status`
reports it. Pure: it reads the counters the datapath port returned.

`ciliate_ct` (and `ciliate_ct6`, IPv6's) is an LRU hash: an insert never fails, it evicts the least
recently used entry. Near full, a burst of new flows (one pod's SYN flood,
say) evicts the entries of other pods' idle flows; they heal on their next
packet (bpf/README.md, Conntrack), but the operator should know before the
table is that busy, hence the warning at 90 %.
"""

from __future__ import annotations

from agent.core.models import ConntrackFill, UpstreamPortsStatus
from agent.core.ports import DatapathCounters

CT_MAP = "ciliate_ct"
CT_MAPS = (CT_MAP, "ciliate_ct6")  # one table per family
WARN_AT = 0.9


def conntrack_status(counters: DatapathCounters) -> ConntrackFill | None:
    """The conntrack fill in `counters` (the fuller family's table); None if
    the datapath did not report it."""
    fills = [m for m in counters.maps if m.name in CT_MAPS and m.capacity > 0]
    if not fills:
        return None
    fill = max(fills, key=lambda m: m.entries / m.capacity)
    ratio = fill.entries / fill.capacity
    warning = None
    if ratio >= WARN_AT:
        family = " (IPv6)" if fill.name.endswith("6") else ""
        warning = (
            f"conntrack table{family} {ratio:.0%} full: new flows evict the least recently used entries, "
            f"idle flows of every pod among them; see ciliate_bpf_map_pressure{{map_name=\"{fill.name}\"}}"
        )
    return ConntrackFill(entries=fill.entries, capacity=fill.capacity, percent=round(100 * ratio, 1), warning=warning)


def upstream_ports_status(counters: DatapathCounters) -> UpstreamPortsStatus | None:
    u = counters.upstream_ports
    if u is None:
        return None
    return UpstreamPortsStatus(ports=u.ports, by_datapath=u.by_datapath, assigned=u.assigned, exhausted=u.exhausted,
                               detail=u.detail)
