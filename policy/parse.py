"""Parse one policy document (a dict) into a validated `Policy`.

Accepts cilium.io/v2 CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy
and networking.k8s.io/v1 NetworkPolicy. Every problem becomes a PolicyError
with its field path; parsing goes on after an error so one run reports all
of a document's problems. Unsupported Cilium fields and unknown fields are
errors, never ignored. Regexes are checked with RE2 (what Envoy runs). Pure.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import AddressValueError, IPv4Network, NetmaskValueError, ip_network
from typing import Any

import re2

from policy.compiled import ALL_PORTS, Direction, HeaderMatch, HTTPRule, PortRange, Protocol, RuleRef
from policy.endpoint import NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX, DEFAULT_NAMESPACE, strip_source
from policy.errors import PolicyError, PolicyErrors
from policy.labels import selector_key_problem, value_problem
from policy.model import (
    ENTITIES,
    KIND_CCNP,
    KIND_CNP,
    KIND_NP,
    AnyPeer,
    CIDRPeer,
    EndpointPeer,
    EntityPeer,
    Peer,
    Policy,
    PolicySpec,
    PortRule,
    PortSpec,
    Rule,
)
from policy.selector import LabelSelector, Requirement

API_CILIUM = "cilium.io/v2"
API_NETWORKING = "networking.k8s.io/v1"
KINDS = {KIND_CNP: API_CILIUM, KIND_CCNP: API_CILIUM, KIND_NP: API_NETWORKING}

# A label key longer than this is cut in field paths (the reason says how long it is).
_KEY_IN_PATH = 80

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # errors are reported as PolicyErrors, not on stderr

# Cilium fields we know and deliberately do not implement: an explicit error.
_UNSUPPORTED_RULE = {
    "nodeSelector": "node policies",
}
_UNSUPPORTED_PEER = {
    "fromRequires": "fromRequires",
    "toRequires": "toRequires",
    "fromGroups": "fromGroups",
    "toGroups": "toGroups",
    "fromNodes": "fromNodes",
    "toNodes": "toNodes",
    "toServices": "toServices",
    "toFQDNs": "toFQDNs (DNS-based policy)",
    "icmps": "ICMP rules (icmps)",
    "authentication": "mutual authentication",
}
_UNSUPPORTED_PORTRULE = {
    "terminatingTLS": "TLS termination",
    "originatingTLS": "TLS origination",
    "serverNames": "serverNames (SNI)",
    "listener": "custom Envoy listeners",
}
_UNSUPPORTED_L7 = {
    "kafka": "Kafka L7 rules",
    "dns": "DNS L7 rules",
    "l7proto": "generic L7 parsers (l7proto)",
    "l7": "generic L7 rules",
}


class _Ctx:
    def __init__(self, source: str, doc: int | None) -> None:
        self.source = source
        self.doc = doc
        self.errors: list[PolicyError] = []

    def err(self, path: str, reason: str) -> None:
        self.errors.append(PolicyError(self.source, self.doc, path, reason))


def _type_name(v: object) -> str:
    if v is None:
        return "null"
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean", int: "a number", float: "a number"}.get(
        type(v), type(v).__name__
    )


def _map(ctx: _Ctx, v: Any, path: str) -> dict | None:
    if not isinstance(v, dict):
        ctx.err(path, f"must be a mapping, got {_type_name(v)}")
        return None
    bad = [k for k in v if not isinstance(k, str)]
    if bad:
        ctx.err(path, f"keys must be strings, got {bad[0]!r}")
        return None
    return v


def _list(ctx: _Ctx, v: Any, path: str) -> list | None:
    if not isinstance(v, list):
        ctx.err(path, f"must be a list, got {_type_name(v)}")
        return None
    return v


def _str(ctx: _Ctx, v: Any, path: str) -> str | None:
    if not isinstance(v, str):
        ctx.err(path, f"must be a string, got {_type_name(v)}")
        return None
    return v


def _check_fields(
    ctx: _Ctx, m: dict, path: str, known: set[str], unsupported: dict[str, str] | None = None, ignored: frozenset[str] = frozenset()
) -> None:
    for k in m:
        sub = f"{path}.{k}" if path else k
        if unsupported and k in unsupported:
            ctx.err(sub, f"not supported: {unsupported[k]}")
        elif k not in known and k not in ignored:
            ctx.err(sub, "unknown field")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def compile_regex(pattern: str) -> str | None:
    """None if RE2 accepts the pattern, else RE2's reason."""
    try:
        re2.compile(pattern, options=_RE2_OPTIONS)
    except Exception as e:  # re2.error carries bytes
        msg = e.args[0] if e.args else str(e)
        if isinstance(msg, bytes):
            msg = msg.decode(errors="replace")
        return f"invalid RE2 regex {pattern!r}: {msg}"
    return None


