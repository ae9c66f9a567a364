"""The DatapathControl port bound to `redirect.datapath.Datapath` (bcc, tc, pinned maps).

The redirect/ calls are blocking (bcc compiles, netlink, bpf syscalls), so
each runs in a worker thread; the regeneration worker is the only caller, so
they never run concurrently. Map-full errors are reported as such (retrying
does not help until policy shrinks); other failures are retried with backoff.
Does kernel I/O through redirect/.

Both families are enforced, each with its own maps. A node with IPv6
disabled (net.ipv6.conf.all.disable_ipv6, or no IPv6 in the kernel) can give
no pod an IPv6 address: `families()` says so for `ciliate status`, and an
IPv6-only endpoint there gets the drop-everything program and stays
not-ready (fail closed for that family only).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Any

from agent.core.ports import (
    ApplyOutcome,
    DatapathCounters,
    DumpedEntry,
    EndpointUnsupported,
    Failure,
    FamilySupport,
    KernelEndpoint,
    MapFill,
    UpstreamPorts,
    VerdictCounter,
)
from policy.compiled import HOST_ENDPOINT_ID, CompiledState, protocol_name
from redirect import bpfsys, counters, proxy_route, tc
from redirect import conntrack as ct
from redirect.datapath import BLOCK_NAME, Datapath
from redirect.errors import MapFullError, PlumbingError
from redirect.layout import DIR_NONE, EventVerdict, Hook, Reason
from redirect.upstream_ports import DEFAULT_RANGE, POD_DEFAULT_RANGE, PortRange

log = logging.getLogger("agent")
NODE_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")

_FLOW_TYPE = {
    EventVerdict.DROP: "drop",
    EventVerdict.FORWARD: "forward",
    EventVerdict.REDIRECT: "redirect",
    EventVerdict.AUDIT: "audit",
}
_DIRECTION = {0: "ingress", 1: "egress", DIR_NONE: "none"}
IPV6_DISABLED = "dropped (IPv6 is disabled on this node: net.ipv6.conf.all.disable_ipv6)"
IPV6_ONLY = (
    "no IPv4 address and IPv6 is disabled on this node (net.ipv6.conf.all.disable_ipv6): everything this "
    "IPv6-only endpoint sends or receives is dropped"
)
DISABLE_IPV6 = "/proc/sys/net/ipv6/conf/all/disable_ipv6"


def node_has_ipv6(netns: str | None) -> bool:
    """IPv6 is on in the node's network namespace (absent: the kernel has none)."""
    try:
        return proxy_route.read_sysctl(netns, DISABLE_IPV6).strip() == "0"
    except (OSError, PlumbingError):
        return False


def reason_name(reason: Reason | int) -> str:
    """"policy-deny" for Reason.POLICY_DENY; the number for one this code does not know."""
    return reason.name.lower().replace("_", "-") if isinstance(reason, Reason) else str(reason)


def verdict_counters(rows: list[counters.VerdictCount]) -> tuple[VerdictCounter, ...]:
    return tuple(
        VerdictCounter(
            _FLOW_TYPE.get(r.verdict, str(int(r.verdict))),  # type: ignore[call-overload]
            reason_name(r.reason),
            _DIRECTION.get(r.direction, str(r.direction)),
            r.packets,
        )
        for r in rows
    )


def node_port_range() -> PortRange | None:
    try:
        lo, hi = map(int, NODE_RANGE.read_text().split())
    except (OSError, ValueError):
        return None
    return PortRange(lo, hi)


