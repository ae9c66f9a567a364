"""Property tests: loading never crashes; trace (compiled entries + lookup)
agrees with a direct reading of the policy model; incremental compile equals
a full compile after any sequence of changes."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from policy.compiled import CompiledState, Direction, Protocol, Verdict
from policy.compiler import Compiler, compile_state
from policy.endpoint import Endpoint
from policy.errors import PolicyError
from policy.identity import IDENTITY_HOST, IDENTITY_WORLD, IdentityAllocator, identity_labels, selectable_labels
from policy.load import INTERNAL_ERROR, load_text
from policy.model import AnyPeer, CIDRPeer, EndpointPeer, EntityPeer, Policy
from policy.parse import parse_object
from policy.trace import HTTPRequest, Party, trace
from ipcache_facts import assert_ipcache_facts

# POLICY_FUZZ_EXAMPLES=2000 for a deeper run; the default keeps the suite lean.
SETTINGS = settings(max_examples=int(__import__("os").environ.get("POLICY_FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- loading never crashes

json_like = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=25,
)

KEYS = ["apiVersion", "kind", "metadata", "spec", "specs", "name", "namespace", "endpointSelector", "podSelector",
        "ingress", "egress", "ingressDeny", "egressDeny", "fromEndpoints", "toEndpoints", "fromCIDR", "toCIDRSet",
        "fromEntities", "toPorts", "ports", "port", "endPort", "protocol", "rules", "http", "method", "path", "headers",
        "matchLabels", "matchExpressions", "key", "operator", "values", "from", "to", "ipBlock", "cidr", "except",
        "policyTypes", "namespaceSelector", "headerMatches", "enableDefaultDeny"]
VALUES = ["cilium.io/v2", "networking.k8s.io/v1", "CiliumNetworkPolicy", "NetworkPolicy", "CiliumClusterwideNetworkPolicy",
          "TCP", "UDP", "ANY", "80", "In", "Exists", "world", "all", "10.0.0.0/8", "(", "Ingress", ""]
policy_like = st.recursive(
    st.sampled_from(VALUES) | st.integers(-5, 70000) | st.none() | st.booleans(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=30,
)


def _check_errors(errors: list[PolicyError], source: str) -> None:
    for e in errors:
        assert e.file == source and e.reason
        assert INTERNAL_ERROR not in e.reason, str(e)
        assert str(e).startswith(source)


@SETTINGS
@given(st.text(max_size=300))
def test_loading_arbitrary_text_never_crashes(text):
    res = load_text(text, "fuzz.yaml")
    _check_errors(res.errors, "fuzz.yaml")


@SETTINGS
@given(st.one_of(json_like, policy_like))
def test_loading_arbitrary_structures_never_crashes(obj):
    text = yaml.safe_dump(obj)
    res = load_text(text, "fuzz.yaml")
    _check_errors(res.errors, "fuzz.yaml")
    assert len(res.policies) + len(res.errors) >= (0 if obj is None else 1)


@SETTINGS
@given(st.dictionaries(st.sampled_from(KEYS), policy_like, max_size=5), st.sampled_from(VALUES[2:5]))
def test_policy_shaped_objects_never_crash(spec, kind):
    api = "networking.k8s.io/v1" if kind == "NetworkPolicy" else "cilium.io/v2"
    res = load_text(yaml.safe_dump({"apiVersion": api, "kind": kind, "metadata": {"name": "f"}, "spec": spec}), "fuzz.yaml")
    _check_errors(res.errors, "fuzz.yaml")


# ---------------------------------------------------------------- random valid policies

LABEL_KEYS = ["app", "tier"]
CIDRS = ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.0.0.2/32", "192.168.0.0/16"]
ADDRESSES = ["10.1.2.3", "10.1.9.9", "10.7.0.1", "192.168.5.5", "8.8.8.8"]
LABEL_VALUES = ["a", "b", "c"]
NAMESPACES = ["default", "other"]

labels_st = st.fixed_dictionaries(
    {"app": st.sampled_from(LABEL_VALUES)},
    optional={"tier": st.sampled_from(LABEL_VALUES), "k8s:io.kubernetes.pod.namespace": st.sampled_from(NAMESPACES)},
)

requirement_st = st.one_of(
    st.builds(lambda k, vs: {"key": k, "operator": "In", "values": vs}, st.sampled_from(LABEL_KEYS),
              st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True)),
    st.builds(lambda k, vs: {"key": k, "operator": "NotIn", "values": vs}, st.sampled_from(LABEL_KEYS),
              st.lists(st.sampled_from(LABEL_VALUES), min_size=1, max_size=2, unique=True)),
    st.builds(lambda k: {"key": k, "operator": "Exists"}, st.sampled_from(LABEL_KEYS)),
    st.builds(lambda k: {"key": k, "operator": "DoesNotExist"}, st.sampled_from(LABEL_KEYS)),
)


@st.composite
def selector_st(draw: Any, allow_ns: bool = False) -> dict:
    sel: dict[str, Any] = {}
    ml = draw(st.dictionaries(st.sampled_from(LABEL_KEYS), st.sampled_from(LABEL_VALUES), max_size=1))
    if allow_ns and draw(st.booleans()):
        ml["k8s:io.kubernetes.pod.namespace"] = draw(st.sampled_from(NAMESPACES))
    if ml:
        sel["matchLabels"] = ml
    exprs = draw(st.lists(requirement_st, max_size=1))
    if exprs:
        sel["matchExpressions"] = exprs
    return sel


@st.composite
def port_rule_st(draw: Any, deny: bool) -> dict:
    port = draw(st.sampled_from([80, 81, 443]))
    proto = draw(st.sampled_from(["TCP", "UDP", "ANY"]))
    http = not deny and proto != "UDP" and draw(st.booleans())
    p: dict[str, Any] = {"port": str(port), "protocol": proto}
    if not http and draw(st.booleans()):
        p["endPort"] = port + draw(st.integers(0, 10))
    pr: dict[str, Any] = {"ports": [p]}
    if http:
        pr["rules"] = {"http": [{"method": draw(st.sampled_from(["GET", "POST"]))}]}
    return pr


@st.composite
def cilium_rule_st(draw: Any, direction: str, deny: bool) -> dict:
    pre = "from" if direction == "ingress" else "to"
    rule: dict[str, Any] = {}
    kind = draw(st.sampled_from(["endpoints", "entities", "cidr", "none"]))
    if kind == "cidr":
        cidr = draw(st.sampled_from(CIDRS))
        inside = [c for c in CIDRS if c != cidr and IPv4Network(c).subnet_of(IPv4Network(cidr))]
        excepts = draw(st.lists(st.sampled_from(inside), max_size=1)) if inside else []
        rule[f"{pre}CIDRSet"] = [{"cidr": cidr, "except": excepts}] if excepts else [{"cidr": cidr}]
    if kind == "endpoints":
        rule[f"{pre}Endpoints"] = draw(st.lists(selector_st(allow_ns=True), min_size=1, max_size=2))
    elif kind == "entities":
        rule[f"{pre}Entities"] = draw(st.lists(st.sampled_from(["all", "cluster", "host", "world"]), min_size=1, max_size=2))
    if draw(st.booleans()):
        rule["toPorts"] = draw(st.lists(port_rule_st(deny), min_size=1, max_size=2))
    return rule


@st.composite
def cnp_st(draw: Any, name: str) -> dict:
    spec: dict[str, Any] = {"endpointSelector": draw(selector_st())}
    for section, direction, deny in (("ingress", "ingress", False), ("egress", "egress", False),
                                     ("ingressDeny", "ingress", True), ("egressDeny", "egress", True)):
        if draw(st.integers(0, 2)) == 0:
            spec[section] = draw(st.lists(cilium_rule_st(direction, deny), max_size=2))
    clusterwide = draw(st.integers(0, 4)) == 0
    md: dict[str, Any] = {"name": name}
    if not clusterwide:
        md["namespace"] = draw(st.sampled_from(NAMESPACES))
    kind = "CiliumClusterwideNetworkPolicy" if clusterwide else "CiliumNetworkPolicy"
    return {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": md, "spec": spec}


@st.composite
def np_st(draw: Any, name: str) -> dict:
    spec: dict[str, Any] = {"podSelector": draw(selector_st())}
    for section, peer_key in (("ingress", "from"), ("egress", "to")):
        if draw(st.booleans()):
            rules = []
            for _ in range(draw(st.integers(0, 2))):
                r: dict[str, Any] = {}
                if draw(st.booleans()):
                    peers = []
                    for _ in range(draw(st.integers(1, 2))):
                        peer: dict[str, Any] = {"podSelector": draw(selector_st())}
                        if draw(st.booleans()):
                            peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": draw(st.sampled_from(NAMESPACES))}}
                        peers.append(peer)
                    r[peer_key] = peers
                if draw(st.booleans()):
                    r["ports"] = [{"port": draw(st.sampled_from([80, 443])), "protocol": draw(st.sampled_from(["TCP", "UDP"]))}]
                rules.append(r)
            spec[section] = rules
    if draw(st.booleans()):
        spec["policyTypes"] = draw(st.lists(st.sampled_from(["Ingress", "Egress"]), min_size=1, max_size=2, unique=True))
    ns = draw(st.sampled_from(NAMESPACES))
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns}, "spec": spec}


@st.composite
def policies_st(draw: Any, max_size: int = 4) -> list[Policy]:
    n = draw(st.integers(0, max_size))
    out = []
    for i in range(n):
        obj = draw(st.one_of(cnp_st(f"p{i}"), np_st(f"p{i}")))
        out.append(parse_object(obj, "gen.yaml"))
    return out


# ---------------------------------------------------------------- the oracle

CLUSTER_RESERVED = {1, 3, 4, 5, 6, 7, 8}


def _peer_matches(peer: Any, other: dict | int | IPv4Address) -> bool:
    if isinstance(peer, AnyPeer):
        return True
    if isinstance(other, IPv4Address):  # an address outside the cluster
        if isinstance(peer, CIDRPeer):
            return other in peer.net and not any(other in e for e in peer.excepts)
        return isinstance(peer, EntityPeer) and peer.name == "world"
    if isinstance(peer, CIDRPeer):
        return other == IDENTITY_WORLD and peer.net.prefixlen == 0
    if isinstance(peer, EndpointPeer):
        return isinstance(other, dict) and peer.selector.matches(selectable_labels(identity_labels(other)))
    assert isinstance(peer, EntityPeer)
    if peer.name == "cluster":
        return isinstance(other, dict) or other in CLUSTER_RESERVED
    if peer.name == "world":
        return other == IDENTITY_WORLD
    if peer.name == "host":
        return other == IDENTITY_HOST
    return False


def _l4_match(rule: Any, proto: Protocol, port: int) -> bool:
    """The rule allows or denies this port without L7 (empty toPorts = all)."""
    if not rule.port_rules:
        return True
    return any(
        pr.http is None and ps.protocol in (Protocol.ANY, proto) and ps.ports.contains(port)
        for pr in rule.port_rules
        for ps in pr.ports
    )


def _l7_rules(rule: Any, proto: Protocol, port: int) -> list[Any]:
    """HTTP rules this rule puts on the port (HTTP redirects TCP only)."""
    if proto != Protocol.TCP:
        return []
    return [h for pr in rule.port_rules if pr.http is not None for ps in pr.ports if ps.ports.contains(port) for h in pr.http]


def oracle_direction(
    pols: list[Policy], me: dict, direction: Direction, other: dict | int, proto: Protocol, port: int, method: str | None
) -> tuple[bool, str]:
    """(allowed, layer) read straight from the policy model, as docs/design.md states the semantics."""
    mine = selectable_labels(identity_labels(me))
    enforced = l4_allowed = denied = False
    l7: list[Any] = []
    for p in pols:
        for spec in p.specs:
            if not spec.subject.matches(mine):
                continue
            enforced |= spec.enforce_ingress if direction == Direction.INGRESS else spec.enforce_egress
            for rule in spec.rules:
                if rule.direction != direction or not any(_peer_matches(peer, other) for peer in rule.peers):
                    continue
                if _l4_match(rule, proto, port):
                    denied |= rule.deny
                    l4_allowed |= not rule.deny
                l7 += _l7_rules(rule, proto, port)
    if denied:
        return False, "l3l4"
    if l7:
        # Redirected (REDIRECT beats ALLOW); an L4 allow of the same peer admits all HTTP.
        if method is None or l4_allowed:
            return True, "l7" if method is not None else "l3l4"
        return any(h.method is None or h.method == method for h in l7), "l7"
    return l4_allowed or not enforced, "l3l4"


@SETTINGS
@given(
    policies_st(),
    labels_st,
    labels_st,
    st.sampled_from(["endpoint", "world", "host", *ADDRESSES]),
    st.sampled_from(["endpoint", *ADDRESSES]),
    st.sampled_from([Protocol.TCP, Protocol.UDP]),
    st.sampled_from([80, 81, 85, 443, 8080]),
    st.sampled_from([None, "GET", "POST", "PUT"]),
)
def test_trace_agrees_with_policy_model(pols, src_labels, dst_labels, src_kind, dst_kind, proto, port, method):
    eps = [Endpoint(1, src_labels, IPv4Address("172.16.0.1")), Endpoint(2, dst_labels, IPv4Address("172.16.0.2"))]
    state = compile_state(pols, eps, allow_localhost=False)
    http = HTTPRequest(method, "/") if method else None
    src: Any
    if src_kind == "endpoint":
        src, src_party = src_labels, Party.endpoint(1)
    elif src_kind in ("world", "host"):
        src = IDENTITY_WORLD if src_kind == "world" else IDENTITY_HOST
        src_party = Party(identity=src)
    else:
        src, src_party = IPv4Address(src_kind), Party.address(src_kind)
    if dst_kind == "endpoint" or src_kind != "endpoint":
        dst, dst_party = dst_labels, Party.endpoint(2)
    else:
        dst, dst_party = IPv4Address(dst_kind), Party.address(dst_kind)
    result = trace(state, src_party, dst_party, port, proto, http)
    steps = []
    if src_kind == "endpoint":
        steps.append(oracle_direction(pols, src_labels, Direction.EGRESS, dst, proto, port, method))
    if isinstance(dst, dict):
        steps.append(oracle_direction(pols, dst_labels, Direction.INGRESS, src, proto, port, method))
    first_denial = next((layer for ok, layer in steps if not ok), None)
    if first_denial is not None:
        assert (result.verdict, result.layer) == ("denied", first_denial), result.reason
    else:
        expected_layer = "l7" if any(layer == "l7" for _, layer in steps) else "l3l4"
        assert (result.verdict, result.layer) == ("allowed", expected_layer), result.reason


# ---------------------------------------------------------------- incremental == full


def _normalized(state: CompiledState) -> dict:
    """Endpoint policies without proxy port numbers (allocation order differs)."""
    out = {}
    for ep_id, ep in state.endpoints.items():
        entries = tuple(replace(e, proxy_port=0) for e in ep.entries)
        l7 = tuple((p.key, p.peer_rules) for p in ep.l7)
        assert all(e.proxy_port for e in ep.entries if e.verdict == Verdict.REDIRECT)
        out[ep_id] = replace(ep, entries=entries, l7=()), l7
    return out


HOST_IP = "10.1.2.3"
op_st = st.one_of(
    st.tuples(st.just("upsert_policy"), st.integers(0, 5)),
    st.tuples(st.just("delete_policy"), st.integers(0, 5)),
    st.tuples(st.just("upsert_endpoint"), st.integers(1, 4), labels_st, st.sampled_from(["10.0.0.1", "10.0.0.2", "10.1.2.0", HOST_IP])),
    st.tuples(st.just("delete_endpoint"), st.integers(1, 4)),
    st.tuples(st.just("compile")),
)


@st.composite
def narrow_cnp_st(draw: Any, name: str) -> dict:
    """CNPs selecting one app: endpoint churn then changes only their peers,
    which the compiler patches instead of re-merging."""
    obj = draw(cnp_st(name))
    obj["spec"]["endpointSelector"] = {"matchLabels": {"app": draw(st.sampled_from(LABEL_VALUES))}}
    return obj


@settings(SETTINGS, max_examples=max(10, SETTINGS.max_examples // 3))
@given(st.data(), st.booleans())
def test_incremental_compile_equals_full_compile(data, narrow):
    policy_st = (lambda i: narrow_cnp_st(f"p{i}")) if narrow else (lambda i: st.one_of(cnp_st(f"p{i}"), np_st(f"p{i}")))
    pool = [parse_object(data.draw(policy_st(i)), "gen.yaml") for i in range(6)]
    # Start from a populated cluster so later churn hits selected endpoints.
    seed = [("upsert_policy", i) for i in range(data.draw(st.integers(0, 6)))] + [
        ("upsert_endpoint", i, data.draw(labels_st), f"10.0.0.{i}") for i in range(1, data.draw(st.integers(1, 5)))
    ]
    ops = seed + [("compile",)] + data.draw(st.lists(op_st, min_size=1, max_size=14))
    ids = IdentityAllocator()
    c = Compiler(identities=ids, host_ips=[IPv4Address(HOST_IP)])
    pols: dict[str, Policy] = {}
    eps: dict[int, Endpoint] = {}
    prev = c.compile()
    for op in ops + [("compile",)]:
        if op[0] == "upsert_policy":
            pols[pool[op[1]].key] = pool[op[1]]
            c.upsert_policy(pool[op[1]])
        elif op[0] == "delete_policy":
            pols.pop(pool[op[1]].key, None)
            c.delete_policy(pool[op[1]].key)
        elif op[0] == "upsert_endpoint":
            # Addresses collide on purpose: endpoints, the host and CIDR prefixes share /32s.
            ep = Endpoint(op[1], op[2], IPv4Address(op[3]))
            eps[op[1]] = ep
            c.upsert_endpoint(ep)
        elif op[0] == "delete_endpoint":
            eps.pop(op[1], None)
            c.delete_endpoint(op[1])
        else:
            state = c.compile()
            full = compile_state(pols.values(), eps.values(), identities=ids, host_ips=[IPv4Address(HOST_IP)])
            assert _normalized(state) == _normalized(full)
            assert dict(state.ipcache) == dict(full.ipcache)
            assert_ipcache_facts(state, prev)
            assert dict(state.identity_labels) == dict(full.identity_labels)
            differs = {i for i in set(state.endpoints) | set(prev.endpoints) if state.endpoints.get(i) != prev.endpoints.get(i)}
            assert c.changed_endpoints() == differs
            assert state.revision >= prev.revision
            prev = state


churn_st = st.lists(
    st.one_of(
        st.tuples(st.just("upsert"), st.integers(1, 6), labels_st),
        st.tuples(st.just("delete"), st.integers(1, 6), st.just(None)),
    ),
    min_size=8,
    max_size=30,
)


@settings(SETTINGS, max_examples=max(10, SETTINGS.max_examples // 3))
@given(st.lists(narrow_cnp_st("n"), min_size=1, max_size=6), churn_st)
def test_endpoint_churn_patches_equal_full_compile(objs, churn):
    pols = {}
    for i, obj in enumerate(objs):
        obj["metadata"]["name"] = f"n{i}"
        p = parse_object(obj, "gen.yaml")
        pols[p.key] = p
    ids = IdentityAllocator()
    c = Compiler(identities=ids)
    for p in pols.values():
        c.upsert_policy(p)
    eps: dict[int, Endpoint] = {}
    for op, ep_id, labels in churn:
        if op == "upsert":
            eps[ep_id] = Endpoint(ep_id, labels, IPv4Address(f"10.0.0.{ep_id}"))
            c.upsert_endpoint(eps[ep_id])
        else:
            eps.pop(ep_id, None)
            c.delete_endpoint(ep_id)
        state = c.compile()
        full = compile_state(pols.values(), eps.values(), identities=ids)
        assert _normalized(state) == _normalized(full)
