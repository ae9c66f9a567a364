"""`policy suggest`: least-privilege CiliumNetworkPolicies from observed
flows (the agent's flow history, or `ciliate monitor -o json` saved to a
file). Pure: events in (the FlowEvent fields read below), policy documents
and the traffic behind each rule out.

What is taken as traffic: kernel `forward`, `redirect` and `audit` events
(audit: what policy audit mode let through), Envoy's `l7` events that were
forwarded or audited, and DNS proxy events that were forwarded. Drops and
denials are not: they did not happen (or were refused on purpose), and a
suggestion must never widen what a policy in force refuses.

Per workload (a local endpoint's stable labels: every label but the ones a
controller stamps per pod or per rollout, such as pod-template-hash or a
StatefulSet's pod name, and the namespace, which scopes the policy):
- an ingress rule per peer that reached it, and an egress rule per peer it
  reached: other workloads by their stable labels (and namespace when it is
  another one), outside addresses as /32 (/128) CIDRs, or by name when the
  DNS proxy saw the workload resolve a name to that address (`toFQDNs`, with
  the DNS rule toward its resolver that lets the name be learned), and the
  node and other reserved identities as entities;
- the ports and protocols seen (ICMP is left out: say it with `icmps`);
- on a port where the proxy saw HTTP requests, HTTP rules: the method and
  the path, with numeric segments generalised to `[0-9]+` (`/v1/users/42`
  and `/v1/users/7` give one rule `/v1/users/[0-9]+`) unless exact paths
  are asked for, and an optional query string when one was seen.
Each rule carries how many events back it (`Suggestion.counts`).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import ip_address, ip_network
from typing import Any, Protocol as TypingProtocol

from policy.endpoint import DEFAULT_NAMESPACE, NAMESPACE_LABEL, split_source

# Labels that change per pod or per rollout: a selector on them would
# match one pod, or stop matching at the next deploy.
UNSTABLE = frozenset({
    "pod-template-hash", "controller-revision-hash", "pod-template-generation", "statefulset.kubernetes.io/pod-name",
    "controller-uid", "batch.kubernetes.io/controller-uid", "job-name", "batch.kubernetes.io/job-name",
    "apps.kubernetes.io/pod-index", "batch.kubernetes.io/job-completion-index",
})
_TAKEN_KERNEL = {"forward", "redirect", "audit"}
_TAKEN_VERDICTS = {"forwarded", "audit", "allowed"}
_PROTOCOLS = {"TCP", "UDP", "SCTP"}
_NUMERIC = re.compile(r"[0-9]+")
_RE2_SPECIAL = re.compile(r"([\\.^$|?*+()\[\]{}])")


class Flow(TypingProtocol):
    """The fields of agent/core/models.py FlowEvent that a suggestion reads."""

    type: str
    protocol: str | None
    src_ip: str | None
    dst_ip: str | None
    dst_port: int | None
    src_labels: list[str]
    dst_labels: list[str]
    src_endpoint_id: int | None
    dst_endpoint_id: int | None
    verdict: str | None
    method: str | None
    path: str | None
    dns_name: str | None
    dns_addresses: list[str] | None


@dataclass(frozen=True, order=True)
class Workload:
    namespace: str
    labels: tuple[tuple[str, str], ...]  # stable labels, source prefix and namespace stripped

    @property
    def name(self) -> str:
        main = dict(self.labels)
        base = next((main[k] for k in ("app", "app.kubernetes.io/name", "k8s-app", "name", "class") if k in main),
                    "-".join(v for _, v in self.labels) or "workload")
        return re.sub(r"[^a-z0-9-]+", "-", f"suggested-{base}".lower()).strip("-")[:63]

    def selector(self, seen_from: str | None = None) -> dict[str, Any]:
        labels = dict(self.labels)
        if seen_from is not None and seen_from != self.namespace:
            labels[NAMESPACE_LABEL] = self.namespace
        return {"matchLabels": labels}


def workload_of(labels: Iterable[str]) -> Workload | None:
    """The workload of an endpoint's identity labels; None when it has no
    k8s labels (reserved identities, outside addresses)."""
    ns = DEFAULT_NAMESPACE
    kept: dict[str, str] = {}
    any_k8s = False
    for text in labels:
        source_key, _, value = text.partition("=")
        source, key = split_source(source_key)
        if source not in ("k8s", "container", "unspec"):
            continue
        any_k8s = True
        if key == NAMESPACE_LABEL:
            ns = value
        elif key in UNSTABLE or key.startswith("io.cilium.k8s.") or key.startswith("io.kubernetes."):
            continue
        else:
            kept[key] = value
    if not any_k8s:
        return None
    return Workload(ns, tuple(sorted(kept.items())))


def _entity(labels: Iterable[str]) -> str | None:
    for text in labels:
        if text.startswith("reserved:"):
            name = text.split(":", 1)[1].split("=", 1)[0]
            if name in ("host", "remote-node", "kube-apiserver", "health", "ingress", "init", "unmanaged"):
                return name
    return None


# A peer: ("endpoint", Workload) | ("entity", name) | ("cidr", prefix) | ("fqdn", name)
Peer = tuple[str, Any]


@dataclass
class _Port:
    count: int = 0
    http: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))  # (method, path rx) -> count
    dns: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # names asked here -> count


@dataclass
class Suggestion:
    workload: Workload
    ingress: dict[Peer, dict[tuple[int, str], _Port]] = field(default_factory=lambda: defaultdict(dict))
    egress: dict[Peer, dict[tuple[int, str], _Port]] = field(default_factory=lambda: defaultdict(dict))

    def counts(self) -> list[tuple[str, str, str, int]]:
        """(direction, peer, port, events) for every suggested rule port."""
        out = []
        for direction, rules in (("ingress", self.ingress), ("egress", self.egress)):
            for peer, ports in sorted(rules.items(), key=lambda kv: str(kv[0])):
                for (port, proto), p in sorted(ports.items()):
                    out.append((direction, _peer_text(peer), f"{port}/{proto}", p.count))
        return out

    def document(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"endpointSelector": self.workload.selector()}
        for direction, rules, key in (("ingress", self.ingress, "from"), ("egress", self.egress, "to")):
            items = []
            for peer, ports in sorted(rules.items(), key=lambda kv: str(kv[0])):
                items.extend(_items(peer, ports, key, self.workload.namespace))
            if items:
                spec[direction] = items
        return {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
                "metadata": {"name": self.workload.name, "namespace": self.workload.namespace}, "spec": spec}


def _peer_text(peer: Peer) -> str:
    kind, value = peer
    if kind == "endpoint":
        return f"{value.namespace}/" + ",".join(f"{k}={v}" for k, v in value.labels)
    return f"{kind}:{value}"


def _items(peer: Peer, ports: Mapping[tuple[int, str], _Port], key: str, namespace: str) -> list[dict[str, Any]]:
    kind, value = peer
    if kind == "endpoint":
        head: dict[str, Any] = {f"{key}Endpoints": [value.selector(seen_from=namespace)]}
    elif kind == "entity":
        head = {f"{key}Entities": [value]}
    elif kind == "fqdn":
        head = {"toFQDNs": [{"matchName": value.rstrip(".")}]}
    else:
        head = {f"{key}CIDR": [value]}
    # A DNS rule's port takes the port's UDP and TCP: an L4 allow beside it
    # would let every name through.
    dns_ports = {port for (port, _), p in ports.items() if p.dns}
    plain = [{"port": str(port), "protocol": proto} for (port, proto), p in sorted(ports.items())
             if not p.http and not p.dns and port not in dns_ports]
    to_ports: list[dict[str, Any]] = [{"ports": plain}] if plain else []
    for (port, proto), p in sorted(ports.items()):
        if p.http:
            rules = [{"method": _escape(m), "path": path} for m, path in sorted(p.http)]
            to_ports.append({"ports": [{"port": str(port), "protocol": proto}], "rules": {"http": rules}})
        elif p.dns:
            to_ports.append({"ports": [{"port": str(port), "protocol": "ANY"}],
                             "rules": {"dns": [{"matchName": n.rstrip(".")} for n in sorted(p.dns)]}})
    return [dict(head, toPorts=to_ports)]


def _escape(text: str) -> str:
    return _RE2_SPECIAL.sub(r"\\\1", text)


def path_pattern(path: str, exact: bool = False) -> str:
    """An RE2 regex for the path (Envoy matches the whole :path, query included)."""
    raw, sep, _query = path.partition("?")
    segments = raw.split("/")
    if not exact:
        segments = ["[0-9]+" if _NUMERIC.fullmatch(s) else _escape(s) for s in segments]
    else:
        segments = [_escape(s) for s in segments]
    out = "/".join(segments)
    return out + ("(\\?.*)?" if sep else "")


def _address(text: str | None) -> str | None:
    if not text:
        return None
    try:
        return str(ip_network(ip_address(text)))
    except ValueError:
        return None


def suggest(events: Iterable[Flow], exact_paths: bool = False) -> tuple[list[Suggestion], dict[str, int]]:
    """The suggestions (one per workload that took part), and why events were skipped."""
    skipped: dict[str, int] = defaultdict(int)
    by_workload: dict[Workload, Suggestion] = {}
    resolved: dict[tuple[Workload, str], str] = {}  # (asker, address) -> name
    evs = list(events)
    for ev in evs:  # names first: a later connection to a resolved address is to that name
        if ev.type == "dns" and (ev.verdict or "") in _TAKEN_VERDICTS and ev.dns_name:
            asker = workload_of(ev.src_labels)
            for a in ev.dns_addresses or ():
                if asker is not None and _address(a):
                    resolved[(asker, str(ip_address(a)))] = ev.dns_name

    def at(w: Workload) -> Suggestion:
        return by_workload.setdefault(w, Suggestion(w))

    for ev in evs:
        if ev.type in ("agent", "policy-verdict"):
            skipped["not a flow"] += 1
            continue
        taken = ev.type in _TAKEN_KERNEL or (ev.type in ("l7", "dns") and (ev.verdict or "") in _TAKEN_VERDICTS)
        if not taken:
            skipped["dropped or denied"] += 1
            continue
        proto = "TCP" if ev.type == "l7" else (ev.protocol or "").upper()
        if ev.type == "dns":
            proto = "ANY"
        elif proto not in _PROTOCOLS:
            skipped[f"protocol {ev.protocol or '?'}"] += 1
            continue
        if not ev.dst_port:
            skipped["no destination port"] += 1
            continue
        src_w = workload_of(ev.src_labels) if ev.src_endpoint_id is not None else None
        dst_w = workload_of(ev.dst_labels) if ev.dst_endpoint_id is not None else None
        if src_w is None and dst_w is None:
            skipped["no local endpoint"] += 1
            continue
        http = None
        if ev.type == "l7" and ev.method and ev.path:
            http = (ev.method, path_pattern(ev.path, exact_paths))
        key = (ev.dst_port, proto)
        if dst_w is not None and ev.type != "dns":
            peer = _peer(ev.src_labels, ev.src_ip, src_w)
            if peer is not None:
                _count(at(dst_w).ingress[peer], key, http, None)
        if src_w is not None:
            dst_ip = _address(ev.dst_ip)
            name = resolved.get((src_w, str(ip_address(ev.dst_ip)))) if dst_w is None and dst_ip and ev.type != "dns" else None
            peer = ("fqdn", name) if name else _peer(ev.dst_labels, ev.dst_ip, dst_w)
            if peer is not None:
                _count(at(src_w).egress[peer], key, http, ev.dns_name if ev.type == "dns" else None)
    return [by_workload[w] for w in sorted(by_workload)], dict(skipped)


def _peer(labels: list[str], ip: str | None, w: Workload | None) -> Peer | None:
    w = w or workload_of(labels)  # another node's pod is a workload too
    if w is not None:
        return ("endpoint", w)
    entity = _entity(labels)
    if entity is not None:
        return ("entity", entity)
    cidr = _address(ip)
    return ("cidr", cidr) if cidr is not None else None


def _count(ports: dict[tuple[int, str], _Port], key: tuple[int, str], http: tuple[str, str] | None, dns: str | None) -> None:
    p = ports.setdefault(key, _Port())
    p.count += 1
    if http is not None:
        p.http[http] += 1
    if dns is not None:
        p.dns[dns] += 1
