"""`trace`: would this flow be allowed? Answered from the compiled state.

The L3/L4 answer is `compiled.lookup()` (what the eBPF program runs) for the
source endpoint's egress and the local destination's ingress; when the
deciding entry redirects, the L7 answer comes from that listener's
L7PeerRules: HTTP rules with RE2 full matching, or serverNames rules against
the TLS server name on an SNI listener, as the Envoy configuration rendered
from the same rules would decide. No second policy implementation. Pure.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from ipaddress import ip_address
from typing import Any

import re2

from policy.compiled import (
    HOST_ENDPOINT_ID,
    IDENTITY_HOST,
    CompiledState,
    Decision,
    Direction,
    EndpointPolicy,
    ANY_CONNECTION,
    HTTPRule,
    L7Kind,
    L7PeerRule,
    Protocol,
    RedirectKey,
    SNIRule,
    lookup,
    protocol_name,
)
from policy import server_names
from policy.errors import TraceInputError
from policy.families import FAMILY_NAMES, WORLD_ENTITIES, IPAddress
from policy.dns_names import canonical
from policy.http_path import PathRejected, normalize_path
from policy.identity import IDENTITY_ANY, RESERVED_BY_NAME, RESERVED_IDENTITIES

_OPTS = re2.Options()
_OPTS.log_errors = False


@dataclass(frozen=True)
class Party:
    """One side of a flow: a local endpoint, an address, or a reserved identity.

    A party named by entity keeps the name: `world-ipv4`/`world-ipv6` are the
    identity that family's world traffic has on the traced node (on an
    IPv4-only node IPv4 world traffic is `world`, 2; policy/families.py).
    """

    endpoint_id: int | None = None
    ip: IPAddress | None = None
    identity: int | None = None
    entity: str | None = None

    @staticmethod
    def endpoint(endpoint_id: int) -> "Party":
        return Party(endpoint_id=endpoint_id)

    @staticmethod
    def address(ip: IPAddress | str) -> "Party":
        return Party(ip=ip_address(ip))

    @staticmethod
    def entity(name: str) -> "Party":
        if name not in RESERVED_BY_NAME:
            raise TraceInputError(f"unknown entity {name!r}: expected one of {', '.join(RESERVED_BY_NAME)}")
        return Party(identity=RESERVED_BY_NAME[name], entity=name)

    @property
    def family(self) -> int | None:
        """The address family the party's packets are of, when it says."""
        if self.ip is not None:
            return self.ip.version
        return WORLD_ENTITIES.get(self.entity) if self.entity is not None else None


@dataclass(frozen=True)
class HTTPRequest:
    method: str = "GET"
    path: str = "/"
    host: str = ""
    # name -> value; a tuple of values for a header sent on several lines.
    headers: Mapping[str, str | tuple[str, ...]] = field(default_factory=dict)

    def header_values(self, name: str) -> list[str]:
        """Every value sent under `name` (any case), one per line."""
        out: list[str] = []
        for k, v in self.headers.items():
            if k.lower() == name.lower():
                out.extend((v,) if isinstance(v, str) else v)
        return out


@dataclass(frozen=True)
class TLSHello:
    """A TLS connection as an SNI listener sees it: the server name its
    ClientHello carries (diff's sample for a serverNames rule; trace takes
    the name alone)."""

    server_name: str


@dataclass(frozen=True)
class DNSQuery:
    """A DNS query as the DNS proxy judges it: the name asked for (diff's
    sample for a DNS rule; trace takes the name alone)."""

    name: str


@dataclass(frozen=True)
class Step:
    """One policy enforcement point the flow passes."""

    endpoint_id: int
    direction: Direction
    peer_identity: int
    decision: Decision
    l7_allowed: bool | None = None  # None: not redirected, or no request to judge
    l7_rule: L7PeerRule | None = None

    def to_dict(self) -> dict[str, Any]:
        d = self.decision
        return {
            "endpoint": self.endpoint_id,
            "direction": self.direction.name.lower(),
            "peer_identity": self.peer_identity,
            "verdict": d.verdict.name.lower() if d.verdict is not None else None,
            "allowed": d.allowed,
            "proxy_port": d.proxy_port,
            "rules": [str(r) for r in d.entry.rules] if d.entry else [],
            "l7_allowed": self.l7_allowed,
            "l7_rules": [str(r) for r in self.l7_rule.rules] if self.l7_rule else [],
        }