# ---------------------------------------------------------------- selectors


def _selector(ctx: _Ctx, v: Any, path: str, key_map: Callable[[str], str] = strip_source) -> LabelSelector | None:
    m = _map(ctx, v, path)
    if m is None:
        return None
    _check_fields(ctx, m, path, {"matchLabels", "matchExpressions"})
    reqs: list[Requirement] = []
    ok = True
    if "matchLabels" in m:
        ml = _map(ctx, m["matchLabels"], _join(path, "matchLabels"))
        if ml is None:
            ok = False
        else:
            for k, val in ml.items():
                p = f"{path}.matchLabels.{k if len(k) <= _KEY_IN_PATH else k[:_KEY_IN_PATH] + '...'}"
                if isinstance(val, bool) or val is None or not isinstance(val, str):
                    ctx.err(p, f"label value must be a string, got {_type_name(val)}")
                    ok = False
                    continue
                if not k or not strip_source(k):
                    ctx.err(p, "label key must not be empty")
                    ok = False
                    continue
                problem = selector_key_problem(k) or value_problem(val)
                if problem:
                    ctx.err(p, problem)
                    ok = False
                    continue
                reqs.append(Requirement(key_map(k), "In", (val,)))
    if "matchExpressions" in m:
        mp = _join(path, "matchExpressions")
        exprs = _list(ctx, m["matchExpressions"], mp)
        if exprs is None:
            ok = False
        else:
            for i, e in enumerate(exprs):
                ep = f"{mp}[{i}]"
                em = _map(ctx, e, ep)
                if em is None:
                    ok = False
                    continue
                _check_fields(ctx, em, ep, {"key", "operator", "values"})
                key = _str(ctx, em.get("key"), f"{ep}.key") if "key" in em else None
                if "key" not in em:
                    ctx.err(f"{ep}.key", "required")
                op = em.get("operator")
                if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
                    ctx.err(f"{ep}.operator", f"unknown operator {op!r}: expected In, NotIn, Exists or DoesNotExist")
                    ok = False
                    continue
                values: list[str] = []
                if "values" in em:
                    vl = _list(ctx, em["values"], f"{ep}.values")
                    if vl is None:
                        ok = False
                        continue
                    for j, x in enumerate(vl):
                        if not isinstance(x, str):
                            ctx.err(f"{ep}.values[{j}]", f"must be a string, got {_type_name(x)}")
                            ok = False
                        elif problem := value_problem(x):
                            ctx.err(f"{ep}.values[{j}]", problem)
                            ok = False
                        else:
                            values.append(x)
                if op in ("In", "NotIn") and not values:
                    ctx.err(f"{ep}.values", f"operator {op} needs at least one value")
                    ok = False
                if op in ("Exists", "DoesNotExist") and values:
                    ctx.err(f"{ep}.values", f"operator {op} takes no values")
                    ok = False
                if key is None or not strip_source(key):
                    if key is not None:
                        ctx.err(f"{ep}.key", "label key must not be empty")
                    ok = False
                    continue
                if problem := selector_key_problem(key):
                    ctx.err(f"{ep}.key", problem)
                    ok = False
                    continue
                reqs.append(Requirement(key_map(key), op, tuple(sorted(set(values)))))
    return LabelSelector.of(reqs) if ok else None


def _reserved_selector(ctx: _Ctx, v: Any, path: str) -> Peer | None | bool:
    """A Cilium selector on a reserved label ("reserved:host": "") names an
    entity. False: not such a selector; None: an invalid one (reported)."""
    if not isinstance(v, dict) or not isinstance(v.get("matchLabels"), dict):
        return False
    keys = [k for k in v["matchLabels"] if isinstance(k, str) and k.startswith("reserved:")]
    if not keys:
        return False
    if len(v["matchLabels"]) != 1 or set(v) != {"matchLabels"}:
        ctx.err(f"{path}.matchLabels.{keys[0]}", "not supported: reserved labels combined with other labels (use fromEntities/toEntities)")
        return None
    name = keys[0].partition(":")[2]
    if name not in ENTITIES or name in ("all", "cluster"):
        ctx.err(f"{path}.matchLabels.{keys[0]}", f"unknown reserved label {name!r}")
        return None
    return EntityPeer(name)


