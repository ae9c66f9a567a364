"""The compiled policy state: the one value both renderers draw from.

This module is the contract between `policy/` (which computes it), `redirect/`
(which writes it into kernel maps) and `xds/` (which turns its L7 part into
Envoy resources). It is pure data plus the reference lookup: the eBPF program
in `bpf/` mirrors `lookup()` exactly, and `ciliate policy trace` answers with
it, so there is one definition of what a packet's verdict is. No I/O here.

Lookup algorithm (kernel and `lookup()` alike), for a packet seen by one
endpoint in one direction with peer identity P, protocol X and port N:

1. Collect the entries matching (P, X), (P, ANY), (0, X), (0, ANY), each a
   longest-prefix match on the port. The compiler guarantees that entries
   sharing (identity, direction, protocol) have disjoint port ranges, so each
   of the four probes finds at most one entry and the kernel can store port
   ranges as LPM prefixes.
2. The strongest verdict wins: DENY > REDIRECT > ALLOW. Among REDIRECTs the
   most specific probe (in the order above) gives the proxy port.
3. No match: DROP if the direction is enforced for the endpoint, else ALLOW.

TCP, UDP and SCTP look up their destination port. ICMP and ICMPv6 look up
their message type in the port's place, but only in the probes under their
own protocol (`icmps` rules compile to such entries); their ANY probes, and
every probe of a protocol without ports, match all-ports entries only. So
an L3-only allow admits ICMP, and a `port: 8` rule of protocol ANY never
admits an echo request (see `probe_ports`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from ipaddress import IPv4Address, IPv6Address
from typing import Mapping, NamedTuple

# Identities have their home in policy/identity.py; the four names that
# redirect/, xds/, agent/ and their tests read from this contract are
# re-exported here.
from policy.dns_names import NameSelector
from policy.families import IPAddress, IPNetwork, Stack
from policy.identity import IDENTITY_ANY, IDENTITY_HOST, IDENTITY_WORLD, RESERVED_IDENTITIES  # noqa: F401
from policy.ipcache import PrefixMap, TableFacts

# The node itself as an endpoint (host policies, nodeSelector): its policy
# is EndpointPolicy HOST_ENDPOINT_ID with identity IDENTITY_HOST, enforced on
# the node's own traffic (bpf/bpf_host.c, and at pods' veths for traffic
# between a pod and the node). Outside the agent's endpoint id range (1-4095).
HOST_ENDPOINT_ID = 65535

# Proxy ports (policy/proxyports.py) are allocated per (endpoint, direction,
# port) redirect from this range.
PROXY_PORT_MIN = 10000
PROXY_PORT_MAX = 20000
# Every DNS redirect goes to the agent's one DNS proxy (as Cilium's), on
# this port unless the agent is told otherwise (ProxyPortAllocator.dns_port);
# outside the range above so no Envoy listener can take it.
DNS_PROXY_PORT = 20053


class Direction(enum.IntEnum):
    INGRESS = 0
    EGRESS = 1


class Protocol(enum.IntEnum):
    ANY = 0
    ICMP = 1
    TCP = 6
    UDP = 17
    ICMPV6 = 58
    SCTP = 132


# Protocols whose destination port policy looks at (ANY covers their ports).
PORTED = frozenset({Protocol.TCP, Protocol.UDP, Protocol.SCTP})
# Protocols whose message type policy looks at in the port's place.
TYPED = frozenset({Protocol.ICMP, Protocol.ICMPV6})


def protocol_name(protocol: int) -> str:
    """TCP, ICMPv6, ... or the bare number of a protocol we do not name."""
    try:
        p = Protocol(protocol)
    except ValueError:
        return str(protocol)
    return "ICMPv6" if p == Protocol.ICMPV6 else p.name


def probe_ports(protocol: int, port: int) -> tuple[int | None, int | None]:
    """The port each kind of probe looks up for a packet: (under its own
    protocol, under ANY); None means all-ports entries only. `port` is the
    destination port, or the ICMP type."""
    if protocol in PORTED:
        return port, port
    if protocol in TYPED:
        return port, None
    return None, None


class Verdict(enum.IntEnum):
    # Numeric order is precedence: a larger value wins when several match.
    ALLOW = 1
    REDIRECT = 2
    DENY = 3


@dataclass(frozen=True, slots=True, order=True)
class PortRange:
    """Inclusive destination port range. (0, 65535) means every port."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (0 <= self.lo <= self.hi <= 65535):
            raise ValueError(f"bad port range {self.lo}-{self.hi}")

    @property
    def is_all(self) -> bool:
        return self.lo == 0 and self.hi == 65535

    def contains(self, port: int) -> bool:
        return self.lo <= port <= self.hi

    def __str__(self) -> str:
        if self.is_all:
            return "*"
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


