"""What `policy diff` reports and how it reads. Pure.

The report (policy/diff.py computes it): the two ends of a flow, each change
of verdict between the old and the new policy set, the HTTP rules present
on one side only that change no verdict, and the whole diff grouped per
(source, destination). Each value turns itself into the dict `-o json`
prints; the text helpers are the pieces `ciliate policy diff` and
`policy diff --observed` (policy/diff_observed.py) print.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from policy.compiled import ALLOW_ALL_HTTP, PORTED, DNSRule, TYPED, CompiledState, HTTPRule, PortRange, Protocol, SNIRule, protocol_name
from policy.endpoint import DEFAULT_NAMESPACE, NAMESPACE_LABEL
from policy.families import IPAddress
from policy.trace import DNSQuery, HTTPRequest, Party, TLSHello

ALLOWED, DENIED = "allowed", "denied"


@dataclass(frozen=True)
class FlowEnd:
    """One side of a flow: a local identity, a reserved entity or a CIDR cell."""

    kind: str  # "endpoint" | "entity" | "cidr" (sort order of the report)
    name: str
    old_identity: int
    new_identity: int
    endpoint_id: int | None = None  # the endpoint standing for a local identity
    address: IPAddress | None = None  # an address of a CIDR cell
    endpoints: int = 0  # how many local endpoints share the identity

    def party(self) -> Party:
        """How `trace` is asked about this end (the same in both states)."""
        if self.endpoint_id is not None:
            return Party.endpoint(self.endpoint_id)
        if self.address is not None:
            return Party.address(self.address)
        return Party(identity=self.old_identity)

    @property
    def sort_key(self) -> tuple[int, str, int, int]:
        return (("endpoint", "entity", "cidr").index(self.kind), self.name, self.old_identity, self.new_identity)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.old_identity == self.new_identity:
            d["identity"] = self.old_identity
        else:
            d["old_identity"], d["new_identity"] = self.old_identity, self.new_identity
        if self.kind == "endpoint":
            d["endpoint"], d["endpoints"] = self.endpoint_id, self.endpoints
        if self.address is not None:
            d["address"] = str(self.address)
        return d


@dataclass(frozen=True)
class FlowChange:
    src: FlowEnd
    dst: FlowEnd
    protocol: Protocol
    ports: PortRange
    layer: str  # "l3l4": the connection itself; "l7": requests matching http_rule
    old: str  # "allowed" | "denied"
    new: str
    http_rule: HTTPRule | None = None  # l7: the rule added or removed; None = any request
    change: str | None = None  # l7: "added" | "removed"
    sample: HTTPRequest | None = None  # l7: a request showing the change (trace it)
    # What the proxies admit in each state (rules of every enforcing side).
    old_http: tuple[HTTPRule, ...] = ()
    new_http: tuple[HTTPRule, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        # src and dst are given once per group (PolicyDiff.to_dict).
        d: dict[str, Any] = {
            "protocol": protocol_name(self.protocol),
            "ports": port_text(self.protocol, self.ports),
            "layer": self.layer,
            "old": self.old,
            "new": self.new,
        }
        if self.layer == "l7":
            d["change"] = self.change
            d["http_rule"] = rule_dict(self.http_rule)
            d["sample"] = request_dict(self.sample) if self.sample else None
        if self.old_http:
            d["old_http_rules"] = [rule_dict(r) for r in self.old_http]
        if self.new_http:
            d["new_http_rules"] = [rule_dict(r) for r in self.new_http]
        return d


@dataclass(frozen=True)
class Unchanged:
    """An HTTP rule present in one state only whose sample requests all keep
    their verdict: other rules still admit (or still refuse) them."""

    src: FlowEnd
    dst: FlowEnd
    port: int
    http_rule: HTTPRule | None
    change: str

    def to_dict(self) -> dict[str, Any]:
        return {"src": self.src.name, "dst": self.dst.name, "port": self.port,
                "http_rule": rule_dict(self.http_rule), "change": self.change}


@dataclass(frozen=True)
class PolicyDiff:
    old: CompiledState
    new: CompiledState
    changes: tuple[FlowChange, ...]
    unchanged_rules: tuple[Unchanged, ...] = ()
    endpoints: int = 0
    identities: int = 0
    pairs_checked: int = 0

    def groups(self) -> list[tuple[tuple[FlowEnd, FlowEnd], list[FlowChange]]]:
        out: dict[tuple[FlowEnd, FlowEnd], list[FlowChange]] = {}
        for c in self.changes:
            out.setdefault((c.src, c.dst), []).append(c)
        return sorted(out.items(), key=lambda kv: (kv[0][0].sort_key, kv[0][1].sort_key))

    def counts(self) -> dict[str, int]:
        return {
            "changes": len(self.changes),
            "now_denied": sum(c.new == DENIED for c in self.changes),
            "now_allowed": sum(c.new == ALLOWED for c in self.changes),
            "pairs": len({(c.src, c.dst) for c in self.changes}),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "summary": self.counts() | {"endpoints": self.endpoints, "identities": self.identities,
                                        "pairs_checked": self.pairs_checked},
            "groups": [
                {"src": s.to_dict(), "dst": d.to_dict(), "count": len(cs), "changes": [c.to_dict() for c in cs]}
                for (s, d), cs in self.groups()
            ],
            "unchanged_rules": [u.to_dict() for u in self.unchanged_rules],
        }


# ------------------------------------------------------------------ display helpers


def port_text(protocol: Protocol, ports: PortRange) -> str:
    name = protocol_name(protocol)
    if protocol in TYPED:
        if ports.lo == 0 and ports.hi >= 255:
            return name
        return f"type {ports}/{name}"
    if protocol not in PORTED:
        return name
    if ports.lo <= 1 and ports.hi == 65535:
        return f"*/{name}"
    return f"{ports}/{name}"


def rule_dict(r: HTTPRule | SNIRule | DNSRule | None) -> dict[str, Any] | None:
    if r is None:
        return None
    if isinstance(r, SNIRule):
        return {"server_names": list(r.server_names)}
    if isinstance(r, DNSRule):
        return {"dns": [{"matchName": n.match_name} if n.match_name is not None else {"matchPattern": n.match_pattern}
                        for n in r.names]}
    d: dict[str, Any] = {k: v for k, v in (("method", r.method), ("path", r.path), ("host", r.host)) if v is not None}
    if r.headers:
        d["headers"] = [{"name": h.name, "value": h.value} if h.value is not None else {"name": h.name} for h in r.headers]
    return d


def rule_text(r: HTTPRule | SNIRule | DNSRule | None) -> str:
    if r is None or r == ALLOW_ALL_HTTP:
        return "any request"
    if isinstance(r, SNIRule):
        return f"TLS to {', '.join(r.server_names)}" if r.server_names else "any connection"
    if isinstance(r, DNSRule):
        return "DNS for " + ", ".join(n.match_name or n.match_pattern or "" for n in r.names)
    parts = [r.method or "any method", r.path or "any path"]
    if r.host is not None:
        parts.append(f"host {r.host}")
    for h in r.headers:
        parts.append(f"header {h.name}: {h.value}" if h.value is not None else f"header {h.name}")
    return " ".join(parts)


def request_dict(q: HTTPRequest | TLSHello | DNSQuery) -> dict[str, Any]:
    if isinstance(q, TLSHello):
        return {"tls_server_name": q.server_name}
    if isinstance(q, DNSQuery):
        return {"dns_name": q.name}
    d: dict[str, Any] = {"method": q.method, "path": q.path}
    if q.host:
        d["host"] = q.host
    if q.headers:
        d["headers"] = dict(q.headers)
    return d


def request_text(q: HTTPRequest | TLSHello | DNSQuery) -> str:
    if isinstance(q, TLSHello):
        return f"TLS with server name {q.server_name}"
    if isinstance(q, DNSQuery):
        return f"DNS query for {q.name}"
    out = f"{q.method} {q.path}"
    if q.host:
        out += f" (host {q.host})"
    for k, v in q.headers.items():
        out += f" ({k}: {v})"
    return out


def identity_name(labels: Iterable[str]) -> str:
    """"k8s:app=web", "k8s:io.kubernetes.pod.namespace=prod" -> "prod/app=web"."""
    ns = DEFAULT_NAMESPACE
    shown = []
    for s in sorted(labels):
        source, _, kv = s.partition(":") if ":" in s.partition("=")[0] else ("", "", s)
        key = kv.partition("=")[0]
        if key == NAMESPACE_LABEL:
            ns = kv.partition("=")[2]
            continue
        shown.append(kv if source in ("", "k8s") else s)
    body = ",".join(shown) or "(no labels)"
    return body if ns == DEFAULT_NAMESPACE else f"{ns}/{body}"