def _in_namespace(ns: str) -> LabelSelector:
    return LabelSelector.of([Requirement(NAMESPACE_LABEL, "In", (ns,))])


def _namespace_key(key: str) -> str:
    key = strip_source(key)
    if key == "kubernetes.io/metadata.name":
        return NAMESPACE_LABEL
    return NAMESPACE_LABELS_PREFIX + key


# ---------------------------------------------------------------- CIDRs


def _cidr(ctx: _Ctx, v: Any, path: str) -> IPv4Network | None:
    s = _str(ctx, v, path)
    if s is None:
        return None
    try:
        net = ip_network(s.strip(), strict=True)
    except (ValueError, AddressValueError, NetmaskValueError) as e:
        ctx.err(path, f"invalid CIDR {s!r}: {e}")
        return None
    if not isinstance(net, IPv4Network):
        ctx.err(path, f"not supported: IPv6 CIDR {s!r}")
        return None
    return net


def _cidr_with_except(ctx: _Ctx, cidr_v: Any, exc_v: Any, path: str, cidr_key: str, exc_key: str) -> CIDRPeer | None:
    net = _cidr(ctx, cidr_v, _join(path, cidr_key))
    excepts: list[IPv4Network] = []
    ok = net is not None
    if exc_v is not None:
        ep = _join(path, exc_key)
        lst = _list(ctx, exc_v, ep)
        if lst is None:
            return None
        for i, x in enumerate(lst):
            e = _cidr(ctx, x, f"{ep}[{i}]")
            if e is None:
                ok = False
                continue
            if net is not None and not e.subnet_of(net):
                ctx.err(f"{ep}[{i}]", f"{e} is not inside {net}")
                ok = False
                continue
            excepts.append(e)
    if not ok or net is None:
        return None
    return CIDRPeer(net, tuple(sorted(set(excepts))))


# ---------------------------------------------------------------- ports


def _port_number(ctx: _Ctx, v: Any, path: str) -> int | None:
    if isinstance(v, bool):
        ctx.err(path, f"must be a port number, got {_type_name(v)}")
        return None
    if isinstance(v, str):
        if not v.strip().isdigit():
            ctx.err(path, f"not supported: named port {v!r} (use a number)")
            return None
        v = int(v.strip())
    if not isinstance(v, int):
        ctx.err(path, f"must be a port number, got {_type_name(v)}")
        return None
    if not 0 <= v <= 65535:
        ctx.err(path, f"port {v} out of range 0-65535")
        return None
    return v


def _protocol(ctx: _Ctx, v: Any, path: str, allow_any: bool) -> Protocol | None:
    if not isinstance(v, str):
        ctx.err(path, f"must be a string, got {_type_name(v)}")
        return None
    up = v.upper()
    if up == "SCTP":
        ctx.err(path, "not supported: protocol SCTP")
        return None
    allowed = {"TCP": Protocol.TCP, "UDP": Protocol.UDP}
    if allow_any:
        allowed["ANY"] = Protocol.ANY
    if up not in allowed:
        ctx.err(path, f"unknown protocol {v!r}: expected {', '.join(allowed)}")
        return None
    return allowed[up]


def _port_spec(
    ctx: _Ctx, m: dict, path: str, default_proto: Protocol, allow_any: bool
) -> tuple[PortSpec, bool] | None:
    """-> (spec, single_port). Port 0 or missing means all ports."""
    proto = default_proto
    if "protocol" in m:
        p = _protocol(ctx, m["protocol"], _join(path, "protocol"), allow_any)
        if p is None:
            return None
        proto = p
    port = _port_number(ctx, m["port"], _join(path, "port")) if "port" in m and m["port"] is not None else 0
    if port is None:
        return None
    end = None
    if "endPort" in m and m["endPort"] is not None:
        end = _port_number(ctx, m["endPort"], _join(path, "endPort"))
        if end is None:
            return None
        if port == 0:
            ctx.err(_join(path, "endPort"), "endPort needs a port")
            return None
        if end < port:
            ctx.err(_join(path, "endPort"), f"endPort {end} is below port {port}")
            return None
    if port == 0:
        return PortSpec(proto, ALL_PORTS), False
    hi = end if end is not None else port
    return PortSpec(proto, PortRange(port, hi)), hi == port


