"""Compiled L7 state -> Envoy resources (serialized). Pure; no I/O.

What one node's Envoy gets:

- one ORIGINAL_DST cluster shared by every listener; its upstream sockets
  carry SO_MARK `upstream_mark` (0x0B00) so the eBPF program recognises
  proxy-originated traffic and does not apply policy to it again;
- one listener per proxy port (`transparent: true` on 0.0.0.0 in
  production), whose HTTP connection manager takes its routes over RDS from
  a route configuration of the same name. The listener only changes when a
  proxy port appears or goes away;
- per listener, one route configuration: a catch-all route to the cluster
  carrying a per-route RBAC config with one RBAC policy per peer set
  (principals: the peers' ipcache prefixes; permissions: one per HTTP rule,
  ORed, each ANDing the rule's method/path/host regexes and headers). RBAC
  ORs policies and permissions, which is the Cilium semantics of HTTP rules;
  Envoy's routes could not express it (the first matching route wins, so a
  rule that matches the request but not the peer would hide a later rule
  that matches both). A policy change is therefore an RDS update, which does
  not drain open connections.
- to keep Envoy's own work per update small (it rebuilds every matcher of a
  route configuration it receives), literal methods/paths/hosts become exact
  matchers and rules of one peer set that differ only in path are merged
  into one RE2 alternation (Renderer._merge_paths). Envoy's default RE2
  program-size limit (100) is lifted in envoy/bootstrap.yaml for this.
- a request that no policy admits gets RBAC's local 403, whose body the HCM's
  local reply mapper rewrites to `Access denied`.

Peers: for INGRESS listeners the peer is the downstream source
(`direct_remote_ip` principals); for EGRESS listeners the peer is the
original destination (`destination_ip` permissions, the accepted socket's
local address under TPROXY). An identity's addresses are its ipcache
prefixes minus any more specific prefix belonging to another identity, so
the longest-prefix semantics of the kernel ipcache hold in Envoy too.

Caching: `Renderer` keeps encoded bytes by content (per HTTP rule, per
identity, per listener, per route configuration) and each path's RE2
validity, so re-rendering after one rule changed re-encodes that rule (or its
merged group) and re-joins its route configuration only; other listeners'
resources are reused as the same objects.
"""

from __future__ import annotations

import asyncio
import enum
import re

import re2
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Network
from typing import Mapping

from policy.compiled import IDENTITY_ANY, CompiledState, Direction, HTTPRule, L7PeerRule, L7Policy, ReceiverRules

from . import serialize as w
from .errors import RenderError
from .resources import CLUSTER, LISTENER, ROUTE, Resource
from .snapshot import Snapshot

HCM_URL = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
ROUTER_URL = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
GRPC_ALS_URL = "type.googleapis.com/envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig"
RBAC_FILTER = "envoy.filters.http.rbac"
# A second RBAC filter on egress listeners: the local receivers' ingress HTTP
# rules (policy.compiled.ReceiverRules). Two filters in a row AND their verdicts.
RECEIVER_RBAC_FILTER = "ciliate.receiver_ingress_rbac"
ROUTER_FILTER = "envoy.filters.http.router"
HCM_FILTER = "envoy.filters.network.http_connection_manager"

SOL_SOCKET = 1
SO_MARK = 36
PROXY_UPSTREAM_MARK = 0x0B00
DENIED_STATUS = 403
DENIED_BODY = "Access denied"
# HttpConnectionManager.PathWithEscapedSlashesAction: %2F / %5C in a path are
# answered 400. Unescaping them would change what an application that treats
# them as data sees; keeping them would let `/public/..%2fprivate` reach a
# backend that decodes them after the rules matched. See policy/http_path.py,
# which `trace` uses to see the same path Envoy's rules see.
ESCAPED_SLASHES_REJECT_REQUEST = 2


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
    # Renderer._merge_paths). Off: one RBAC permission per rule.
    merge_paths: bool = True
    # Serve only connections whose local address (the original destination
    # the datapath preserved) has the policy's port. A connection made
    # straight to the proxy port (from the node, or a pod reaching the node's
    # address) matches no filter chain and is closed: it would otherwise be
    # forwarded to its own local address, the proxy again, in a loop.
    match_original_port: bool = True

    @classmethod
    def test_only_loopback(cls, **kw) -> "RenderParams":
        """TEST ONLY: loopback, non-transparent listeners whose ORIGINAL_DST
        cluster takes the upstream from the x-envoy-original-dst-host header."""
        kw.setdefault("listen_address", "127.0.0.1")
        kw.setdefault("match_original_port", False)  # nothing redirects: the local port is the proxy port
        return cls(transparent=False, original_dst=OriginalDst.TEST_ONLY_HTTP_HEADER, **kw)


