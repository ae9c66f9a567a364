"""`policy diff --observed`: replay flows the agent saw against a proposed
policy set. Pure: the events come in as values (the agent's FlowEvent shape,
read through the `ObservedFlow` fields below), the answer is `trace` on the
proposed compiled state.

Each event is replayed as the flow it records: source and destination by
address when the address is known (a local endpoint's address names it),
else by the identity the event carries; the destination port and protocol;
for an L7 event (`type == "l7"`) its method and path as the HTTP request.
What the agent answered is the event's verdict (kernel `forward` and
`redirect`, Envoy's `forwarded` count as allowed; `drop` and Envoy's
`denied` as denied; without a verdict an L7 status 403 counts as denied);
kernel drops whose reason is not a policy's are skipped. Events that cannot be replayed (no port, neither end
a local endpoint of the proposed state, agent events) are counted and
skipped, never guessed. Results are grouped per (source, destination,
port/protocol, layer, old verdict -> new verdict) and counted.

In text, an IPv6 address before a port is bracketed, `[fd00::5]:80`, as
Hubble prints it (Go's net.JoinHostPort) and RFC 3986 writes it: without the
brackets the port reads as the address's last group. The JSON keeps the
address and the port apart, unbracketed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv6Address, ip_address
from typing import Any, Protocol as TypingProtocol

from policy.compiled import CompiledState, Protocol
from policy.diff_report import ALLOWED, DENIED, identity_name
from policy.errors import CiliateError
from policy.identity import RESERVED_IDENTITIES
from policy.trace import HTTPRequest, Party, trace

_ALLOWED_WORDS = {"forwarded", "forward", "allowed", "allow", "redirected", "redirect", "audit"}
_DENIED_WORDS = {"dropped", "drop", "denied", "deny"}
# Envoy's access-log events say "HTTP": the connection under them is TCP.
_PROTOCOLS = {"TCP": Protocol.TCP, "HTTP": Protocol.TCP, "UDP": Protocol.UDP, "ICMP": Protocol.ICMP}


class ObservedFlow(TypingProtocol):
    """The fields of agent/core/models.py FlowEvent that a replay reads."""

    time: float
    type: str
    protocol: str | None
    src_ip: str | None
    dst_ip: str | None
    dst_port: int | None
    src_identity: int | None
    dst_identity: int | None
    verdict: str | None
    reason: str | None
    method: str | None
    path: str | None
    status: int | None
    dns_name: str | None


@dataclass(frozen=True, order=True)
class ReplayKey:
    src: str
    dst: str
    port: int
    protocol: str
    layer: str  # "l3l4" | "l7"
    old: str  # what the agent answered
    new: str  # what the proposed policy answers


def host_port(host: str, port: int, protocol: str | None = None) -> str:
    """`host:port` (or `host:port/protocol`), an IPv6 address in brackets.
    `host` may be a party's name with its reserved identity after it
    ("2001:db8::1 (world-ipv6)"): for an IPv6 address the note goes after
    the port, which belongs right after the bracket; any other host is
    written as it always was."""
    where = f"{port}/{protocol}" if protocol else str(port)
    addr, sep, note = host.partition(" ")
    try:
        v6 = isinstance(ip_address(addr), IPv6Address)
    except ValueError:
        v6 = False
    return f"[{addr}]:{where}{sep}{note}" if v6 else f"{host}:{where}"


@dataclass
class ReplayGroup:
    key: ReplayKey
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    example: str = ""  # one request or flow, as text

    def to_dict(self) -> dict[str, Any]:
        k = self.key
        return {"src": k.src, "dst": k.dst, "port": k.port, "protocol": k.protocol, "layer": k.layer,
                "old": k.old, "new": k.new, "count": self.count, "first": self.first, "last": self.last,
                "example": self.example}

    def sentence(self) -> str:
        what = "requests" if self.key.layer == "l7" else "flows"
        verb = "dropped" if self.key.new == DENIED else "allowed"
        return (f"your new policy would have {verb} {self.count:,} {what} from {self.key.src} to "
                f"{host_port(self.key.dst, self.key.port, self.key.protocol)}")


@dataclass
class ReplayReport:
    changed: list[ReplayGroup] = field(default_factory=list)
    replayed: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    first: float | None = None
    last: float | None = None

    def counts(self) -> dict[str, int]:
        return {
            "replayed": self.replayed,
            "unchanged": self.unchanged,
            "now_denied": sum(g.count for g in self.changed if g.key.new == DENIED),
            "now_allowed": sum(g.count for g in self.changed if g.key.new == ALLOWED),
            "skipped": sum(self.skipped.values()),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.counts() | {"first": self.first, "last": self.last},
                "skipped": dict(sorted(self.skipped.items())),
                "changed": [g.to_dict() for g in self.changed]}


def observed_verdict(event: ObservedFlow) -> str | None:
    """allowed / denied as the agent answered, None when the event does not say."""
    v = (event.verdict or "").lower()
    if v in _ALLOWED_WORDS:
        return ALLOWED
    if v in _DENIED_WORDS:
        return DENIED
    if event.type == "l7" and event.status is not None:
        return DENIED if event.status == 403 else ALLOWED
    if event.type in ("forward", "redirect"):
        return ALLOWED
    if event.type == "drop":
        return DENIED
    return None


def _party(state: CompiledState, ip: str | None, identity: int | None) -> Party | None:
    if ip:
        try:
            addr = ip_address(ip)
        except ValueError:
            return None
        ep = state.endpoint_by_ip(addr)
        return Party.endpoint(ep.endpoint_id) if ep is not None else Party.address(addr)
    if identity is not None:
        return Party(identity=identity)
    return None


def _name(state: CompiledState, p: Party) -> str:
    if p.endpoint_id is not None:
        ident = state.endpoints[p.endpoint_id].identity
        return identity_name(state.identity_labels.get(ident, ()))
    if p.ip is not None:
        ident = state.identity_of(p.ip)
        if ident in RESERVED_IDENTITIES:
            return f"{p.ip} ({RESERVED_IDENTITIES[ident]})"
        return str(p.ip)
    assert p.identity is not None
    return RESERVED_IDENTITIES.get(p.identity) or identity_name(state.identity_labels.get(p.identity, ()))


def replay(events: Iterable[ObservedFlow], proposed: CompiledState) -> ReplayReport:
    """Each replayable event, traced on the proposed state and compared with
    what the agent answered; changed ones grouped and counted, most first."""
    out = ReplayReport()
    groups: dict[ReplayKey, ReplayGroup] = {}

    def skip(reason: str) -> None:
        out.skipped[reason] = out.skipped.get(reason, 0) + 1

    for ev in events:
        if ev.type in ("agent", "policy-verdict"):
            skip("not a flow")
            continue
        old = observed_verdict(ev)
        if old is None:
            skip("no verdict")
            continue
        if old == DENIED and ev.type == "drop" and ev.reason and "policy" not in ev.reason:
            skip("dropped for another reason than policy")
            continue
        proto = _PROTOCOLS.get((ev.protocol or "TCP").upper())
        if proto is None:
            skip(f"protocol {ev.protocol}")
            continue
        port = ev.dst_port if proto != Protocol.ICMP else 0
        if port is None:
            skip("no destination port")
            continue
        src = _party(proposed, ev.src_ip, ev.src_identity)
        dst = _party(proposed, ev.dst_ip, ev.dst_identity)
        if src is None or dst is None:
            skip("no source or destination")
            continue
        if src.endpoint_id is None and dst.endpoint_id is None:
            skip("no local endpoint in the proposed state")
            continue
        layer = "l7" if ev.type in ("l7", "dns") else "l3l4"
        http = HTTPRequest(method=ev.method or "GET", path=ev.path or "/") if ev.type == "l7" else None
        # A DNS proxy event: the query, judged by the proposed DNS rules.
        dns_name = ev.dns_name if ev.type == "dns" else None
        if ev.type == "dns" and not dns_name:
            skip("DNS event without a name (malformed query)")
            continue
        try:
            new = trace(proposed, src, dst, port, proto, http, dns_name=dns_name).verdict
        except CiliateError:
            skip("not traceable")
            continue
        out.replayed += 1
        out.first = ev.time if out.first is None else min(out.first, ev.time)
        out.last = ev.time if out.last is None else max(out.last, ev.time)
        if new == old:
            out.unchanged += 1
            continue
        key = ReplayKey(_name(proposed, src), _name(proposed, dst), port, proto.name, layer, old, new)
        g = groups.get(key)
        if g is None:
            example = (f"{http.method} {http.path}" if http else f"DNS query for {dns_name}" if dns_name
                       else f"{ev.src_ip or '?'} -> {host_port(ev.dst_ip or '?', port)}")
            g = groups[key] = ReplayGroup(key, first=ev.time, last=ev.time, example=example)
        g.count += 1
        g.first, g.last = min(g.first, ev.time), max(g.last, ev.time)
    out.changed = sorted(groups.values(), key=lambda g: (-g.count, g.key))
    return out


def replay_dicts(events: Iterable[Mapping[str, Any]], proposed: CompiledState) -> ReplayReport:
    """replay() over plain dicts (JSON lines), missing fields read as None."""
    return replay((_DictFlow(e) for e in events), proposed)


class _DictFlow:
    def __init__(self, d: Mapping[str, Any]) -> None:
        self._d = d

    def __getattr__(self, name: str) -> Any:
        if name == "time":
            return float(self._d.get("time") or 0.0)
        return self._d.get(name)
