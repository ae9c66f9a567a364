"""RBAC encodings: HTTP and TLS server name (SNI) rules as permissions,
peers as principals or destination permissions, and the configs of both
RBAC filters (per route on HTTP listeners, per listener on SNI listeners).
Pure; no I/O. Every function returns the encoded *fields* of the named
message, ready to splice into its parent's field encoder.

RBAC ORs policies and the permissions within a policy, which is the Cilium
semantics of HTTP rules (see render.py's docstring for why routes could not
express it)."""

from __future__ import annotations

import re
from functools import lru_cache
from ipaddress import IPv4Network
from typing import Iterable

from envoy_data_plane.envoy.config.rbac.v3 import RbacAction

from policy import server_names
from policy.compiled import ANY_CONNECTION, Direction, HTTPRule, ReceiverRules, SNIRule
from policy.families import IPNetwork

from . import messages as pb
from .path_merge import REGEX_META, literal_alternatives
from .serialize import Encoders

RBAC_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
RBAC_PER_ROUTE_URL = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBACPerRoute"
RBAC_FILTER = "envoy.filters.http.rbac"
# A second RBAC filter on egress listeners: the local receivers' ingress HTTP
# rules (policy.compiled.ReceiverRules). Two filters in a row AND their verdicts.
RECEIVER_RBAC_FILTER = "ciliate.receiver_ingress_rbac"

_ALLOW = pb.RbacRules.action(RbacAction.ALLOW)
# The listener-level config: ALLOW with no policy allows nothing, so a route
# without its own per-route RBAC fails closed.
DENY_ALL = pb.RbacFilter.rules(_ALLOW)
_ANY_PERMISSION = pb.Permission.any(True)
_ANYONE = pb.Policy.principals(pb.Principal.any(True))


def cidr(net: IPNetwork) -> bytes:
    """core.v3.CidrRange (either family: Envoy matches an address only against ranges of its own)."""
    return pb.CidrRange.address_prefix(str(net.network_address)) + pb.CidrRange.prefix_len(net.prefixlen)


def _header_matcher(name: str, *, regex: str | None = None, exact: str | None = None) -> bytes:
    # Envoy's safe_regex matches the whole value, as Cilium's HTTP rules require.
    if regex is not None:
        match = pb.HeaderMatcher.string_match(pb.StringMatcher.safe_regex(pb.RegexMatcher.regex(regex)))
    elif exact is not None:
        match = pb.HeaderMatcher.string_match(pb.StringMatcher.exact(exact))
    else:
        match = pb.HeaderMatcher.present_match(True)
    return pb.HeaderMatcher.name(name) + match


@lru_cache(maxsize=1 << 14)
def _header(name: str, *, regex: str | None = None, exact: str | None = None) -> bytes:
    # Cached: most rules share their method, host and header matchers.
    return pb.Permission.header(_header_matcher(name, regex=regex, exact=exact))


def _anything_but(value: str) -> str:
    """An RE2 regex full-matching every header value except `value`: it
    differs at some byte, or is a proper prefix of it, or goes on past it.
    Envoy runs RE2 on bytes (`.` matches one byte of a UTF-8 `é`, measured
    on 1.40), so the value is spelt byte by byte. Nested rather than one
    alternative per prefix, so it grows linearly."""
    out = ".+"
    for byte in reversed(value.encode()):
        b = f"\\x{{{byte:02x}}}"
        out = f"(?:|[^{b}].*|{b}{out})"
    return out


@lru_cache(maxsize=1 << 14)
def _every_value_is(name: str, value: str) -> tuple[bytes, bytes]:
    """Permissions to AND: the header is present and every value it carries
    equals `value`. Envoy's HeaderMatcher passes a header sent on several
    lines when any one line matches (measured on 1.40): an exact matcher
    alone let `X-Token: other` + `X-Token: secret` through, and the upstream
    saw both. The second permission refuses a request where any line differs."""
    return _header(name, exact=value), pb.Permission.not_rule(_header(name, regex=_anything_but(value)))


def _any_of(perms: Iterable[bytes]) -> bytes:
    return pb.Permission.or_rules(*map(pb.PermissionSet.rules, perms))


def _all_of(perms: Iterable[bytes]) -> bytes:
    return pb.Permission.and_rules(*map(pb.PermissionSet.rules, perms))