# ---------------------------------------------------------------- HTTP


def _http_rule(ctx: _Ctx, v: Any, path: str) -> HTTPRule | None:
    m = _map(ctx, v, path)
    if m is None:
        return None
    _check_fields(ctx, m, path, {"method", "path", "host", "headers", "headerMatches"})
    ok = True
    fields: dict[str, str | None] = {}
    for name in ("method", "path", "host"):
        if name not in m or m[name] is None:
            fields[name] = None
            continue
        s = _str(ctx, m[name], f"{path}.{name}")
        if s is None:
            ok = False
            continue
        why = compile_regex(s)
        if why:
            ctx.err(f"{path}.{name}", why)
            ok = False
            continue
        # An empty pattern is Cilium's "not set".
        fields[name] = s or None
    headers: list[HeaderMatch] = []
    if "headers" in m and m["headers"] is not None:
        hl = _list(ctx, m["headers"], f"{path}.headers")
        if hl is None:
            ok = False
        else:
            for i, h in enumerate(hl):
                s = _str(ctx, h, f"{path}.headers[{i}]")
                if s is None:
                    ok = False
                    continue
                name, sep, value = s.partition(":")
                name = name.strip()
                if not name or any(c.isspace() for c in name):
                    ctx.err(f"{path}.headers[{i}]", f"bad header {s!r}: expected 'Name' or 'Name: value'")
                    ok = False
                    continue
                headers.append(HeaderMatch(name.lower(), value.strip() if sep else None))
    if "headerMatches" in m and m["headerMatches"] is not None:
        hp = f"{path}.headerMatches"
        hl = _list(ctx, m["headerMatches"], hp)
        if hl is None:
            ok = False
        else:
            for i, h in enumerate(hl):
                hm = _map(ctx, h, f"{hp}[{i}]")
                if hm is None:
                    ok = False
                    continue
                _check_fields(
                    ctx,
                    hm,
                    f"{hp}[{i}]",
                    {"name", "value"},
                    {"mismatch": "headerMatches mismatch actions", "secret": "secret header values"},
                )
                if "mismatch" in hm or "secret" in hm:
                    ok = False
                name = _str(ctx, hm.get("name"), f"{hp}[{i}].name")
                value = hm.get("value")
                if value is not None and _str(ctx, value, f"{hp}[{i}].value") is None:
                    ok = False
                    continue
                if not name or any(c.isspace() for c in name):
                    if name is not None:
                        ctx.err(f"{hp}[{i}].name", "header name must be a non-empty token")
                    ok = False
                    continue
                headers.append(HeaderMatch(name.lower(), value if value else None))
    if not ok:
        return None
    return HTTPRule(fields["method"], fields["path"], fields["host"], tuple(sorted(set(headers), key=lambda h: (h.name, h.value or ""))))


# ---------------------------------------------------------------- Cilium rules