@dataclass(frozen=True)
class TraceResult:
    verdict: str  # "allowed" | "denied"
    layer: str  # "l3l4" | "l7"
    reason: str
    rules: tuple[str, ...]
    src_identity: int
    dst_identity: int
    steps: tuple[Step, ...]
    redirected: bool = False
    # The proxy's own answer to the request: 400 (the path is refused before
    # any rule runs) or 403 (no HTTP rule matches); None when it forwards the
    # request, or no proxy judged one.
    proxy_status: int | None = None

    @property
    def allowed(self) -> bool:
        return self.verdict == "allowed"

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "layer": self.layer,
            "reason": self.reason,
            "rules": list(self.rules),
            "src_identity": self.src_identity,
            "dst_identity": self.dst_identity,
            "redirected": self.redirected,
            "proxy_status": self.proxy_status,
            "steps": [s.to_dict() for s in self.steps],
        }


@lru_cache(maxsize=4096)
def _regex(pattern: str) -> Any:
    return re2.compile(pattern, options=_OPTS)


def http_matches(rule: HTTPRule, req: HTTPRequest) -> bool:
    """Every set field must match: regexes as full matches, headers by name
    (case-insensitive) and presence or exact value, on every line of a
    header sent on several (xds/rbac.py renders the same)."""
    if rule.method is not None and not _regex(rule.method).fullmatch(req.method):
        return False
    if rule.path is not None and not _regex(rule.path).fullmatch(req.path):
        return False
    if rule.host is not None and not _regex(rule.host).fullmatch(req.host):
        return False
    for h in rule.headers:
        values = req.header_values(h.name)
        if not values or (h.value is not None and any(v != h.value for v in values)):
            return False
    return True


def l7_decide(rules: tuple[L7PeerRule, ...], peer: int, req: HTTPRequest) -> L7PeerRule | None:
    """The first peer rule admitting this peer and request, or None (403)."""
    for r in rules:
        if (peer in r.identities or IDENTITY_ANY in r.identities) and r.http is not None and http_matches(r.http, req):
            return r
    return None


def sni_matches(rule: SNIRule, server_name: str | None) -> bool:
    """Whether an SNI rule admits a connection whose ClientHello names
    `server_name` (None: not TLS, or TLS without SNI), as
    xds/tls_listener.py renders it."""
    if rule == ANY_CONNECTION:
        return True
    return server_name is not None and any(server_names.matches(p, server_name) for p in rule.server_names)


def sni_decide(rules: tuple[L7PeerRule, ...], peer: int, server_name: str | None) -> L7PeerRule | None:
    """The first peer rule admitting this peer's connection, or None (closed)."""
    for r in rules:
        if (peer in r.identities or IDENTITY_ANY in r.identities) and r.sni is not None and sni_matches(r.sni, server_name):
            return r
    return None


def _resolve(state: CompiledState, p: Party) -> tuple[int, EndpointPolicy | None]:
    if p.endpoint_id is not None:
        ep = state.endpoints.get(p.endpoint_id)
        if ep is None:
            raise TraceInputError(f"no endpoint {p.endpoint_id}")
        return ep.identity, ep
    host = state.endpoints.get(HOST_ENDPOINT_ID)  # the node, when host policies apply to it
    if p.ip is not None:
        ep = state.endpoint_by_ip(p.ip)
        if ep is not None:
            return ep.identity, ep
        ident = state.identity_of(p.ip)
        return ident, host if ident == IDENTITY_HOST and p.ip in state.host_addresses else None
    if p.identity == IDENTITY_HOST and host is not None:
        return IDENTITY_HOST, host
    if p.identity is not None:
        family = p.family
        if family is not None:
            ident = state.stack.world_identity(family)
            if ident is not None:
                return ident, None
        return p.identity, None
    raise TraceInputError("a trace party needs an endpoint, an address or an entity")


def _proto_name(protocol: int) -> str:
    return protocol_name(protocol)


def _name(state: CompiledState, ident: int) -> str:
    if ident in RESERVED_IDENTITIES:
        return RESERVED_IDENTITIES[ident]
    labels = state.identity_labels.get(ident)
    return f"{ident} ({','.join(sorted(labels))})" if labels else str(ident)