ALL_PORTS = PortRange(0, 65535)


@dataclass(frozen=True, slots=True, order=True)
class RuleRef:
    """Where a compiled entry came from, for trace output and policy status.

    `policy` is "namespace/name" for namespaced kinds and "name" for
    clusterwide ones; `path` is the field path of the rule inside the
    document, e.g. "spec.ingress[0]" or "spec.specs[1].egressDeny[0]".
    """

    kind: str
    policy: str
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.policy} {self.path}"


@dataclass(frozen=True, slots=True, order=True)
class PolicyKey:
    identity: int  # peer identity, IDENTITY_ANY for any peer
    direction: Direction
    protocol: Protocol
    ports: PortRange


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    key: PolicyKey
    verdict: Verdict
    proxy_port: int = 0  # set iff verdict is REDIRECT
    rules: tuple[RuleRef, ...] = ()  # provenance; not part of kernel state

    def kernel_value(self) -> tuple[Verdict, int]:
        """What the kernel map stores for this key (provenance dropped)."""
        return (self.verdict, self.proxy_port)


class HeaderMatch(NamedTuple):
    # A NamedTuple, not a dataclass: rules are grouped and looked up by their
    # headers on every xDS render, and a tuple hashes in C (a dataclass's
    # __hash__ was 3 of the 4 ms of grouping 10k rules).
    name: str  # lower-cased header name
    value: str | None = None  # exact value; None means "header present"


@dataclass(frozen=True, slots=True)
class HTTPRule:
    """One HTTP rule: every field that is set must match (AND).

    method, path and host are RE2 regexes that must match the whole value.
    A rule with nothing set allows every request.
    """

    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: tuple[HeaderMatch, ...] = ()


ALLOW_ALL_HTTP = HTTPRule()


@dataclass(frozen=True, slots=True)
class SNIRule:
    """TLS connections whose ClientHello names one of these servers (SNI).

    Names are lower-case (SNI is case-insensitive); `*.example.com` matches
    exactly one label before the suffix, `**.example.com` one or more, as
    Cilium's serverNames do. The connection stays encrypted end to end:
    only the ClientHello is read. No names (ANY_CONNECTION) admits every
    connection, TLS or not: what a peer gets that an L4 rule allows on a
    port another rule inspects.
    """

    server_names: tuple[str, ...] = ()


ANY_CONNECTION = SNIRule()


@dataclass(frozen=True, slots=True)
class DNSRule:
    """DNS queries (`toPorts[].rules.dns`) for a name one of these selectors
    matches (ORed), as the agent's DNS proxy enforces them; any other query
    is refused. `matchPattern: "*"` (ALLOW_ALL_DNS) admits every name."""

    names: tuple[NameSelector, ...]

    def matches(self, name: str) -> NameSelector | None:
        """The first selector matching `name`, None when none does."""
        for sel in self.names:
            if sel.matches(name):
                return sel
        return None


ALLOW_ALL_DNS = DNSRule((NameSelector(match_pattern="*"),))