@lru_cache(maxsize=1 << 16)
def _regex_shape(regex: str) -> tuple[bool, bool]:
    """(balanced, has a top-level `|`), in one scan that skips escapes and
    character classes. Balanced: the parentheses balance, so the regex
    cannot close a group it did not open."""
    depth, i, n, in_class = 0, 0, len(regex), False
    went_negative = top_pipe = False
    while i < n:
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            # a ']' right after '[' or '[^' is a literal member
            if regex[i + 1 : i + 2] == "^":
                i += 1
            if regex[i + 1 : i + 2] == "]":
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            went_negative |= depth < 0
        elif c == "|" and depth == 0:
            top_pipe = True
        i += 1
    return (depth == 0 and not went_negative and not in_class and i == n), top_pipe


def _balanced(regex: str) -> bool:
    return _regex_shape(regex)[0]


def _has_top_level_pipe(regex: str) -> bool:
    return _regex_shape(regex)[1]


_QUANTIFIERS = "*+?{"


@lru_cache(maxsize=1 << 16)
def _split_literal(regex: str) -> tuple[str, str] | None:
    """(literal prefix, rest) with prefix + rest == regex and the prefix free
    of metacharacters; None if the regex has a top-level `|` (concatenation
    would not distribute over it). A quantifier binds the character before
    it, so that character stays in the rest."""
    m = _REGEX_META.search(regex)
    if m is None:
        return regex, ""
    i = m.start()
    if regex[i] in _QUANTIFIERS and i > 0:
        i -= 1
    if _has_top_level_pipe(regex):
        return None
    return regex[:i], regex[i:]




def _alternation(paths: list[str]) -> str:
    """One regex that full-matches exactly what one of `paths` full-matches.

    Paths sharing the regex tail after their literal prefix are written as
    `(?:prefix1|prefix2|...)(?:tail)` (concatenation distributes over
    alternation). RE2 factors common prefixes itself but not tails, and
    thousands of branches each ending in their own `(/.*)?` made Envoy's
    compile of a 10k-rule update ~4x slower than the factored form."""
    by_tail: dict[str, list[str]] = {}
    whole: list[str] = []
    for p in paths:
        split = _split_literal(p)
        if split is None or not split[0]:
            whole.append(p)
        else:
            by_tail.setdefault(split[1], []).append(split[0])
    parts = []
    for tail, prefixes in by_tail.items():
        head = prefixes[0] if len(prefixes) == 1 else "(?:" + "|".join(prefixes) + ")"
        parts.append(head + (f"(?:{tail})" if tail else ""))
    parts.extend(whole)
    return parts[0] if len(parts) == 1 and not whole else "|".join(f"(?:{x})" for x in parts)


def _re2_ok(regex: str) -> bool:
    try:
        re2.compile(regex)
        return True
    except re2.error:
        return False


def _group_by_peers(rules: tuple[L7PeerRule, ...]) -> dict[frozenset[int], list[HTTPRule]]:
    groups: dict[frozenset[int], list[HTTPRule]] = {}
    for r in rules:
        groups.setdefault(r.identities, []).append(r.http)
    return groups


def listener_name(proxy_port: int) -> str:
    return f"ciliate-proxy-{proxy_port}"


route_config_name = listener_name


# ---------------------------------------------------------------- encoders


def _cidr(field: int, net: IPv4Network) -> bytes:
    # envoy.config.core.v3.CidrRange: address_prefix = 1, prefix_len = 2 (UInt32Value)
    return w.m(field, w.s(1, str(net.network_address)), w.wrapped_u32(2, net.prefixlen))