def trace(
    state: CompiledState,
    src: Party,
    dst: Party,
    dport: int,
    protocol: int = Protocol.TCP,
    http: HTTPRequest | None = None,
    sni: str | None = None,
    dns_name: str | None = None,
) -> TraceResult:
    """`sni`: the server name the client's TLS ClientHello carries, judged by
    serverNames rules where the flow is redirected to an SNI listener; an
    `http` request without `sni` is a plain connection there. `dns_name`:
    the flow is a DNS query for that name, judged by the DNS rules where it
    is redirected to the DNS proxy (the proxy answers a refused name itself)."""
    if not 0 <= dport <= 65535:
        raise TraceInputError(f"port {dport} out of range 0-65535")
    src_id, src_ep = _resolve(state, src)
    dst_id, dst_ep = _resolve(state, dst)
    if src_ep is None and dst_ep is None:
        raise TraceInputError("neither side is a local endpoint: no policy applies to this flow")
    for p in (src, dst):
        if p.family is not None and not state.stack.runs(p.family):
            # No policy is looked at: the packet never gets that far.
            family = FAMILY_NAMES[p.family]
            reason = f"the node does not run {family} ({state.stack.value} stack): its datapath drops every {family} packet"
            return TraceResult("denied", "l3l4", reason, (), src_id, dst_id, ())
    steps: list[Step] = []
    redirected = False
    judged_sni = False  # an SNI listener judged the connection
    judged_dns = False  # the DNS proxy judged the query
    dns_unjudged = False  # redirected to the DNS proxy, no name given
    checks: list[tuple[EndpointPolicy, Direction, int]] = []
    if src_ep is not None:
        checks.append((src_ep, Direction.EGRESS, dst_id))
    if dst_ep is not None:
        checks.append((dst_ep, Direction.INGRESS, src_id))
    for ep, direction, peer in checks:
        d = lookup(ep, peer, direction, protocol, dport)
        where = f"{'the node (host endpoint)' if ep.endpoint_id == HOST_ENDPOINT_ID else f'endpoint {ep.endpoint_id}'} {direction.name.lower()}"
        if not d.allowed:
            steps.append(Step(ep.endpoint_id, direction, peer, d))
            rules = tuple(str(r) for r in d.entry.rules) if d.entry else ()
            if d.entry is not None:
                reason = f"{where}: denied by rule for peer {_name(state, peer)}"
            else:
                reason = f"{where}: no rule allows peer {_name(state, peer)} on {dport}/{_proto_name(protocol)} (default deny)"
            return TraceResult("denied", "l3l4", reason, rules, src_id, dst_id, tuple(steps), redirected)
        if d.proxy_port and direction == Direction.EGRESS and any(p.key.port == dport for p in ep.dns):
            redirected = True
            if dns_name is None:
                dns_unjudged = True
                steps.append(Step(ep.endpoint_id, direction, peer, d))
                continue
            judged_dns = True
            rule = next((r for r in ep.dns_rules_for(peer, dport) if r.dns is not None and r.dns.matches(dns_name)), None)
            steps.append(Step(ep.endpoint_id, direction, peer, d, rule is not None, rule))
            if rule is None:
                reason = (f"{where}: the DNS proxy refuses the query, no DNS rule for peer {_name(state, peer)} "
                          f"matches {canonical(dns_name)}")
                rules = tuple(str(r) for r in d.entry.rules) if d.entry else ()
                return TraceResult("denied", "l7", reason, rules, src_id, dst_id, tuple(steps), redirected)
            continue
        if d.proxy_port:
            redirected = True
            l7 = next(
                (p for p in ep.l7 if p.key == RedirectKey(ep.endpoint_id, direction, dport)),
                None,
            )
            if l7 is not None and l7.kind == L7Kind.SNI:
                if sni is None and http is None:
                    steps.append(Step(ep.endpoint_id, direction, peer, d))
                    continue
                judged_sni = True
                rule = sni_decide(l7.peer_rules, peer, sni)
                steps.append(Step(ep.endpoint_id, direction, peer, d, rule is not None, rule))
                if rule is None:
                    named = f"server name {sni!r}" if sni is not None else "a connection without a TLS server name"
                    reason = f"{where}: proxy on port {d.proxy_port} closes the connection, no serverNames rule admits {named}"
                    if l7.shadowed:
                        reason += (
                            f" (HTTP rules on port {dport} admit nothing: serverNames on the same port make it a TLS SNI"
                            f" listener, which cannot read HTTP: {', '.join(map(str, l7.shadowed))})"
                        )
                    rules = tuple(str(r) for r in d.entry.rules) if d.entry else ()
                    return TraceResult("denied", "l7", reason, rules, src_id, dst_id, tuple(steps), redirected)
                continue
            if http is None:
                steps.append(Step(ep.endpoint_id, direction, peer, d))
                continue
            # The proxy judges (and forwards) the normalized path, as Envoy does.
            try:
                seen = replace(http, path=normalize_path(http.path))
            except PathRejected as exc:
                steps.append(Step(ep.endpoint_id, direction, peer, d, False))
                reason = f"{where}: proxy on port {d.proxy_port} answers 400: {exc}"
                return TraceResult("denied", "l7", reason, (), src_id, dst_id, tuple(steps), redirected, 400)
            rule = l7_decide(l7.peer_rules, peer, seen) if l7 is not None else None
            steps.append(Step(ep.endpoint_id, direction, peer, d, rule is not None, rule))
            if rule is None:
                shown = http.path if seen.path == http.path else f"{http.path} (normalized: {seen.path})"
                reason = f"{where}: proxy on port {d.proxy_port} answers 403, no HTTP rule matches {http.method} {shown}"
                rules = tuple(str(r) for r in d.entry.rules) if d.entry else ()
                return TraceResult("denied", "l7", reason, rules, src_id, dst_id, tuple(steps), redirected, 403)
        else:
            steps.append(Step(ep.endpoint_id, direction, peer, d))
    rules: list[str] = []
    for s in steps:
        if s.l7_rule is not None:
            rules.extend(str(r) for r in s.l7_rule.rules)
        elif s.decision.entry is not None:
            rules.extend(str(r) for r in s.decision.entry.rules)
    rules = list(dict.fromkeys(rules))
    layer = "l7" if redirected and (http is not None or judged_sni or judged_dns) else "l3l4"
    if judged_dns:
        reason = f"allowed: a DNS rule admits {canonical(dns_name or '')} (the proxy forwards the query)"
    elif dns_unjudged:
        reason = "allowed at L3/L4 and redirected to the DNS proxy: its DNS rules decide (give --dns-name)"
    elif judged_sni and http is None:
        named = f"server name {sni!r}" if sni is not None else "a connection without a TLS server name"
        reason = f"allowed: a serverNames rule admits {named}"
    elif redirected and http is None:
        reason = "allowed at L3/L4 and redirected to the proxy: L7 rules decide (give --method/--path, or --sni on a serverNames port)"
    elif redirected:
        reason = f"allowed: {http.method} {http.path} matches an HTTP rule"
    elif rules:
        reason = "allowed by policy"
    else:
        reason = "allowed: no policy enforces this direction"
    return TraceResult("allowed", layer, reason, tuple(rules), src_id, dst_id, tuple(steps), redirected)