class L7Kind(enum.Enum):
    """What one proxy listener inspects: HTTP requests, the TLS server name
    of each connection (which it then forwards untouched), or DNS queries
    (the agent's DNS proxy, not Envoy)."""

    HTTP = "http"
    SNI = "sni"
    DNS = "dns"


@dataclass(frozen=True, slots=True)
class L7PeerRule:
    """An HTTP rule (HTTP listeners), an SNI rule (SNI listeners) or a DNS
    rule (DNS redirects) and the peers it admits. Rules of one listener are
    ORed."""

    identities: frozenset[int]  # may contain IDENTITY_ANY
    http: HTTPRule | None  # None on SNI and DNS listeners
    rules: tuple[RuleRef, ...] = ()
    sni: SNIRule | None = None  # set on an SNI listener only
    dns: DNSRule | None = None  # set on a DNS redirect only

    @property
    def kind(self) -> L7Kind:
        if self.sni is not None:
            return L7Kind.SNI
        return L7Kind.HTTP if self.dns is None else L7Kind.DNS


@dataclass(frozen=True, slots=True, order=True)
class RedirectKey:
    """Identifies one proxy listener: L7 rules are only allowed on single TCP ports."""

    endpoint_id: int
    direction: Direction
    port: int


@dataclass(frozen=True, slots=True)
class L7Policy:
    key: RedirectKey
    proxy_port: int
    peer_rules: tuple[L7PeerRule, ...]
    kind: L7Kind = L7Kind.HTTP
    # Rules on this port the listener cannot enforce and so admit nothing:
    # HTTP rules where serverNames made the listener an SNI listener (see
    # policy/merge.py). Kept so trace can say why their peers are refused.
    shadowed: tuple[RuleRef, ...] = ()

    def __post_init__(self) -> None:
        # One listener, one kind of rule: a mixed listener would be rendered
        # by one kind's code and silently misread the other's rules.
        for r in self.peer_rules:
            if r.kind != self.kind or (r.http is None) != (self.kind != L7Kind.HTTP):
                raise ValueError(f"{self.kind.value} listener {self.key} holds a {r.kind.value} rule")


@dataclass(frozen=True, slots=True)
class EndpointPolicy:
    endpoint_id: int
    identity: int
    ipv4: IPv4Address | None
    ingress_enforced: bool
    egress_enforced: bool
    entries: tuple[PolicyEntry, ...]  # sorted by key
    l7: tuple[L7Policy, ...] = ()  # sorted by key
    # Policies (RuleRef.policy values) that select this endpoint.
    selected_by: frozenset[str] = frozenset()
    # Policy audit mode: what these entries and L7 rules would deny is let
    # through and reported as audited. Not the compiler's: set by whoever
    # owns the endpoint's configuration (the agent), after compiling.
    audit: bool = False
    # Last, with a default: the positional fields above predate it.
    ipv6: IPv6Address | None = None
    # The DNS redirects (egress DNS rules), sorted by key: enforced by the
    # agent's DNS proxy, never by an Envoy listener, so kept apart from `l7`.
    dns: tuple[L7Policy, ...] = ()

    def dns_rules_for(self, peer: int, port: int) -> tuple[L7PeerRule, ...]:
        """The DNS rules admitting queries to resolver identity `peer` on
        `port`; empty: the proxy refuses every name there."""
        for pol in self.dns:
            if pol.key.port == port:
                return tuple(r for r in pol.peer_rules if peer in r.identities or IDENTITY_ANY in r.identities)
        return ()

    def enforced(self, direction: Direction) -> bool:
        return self.ingress_enforced if direction == Direction.INGRESS else self.egress_enforced

    def kernel_entries(self) -> dict[PolicyKey, tuple[Verdict, int]]:
        return {e.key: e.kernel_value() for e in self.entries}