def _header_matcher(name: str, *, regex: str | None = None, exact: str | None = None) -> bytes:
    # HeaderMatcher: name = 1, present_match = 7, string_match = 13
    # StringMatcher: exact = 1, safe_regex = 5 (RegexMatcher: regex = 2). Envoy's
    # safe_regex matches the whole value, as Cilium's HTTP rules require.
    if regex is not None:
        return w.s(1, name) + w.m(13, w.m(5, w.s(2, regex)))
    if exact is not None:
        return w.s(1, name) + w.m(13, w.raw(1, exact.encode()))
    return w.s(1, name) + w.b(7, True)


def _http_permission(rule: HTTPRule) -> bytes:
    """rbac.v3.Permission for one HTTP rule: and_rules = 1 (PermissionSet.rules = 1),
    or_rules = 2, any = 3, header = 4."""
    perms: list[bytes] = []  # encoded Permission messages, ANDed

    def header(name: str, **kw) -> bytes:
        return w.raw(4, _header_matcher(name, **kw))

    if rule.method is not None:
        literals = _literal_alternatives(rule.method)
        if literals is None:
            perms.append(header(":method", regex=rule.method))
        elif len(literals) == 1:
            perms.append(header(":method", exact=literals[0]))
        else:
            perms.append(w.m(2, *(w.m(1, header(":method", exact=x)) for x in literals)))
    for name, regex in ((":path", rule.path), (":authority", rule.host)):
        if regex is None:
            continue
        if _REGEX_META.search(regex) is None:
            perms.append(header(name, exact=regex))  # a regex without metacharacters is its own literal
        else:
            perms.append(header(name, regex=regex))
    for h in rule.headers:
        perms.append(header(h.name, exact=h.value) if h.value is not None else header(h.name))
    if not perms:
        return w.b(3, True)
    return w.m(1, *(w.raw(1, p) for p in perms))


_METHOD_LITERAL = re.compile(r"[A-Za-z]+")
_REGEX_META = re.compile(r"[\\.^$|?*+()\[\]{}]")


def _literal_alternatives(regex: str) -> list[str] | None:
    """["GET", "HEAD"] for "GET|HEAD": method regexes are nearly always plain
    alternations of method names, which Envoy can match without compiling a
    regex (RE2 full match of an alternation of literals == one exact equal)."""
    parts = regex.split("|")
    if all(_METHOD_LITERAL.fullmatch(p) for p in parts):
        return parts
    return None