class KernelDatapath:
    def __init__(
        self, pin_dir: Path, state_dir: Path, *,
        upstream_ports: PortRange = DEFAULT_RANGE, cgroup_root: Path | None = None, netns: str | None = None,
        host_devices: tuple[str, ...] = (),
    ) -> None:
        """`netns`: the named network namespace the endpoints' veths live in
        (tests build a node in one); None: the agent's own. `host_devices`:
        the node's devices where host policies are enforced (bpf/bpf_host.c)."""
        self.host_devices = host_devices
        self._host_enforcing = False
        pin_dir.mkdir(parents=True, exist_ok=True)  # a directory in bpffs, e.g. /sys/fs/bpf/tc/globals
        self._dp = Datapath(pin_dir, state_dir, netns=netns)
        self._upstream_range = upstream_ports
        self._cgroup_root = cgroup_root
        self._upstream_error: str | None = None
        self._upstream_set = False  # setup() has run, one way or the other
        self._ipv6 = node_has_ipv6(netns)

    async def setup(self) -> None:
        await asyncio.to_thread(self._dp.setup_proxy_plumbing)
        if self.host_devices:
            adopted = await asyncio.to_thread(self._dp.attach_host_devices, list(self.host_devices))
            log.info("host firewall on %s: %d established connections of the node kept through it",
                     ", ".join(self.host_devices), adopted)
        try:
            done = await asyncio.to_thread(self._dp.choose_upstream_ports, self._upstream_range, self._cgroup_root)
        except PlumbingError as e:
            self._upstream_error = str(e)
            self._warn_node_ports(str(e))
        else:
            self._upstream_error = None
            log.info("proxy upstream source ports %s, assigned by the datapath (cgroup %s)", done.ports, done.cgroup)
        self._upstream_set = True

    @staticmethod
    def _warn_node_ports(reason: str) -> None:
        """Without the connect hook the kernel picks the ports from the node's
        range; where that overlaps the pods' an upstream can take the 4-tuple
        of a connection the pod opens itself, which then stalls."""
        node = node_port_range()
        overlap = node is not None and node.overlaps(POD_DEFAULT_RANGE)
        log.warning(
            "proxy upstream source ports are not assigned by the datapath (%s): they come from the node's "
            "net.ipv4.ip_local_port_range %s%s", reason, node or "(unreadable)",
            f", which overlaps the pods' default {POD_DEFAULT_RANGE}: an upstream can collide with a connection "
            "the pod opens itself; set the node's range outside it, e.g. sysctl -w "
            "net.ipv4.ip_local_port_range='61000 65535'" if overlap else "",
        )

    def _upstream_ports(self) -> UpstreamPorts | None:
        if not self._upstream_set:
            return None
        if self._upstream_error is not None:
            node = node_port_range()
            return UpstreamPorts(str(node) if node else "unknown", False, detail=self._upstream_error)
        s = self._dp.upstream_port_stats()
        return UpstreamPorts(str(self._upstream_range), True, s.assigned, s.busy, s.exhausted)

    async def close(self) -> None:
        # Releases this process's handles only; the kernel keeps enforcing.
        await asyncio.to_thread(self._dp.close)

    def families(self) -> tuple[FamilySupport, ...]:
        return (FamilySupport(4, True), FamilySupport(6, True) if self._ipv6 else FamilySupport(6, False, IPV6_DISABLED))

    async def attach_endpoint(
        self, endpoint_id: int, ifname: str, ipv4: IPv4Address | None, identity: int, ipv6: IPv6Address | None = None,
    ) -> None:
        if ipv4 is None and (ipv6 is None or not self._ipv6):
            await asyncio.to_thread(self._block, ifname)
            raise EndpointUnsupported(IPV6_ONLY)
        await asyncio.to_thread(self._dp.attach_endpoint, endpoint_id, ifname, ipv4, identity, ipv6)

    def _block(self, ifname: str) -> None:
        """The drop-everything program on both hooks of the veth: without it an
        endpoint the maps cannot key would pass traffic no policy judged."""
        fd = bpfsys.load_drop_program(BLOCK_NAME)
        try:
            tc.attach(ifname, fd, fd, BLOCK_NAME, self._dp.netns)
        finally:
            os.close(fd)

    async def attach_underlay(self, ifname: str) -> None:
        """Cluster mode: the underlay device's program (the proxy's cross-node replies)."""
        await asyncio.to_thread(self._dp.attach_netdev, ifname)

    async def detach_endpoint(self, endpoint_id: int) -> None:
        await asyncio.to_thread(self._dp.detach_endpoint, endpoint_id)

    async def attached_endpoints(self) -> list[KernelEndpoint]:
        def read() -> list[KernelEndpoint]:
            return [
                KernelEndpoint(
                    r.endpoint_id, r.ifname, IPv4Address(r.ipv4) if r.ipv4 else None, r.identity,
                    self._dp.link_present(r.endpoint_id), IPv6Address(r.ipv6) if r.ipv6 else None,
                )
                for r in sorted(self._dp.endpoints().values(), key=lambda r: r.endpoint_id)
            ]

        return await asyncio.to_thread(read)

    async def apply(self, state: CompiledState) -> ApplyOutcome:
        host = state.endpoints.get(HOST_ENDPOINT_ID)
        enforcing = host is not None and (host.ingress_enforced or host.egress_enforced)
        if enforcing and not self._host_enforcing:
            # The node's policy starts to bite: whatever the node has open
            # now (the agent's own kvstore connection, an operator's ssh) is
            # tracked first, so it goes on whatever the policy says of it.
            adopted = await asyncio.to_thread(self._dp.adopt_host_connections)
            log.info("host policy now enforced: %d established connections of the node kept", adopted)
        self._host_enforcing = enforcing
        # redirect/ diffs desired against what the kernel holds, per endpoint.
        result = await asyncio.to_thread(self._dp.apply, state)
        failed: dict[int, Failure] = {}
        for eid, err in result.failed.items():
            if isinstance(err, MapFullError):
                failed[eid] = Failure("map-full", str(err))
            else:
                failed[eid] = Failure("datapath", str(err), transient=True)
        return ApplyOutcome(failed)

    async def dump_policy(self, endpoint_id: int) -> list[DumpedEntry]:
        rows = await asyncio.to_thread(self._dp.dump_policy, endpoint_id)
        return [
            DumpedEntry(
                identity=r.identity,
                direction=r.direction.name.lower(),
                protocol=protocol_name(r.protocol),
                ports=str(r.ports),
                verdict=r.verdict.name.lower(),
                proxy_port=r.proxy_port,
            )
            for r in rows
        ]

    async def counters(self) -> DatapathCounters:
        def read() -> DatapathCounters:
            maps = self._dp.maps
            fills = tuple(MapFill(f.name, f.entries, f.capacity) for f in counters.map_fill(maps))
            return DatapathCounters(verdict_counters(counters.read_verdict_counts(maps)), fills, self._upstream_ports())

        return await asyncio.to_thread(read)

    async def connections(self) -> set[tuple[str, str]]:
        """(source, destination) addresses of every live tracked flow, in the
        direction it was opened (the DNS proxy keeps a name's address while a
        connection to it lives)."""
        def read() -> set[tuple[str, str]]:
            now = ct.clock_ns()
            return {(str(e.saddr), str(e.daddr)) for e in ct.read(self._dp.maps) if not e.reply and e.live(now)}

        return await asyncio.to_thread(read)

    async def flow_events(self) -> AsyncIterator[Mapping[str, Any]]:
        async with self._dp.events() as stream:
            async for ev in stream:
                reason = reason_name(ev.reason)
                yield {
                    "type": _FLOW_TYPE.get(ev.verdict, "forward"),
                    "endpoint_id": ev.endpoint_id,
                    "direction": ev.direction.name.lower() if ev.direction is not None else None,
                    "protocol": protocol_name(ev.protocol),
                    "src_ip": str(ev.src),
                    "src_port": ev.sport or None,
                    "dst_ip": str(ev.dst),
                    "dst_port": ev.dport or None,
                    "peer_endpoint_id": ev.peer_endpoint_id or None,
                    "src_identity": ev.src_identity or None,
                    "dst_identity": ev.dst_identity or None,
                    "verdict": ev.verdict.name.lower(),
                    "reason": reason,
                    "summary": f"{'from' if ev.hook == Hook.FROM_ENDPOINT else 'to'} endpoint {ev.endpoint_id}"
                    + (f" via proxy port {ev.proxy_port}" if ev.proxy_port else ""),
                }