@dataclass(frozen=True)
class CompiledState:
    revision: int
    endpoints: Mapping[int, EndpointPolicy]
    # prefix -> identity, both families in one table. Always holds the
    # default route of each family the stack runs -> its world identity
    # (0.0.0.0/0 -> world on an IPv4-only node), endpoint /32s and /128s, host
    # addresses -> host, and the CIDR identities' prefixes of either family
    # (on a single-stack node too).
    ipcache: Mapping[IPNetwork, int]
    # identity -> its labels ("source:key=value" strings), for display.
    identity_labels: Mapping[int, frozenset[str]] = field(default_factory=dict)
    # The families the node runs, which the world identities above follow
    # (policy/families.py).
    stack: Stack = Stack.IPV4
    # What the compiler knows of `ipcache` beyond its entries, so that
    # consumers need not walk a cluster-sized table per change (None: walk).
    ipcache_facts: TableFacts | None = field(default=None, compare=False, repr=False)

    def ipcache_by_identity(self) -> Mapping[int, frozenset[IPNetwork]] | None:
        """Identity -> its prefixes in `ipcache`; None when not kept."""
        f = self.ipcache_facts
        return f.by_identity if f is not None and f.table is self.ipcache else None

    def ipcache_changes_since(self, revision: int) -> frozenset[IPNetwork] | None:
        """The prefixes whose entry differs from the ipcache of the state
        numbered `revision` (None: not known; compare whole)."""
        f = self.ipcache_facts
        if f is None or f.table is not self.ipcache or f.changes is None or not revision or f.base != revision:
            return None
        return f.changes

    @cached_property
    def prefixes(self) -> PrefixMap:
        """The ipcache indexed for longest-prefix match (built on first use)."""
        return PrefixMap(self.ipcache)

    def identity_of(self, addr: IPAddress) -> int:
        """Longest-prefix match, as the kernel's ipcache LPM trie does."""
        return self.prefixes.lookup(addr)

    @cached_property
    def _endpoints_by_ip(self) -> Mapping[IPAddress, EndpointPolicy]:
        # Lowest endpoint id first, as the ipcache picks among endpoints
        # sharing an address.
        out: dict[IPAddress, EndpointPolicy] = {}
        for _, ep in sorted(self.endpoints.items()):
            for addr in (ep.ipv4, ep.ipv6):
                if addr is not None:
                    out.setdefault(addr, ep)
        return out

    def endpoint_by_ip(self, addr: IPAddress) -> EndpointPolicy | None:
        return self._endpoints_by_ip.get(addr)

    @cached_property
    def host_addresses(self) -> tuple[IPAddress, ...]:
        """The node's own addresses (its ipcache host entries, one address
        each), sorted: what the host endpoint's entries are keyed by."""
        return tuple(sorted(
            (net.network_address for net, ident in self.ipcache.items()
             if ident == IDENTITY_HOST and net.prefixlen == net.max_prefixlen),
            key=lambda a: (a.version, int(a)),
        ))

    @cached_property
    def _ingress_l7_by_port(self) -> Mapping[int, tuple[tuple[EndpointPolicy, L7Policy], ...]]:
        by_port: dict[int, list[tuple[EndpointPolicy, L7Policy]]] = {}
        for _, ep in sorted(self.endpoints.items()):
            for pol in ep.l7:
                if pol.key.direction == Direction.INGRESS:
                    by_port.setdefault(pol.key.port, []).append((ep, pol))
        return {port: tuple(v) for port, v in by_port.items()}

    def receiver_rules(self, pol: L7Policy) -> tuple["ReceiverRules", ...]:
        """The local receivers whose ingress L7 rules also bind the egress
        listener `pol` (see ReceiverRules). Empty for ingress listeners."""
        if pol.key.direction != Direction.EGRESS:
            return ()
        sender = self.endpoints.get(pol.key.endpoint_id)
        if sender is None:
            return ()
        out = []
        if pol.kind == L7Kind.DNS:
            return ()  # DNS rules are egress only: no receiver has any
        for ep, ingress in self._ingress_l7_by_port.get(pol.key.port, ()):
            if ep.ipv4 is None:
                continue
            d = lookup(ep, sender.identity, Direction.INGRESS, Protocol.TCP, pol.key.port)
            if d.verdict != Verdict.REDIRECT:
                continue  # the kernel does not send this sender to the receiver's proxy
            admitted = [r for r in ingress.peer_rules if sender.identity in r.identities or IDENTITY_ANY in r.identities]
            out.append(_receiver(pol.kind, ep.endpoint_id, ep.ipv4, admitted))
        return tuple(out)

    def all_receiver_rules(self) -> dict[RedirectKey, tuple["ReceiverRules", ...]]:
        """receiver_rules of every egress listener that has any."""
        out = {}
        for _, ep in sorted(self.endpoints.items()):
            for pol in ep.l7:
                got = self.receiver_rules(pol)
                if got:
                    out[pol.key] = got
        return out