class _IdentityAddresses:
    """identity -> encoded 'address has this identity' matchers, for one ipcache."""

    def __init__(self, ipcache: Mapping[IPv4Network, int]) -> None:
        self.ipcache = dict(ipcache)
        by_ident: dict[int, list[IPv4Network]] = {}
        for net, ident in self.ipcache.items():
            by_ident.setdefault(ident, []).append(net)
        self._by_ident = {k: sorted(v) for k, v in by_ident.items()}
        self._cache: dict[tuple[int, Direction], list[bytes]] = {}

    def _terms(self, ident: int) -> list[tuple[IPv4Network, list[IPv4Network]]]:
        out = []
        for net in self._by_ident.get(ident, ()):
            holes = sorted(
                q for q, other in self.ipcache.items() if other != ident and q != net and q.subnet_of(net)
            )
            out.append((net, holes))
        return out

    def matchers(self, ident: int, direction: Direction) -> list[bytes]:
        key = (ident, direction)
        got = self._cache.get(key)
        if got is None:
            got = [self._encode(net, holes, direction) for net, holes in self._terms(ident)]
            self._cache[key] = got
        return got

    @staticmethod
    def _encode(net: IPv4Network, holes: list[IPv4Network], direction: Direction) -> bytes:
        if direction == Direction.INGRESS:
            # Principal: and_ids = 1, or_ids = 2 (PrincipalSet.ids = 1), not_id = 8, direct_remote_ip = 10
            base = _cidr(10, net)
            if not holes:
                return base
            return w.m(1, w.m(1, base), w.m(1, w.m(8, w.m(2, *(w.m(1, _cidr(10, h)) for h in holes)))))
        # Permission: and_rules = 1, or_rules = 2 (PermissionSet.rules = 1), destination_ip = 5, not_rule = 8
        base = _cidr(5, net)
        if not holes:
            return base
        return w.m(1, w.m(1, base), w.m(1, w.m(8, w.m(2, *(w.m(1, _cidr(5, h)) for h in holes)))))


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
        self._valid: dict[str, bool] = {}
        self._idents: _IdentityAddresses | None = None
        self._routes: dict[int, tuple[L7Policy, int, Resource, tuple[ReceiverRules, ...]]] = {}
        self._listeners: dict[tuple[int, Direction, int], Resource] = {}
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
        new_routes: dict[int, tuple[L7Policy, int, Resource, tuple[ReceiverRules, ...]]] = {}
        for port in sorted(by_port):
            _, pol = by_port[port]
            listeners.append(self._listener(port, pol.key.direction, pol.key.port))
            receivers = state.receiver_rules(pol)
            prev = self._routes.get(port)
            if prev is not None and prev[1] == self._ipcache_gen and (prev[0] is pol or prev[0] == pol) and prev[3] == receivers:
                res = prev[2]
            else:
                res = self._route_config(pol, receivers)
            new_routes[port] = (pol, self._ipcache_gen, res, receivers)
            routes.append(res)
        self._routes = new_routes
        self._prune()
        return Snapshot.build([self._cluster, *listeners, *routes], version=version)

    def _prune(self) -> None:
        # Rules untouched by this render were reused whole from their route
        # configuration's cache; count them as used so they stay warm.
        if len(self._perm) > 2 * max(len(self._used), 1024):
            for pol, _, _, receivers in self._routes.values():
                for rules in _group_by_peers(pol.peer_rules).values():
                    self._used.update(self._merge_paths(rules))
                for r in receivers:
                    self._used.update(self._merge_paths(list(r.http)))
            self._perm = {k: v for k, v in self._perm.items() if k in self._used}
        if len(self._valid) > 1 << 18:  # paths of long-gone rules: forget them (re-checked in bulk)
            self._valid.clear()
        ports = {(port, pol.key.direction, pol.key.port) for port, (pol, _, _, _) in self._routes.items()}
        for key in [k for k in self._listeners if k not in ports]:
            del self._listeners[key]

    async def render_async(self, state: CompiledState, version: str | None = None) -> Snapshot:
        return await asyncio.to_thread(self.render, state, version)

    # -- resources

    def _render_cluster(self) -> Resource:
        p = self.params
        # Cluster: name = 1, type = 2 (ORIGINAL_DST = 4), connect_timeout = 4,
        # lb_policy = 6 (CLUSTER_PROVIDED = 6), upstream_bind_config = 21,
        # original_dst_lb_config = 34 (use_http_header = 1).
        # BindConfig: source_address = 1 (SocketAddress: address = 2, port_value = 3),
        # socket_options = 3 (SocketOption: description = 1, level = 2, name = 3,
        # int_value = 4, state = 6 (STATE_PREBIND = 0: set before connect)).
        # upstream_mark = 0 leaves SO_MARK unset: setting it needs CAP_NET_ADMIN,
        # which only a test run without root lacks.
        mark = (
            w.m(
                3,
                w.s(1, "ciliate proxy upstream mark"),
                w.u(2, SOL_SOCKET),
                w.u(3, SO_MARK),
                w.u(4, p.upstream_mark),
            )
            if p.upstream_mark
            else b""
        )
        body = (
            w.s(1, p.cluster_name)
            + w.u(2, 4)
            + w.duration(4, p.connect_timeout_s)
            + w.u(6, 6)
            + w.m(21, w.m(1, w.s(2, "0.0.0.0"), w.u_present(3, 0)), mark)
        )
        if p.original_dst == OriginalDst.TEST_ONLY_HTTP_HEADER:
            body += w.m(34, w.b(1, True))
        else:
            # OriginalDstLbConfig: use_http_header = 1, http_header_name = 2
            body += w.m(34, w.b(1, True), w.s(2, ORIGINAL_DST_HEADER))
        return Resource(CLUSTER, p.cluster_name, body)

    def _listener(self, port: int, direction: Direction, original_port: int) -> Resource:
        key = (port, direction, original_port)
        got = self._listeners.get(key)
        if got is not None:
            return got
        p = self.params
        name = listener_name(port)
        # HttpConnectionManager: stat_prefix = 2, rds = 3 (config_source = 1
        # {ads = 3, resource_api_version = 6 (V3 = 2)}, route_config_name = 2),
        # http_filters = 5 (name = 1, typed_config = 4), access_log = 13,
        # local_reply_config = 38.
        # The listener-level RBAC allows nothing: every route carries its own
        # per-route RBAC, so a route config without one fails closed.
        rbac_deny_all = w.m(1)  # RBAC{rules: {action: ALLOW, policies: {}}}
        hcm = (
            w.s(2, f"ciliate_{direction.name.lower()}_{port}")
            + w.m(3, self._rds_source(port), w.s(2, route_config_name(port)))
            + w.m(5, w.s(1, RBAC_FILTER), w.any_(4, RBAC_URL, rbac_deny_all))
        )
        if direction == Direction.EGRESS:
            hcm += w.m(5, w.s(1, RECEIVER_RBAC_FILTER), w.any_(4, RBAC_URL, rbac_deny_all))
        hcm += w.m(5, w.s(1, ROUTER_FILTER), w.any_(4, ROUTER_URL, b""))
        if p.accesslog_cluster:
            # AccessLog: name = 1, typed_config = 4; HttpGrpcAccessLogConfig:
            # common_config = 1 {log_name = 1, grpc_service = 2 {envoy_grpc = 1
            # {cluster_name = 1}}, transport_api_version = 6}
            als = w.m(
                1,
                w.s(1, p.accesslog_name),
                w.m(2, w.m(1, w.s(1, p.accesslog_cluster))),
                w.u(6, 2),
            )
            hcm += w.m(13, w.s(1, "envoy.access_loggers.http_grpc"), w.any_(4, GRPC_ALS_URL, als))
        # LocalReplyConfig.mappers = 1: ResponseMapper filter = 1 {status_code_filter
        # = 1 {comparison = 1 {op = 1 (EQ = 0), value = 2 {default_value = 2,
        # runtime_key = 3}}}}, body = 3 (DataSource.inline_string = 3).
        mapper = w.m(
            1,
            w.m(1, w.m(1, w.m(1, w.m(2, w.u(2, DENIED_STATUS), w.s(3, "ciliate.denied_status"))))),
            w.m(3, w.s(3, DENIED_BODY)),
        )
        hcm += w.m(38, mapper)
        # Path normalization (see PATH_NORMALIZATION): the path the RBAC rules
        # see is the path the upstream receives. normalize_path = 30
        # (BoolValue; RFC 3986 dot segments, unreserved %XX decoded),
        # merge_slashes = 33, path_with_escaped_slashes_action = 45.
        hcm += w.wrapped_bool(30, True) + w.b(33, True) + w.u(45, ESCAPED_SLASHES_REJECT_REQUEST)
        # Listener: name = 1, address = 2 (socket_address = 1 {address = 2,
        # port_value = 3}), filter_chains = 3 (filter_chain_match = 1
        # {destination_port = 8 (UInt32Value)}, filters = 3 {name = 1,
        # typed_config = 4}), transparent = 10 (BoolValue), traffic_direction = 16.
        chain_match = w.m(1, w.wrapped_u32(8, original_port)) if p.match_original_port else b""
        body = (
            w.s(1, name)
            + w.m(2, w.m(1, w.s(2, p.listen_address), w.u_present(3, port)))
            + w.m(3, chain_match, w.m(3, w.s(1, HCM_FILTER), w.any_(4, HCM_URL, hcm)))
            + w.wrapped_bool(10, p.transparent)
            + w.u(16, 1 if direction == Direction.INGRESS else 2)
        )
        res = Resource(LISTENER, name, body, refs=frozenset({(ROUTE, route_config_name(port))}))
        self._listeners[key] = res
        return res

    def _rds_source(self, port: int) -> bytes:
        # ConfigSource = 1 of Rds: ads = 3 (AggregatedConfigSource {}),
        # path_config_source = 8 (path = 1, watched_directory = 2 {path = 1}),
        # resource_api_version = 6 (V3 = 2).
        d = self.params.rds_directory
        if d is None:
            return w.m(1, w.m(3), w.u(6, 2))
        # One directory per route configuration: Envoy re-reads every file whose
        # watched directory saw a move, so sharing one would reload them all.
        sub = f"{d}/{route_config_name(port)}"
        return w.m(1, w.m(8, w.s(1, f"{sub}/routes.pb"), w.m(2, w.s(1, sub))), w.u(6, 2))

    def _valid_paths(self, paths: list[str]) -> list[str]:
        """The paths that compile as RE2 regexes. Each path is compiled once in
        the renderer's life: new paths in bulk as one alternation (one C++
        compile instead of thousands of Python calls), one by one only when
        that fails, to single out the invalid ones."""
        new = [p for p in paths if p not in self._valid]
        if len(new) > 1 and _re2_ok("|".join(f"(?:{p})" for p in new)):
            self._valid.update(dict.fromkeys(new, True))
        else:
            self._valid.update((p, _re2_ok(p)) for p in new)
        return [p for p in paths if self._valid[p]]

    def _merge_paths(self, rules: list[HTTPRule]) -> list[HTTPRule]:
        """Rules of one peer set that differ only in their path become one rule
        whose path is the alternation of theirs: `(?:p1)|(?:p2)|...` full-matches
        exactly when one of the paths does, so the verdict is unchanged, but
        Envoy builds and compiles one matcher instead of thousands (its cost
        per RBAC permission dominates a large update; see bench/bench_xds.py).

        A path is merged only if it cannot leak out of its `(?:...)` and is
        valid RE2 on its own: its parentheses balance and it compiles
        (_valid_paths). Any other path stays unmerged, so it cannot change the
        meaning of the others and Envoy's NACK names it."""
        by_rest: dict[tuple, list[HTTPRule]] = {}
        for r in rules:
            by_rest.setdefault((r.method, r.host, r.headers), []).append(r)
        out: list[HTTPRule] = []
        for (method, host, headers), same in by_rest.items():
            if len(same) == 1:
                out.extend(same)
                continue
            if any(r.path is None for r in same):
                out.append(HTTPRule(method=method, path=None, host=host, headers=headers))  # any path
                continue
            paths = list(dict.fromkeys(r.path for r in same))  # type: ignore[misc]
            good = self._valid_paths([p for p in paths if _balanced(p)])
            alternation = _alternation(good) if len(good) > 1 else None
            merged = set(good)
            out.extend(HTTPRule(method=method, path=p, host=host, headers=headers) for p in paths if p not in merged)
            if good:
                path = alternation if alternation is not None else good[0]
                out.append(HTTPRule(method=method, path=path, host=host, headers=headers))
        return out

    def _http_perm(self, http: HTTPRule) -> bytes:
        self._used.add(http)
        perm = self._perm.get(http)
        if perm is None:
            perm = self._perm[http] = _http_permission(http)
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

    def _rbac_policy(self, identities: frozenset[int], perms: list[bytes], direction: Direction) -> bytes | None:
        """rbac.v3.Policy (permissions = 1, principals = 2) for every HTTP rule
        sharing one peer set: a policy's permissions are ORed, so the peers'
        addresses are written (and built by Envoy) once per peer set, not once
        per rule. None if the peers have no address at all."""
        peers = self._peer_matchers(identities, direction)
        if peers == []:
            return None
        if direction == Direction.INGRESS:
            # Principal: any = 3, or_ids = 2 (PrincipalSet.ids = 1)
            principal = w.b(3, True) if peers is None else w.m(2, *(w.m(1, x) for x in peers))
            return b"".join(w.raw(1, p) for p in perms) + w.m(2, principal)
        if peers is None:
            return b"".join(w.raw(1, p) for p in perms) + w.m(2, w.b(3, True))
        # Egress: the peer is the destination. Permission: and_rules = 1,
        # or_rules = 2 (PermissionSet.rules = 1).
        http_any = w.m(2, *(w.raw(1, p) for p in perms))
        dest = w.m(2, *(w.m(1, x) for x in peers))
        return w.m(1, w.m(1, w.m(1, http_any), w.m(1, dest))) + w.m(2, w.b(3, True))

    def _receiver_rbac(self, receivers: tuple[ReceiverRules, ...]) -> bytes:
        """RBACPerRoute for RECEIVER_RBAC_FILTER: a request to a receiver with
        ingress HTTP rules for this sender must match one of them; a request
        to any other destination passes this filter (the sender's own rules
        still apply in the filter before)."""
        # Permission: and_rules = 1, or_rules = 2 (PermissionSet.rules = 1),
        # any = 3, destination_ip = 5, not_rule = 8. Principal: any = 3.
        anyone = w.m(2, w.b(3, True))
        if receivers:
            others = w.m(8, w.m(2, *(w.m(1, _cidr(5, IPv4Network(r.ipv4))) for r in receivers)))
        else:
            others = w.b(3, True)
        entries = [w.map_entry(2, "other-destinations", w.m(1, others) + anyone)]
        for r in receivers:
            if not r.http:
                continue  # the receiver admits no request from this sender: 403
            merged = self._merge_paths(list(r.http)) if self.params.merge_paths else list(r.http)
            http_any = w.m(2, *(w.raw(1, self._http_perm(h)) for h in merged))
            dest = _cidr(5, IPv4Network(r.ipv4))
            entries.append(w.map_entry(2, f"receiver-{r.endpoint_id}", w.m(1, w.m(1, w.m(1, dest), w.m(1, http_any))) + anyone))
        return w.m(2, w.m(1, *entries))

    def _route_config(self, pol: L7Policy, receivers: tuple[ReceiverRules, ...] = ()) -> Resource:
        name = route_config_name(pol.proxy_port)
        entries = []
        for i, (identities, rules) in enumerate(_group_by_peers(pol.peer_rules).items()):
            merged = self._merge_paths(rules) if self.params.merge_paths else rules
            perms = [self._http_perm(r) for r in merged]
            enc = self._rbac_policy(identities, perms, pol.key.direction)
            if enc is not None:
                # RBAC.policies = 2: map<string, Policy>
                entries.append(w.map_entry(2, f"peers-{i}", enc))
        # RBACPerRoute.rbac = 2 {rules = 1 {action = 1 (ALLOW = 0), policies = 2}}
        per_route = w.m(2, w.m(1, *entries))
        # Route: match = 1 (prefix = 1), route = 2 (cluster = 1),
        # typed_per_filter_config = 13 (map<string, Any>).
        route = (
            w.m(1, w.s(1, "/"))
            + w.m(2, w.s(1, self.params.cluster_name))
            + w.m(13, w.s(1, RBAC_FILTER), w.any_(2, RBAC_PER_ROUTE_URL, per_route))
        )
        if pol.key.direction == Direction.EGRESS:
            route += w.m(13, w.s(1, RECEIVER_RBAC_FILTER), w.any_(2, RBAC_PER_ROUTE_URL, self._receiver_rbac(receivers)))
        # RouteConfiguration: name = 1, virtual_hosts = 2 (name = 1, domains = 2, routes = 3)
        body = w.s(1, name) + w.m(2, w.s(1, "ciliate"), w.s(2, "*"), w.m(3, route))
        if self.params.original_dst == OriginalDst.LOCAL_ADDRESS:
            # request_headers_to_add = 6: HeaderValueOption{header = 1 {key = 1,
            # value = 2}, append_action = 3 (OVERWRITE_IF_EXISTS_OR_ADD = 2)}:
            # overwrite, so a client can never choose the upstream.
            body += w.m(6, w.m(1, w.s(1, ORIGINAL_DST_HEADER), w.s(2, "%DOWNSTREAM_LOCAL_ADDRESS%")), w.u(3, 2))
        return Resource(ROUTE, name, body, refs=frozenset({(CLUSTER, self.params.cluster_name)}))


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

