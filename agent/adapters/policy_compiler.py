"""PolicyLoader, ServicePeers and PolicyCompiler ports bound to the real `policy/` package.

The loader hands the agent policy.model.Policy values as they are, and the
compiler takes them back unchanged: no wrapper type in between. Allocator
state is persisted as the allocators' own JSON (parsed, so the state files
stay readable). Reads policy files through policy.load; no other I/O.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from agent.core.ports import Allocations, EndpointSpec, HostEndpoint, LoadedFile, PolicyProblem
from policy.compiled import RESERVED_IDENTITIES, CompiledState
from policy.compiler import Compiler
from policy.endpoint import Endpoint, NamedPort
from policy.families import Stack
from policy.host_rails import KEY as RAILS_KEY
from policy.host_rails import rails_policy
from policy.identity import IdentityAllocator, identity_labels
from policy.proxyports import ProxyPortAllocator
from policy.load import load_paths
from policy.model import Policy
from policy.fqdn_resolve import Names
from policy.fqdn_resolve import resolve as resolve_fqdns
from policy.services import ServiceCatalog, resolve


class ServicePeerResolver:
    """The ServicePeers port: policy/services.py's resolve, with the
    ServiceCatalog the Kubernetes source hands over (None: no Services)."""

    def resolve(self, policy: Policy, services: ServiceCatalog | None) -> tuple[Policy, tuple[str, ...]]:  # type: ignore[override]
        if not isinstance(policy, Policy):  # a test double of the loader's: names no Service
            return policy, ()
        res = resolve(policy, services)
        return res.policy, res.notes


class FQDNPeerResolver:
    """The FQDNPeers port: policy/fqdn_resolve.py's resolve, with the names
    the DNS proxy learned (name -> addresses; None: nothing yet)."""

    def resolve(self, policy: Policy, names: Names | None) -> tuple[Policy, tuple[str, ...]]:  # type: ignore[override]
        if not isinstance(policy, Policy):  # a test double of the loader's: has no toFQDNs
            return policy, ()
        res = resolve_fqdns(policy, names)
        return res.policy, res.notes


class PolicyFileLoader:
    def load_file(self, path: Path) -> LoadedFile:
        res = load_paths([path])
        problems = tuple(PolicyProblem(source=e.location(), field=e.field, message=e.reason) for e in res.errors)
        return LoadedFile(tuple(res.policies), problems)


class RealCompiler:
    def __init__(
        self, allocations: Allocations | None, host_ips: Iterable[IPv4Address | IPv6Address] = (),
        stack: Stack = Stack.DUAL,
    ) -> None:
        ids = IdentityAllocator.from_json(json.dumps(allocations.identities)) if allocations and allocations.identities is not None else None
        ports = ProxyPortAllocator.from_json(json.dumps(allocations.proxy_ports)) if allocations and allocations.proxy_ports is not None else None
        # The datapath enforces both families, so the node is dual-stack:
        # Cilium's numbers for it, 0.0.0.0/0 is world-ipv4 (9) and ::/0
        # world-ipv6 (10); `world` in a policy means both.
        self._c = Compiler(ids, ports, host_ips, stack=stack)
        self._last: CompiledState | None = None
        self._host: HostEndpoint | None = None
        self._alloc_cache: tuple[IdentityAllocator, ProxyPortAllocator, tuple[int, int], Allocations] | None = None

    def upsert_policy(self, policy: Policy) -> None:  # type: ignore[override]
        self._c.upsert_policy(policy)

    def delete_policy(self, key: str) -> None:
        self._c.delete_policy(key)

    def upsert_endpoint(self, endpoint: EndpointSpec) -> int:
        if endpoint.identity is not None:
            self._c.identities.adopt(identity_labels(endpoint.labels), endpoint.identity)
        named = tuple(NamedPort(n, proto, port) for n, proto, port in endpoint.named_ports)
        self._c.upsert_endpoint(Endpoint(endpoint.endpoint_id, dict(endpoint.labels), endpoint.ipv4, endpoint.ipv6, named))
        ident = self._c.identity_of_endpoint(endpoint.endpoint_id)
        assert ident is not None
        return ident

    def delete_endpoint(self, endpoint_id: int) -> None:
        self._c.delete_endpoint(endpoint_id)

    def set_host(self, host: HostEndpoint | None) -> None:
        if host == self._host:
            return
        self._host = host
        self._c.set_host(host.labels if host is not None else None)
        rails = rails_policy(host.always_reach) if host is not None else None
        if rails is not None:
            self._c.upsert_policy(rails)
        else:
            self._c.delete_policy(RAILS_KEY)

    def set_host_ips(self, ips: Iterable[IPv4Address | IPv6Address]) -> None:
        self._c.set_host_ips(ips)

    def set_remote(
        self, endpoints: Mapping[IPv4Address | IPv6Address, tuple[int, frozenset[str]]],
        node_ips: Iterable[IPv4Address | IPv6Address],
        node_labels: Mapping[IPv4Address | IPv6Address, Mapping[str, str]] | None = None,
        named_ports: Mapping[IPv4Address | IPv6Address, tuple[tuple[str, int, int], ...]] | None = None,
        changed: frozenset[IPv4Address | IPv6Address] | None = None,
        nodes_unchanged: bool = False,
    ) -> None:
        self._c.set_remote(endpoints, node_ips, node_labels, named_ports, changed=changed, nodes_unchanged=nodes_unchanged)

    def set_node_labels(self, labels: Mapping[str, str] | None) -> None:
        self._c.set_node_labels(labels)

    def compile(self, revision: int) -> CompiledState:
        state = self._c.compile()
        self._last = state
        # The agent's revision counts policy changes across the whole daemon;
        # the compiler's own counter is an internal detail.
        return state if state.revision == revision else replace(state, revision=revision)

    def allocations(self) -> Allocations:
        # Asked after every compile; serializing thousands of cluster
        # identities each time was a third of the agent's CPU in a busy
        # cluster. The allocators count their changes: same count, same value.
        ids, ports = self._c.identities, self._c.proxy_ports
        stamp = (ids.generation, ports.generation)
        c = self._alloc_cache
        if c is None or c[0] is not ids or c[1] is not ports or c[2] != stamp:
            value = Allocations(identities=json.loads(ids.to_json()), proxy_ports=json.loads(ports.to_json()))
            c = self._alloc_cache = (ids, ports, stamp, value)
        return c[3]

    def labels_of_identity(self, identity: int) -> frozenset[str]:
        return self._c.identities.labels_of(identity)

    def identity_labels(self) -> Mapping[int, frozenset[str]]:
        # What the last compile saw; queries never trigger a compile.
        if self._last is not None:
            return self._last.identity_labels
        return {i: frozenset({f"reserved:{n}"}) for i, n in RESERVED_IDENTITIES.items()}


def make_compiler_factory(host_ips: Iterable[IPv4Address | IPv6Address] = ()):
    hosts = tuple(host_ips)

    def factory(allocations: Allocations | None) -> RealCompiler:
        return RealCompiler(allocations, hosts)

    return factory
