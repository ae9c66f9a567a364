"""Compiled L7 state -> Envoy resources (serialized). Pure; no I/O.

What one node's Envoy gets:

- one ORIGINAL_DST cluster shared by every listener; its upstream sockets
  carry SO_MARK `upstream_mark` (0x0B00) so the eBPF program recognises
  proxy-originated traffic (it still applies the destination's ingress
  L3/L4 policy to it, and hands the replies back to the proxy);
- listeners whose destinations are all local pods (local_only) carry the
  original_src listener filter: the upstream keeps the client's address;
- one listener per proxy port (`transparent: true` on 0.0.0.0 in
  production), whose HTTP connection manager takes its routes over RDS from
  a route configuration of the same name. The listener only changes when a
  proxy port appears or goes away;
- per listener, one route configuration: a route answering 400 to the paths
  policy/http_path.py refuses after Envoy's normalization, then a catch-all
  route to the cluster carrying a per-route RBAC config with one RBAC policy
  per peer set (principals: the peers' ipcache prefixes; permissions: one
  per HTTP rule, ORed, each ANDing the rule's method/path/host regexes and
  headers, an exact header on every line it is sent on). RBAC
  ORs policies and permissions, which is the Cilium semantics of HTTP rules;
  Envoy's routes could not express it (the first matching route wins, so a
  rule that matches the request but not the peer would hide a later rule
  that matches both). A policy change is therefore an RDS update, which does
  not drain open connections.
- to keep Envoy's own work per update small (it rebuilds every matcher of a
  route configuration it receives), literal methods/paths/hosts become exact
  matchers and rules of one peer set that differ only in path are merged
  into one RE2 alternation (path_merge.py). Envoy's default RE2
  program-size limit (100) is lifted in envoy/bootstrap.yaml for this.
- a request that no policy admits gets RBAC's local 403, whose body the HCM's
  local reply mapper rewrites to `Access denied`.
- a listener whose rules are serverNames (L7Kind.SNI) is a TLS SNI listener
  instead (tls_listener.py): no HTTP, no route configuration; the same peer
  matchers ANDed with the allowed server names in a network RBAC filter
  before a tcp_proxy to the same cluster. Its rules are in the listener, so
  a change of them is an LDS update (open connections drain).

Peers: for INGRESS listeners the peer is the downstream source
(`direct_remote_ip` principals); for EGRESS listeners the peer is the
original destination (`destination_ip` permissions, the accepted socket's
local address under TPROXY). An identity's addresses are its ipcache
prefixes minus any more specific prefix belonging to another identity, so
the longest-prefix semantics of the kernel ipcache hold in Envoy too.

Encoding: one module per resource kind (listener.py, routes.py with
rbac.py, cluster.py) writes the fields through encoders resolved from
envoy-data-plane's message classes (messages.py, schema.py, serialize.py):
no field number is written by hand.

Caching: `Renderer` keeps encoded bytes by content (per HTTP rule, per
identity, per listener, per route configuration) and each path's RE2
validity, so re-rendering after one rule changed re-encodes that rule (or its
merged group) and re-joins its route configuration only; other listeners'
resources are reused as the same objects.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Mapping

from policy.compiled import (
    IDENTITY_ANY,
    CompiledState,
    Direction,
    EndpointPolicy,
    HTTPRule,
    L7Kind,
    L7PeerRule,
    L7Policy,
    ReceiverRules,
    Verdict,
)
from policy.families import IPNetwork
from policy.identity import FIRST_CIDR_IDENTITY, FIRST_LABEL_IDENTITY
from policy.ipcache import PrefixMap

from .cluster import original_dst_cluster
from .errors import RenderError
from .limits import ProxyLimits
from .listener import http_connection_manager, listener, listener_name, rds_source, route_config_name
from .path_merge import PathMerger
from . import messages as pb
from .rbac import (
    RECEIVER_RBAC_FILTER,
    destination_permission,
    http_permission,
    peer_policy,
    per_route,
    rbac_rules,
    receiver_per_route,
    receiver_rules,
    sni_permission,
    source_principal,
)
from .resources import CLUSTER, LISTENER, ROUTE, Resource
from .routes import route_configuration
from .snapshot import Snapshot
from .tls_listener import DOWNSTREAM_LOCAL_ADDRESS, sni_listener

__all__ = [
    "RECEIVER_RBAC_FILTER",
    "OriginalDst",
    "RenderParams",
    "Renderer",
    "listener_name",
    "render",
    "route_config_name",
]

PROXY_UPSTREAM_MARK = 0x0B00  # a default only: the agent passes redirect/layout.py's MARK_MAGIC_PROXY_ORIGIN


# Internal header carrying the original destination from the listener to the
# ORIGINAL_DST cluster (see OriginalDst.LOCAL_ADDRESS).
ORIGINAL_DST_HEADER = "x-ciliate-original-dst"


class OriginalDst(enum.Enum):
    # Production: the upstream is the accepted socket's local address, which
    # TPROXY / bpf_sk_assign leave as the packet's original destination.
    # Envoy's ORIGINAL_DST load balancer only uses a local address that a
    # listener filter "restored", and the stock original_dst filter restores
    # it from SO_ORIGINAL_DST, which needs a netfilter conntrack entry that
    # bpf_sk_assign never creates (measured: 503 "no original_dst"). So every
    # route config writes %DOWNSTREAM_LOCAL_ADDRESS% into an internal header,
    # overwriting whatever a client sent, and the cluster reads that header.
    LOCAL_ADDRESS = "local-address"
    # TEST ONLY: the upstream comes from the x-envoy-original-dst-host request
    # header, so tests reach a real upstream on loopback without the kernel
    # redirect. Never use it in production: any client could pick any upstream.
    TEST_ONLY_HTTP_HEADER = "test-only-http-header"


@dataclass(frozen=True, slots=True)
class RenderParams:
    listen_address: str = "0.0.0.0"
    # The IPv6 twin of each listener (Envoy's additional_addresses; IPv6-only
    # socket): the datapath hands redirected IPv6 flows to [::]:proxy_port.
    # None on a node without IPv6, where Envoy could not bind it.
    listen_address6: str | None = "::"
    transparent: bool = True
    upstream_mark: int = PROXY_UPSTREAM_MARK
    original_dst: OriginalDst = OriginalDst.LOCAL_ADDRESS
    cluster_name: str = "ciliate-original-dst"
    connect_timeout_s: float = 5.0
    # Static cluster in the bootstrap that reaches the access log server;
    # None renders listeners without access logging.
    accesslog_cluster: str | None = "ciliate-accesslog"
    accesslog_name: str = "ciliate"
    # BENCHMARK BASELINE ONLY: take routes from this directory through Envoy's
    # filesystem subscription (path_config_source) instead of ADS.
    rds_directory: str | None = None
    # Merge rules differing only in path into one regex alternation (see
    # path_merge.PathMerger). Off: one RBAC permission per rule.
    merge_paths: bool = True
    # Serve only connections whose local address (the original destination
    # the datapath preserved) has the policy's port. A connection made
    # straight to the proxy port (from the node, or a pod reaching the node's
    # address) matches no filter chain and is closed: it would otherwise be
    # forwarded to its own local address, the proxy again, in a loop.
    match_original_port: bool = True
    # Upstream connections to a local pod keep the client's address (the
    # original_src listener filter, IP_TRANSPARENT, SO_MARK upstream_mark);
    # the datapath hands the pod's replies back to the proxy. Listeners that
    # may reach a destination outside the node (an egress listener with a
    # non-endpoint peer) keep the node's address: nothing would bring the
    # replies of the client's address back to the proxy. See local_only().
    original_source: bool = True
    # What one listener, one connection and the whole Envoy may take.
    limits: ProxyLimits = ProxyLimits()
    # TEST ONLY: the upstream (host:port) of every SNI listener, which has no
    # HTTP header to carry it, in OriginalDst.TEST_ONLY_HTTP_HEADER mode.
    test_only_tcp_upstream: str | None = None

    @classmethod
    def test_only_loopback(cls, **kw) -> "RenderParams":
        """TEST ONLY: loopback, non-transparent listeners whose ORIGINAL_DST
        cluster takes the upstream from the x-envoy-original-dst-host header."""
        kw.setdefault("listen_address", "127.0.0.1")
        kw.setdefault("listen_address6", None)
        kw.setdefault("match_original_port", False)  # nothing redirects: the local port is the proxy port
        kw.setdefault("original_source", False)  # no datapath brings replies back; needs CAP_NET_ADMIN
        return cls(transparent=False, original_dst=OriginalDst.TEST_ONLY_HTTP_HEADER, **kw)


def _group_by_peers(rules: tuple[L7PeerRule, ...]) -> dict[frozenset[int], list[HTTPRule]]:
    groups: dict[frozenset[int], list[HTTPRule]] = {}
    for r in rules:
        assert r.http is not None  # an HTTP listener's rules (L7Policy refuses a mixed one)
        groups.setdefault(r.identities, []).append(r.http)
    return groups


class _IdentityAddresses:
    """identity -> encoded 'address has this identity' matchers, for one ipcache."""

    def __init__(self, ipcache: Mapping[IPNetwork, int]) -> None:
        self.ipcache = dict(ipcache)
        self._prefixes = PrefixMap(self.ipcache)
        self._cache: dict[tuple[int, Direction], list[bytes]] = {}

    def _terms(self, ident: int) -> list[tuple[IPNetwork, list[IPNetwork]]]:
        # The identity's prefixes minus more specific prefixes of others: where
        # the kernel's longest-prefix match gives this identity.
        return self._prefixes.address_space(ident)

    def matchers(self, ident: int, direction: Direction) -> list[bytes]:
        key = (ident, direction)
        got = self._cache.get(key)
        if got is None:
            got = [self._encode(net, holes, direction) for net, holes in self._terms(ident)]
            self._cache[key] = got
        return got

    @staticmethod
    def _encode(net: IPNetwork, holes: list[IPNetwork], direction: Direction) -> bytes:
        if direction == Direction.INGRESS:
            return source_principal(net, holes)
        return destination_permission(net, holes)


# ---------------------------------------------------------------- renderer


class Renderer:
    """Renders CompiledState into a Snapshot, reusing encoded bytes by content.

    Not thread-safe; call `render` from one thread at a time (render_async
    runs it in a worker thread so a large first render does not stall the
    event loop).
    """

    def __init__(self, params: RenderParams | None = None) -> None:
        self.params = params or RenderParams()
        self._perm: dict[HTTPRule, bytes] = {}
        self._used: set[HTTPRule] = set()
        self._paths = PathMerger()
        self._idents: _IdentityAddresses | None = None
        # proxy port -> (policy, ipcache generation, route config, receivers, audit, audited receivers)
        self._routes: dict[int, tuple[L7Policy, int, Resource, tuple[ReceiverRules, ...], bool, frozenset[int]]] = {}
        self._listeners: dict[tuple[int, Direction, int], Resource] = {}
        # proxy port -> (what its SNI listener was rendered from, the listener)
        self._sni: dict[int, tuple[tuple, Resource]] = {}
        self._ipcache_gen = 0
        self._cluster = self._render_cluster()
        self.http_rules_encoded = 0  # HTTP rules encoded (cache misses) by the last render

    # -- public

    def render(self, state: CompiledState, version: str | None = None) -> Snapshot:
        self.http_rules_encoded = 0
        self._used: set[HTTPRule] = set()
        if self._idents is None or self._idents.ipcache != state.ipcache:
            self._idents = _IdentityAddresses(state.ipcache)
            self._ipcache_gen += 1
        by_port: dict[int, tuple[int, L7Policy]] = {}
        for ep_id in sorted(state.endpoints):
            ep = state.endpoints[ep_id]
            for pol in ep.l7:
                where = f"endpoints[{ep_id}].l7[{pol.key.direction.name.lower()}:{pol.key.port}]"
                if not (1 <= pol.proxy_port <= 65535):
                    raise RenderError(f"{where}.proxy_port", f"{pol.proxy_port} is not a TCP port")
                if pol.proxy_port in by_port:
                    raise RenderError(
                        f"{where}.proxy_port",
                        f"proxy port {pol.proxy_port} already used by endpoint {by_port[pol.proxy_port][0]}",
                    )
                by_port[pol.proxy_port] = (ep_id, pol)
        listeners, routes = [], []
        pods = pod_identities(state) if by_port else frozenset()
        new_routes: dict[int, tuple[L7Policy, int, Resource, tuple[ReceiverRules, ...], bool, frozenset[int]]] = {}
        new_sni: dict[int, tuple[tuple, Resource]] = {}
        for port in sorted(by_port):
            ep_id, pol = by_port[port]
            # Policy audit mode of the endpoint whose listener this is: its
            # rules (and, on egress, the receivers' rules it applies) only report.
            audit = state.endpoints[ep_id].audit
            keep_source = self.params.original_source and local_only(state, state.endpoints[ep_id], pol, pods)
            receivers = state.receiver_rules(pol)
            audited = frozenset(
                r.endpoint_id for r in receivers if (rep := state.endpoints.get(r.endpoint_id)) is not None and rep.audit
            )
            if pol.kind == L7Kind.SNI:
                key = (pol, self._ipcache_gen, receivers, audit, audited, keep_source)
                got = self._sni.get(port)
                res = got[1] if got is not None and got[0] == key else self._sni_listener(pol, keep_source, receivers, audit, audited)
                new_sni[port] = (key, res)
                listeners.append(res)
                continue
            listeners.append(self._listener(port, pol.key.direction, pol.key.port, keep_source))
            prev = self._routes.get(port)
            if (
                prev is not None and prev[1] == self._ipcache_gen and (prev[0] is pol or prev[0] == pol)
                and prev[3] == receivers and prev[4] == audit and prev[5] == audited
            ):
                res = prev[2]
            else:
                res = self._route_config(pol, receivers, audit, audited)
            new_routes[port] = (pol, self._ipcache_gen, res, receivers, audit, audited)
            routes.append(res)
        self._routes = new_routes
        self._sni = new_sni
        self._prune()
        return Snapshot.build([self._cluster, *listeners, *routes], version=version)

    def _prune(self) -> None:
        # Rules untouched by this render were reused whole from their route
        # configuration's cache; count them as used so they stay warm.
        if len(self._perm) > 2 * max(len(self._used), 1024):
            for pol, _, _, receivers, _, _ in self._routes.values():
                for rules in _group_by_peers(pol.peer_rules).values():
                    self._used.update(self._paths.merge(rules))
                for r in receivers:
                    self._used.update(self._paths.merge(list(r.http)))
            self._perm = {k: v for k, v in self._perm.items() if k in self._used}
        ports = {(port, pol.key.direction, pol.key.port) for port, (pol, *_) in self._routes.items()}
        for key in [k for k in self._listeners if k[:3] not in ports]:
            del self._listeners[key]

    async def render_async(self, state: CompiledState, version: str | None = None) -> Snapshot:
        return await asyncio.to_thread(self.render, state, version)
    # -- resources

    def _render_cluster(self) -> Resource:
        p = self.params
        header = ORIGINAL_DST_HEADER if p.original_dst == OriginalDst.LOCAL_ADDRESS else None
        body = original_dst_cluster(
            name=p.cluster_name, connect_timeout_s=p.connect_timeout_s, upstream_mark=p.upstream_mark, header=header
        )
        return Resource(CLUSTER, p.cluster_name, body)

    def _listener(self, port: int, direction: Direction, original_port: int, keep_source: bool) -> Resource:
        key = (port, direction, original_port, keep_source)
        got = self._listeners.get(key)
        if got is not None:
            return got
        p = self.params
        name = listener_name(port)
        hcm = http_connection_manager(
            stat_prefix=f"ciliate_{direction.name.lower()}_{port}",
            rds=rds_source(route_config_name(port), p.rds_directory),
            route_config=route_config_name(port),
            direction=direction,
            accesslog=(p.accesslog_name, p.accesslog_cluster) if p.accesslog_cluster else None,
            limits=p.limits,
        )
        body = listener(
            name=name,
            address=p.listen_address,
            address6=p.listen_address6,
            port=port,
            transparent=p.transparent,
            direction=direction,
            original_port=original_port if p.match_original_port else None,
            hcm=hcm,
            original_source_mark=p.upstream_mark if keep_source else None,
            limits=p.limits,
        )
        res = Resource(LISTENER, name, body, refs=frozenset({(ROUTE, route_config_name(port))}))
        self._listeners[key] = res
        return res

    def _sni_listener(
        self, pol: L7Policy, keep_source: bool, receivers: tuple[ReceiverRules, ...], audit: bool, audited: frozenset[int]
    ) -> Resource:
        """An SNI listener (tls_listener.py): its rules live in the listener
        itself (no RDS), so a rule change replaces the listener."""
        p = self.params
        policies = []
        groups: dict[frozenset[int], list[bytes]] = {}
        for r in pol.peer_rules:
            assert r.sni is not None  # L7Policy refuses a mixed listener
            groups.setdefault(r.identities, []).append(sni_permission(r.sni))
        for i, (identities, perms) in enumerate(groups.items()):
            peers = self._peer_matchers(identities, pol.key.direction)
            if peers == []:
                continue  # the peers have no address at all: the rules admit nobody
            policies.append((f"peers-{i}", peer_policy(perms, peers, pol.key.direction)))
        receiver = None
        if pol.key.direction == Direction.EGRESS:
            perms_by_receiver = {r.endpoint_id: [sni_permission(x) for x in r.sni] for r in receivers if r.sni}
            receiver = receiver_rules(receivers, perms_by_receiver, audited, config=pb.NetworkRbac)
        if p.original_dst == OriginalDst.LOCAL_ADDRESS:
            upstream = DOWNSTREAM_LOCAL_ADDRESS
        elif p.test_only_tcp_upstream is not None:
            upstream = p.test_only_tcp_upstream
        else:
            where = f"endpoints[{pol.key.endpoint_id}].l7[{pol.key.direction.name.lower()}:{pol.key.port}]"
            raise RenderError(where, "an SNI listener in test-only loopback mode needs RenderParams.test_only_tcp_upstream")
        name = listener_name(pol.proxy_port)
        body = sni_listener(
            name=name,
            address=p.listen_address,
            address6=p.listen_address6,
            port=pol.proxy_port,
            transparent=p.transparent,
            direction=pol.key.direction,
            original_port=pol.key.port if p.match_original_port else None,
            original_source_mark=p.upstream_mark if keep_source else None,
            limits=p.limits,
            rules=rbac_rules(policies, audit, config=pb.NetworkRbac),
            receiver_rules=receiver,
            cluster=p.cluster_name,
            upstream=upstream,
        )
        return Resource(LISTENER, name, body, refs=frozenset({(CLUSTER, p.cluster_name)}))

    def _merge(self, rules: list[HTTPRule]) -> list[HTTPRule]:
        return self._paths.merge(rules) if self.params.merge_paths else rules

    def _http_perm(self, http: HTTPRule) -> bytes:
        self._used.add(http)
        perm = self._perm.get(http)
        if perm is None:
            perm = self._perm[http] = http_permission(http)
            self.http_rules_encoded += 1
        return perm

    def _peer_matchers(self, identities: frozenset[int], direction: Direction) -> list[bytes] | None:
        """Encoded address matchers for a peer set; None means any peer, [] no address at all."""
        assert self._idents is not None
        if IDENTITY_ANY in identities:
            return None
        out: list[bytes] = []
        for ident in sorted(identities):
            out.extend(self._idents.matchers(ident, direction))
        return out

    def _route_config(
        self, pol: L7Policy, receivers: tuple[ReceiverRules, ...] = (), audit: bool = False, audited: frozenset[int] = frozenset()
    ) -> Resource:
        name = route_config_name(pol.proxy_port)
        policies = []
        for i, (identities, rules) in enumerate(_group_by_peers(pol.peer_rules).items()):
            perms = [self._http_perm(r) for r in self._merge(rules)]
            peers = self._peer_matchers(identities, pol.key.direction)
            if peers == []:
                continue  # the peers have no address at all: the rules admit nobody
            policies.append((f"peers-{i}", peer_policy(perms, peers, pol.key.direction)))
        receiver_rbac = None
        if pol.key.direction == Direction.EGRESS:
            perms_by_receiver = {
                r.endpoint_id: [self._http_perm(h) for h in self._merge(list(r.http))] for r in receivers if r.http
            }
            receiver_rbac = receiver_per_route(receivers, perms_by_receiver, audited)
        body = route_configuration(
            name=name,
            cluster=self.params.cluster_name,
            rbac=per_route(policies, audit),
            receiver_rbac=receiver_rbac,
            original_dst_header=ORIGINAL_DST_HEADER if self.params.original_dst == OriginalDst.LOCAL_ADDRESS else None,
        )
        return Resource(ROUTE, name, body, refs=frozenset({(CLUSTER, self.params.cluster_name)}))


def pod_identities(state: CompiledState) -> frozenset[int]:
    """Identities of the cluster's pods: this node's endpoints, and (cluster
    mode) the other nodes' endpoints, which are in the ipcache with their
    label identities."""
    local = {e.identity for e in state.endpoints.values()}
    remote = {i for i in state.ipcache.values() if FIRST_LABEL_IDENTITY <= i < FIRST_CIDR_IDENTITY}
    return frozenset(local | remote)


def local_only(state: CompiledState, ep: EndpointPolicy, pol: L7Policy, pods: frozenset[int] | None = None) -> bool:
    """Whether every destination the kernel sends to this listener is a pod
    of the cluster, so its upstream may keep the client's address: ingress
    listeners (the destination is the endpoint itself), and egress listeners
    whose redirect entries name only pod identities (not any peer, reserved
    or CIDR identities: those may be outside the cluster, where no program of
    ours sees the replies). A pod on another node counts: its replies come
    back over the underlay, where bpf_lo.c from_netdev hands them to the
    proxy. Decided per listener, so the listener changes only when a policy
    adds or removes such a peer, not per pod."""
    if pol.key.direction == Direction.INGRESS:
        return True
    local = pods if pods is not None else pod_identities(state)
    peers = {
        e.key.identity
        for e in ep.entries
        if e.verdict == Verdict.REDIRECT and e.proxy_port == pol.proxy_port and e.key.direction == Direction.EGRESS
    }
    return bool(peers) and peers <= local


_default_renderers: dict[RenderParams, Renderer] = {}


def render(state: CompiledState, *, version: str | None = None, **params) -> Snapshot:
    """Render one node's resources. Keyword arguments are RenderParams fields
    (or `params=RenderParams(...)`); a renderer per parameter set is kept so
    repeated calls reuse encoded bytes."""
    rp = params.pop("params", None) or RenderParams(**params)
    r = _default_renderers.get(rp)
    if r is None:
        r = _default_renderers[rp] = Renderer(rp)
    return r.render(state, version=version)
