"""The node's established TCP connections, copied into conntrack.

Host policies judge the node's new flows; established ones pass on their
conntrack entries. A connection the node had before its devices were
firewalled has none, so its next packet would be judged as new, and a TCP
packet that is not a SYN is never admitted as new: the operator's ssh
session, the agent's own etcd and API server connections would be cut the
moment a host policy that does not name them arrives. So when the agent
attaches the host device programs it reads the node's established TCP
sockets (sock_diag, through pyroute2) and writes both conntrack entries of
each, answered, as the datapath would have written them (bpf/lib/conntrack.h).
Entries the datapath already holds are left alone. Does I/O.
"""

from __future__ import annotations

import ctypes
import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address, ip_address

from pyroute2 import DiagSocket

from redirect import bpfsys, conntrack, layout
from redirect.maps import PinnedMaps
from redirect.netns import run_in

TCP_ESTABLISHED = 1
CT_SCOPE_FLOW = 0


@dataclass(frozen=True, slots=True)
class Connection:
    local: IPv4Address | IPv6Address
    local_port: int
    remote: IPv4Address | IPv6Address
    remote_port: int


def _dump() -> list[Connection]:
    out: list[Connection] = []
    with DiagSocket() as ds:
        ds.bind()
        for family in (socket.AF_INET, socket.AF_INET6):
            for m in ds.get_sock_stats(family=family, states=1 << TCP_ESTABLISHED):
                local, remote = ip_address(m["idiag_src"]), ip_address(m["idiag_dst"])
                if local.is_loopback or remote.is_loopback:
                    continue  # lo is not a firewalled device
                if isinstance(local, IPv6Address) and local.ipv4_mapped is not None:
                    local, remote = local.ipv4_mapped, remote.ipv4_mapped  # type: ignore[union-attr]
                out.append(Connection(local, m["idiag_sport"], remote, m["idiag_dport"]))
    return out


def established(netns: str | None) -> list[Connection]:
    """The established TCP connections of the node's network namespace (this
    process's, or a named one under /run/netns)."""
    return run_in(netns, _dump, "host-connections")


def _key(src: IPv4Address | IPv6Address, dst: IPv4Address | IPv6Address, sport: int, dport: int) -> tuple[str, bytes]:
    cls = layout.CtKey if src.version == 4 else layout.Ct6Key
    k = cls()
    ctypes.memmove(k.saddr, src.packed, len(src.packed))
    ctypes.memmove(k.daddr, dst.packed, len(dst.packed))
    k.sport[:] = list(sport.to_bytes(2, "big"))
    k.dport[:] = list(dport.to_bytes(2, "big"))
    k.protocol = socket.IPPROTO_TCP
    k.pad[0] = CT_SCOPE_FLOW
    return ("ct" if src.version == 4 else "ct6"), bytes(k)


def adopt(maps: PinnedMaps, connections: Iterable[Connection]) -> int:
    """Write both entries of each connection (remote -> node as the flow,
    the node's direction as its reply; either way every packet passes), the
    answered TCP lifetime from now. Returns how many connections were new to
    conntrack."""
    expires = conntrack.clock_ns() + layout.CT_LIFETIME_TCP_NS
    n = 0
    for c in connections:
        fresh = False
        for (src, dst, sport, dport), flags in (
            ((c.remote, c.local, c.remote_port, c.local_port), layout.CT_F_ANSWERED),
            ((c.local, c.remote, c.local_port, c.remote_port), layout.CT_F_ANSWERED | layout.CT_F_REPLY),
        ):
            table, key = _key(src, dst, sport, dport)
            value = layout.CtValue(expires_ns=expires, proxy_port=0, flags=flags)
            try:
                bpfsys.update(maps.fds[table], key, bytes(value), bpfsys.NOEXIST)
                fresh = True
            except bpfsys.BPFError as e:
                if e.errno != errno.EEXIST:
                    raise
                # the datapath tracks it already: its entry stands
        n += fresh
    return n