@dataclass(frozen=True, slots=True)
class ReceiverRules:
    """A local receiver's ingress HTTP rules that bind a sender's egress proxy.

    When the sender's egress and the receiver's ingress both redirect a flow,
    the kernel hands it to the sender's egress proxy only (one proxy hop; its
    upstream connection is not policed again), so that listener must enforce
    the receiver's ingress rules too: a request passes only if the sender's
    egress rules and these admit it, as Cilium does. `http` holds the rules
    that admit the sender's identity (ORed); empty means the receiver admits
    no request from this sender.
    """

    endpoint_id: int
    ipv4: IPv4Address
    http: tuple[HTTPRule, ...]
    # On an SNI listener (the sender's egress inspects TLS server names):
    # the receiver's rules as SNI rules; `http` is then empty.
    sni: tuple[SNIRule, ...] = ()


def _receiver(kind: L7Kind, endpoint_id: int, ipv4: IPv4Address, admitted: list[L7PeerRule]) -> ReceiverRules:
    """The receiver's rules admitting the sender, as the sender's listener
    (of `kind`) can enforce them. Across kinds only "everything" carries
    over, and fails closed otherwise: an HTTP listener sees no TLS server
    name (plain HTTP has none), and an SNI listener forwards the bytes
    without reading HTTP, so it can honour only a rule admitting any request."""
    if kind == L7Kind.HTTP:
        http = tuple(r.http for r in admitted if r.http is not None)
        if any(r.sni == ANY_CONNECTION for r in admitted):
            http += (ALLOW_ALL_HTTP,)
        return ReceiverRules(endpoint_id, ipv4, http)
    sni = tuple(r.sni for r in admitted if r.sni is not None)
    if any(r.http == ALLOW_ALL_HTTP for r in admitted):
        sni += (ANY_CONNECTION,)
    return ReceiverRules(endpoint_id, ipv4, (), sni)


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict | None  # None: no entry matched
    allowed: bool  # False means the packet is dropped
    proxy_port: int = 0
    entry: PolicyEntry | None = None  # the entry that decided, if any


def lookup(ep: EndpointPolicy, peer: int, direction: Direction, protocol: int, port: int) -> Decision:
    """Reference L3/L4 lookup; the eBPF program implements exactly this.
    `port` is the destination port, or the message type for ICMP/ICMPv6."""
    own, any_ = probe_ports(protocol, port)
    probes = [(peer, protocol, own), (peer, Protocol.ANY, any_), (IDENTITY_ANY, protocol, own), (IDENTITY_ANY, Protocol.ANY, any_)]
    best: PolicyEntry | None = None
    for ident, proto, at in probes:
        for e in ep.entries:
            k = e.key
            if k.identity != ident or k.direction != direction or k.protocol != proto:
                continue
            if at is None and not k.ports.is_all:
                continue
            if k.ports.contains(at or 0):
                if best is None or e.verdict > best.verdict:
                    best = e
                break  # ranges are disjoint per (identity, direction, protocol)
    if best is None:
        return Decision(verdict=None, allowed=not ep.enforced(direction))
    if best.verdict == Verdict.DENY:
        return Decision(Verdict.DENY, False, entry=best)
    return Decision(best.verdict, True, best.proxy_port, best)
