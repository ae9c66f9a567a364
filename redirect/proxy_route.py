"""The to-proxy route: the policy routing that turns a packet marked for a
proxy port into local delivery. Does I/O (netlink). Idempotent set-up and
tear-down. (Envoy itself is agent/adapters/envoy_proxy.py and sidecar/.)

    ip rule add fwmark 0x200/0xf00 lookup 2004 pref 9
    ip route add local 0.0.0.0/0 dev lo table 2004
    ip -6 rule add fwmark 0x200/0xf00 lookup 2004 pref 9      (when the node has IPv6)
    ip -6 route add local ::/0 dev lo table 2004
    sysctl net.ipv4.conf.lo.accept_local=1 net.ipv4.tcp_early_demux=0 net.ipv4.tcp_migrate_req=1  (see setup())

Which socket receives the packet is chosen by the program itself with
bpf_sk_assign (bpf/lib/proxy.h), not by nftables TPROXY rules. Why: the
program already knows the proxy port from the policy entry, so there is no
second per-port rule set to keep in step with the policy map (and nothing
to reconcile after a restart); and a missing listener becomes a drop with
its own reason in `ciliate monitor` instead of the silent timeout a TPROXY
rule pointing at nobody gives. The listener must be IP_TRANSPARENT (the
packet keeps its original destination) and listen on PROXY_ADDR (127.0.0.1
by default) or the wildcard address, in the netns of the endpoints' veths.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from redirect.errors import PlumbingError
from redirect.layout import MARK_MAGIC_MASK as MARK_MASK
from redirect.layout import MARK_MAGIC_PROXY_ORIGIN as PROXY_ORIGIN_MARK
from redirect.layout import MARK_MAGIC_TO_PROXY as TO_PROXY_MARK

__all__ = ["MARK_MASK", "PROXY_ORIGIN_MARK", "TO_PROXY_MARK", "setup", "teardown", "is_set_up", "to_proxy_mark"]
ROUTE_TABLE = 2004
RULE_PRIORITY = 9


def to_proxy_mark(proxy_port: int) -> int:
    """skb->mark the program sets for a flow redirected to proxy_port."""
    return TO_PROXY_MARK | (int.from_bytes(proxy_port.to_bytes(2, "big"), "little") << 16)


def _ipr(netns: str | None) -> IPRoute:
    return IPRoute(netns=netns) if netns else IPRoute()


AF_INET, AF_INET6 = 2, 10
DISABLE_IPV6 = "/proc/sys/net/ipv6/conf/all/disable_ipv6"
_DEFAULT = {AF_INET: "0.0.0.0/0", AF_INET6: "::/0"}


def _our_rules(ipr: IPRoute, family: int = AF_INET) -> list:
    out = []
    for r in ipr.get_rules(family=family):
        if (
            r.get_attr("FRA_FWMARK") == TO_PROXY_MARK
            and r.get_attr("FRA_FWMASK") == MARK_MASK
            and (r.get_attr("FRA_TABLE") or r.get("table")) == ROUTE_TABLE
        ):
            out.append(r)
    return out


EARLY_DEMUX = "/proc/sys/net/ipv4/tcp_early_demux"
ACCEPT_LOCAL = "/proc/sys/net/ipv4/conf/lo/accept_local"
MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"
SYSCTLS = (ACCEPT_LOCAL, EARLY_DEMUX, MIGRATE_REQ)


def _in_netns_write(netns: str | None, path: str, value: str | None) -> str:
    """Write (value None: only read) a /proc/sys file as seen from netns
    (setns on this thread only); returns the previous value."""
    if netns is None:
        old = Path(path).read_text().strip()
        if value is not None:
            Path(path).write_text(value)
        return old
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, 0x40000000) != 0:
            raise PlumbingError(f"setns({netns}): {os.strerror(ctypes.get_errno())}")
        try:
            old = Path(path).read_text().strip()
            if value is not None:
                Path(path).write_text(value)
        finally:
            libc.setns(own, 0x40000000)
    finally:
        os.close(target)
        os.close(own)
    return old


def read_sysctl(netns: str | None, path: str) -> str:
    """A /proc/sys file as seen from netns."""
    return _in_netns_write(netns, path, None)


def setup(netns: str | None = None) -> dict[str, str]:
    """Set up the routing; returns the sysctl values it replaced (give them
    back to teardown()).

    Two sysctls, both for ingress redirects decided at tc egress (traffic
    from the node or from interfaces without a program), which re-enter
    through lo: accept_local on lo, or a packet with a node address as
    source is a martian there and vanishes without a counter; and
    tcp_early_demux off, or the second packet of such a flow, arriving on
    its original interface, is matched by early demux to the proxy's
    transparent socket before routing, and ip_forward drops any packet that
    already has a socket, so the handshake never completes.

    And one for an agent restart: the old and the new Envoy share each proxy
    port (SO_REUSEPORT) until the old one is retired, and the kernel's
    lookup spreads new connections over both. tcp_migrate_req hands the
    connections still in a closing listener's queues (half-open and
    accepted-but-not-yet-taken) to the other listener of the port instead of
    resetting them."""
    old = {
        ACCEPT_LOCAL: _in_netns_write(netns, ACCEPT_LOCAL, "1"),
        EARLY_DEMUX: _in_netns_write(netns, EARLY_DEMUX, "0"),
        MIGRATE_REQ: _in_netns_write(netns, MIGRATE_REQ, "1"),
    }
    try:
        with _ipr(netns) as ipr:
            for family in _families(netns):
                if not _our_rules(ipr, family):
                    ipr.rule("add", family=family, table=ROUTE_TABLE, fwmark=TO_PROXY_MARK, fwmask=MARK_MASK,
                             priority=RULE_PRIORITY)
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.route("replace", family=family, dst=_DEFAULT[family], type="local", oif=lo, table=ROUTE_TABLE,
                          scope=254)
    except NetlinkError as e:
        raise PlumbingError(f"proxy routing set-up failed: {e}") from e
    return old


def _families(netns: str | None) -> tuple[int, ...]:
    """IPv4 always; IPv6 where the node has it (its redirects need the same
    rule, or a pod's reply to a proxy upstream would be routed on)."""
    try:
        on = _in_netns_write(netns, DISABLE_IPV6, None) == "0"
    except OSError:
        on = False  # a kernel without IPv6
    return (AF_INET, AF_INET6) if on else (AF_INET,)


def is_set_up(netns: str | None = None) -> bool:
    """Every family the node has: an install made before IPv6 was routed
    counts as not set up, so setup() adds the IPv6 rule."""
    with _ipr(netns) as ipr:
        for family in _families(netns):
            if not _our_rules(ipr, family):
                return False
            routes = ipr.get_routes(family=family, table=ROUTE_TABLE)
            if not any(r.get("type") == 2 and r.get("dst_len") == 0 for r in routes):  # RTN_LOCAL
                return False
        return True


def teardown(netns: str | None = None, restore: dict[str, str] | None = None) -> None:
    for path, value in (restore or {}).items():
        if path in SYSCTLS:
            _in_netns_write(netns, path, value)
    with _ipr(netns) as ipr:
        for family in (AF_INET, AF_INET6):
            try:
                rules = _our_rules(ipr, family)
            except NetlinkError:
                continue  # no such family in this kernel
            for r in rules:
                try:
                    ipr.rule("del", family=family, table=ROUTE_TABLE, fwmark=TO_PROXY_MARK, fwmask=MARK_MASK,
                             priority=r.get_attr("FRA_PRIORITY"))
                except NetlinkError as e:
                    if e.code != errno.ENOENT:
                        raise PlumbingError(f"removing proxy rule: {e}") from e
            lo = ipr.link_lookup(ifname="lo")[0]
            try:
                ipr.route("del", family=family, dst=_DEFAULT[family], type="local", oif=lo, table=ROUTE_TABLE,
                          scope=254)
            except NetlinkError as e:
                if e.code not in (errno.ESRCH, errno.ENOENT, errno.EAFNOSUPPORT, errno.EOPNOTSUPP):
                    raise PlumbingError(f"removing proxy route: {e}") from e