def _cilium_port_rules(ctx: _Ctx, v: Any, path: str, deny: bool) -> tuple[PortRule, ...] | None:
    lst = _list(ctx, v, path)
    if lst is None:
        return None
    out: list[PortRule] = []
    ok = True
    for i, item in enumerate(lst):
        ip = f"{path}[{i}]"
        m = _map(ctx, item, ip)
        if m is None:
            ok = False
            continue
        _check_fields(ctx, m, ip, {"ports", "rules"}, _UNSUPPORTED_PORTRULE)
        if any(k in m for k in _UNSUPPORTED_PORTRULE):
            ok = False
        specs: list[tuple[PortSpec, bool, str]] = []
        if "ports" in m and m["ports"] is not None:
            pl = _list(ctx, m["ports"], f"{ip}.ports")
            if pl is None:
                ok = False
            else:
                for j, p in enumerate(pl):
                    pp = f"{ip}.ports[{j}]"
                    pm = _map(ctx, p, pp)
                    if pm is None:
                        ok = False
                        continue
                    _check_fields(ctx, pm, pp, {"port", "endPort", "protocol"})
                    r = _port_spec(ctx, pm, pp, Protocol.ANY, allow_any=True)
                    if r is None:
                        ok = False
                        continue
                    specs.append((r[0], r[1], pp))
        if not specs:
            specs.append((PortSpec(Protocol.ANY, ALL_PORTS), False, f"{ip}.ports"))
        http: tuple[HTTPRule, ...] | None = None
        if "rules" in m and m["rules"] is not None:
            rp = f"{ip}.rules"
            if deny:
                ctx.err(rp, "L7 rules are not allowed in deny rules")
                ok = False
            rm = _map(ctx, m["rules"], rp)
            if rm is None:
                ok = False
            else:
                _check_fields(ctx, rm, rp, {"http"}, _UNSUPPORTED_L7)
                if any(k in rm for k in _UNSUPPORTED_L7):
                    ok = False
                if "http" in rm and rm["http"] is not None:
                    hl = _list(ctx, rm["http"], f"{rp}.http")
                    if hl is None:
                        ok = False
                    else:
                        rules = []
                        for k, h in enumerate(hl):
                            r = _http_rule(ctx, h, f"{rp}.http[{k}]")
                            if r is None:
                                ok = False
                            else:
                                rules.append(r)
                        if hl:
                            http = tuple(dict.fromkeys(rules))
                            for spec, single, pp in specs:
                                if spec.protocol == Protocol.UDP:
                                    ctx.err(_join(pp, "protocol"), "HTTP rules need TCP, got UDP")
                                    ok = False
                                elif not single:
                                    what = "a port range (endPort)" if not spec.ports.is_all else "all ports"
                                    ctx.err(pp, f"HTTP rules need a single port, got {what}")
                                    ok = False
        out.append(PortRule(tuple(s for s, _, _ in specs), http))
    return tuple(out) if ok else None


def _cilium_rule(
    ctx: _Ctx,
    v: Any,
    path: str,
    direction: Direction,
    deny: bool,
    namespace: str | None,
    kind: str,
    policy_ref: str,
) -> Rule | None:
    m = _map(ctx, v, path)
    if m is None:
        return None
    pre = "from" if direction == Direction.INGRESS else "to"
    known = {f"{pre}Endpoints", f"{pre}CIDR", f"{pre}CIDRSet", f"{pre}Entities", "toPorts"}
    unsupported = {k: r for k, r in _UNSUPPORTED_PEER.items() if k.startswith(pre) or k in ("icmps", "authentication")}
    # A field of the other direction gets its own clear message.
    other = "to" if pre == "from" else "from"
    for k in list(m):
        if k.startswith(other) and k != "toPorts" and (k not in unsupported):
            ctx.err(_join(path, k), f"unknown field ({k} belongs to {'egress' if other == 'to' else 'ingress'} rules)")
    _check_fields(
        ctx, {k: m[k] for k in m if not (k.startswith(other) and k != "toPorts")}, path, known, unsupported
    )
    ok = not any(k in m for k in unsupported)
    peers: list[Peer] = []
    ep_key = f"{pre}Endpoints"
    if m.get(ep_key) is not None:
        lst = _list(ctx, m[ep_key], _join(path, ep_key))
        if lst is None:
            ok = False
        else:
            for i, s in enumerate(lst):
                reserved = _reserved_selector(ctx, s, f"{path}.{ep_key}[{i}]")
                if reserved is not False:
                    if reserved is None:
                        ok = False
                    else:
                        peers.append(reserved)
                    continue
                sel = _selector(ctx, s, f"{path}.{ep_key}[{i}]")
                if sel is None:
                    ok = False
                    continue
                if namespace is not None and not sel.mentions(NAMESPACE_LABEL):
                    sel = sel.and_(_in_namespace(namespace))
                peers.append(EndpointPeer(sel))
    cidr_key = f"{pre}CIDR"
    if m.get(cidr_key) is not None:
        lst = _list(ctx, m[cidr_key], _join(path, cidr_key))
        if lst is None:
            ok = False
        else:
            for i, c in enumerate(lst):
                net = _cidr(ctx, c, f"{path}.{cidr_key}[{i}]")
                if net is None:
                    ok = False
                else:
                    peers.append(CIDRPeer(net))
    set_key = f"{pre}CIDRSet"
    if m.get(set_key) is not None:
        lst = _list(ctx, m[set_key], _join(path, set_key))
        if lst is None:
            ok = False
        else:
            for i, c in enumerate(lst):
                cp = f"{path}.{set_key}[{i}]"
                cm = _map(ctx, c, cp)
                if cm is None:
                    ok = False
                    continue
                _check_fields(
                    ctx,
                    cm,
                    cp,
                    {"cidr", "except"},
                    {"cidrGroupRef": "CIDR groups (cidrGroupRef)", "cidrGroupSelector": "CIDR groups (cidrGroupSelector)"},
                )
                if "cidr" not in cm:
                    ctx.err(_join(cp, "cidr"), "required")
                    ok = False
                    continue
                peer = _cidr_with_except(ctx, cm["cidr"], cm.get("except"), cp, "cidr", "except")
                if peer is None or "cidrGroupRef" in cm or "cidrGroupSelector" in cm:
                    ok = False
                else:
                    peers.append(peer)
    ent_key = f"{pre}Entities"
    if m.get(ent_key) is not None:
        lst = _list(ctx, m[ent_key], _join(path, ent_key))
        if lst is None:
            ok = False
        else:
            for i, e in enumerate(lst):
                ep = f"{path}.{ent_key}[{i}]"
                s = _str(ctx, e, ep)
                if s is None:
                    ok = False
                elif s not in ENTITIES:
                    ctx.err(ep, f"unknown entity {s!r}: expected one of {', '.join(ENTITIES)}")
                    ok = False
                else:
                    peers.append(AnyPeer() if s == "all" else EntityPeer(s))
    port_rules: tuple[PortRule, ...] = ()
    if m.get("toPorts") is not None:
        pr = _cilium_port_rules(ctx, m["toPorts"], _join(path, "toPorts"), deny)
        if pr is None:
            ok = False
        else:
            port_rules = pr
    has_peer_field = any(m.get(k) for k in (ep_key, cidr_key, set_key, ent_key))
    if not has_peer_field and port_rules:
        # Cilium: an L4-only rule applies to every peer.
        peers.append(AnyPeer())
    if not ok:
        return None
    return Rule(direction, deny, tuple(dict.fromkeys(peers)), port_rules, RuleRef(kind, policy_ref, path))