def http_permission(rule: HTTPRule) -> bytes:
    """rbac.v3.Permission for one HTTP rule: its method, path, host and
    headers ANDed; literal values become exact matchers (no regex for Envoy
    to compile)."""
    perms: list[bytes] = []
    if rule.method is not None:
        literals = literal_alternatives(rule.method)
        if literals is None:
            perms.append(_header(":method", regex=rule.method))
        elif len(literals) == 1:
            perms.append(_header(":method", exact=literals[0]))
        else:
            perms.append(_any_of(_header(":method", exact=x) for x in literals))
    for name, regex in ((":path", rule.path), (":authority", rule.host)):
        if regex is None:
            continue
        if REGEX_META.search(regex) is None:
            perms.append(_header(name, exact=regex))  # a regex without metacharacters is its own literal
        else:
            perms.append(_header(name, regex=regex))
    for h in rule.headers:
        perms.extend(_every_value_is(h.name, h.value) if h.value is not None else (_header(h.name),))
    if not perms:
        return _ANY_PERMISSION
    return _all_of(perms)


def source_principal(net: IPNetwork, holes: list[IPNetwork]) -> bytes:
    """rbac.v3.Principal: the downstream source is in `net` but in none of `holes`."""
    base = pb.Principal.direct_remote_ip(cidr(net))
    if not holes:
        return base
    excluded = pb.Principal.or_ids(*(pb.PrincipalSet.ids(pb.Principal.direct_remote_ip(cidr(h))) for h in holes))
    return pb.Principal.and_ids(pb.PrincipalSet.ids(base), pb.PrincipalSet.ids(pb.Principal.not_id(excluded)))


def destination_permission(net: IPNetwork, holes: list[IPNetwork]) -> bytes:
    """rbac.v3.Permission: the original destination is in `net` but in none of `holes`."""
    base = pb.Permission.destination_ip(cidr(net))
    if not holes:
        return base
    excluded = _any_of(pb.Permission.destination_ip(cidr(h)) for h in holes)
    return _all_of((base, pb.Permission.not_rule(excluded)))


def peer_policy(perms: list[bytes], peers: list[bytes] | None, direction: Direction) -> bytes:
    """rbac.v3.Policy for every HTTP rule sharing one peer set: a policy's
    permissions are ORed, so the peers' addresses are written (and built by
    Envoy) once per peer set, not once per rule. `peers`: the address
    matchers (principals for INGRESS, destination permissions for EGRESS);
    None for any peer."""
    if peers is None:
        return b"".join(map(pb.Policy.permissions, perms)) + _ANYONE
    if direction == Direction.INGRESS:
        principal = pb.Principal.or_ids(*map(pb.PrincipalSet.ids, peers))
        return b"".join(map(pb.Policy.permissions, perms)) + pb.Policy.principals(principal)
    # Egress: the peer is the destination, ANDed with any of the HTTP rules.
    return pb.Policy.permissions(_all_of((_any_of(perms), _any_of(peers)))) + _ANYONE


# Policy audit mode: the real rules are shadow rules (evaluated and reported,
# never enforced) and this one admits every request. Envoy writes the shadow
# verdict into the request's dynamic metadata (namespace RBAC_FILTER, keys
# SHADOW_RESULT_KEY / SHADOW_POLICY_KEY, prefixed by the filter's
# shadow_rules_stat_prefix), which the gRPC access log carries.
AUDIT_ALLOW_ALL = "audit-allow-all"
SHADOW_RESULT_KEY = "shadow_engine_result"
SHADOW_POLICY_KEY = "shadow_effective_policy_id"
SHADOW_DENIED = "denied"
# The receiver filter's shadow keys get this prefix, so the two filters'
# verdicts do not overwrite each other in the shared namespace.
RECEIVER_SHADOW_PREFIX = "receiver_"


def per_route(policies: Iterable[tuple[str, bytes]], audit: bool = False) -> bytes:
    """RBACPerRoute: ALLOW a request that one of the named policies matches;
    with `audit`, ALLOW every request and judge it by those policies as shadow rules."""
    return pb.RbacPerRoute.rbac(rbac_rules(policies, audit))