def parse_party(spec: str) -> tuple[str, Any]:
    """CLI SPEC -> ("labels", {k: v}) | ("ip", IPv4Address | IPv6Address) | ("entity", name)."""
    kind, sep, rest = spec.partition(":")
    if not sep:
        raise TraceInputError(f"bad SPEC {spec!r}: expected labels:k=v,..., ip:ADDRESS or entity:NAME")
    if kind == "labels":
        labels: dict[str, str] = {}
        for item in filter(None, (x.strip() for x in rest.split(","))):
            k, eq, v = item.partition("=")
            if not eq or not k:
                raise TraceInputError(f"bad label {item!r} in {spec!r}: expected key=value")
            labels[k] = v
        if not labels:
            raise TraceInputError(f"bad SPEC {spec!r}: no labels")
        return "labels", labels
    if kind == "ip":
        try:
            return "ip", ip_address(rest.strip())
        except ValueError:
            raise TraceInputError(f"bad address in {spec!r}: expected an IPv4 or IPv6 address") from None
    if kind == "entity":
        name = rest.strip()
        if name not in RESERVED_BY_NAME:
            raise TraceInputError(f"unknown entity {name!r}: expected one of {', '.join(RESERVED_BY_NAME)}")
        return "entity", name
    raise TraceInputError(f"bad SPEC {spec!r}: expected labels:, ip: or entity:")