def _cilium_spec(ctx: _Ctx, v: Any, path: str, kind: str, namespace: str | None, policy_ref: str) -> PolicySpec | None:
    m = _map(ctx, v, path)
    if m is None:
        return None
    _check_fields(
        ctx,
        m,
        path,
        {"endpointSelector", "ingress", "egress", "ingressDeny", "egressDeny", "enableDefaultDeny"},
        _UNSUPPORTED_RULE,
        ignored=frozenset({"labels", "description"}),
    )
    ok = "nodeSelector" not in m
    subject: LabelSelector | None = None
    if "endpointSelector" not in m:
        if "nodeSelector" not in m:
            ctx.err(_join(path, "endpointSelector"), "required")
        ok = False
    else:
        subject = _selector(ctx, m["endpointSelector"], _join(path, "endpointSelector"))
        if subject is None:
            ok = False
        elif namespace is not None:
            subject = subject.and_(_in_namespace(namespace))
    rules: list[Rule] = []
    sections = (
        ("ingress", Direction.INGRESS, False),
        ("ingressDeny", Direction.INGRESS, True),
        ("egress", Direction.EGRESS, False),
        ("egressDeny", Direction.EGRESS, True),
    )
    has = {Direction.INGRESS: False, Direction.EGRESS: False}
    for key, direction, deny in sections:
        if m.get(key) is None:
            continue
        sp = _join(path, key)
        lst = _list(ctx, m[key], sp)
        if lst is None:
            ok = False
            continue
        if lst:
            has[direction] = True
        for i, item in enumerate(lst):
            r = _cilium_rule(ctx, item, f"{sp}[{i}]", direction, deny, namespace, kind, policy_ref)
            if r is None:
                ok = False
            else:
                rules.append(r)
    enforce = dict(has)
    if m.get("enableDefaultDeny") is not None:
        dp = _join(path, "enableDefaultDeny")
        dm = _map(ctx, m["enableDefaultDeny"], dp)
        if dm is None:
            ok = False
        else:
            _check_fields(ctx, dm, dp, {"ingress", "egress"})
            for name, direction in (("ingress", Direction.INGRESS), ("egress", Direction.EGRESS)):
                if name in dm:
                    if not isinstance(dm[name], bool):
                        ctx.err(f"{dp}.{name}", f"must be a boolean, got {_type_name(dm[name])}")
                        ok = False
                    elif not dm[name]:
                        enforce[direction] = False
    if not ok or subject is None:
        return None
    return PolicySpec(subject, tuple(rules), enforce[Direction.INGRESS], enforce[Direction.EGRESS])