def rbac_rules(policies: Iterable[tuple[str, bytes]], audit: bool = False, config: Encoders = pb.RbacFilter) -> bytes:
    """The `rules` (and in audit, `shadow_rules`) of an RBAC filter config:
    the HTTP filter's (RbacFilter) or the network filter's (NetworkRbac),
    which name these fields alike."""
    rules = pb.RbacRules.action(RbacAction.ALLOW) + b"".join(pb.RbacRules.policies(k, v) for k, v in policies)
    if not audit:
        return config.rules(rules)
    allow_all = config.rules(_ALLOW, pb.RbacRules.policies(AUDIT_ALLOW_ALL, pb.Policy.permissions(_ANY_PERMISSION) + _ANYONE))
    return allow_all + config.shadow_rules(rules)


def any_permission() -> bytes:
    """rbac.v3.Permission matching everything."""
    return _ANY_PERMISSION


def sni_permission(rule: SNIRule) -> bytes:
    """rbac.v3.Permission for one serverNames rule: the TLS server name the
    listener's tls_inspector read is one of the rule's names (exact, any
    case) or wildcards (policy/server_names.py: `*.` one label, `**.` one or
    more, as a case-insensitive RE2 full match). ANY_CONNECTION: anything,
    TLS or not. A connection without SNI matches no name."""
    if rule == ANY_CONNECTION:
        return _ANY_PERMISSION
    perms = []
    for name in rule.server_names:
        kind, suffix = server_names.split(name)
        if kind == server_names.Wildcard.NONE:
            match = pb.StringMatcher.exact(name) + pb.StringMatcher.ignore_case(True)
        else:
            labels = r"[^.]+" if kind == server_names.Wildcard.ONE_LABEL else r"[^.]+(?:\.[^.]+)*"
            match = pb.StringMatcher.safe_regex(pb.RegexMatcher.regex(f"(?i){labels}\\.{re.escape(suffix)}"))
        perms.append(pb.Permission.requested_server_name(match))
    return perms[0] if len(perms) == 1 else _any_of(perms)


def receiver_per_route(
    receivers: tuple[ReceiverRules, ...],
    perms: dict[int, list[bytes]],
    audited: frozenset[int] = frozenset(),
) -> bytes:
    return pb.RbacPerRoute.rbac(receiver_rules(receivers, perms, audited))


def receiver_rules(
    receivers: tuple[ReceiverRules, ...],
    perms: dict[int, list[bytes]],
    audited: frozenset[int] = frozenset(),
    config: Encoders = pb.RbacFilter,
) -> bytes:
    """Rules of RECEIVER_RBAC_FILTER (RBACPerRoute on HTTP listeners, the
    network filter's config on SNI listeners: `config`): a request (a
    connection) to a receiver with ingress L7 rules for this sender must
    match one of them (`perms`, by
    endpoint id; a receiver absent from it admits no request from this
    sender: 403); a request to any other destination passes this filter (the
    sender's own rules still apply in the filter before). `audited`:
    receivers in audit mode, every request to them passes and the real rules
    run as shadow rules that report what they would have denied.

    The sender's own audit mode never reaches this filter: audit relaxes only
    the audited endpoint's own rules, and these are the receivers'."""
    if receivers:
        addresses = (pb.Permission.destination_ip(cidr(IPv4Network(r.ipv4))) for r in receivers)
        others = pb.Permission.not_rule(_any_of(addresses))
    else:
        others = _ANY_PERMISSION
    policies = [("other-destinations", pb.Policy.permissions(others) + _ANYONE)]
    for r in receivers:
        got = perms.get(r.endpoint_id)
        if got is None:
            continue
        dest = pb.Permission.destination_ip(cidr(IPv4Network(r.ipv4)))
        policies.append((f"receiver-{r.endpoint_id}", pb.Policy.permissions(_all_of((dest, _any_of(got)))) + _ANYONE))
    audited_here = [r for r in receivers if r.endpoint_id in audited]
    if not audited_here:
        return rbac_rules(policies, config=config)
    # Some receivers audit: requests to them pass, the rest is enforced; the
    # shadow rules are the real ones, so the access log tells what they denied.
    passes = [(f"audit-receiver-{r.endpoint_id}", pb.Policy.permissions(pb.Permission.destination_ip(cidr(IPv4Network(r.ipv4)))) + _ANYONE) for r in audited_here]
    enforced = config.rules(_ALLOW, *(pb.RbacRules.policies(k, v) for k, v in policies + passes))
    shadow = config.shadow_rules(_ALLOW, *(pb.RbacRules.policies(k, v) for k, v in policies))
    return enforced + shadow