# ---------------------------------------------------------------- NetworkPolicy


def _np_peer(ctx: _Ctx, v: Any, path: str, namespace: str) -> Peer | None:
    m = _map(ctx, v, path)
    if m is None:
        return None
    _check_fields(ctx, m, path, {"podSelector", "namespaceSelector", "ipBlock"})
    if "ipBlock" in m:
        if "podSelector" in m or "namespaceSelector" in m:
            ctx.err(path, "ipBlock cannot be combined with podSelector or namespaceSelector")
            return None
        bm = _map(ctx, m["ipBlock"], _join(path, "ipBlock"))
        if bm is None:
            return None
        bp = _join(path, "ipBlock")
        _check_fields(ctx, bm, bp, {"cidr", "except"})
        if "cidr" not in bm:
            ctx.err(_join(bp, "cidr"), "required")
            return None
        return _cidr_with_except(ctx, bm["cidr"], bm.get("except"), bp, "cidr", "except")
    if "podSelector" not in m and "namespaceSelector" not in m:
        ctx.err(path, "must set podSelector, namespaceSelector or ipBlock")
        return None
    sel = LabelSelector()
    ok = True
    if "podSelector" in m:
        ps = _selector(ctx, m["podSelector"], _join(path, "podSelector"))
        if ps is None:
            ok = False
        else:
            sel = sel.and_(ps)
    if "namespaceSelector" in m:
        ns = _selector(ctx, m["namespaceSelector"], _join(path, "namespaceSelector"), key_map=_namespace_key)
        if ns is None:
            ok = False
        else:
            sel = sel.and_(ns)
    else:
        sel = sel.and_(_in_namespace(namespace))
    return EndpointPeer(sel) if ok else None


def _np_ports(ctx: _Ctx, v: Any, path: str) -> tuple[PortRule, ...] | None:
    lst = _list(ctx, v, path)
    if lst is None:
        return None
    specs: list[PortSpec] = []
    ok = True
    for i, p in enumerate(lst):
        pp = f"{path}[{i}]"
        pm = _map(ctx, p, pp)
        if pm is None:
            ok = False
            continue
        _check_fields(ctx, pm, pp, {"port", "endPort", "protocol"})
        r = _port_spec(ctx, pm, pp, Protocol.TCP, allow_any=False)
        if r is None:
            ok = False
        else:
            specs.append(r[0])
    if not ok:
        return None
    return (PortRule(tuple(specs)),) if specs else ()


def _np_spec(ctx: _Ctx, v: Any, namespace: str, policy_ref: str) -> PolicySpec | None:
    m = _map(ctx, v, "spec")
    if m is None:
        return None
    _check_fields(ctx, m, "spec", {"podSelector", "policyTypes", "ingress", "egress"})
    ok = True
    subject = None
    if "podSelector" not in m:
        ctx.err("spec.podSelector", "required")
        ok = False
    else:
        subject = _selector(ctx, m["podSelector"], "spec.podSelector")
        if subject is not None:
            subject = subject.and_(_in_namespace(namespace))
    types = {"Ingress"}
    if m.get("egress") is not None:
        types.add("Egress")
    if "policyTypes" in m:
        tl = _list(ctx, m["policyTypes"], "spec.policyTypes")
        if tl is None:
            ok = False
        else:
            types = set()
            for i, t in enumerate(tl):
                if t not in ("Ingress", "Egress"):
                    ctx.err(f"spec.policyTypes[{i}]", f"unknown policy type {t!r}: expected Ingress or Egress")
                    ok = False
                else:
                    types.add(t)
    rules: list[Rule] = []
    for key, direction, peer_key in (("ingress", Direction.INGRESS, "from"), ("egress", Direction.EGRESS, "to")):
        if m.get(key) is None:
            continue
        lst = _list(ctx, m[key], f"spec.{key}")
        if lst is None:
            ok = False
            continue
        for i, item in enumerate(lst):
            ip = f"spec.{key}[{i}]"
            im = _map(ctx, item, ip)
            if im is None:
                ok = False
                continue
            _check_fields(ctx, im, ip, {peer_key, "ports"})
            peers: list[Peer] = []
            if im.get(peer_key):
                pl = _list(ctx, im[peer_key], f"{ip}.{peer_key}")
                if pl is None:
                    ok = False
                    continue
                for j, p in enumerate(pl):
                    peer = _np_peer(ctx, p, f"{ip}.{peer_key}[{j}]", namespace)
                    if peer is None:
                        ok = False
                    else:
                        peers.append(peer)
            else:
                # NetworkPolicy: a missing or empty from/to means every peer.
                peers.append(AnyPeer())
            port_rules: tuple[PortRule, ...] = ()
            if im.get("ports"):
                pr = _np_ports(ctx, im["ports"], f"{ip}.ports")
                if pr is None:
                    ok = False
                    continue
                port_rules = pr
            if key.capitalize() in types:
                rules.append(Rule(direction, False, tuple(dict.fromkeys(peers)), port_rules, RuleRef(KIND_NP, policy_ref, ip)))
    if not ok or subject is None:
        return None
    return PolicySpec(subject, tuple(rules), "Ingress" in types, "Egress" in types)


# ---------------------------------------------------------------- documents


def parse_object(obj: Any, source: str, doc: int | None = None) -> Policy:
    """One Kubernetes object -> Policy, or raise PolicyErrors listing every problem."""
    ctx = _Ctx(source, doc)
    policy = _parse(ctx, obj)
    if ctx.errors or policy is None:
        if not ctx.errors:
            ctx.err("", "invalid policy")
        raise PolicyErrors(ctx.errors)
    return policy


def _parse(ctx: _Ctx, obj: Any) -> Policy | None:
    m = _map(ctx, obj, "")
    if m is None:
        return None
    _check_fields(ctx, m, "", {"apiVersion", "kind", "metadata", "spec", "specs"}, ignored=frozenset({"status"}))
    kind = m.get("kind")
    if not isinstance(kind, str) or kind not in KINDS:
        ctx.err("kind", f"unknown kind {kind!r}: expected one of {', '.join(KINDS)}")
        return None
    api = m.get("apiVersion")
    if api != KINDS[kind]:
        ctx.err("apiVersion", f"{kind} needs apiVersion {KINDS[kind]}, got {api!r}")
    md = _map(ctx, m.get("metadata"), "metadata")
    if md is None:
        return None
    name = md.get("name")
    if not isinstance(name, str) or not name:
        ctx.err("metadata.name", "required: a non-empty string")
        return None
    namespace: str | None = None
    if kind != KIND_CCNP:
        ns = md.get("namespace", DEFAULT_NAMESPACE)
        if not isinstance(ns, str) or not ns:
            ctx.err("metadata.namespace", "must be a non-empty string")
            return None
        namespace = ns
    policy_ref = name if namespace is None else f"{namespace}/{name}"
    specs: list[PolicySpec] = []
    if kind == KIND_NP:
        if "specs" in m:
            ctx.err("specs", "unknown field")
        if "spec" not in m:
            ctx.err("spec", "required")
            return None
        s = _np_spec(ctx, m["spec"], namespace or DEFAULT_NAMESPACE, policy_ref)
        if s is None:
            return None
        specs.append(s)
    else:
        if m.get("spec") is None and m.get("specs") is None:
            ctx.err("spec", "required (spec or specs)")
            return None
        if m.get("spec") is not None:
            s = _cilium_spec(ctx, m["spec"], "spec", kind, namespace, policy_ref)
            if s is not None:
                specs.append(s)
        if m.get("specs") is not None:
            lst = _list(ctx, m["specs"], "specs")
            if lst is not None:
                for i, item in enumerate(lst):
                    s = _cilium_spec(ctx, item, f"specs[{i}]", kind, namespace, policy_ref)
                    if s is not None:
                        specs.append(s)
    if ctx.errors:
        return None
    return Policy(kind, name, namespace, tuple(specs), ctx.source, ctx.doc)
