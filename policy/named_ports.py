"""Named ports: `port: http` resolved to the numbers endpoints serve it on.

A policy may name a port instead of numbering it (Kubernetes' most common
NetworkPolicy idiom). The name means the port that the *destination*
endpoint serves under it (a Pod's `containers[].ports[].name`), so:
- an ingress rule resolves it against the endpoint the policy selects;
- an egress rule resolves it per peer, against that peer's endpoints, so
  `port: http` towards two backends that serve http on 8080 and 9090 admits
  8080 to the first and 9090 to the second only; towards "any peer" (an
  L4-only rule) it admits each endpoint that serves the name on its own
  number, and nothing towards peers that are not endpoints (the world has
  no names). Cilium resolves such a rule against the union of every
  endpoint's names, towards every destination: there a tenant's pod naming
  its port 22 `http` would open 22 to the world for every such rule;
- a name no endpoint serves matches nothing, and a rule's protocol must
  match the port's own (ANY takes the port's).
Endpoints sharing an identity (one Deployment's pods) are resolved as one:
the identity serves a name on every number any of them does. Pure.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable, Mapping

from policy.compiled import PortRange, Protocol
from policy.endpoint import NamedPort
from policy.families import IPAddress
from policy.identity import IDENTITY_ANY
from policy.model import PolicySpec, PortSpec

# name -> {(protocol, port)}
PortsByName = Mapping[str, frozenset[tuple[int, int]]]
NOTHING: PortsByName = {}


def port_name_problem(name: str) -> str | None:
    """Why `name` is not an IANA service name (RFC 6335: 1-15 characters,
    letters, digits and single inner hyphens, at least one letter), as
    Kubernetes requires of container port names; None when it is one."""
    if not 1 <= len(name) <= 15:
        return "a port name has 1 to 15 characters"
    if not all(c.isascii() and (c.isalnum() or c == "-") for c in name):
        return "a port name has letters, digits and hyphens only"
    if name.startswith("-") or name.endswith("-") or "--" in name:
        return "a port name neither starts nor ends with a hyphen, nor has two in a row"
    if not any(c.isalpha() for c in name):
        return "a port name has at least one letter"
    return None


def uses_names(spec: PolicySpec) -> bool:
    return any(ps.name is not None for rule in spec.rules for pr in rule.port_rules for ps in pr.ports)


def resolve(spec: PortSpec, ports: PortsByName) -> tuple[PortSpec, ...]:
    """The numbered specs a named spec stands for given these ports (itself
    when it is numbered)."""
    if spec.name is None:
        return (spec,)
    return tuple(
        PortSpec(Protocol(proto), PortRange(port, port))
        for proto, port in sorted(ports.get(spec.name, ()))
        if spec.protocol in (Protocol.ANY, proto)
    )


def _by_name(counts: Counter[NamedPort]) -> dict[str, frozenset[tuple[int, int]]]:
    out: dict[str, set[tuple[int, int]]] = {}
    for np in counts:
        out.setdefault(np.name, set()).add((np.protocol, np.port))
    return {name: frozenset(v) for name, v in out.items()}


class NamedPortIndex:
    """Which names each identity (and the whole node) serves, kept as
    endpoints come, change and go."""

    def __init__(self) -> None:
        # endpoint id, or ("remote", address) for another node's endpoint
        self._ep: dict[Hashable, tuple[int, tuple[NamedPort, ...]]] = {}
        self._ident: dict[int, Counter[NamedPort]] = {}
        self._all: Counter[NamedPort] = Counter()
        self._cache: dict[int, PortsByName] = {}
        self._remote: dict[IPAddress, tuple[int, tuple[NamedPort, ...]]] = {}

    def set(self, endpoint_id: Hashable, ident: int | None, ports: Iterable[NamedPort]) -> set[int]:
        """Record an endpoint's identity and ports (ident None: it is gone);
        returns the identities whose names changed, IDENTITY_ANY among them
        when the node's did."""
        new = tuple(sorted(set(ports))) if ident is not None else ()
        old = self._ep.get(endpoint_id)
        if old == (ident, new) or (old is None and not new):
            return set()
        changed: set[int] = set()
        if old is not None:
            del self._ep[endpoint_id]
            self._count(old[0], old[1], -1, changed)
        if ident is not None and new:
            self._ep[endpoint_id] = (ident, new)
            self._count(ident, new, 1, changed)
        return changed

    def _count(self, ident: int, ports: tuple[NamedPort, ...], step: int, changed: set[int]) -> None:
        if not ports:
            return
        counts = self._ident.setdefault(ident, Counter())
        before, all_before = set(counts), set(self._all)
        for np in ports:
            counts[np] += step
            self._all[np] += step
        counts += Counter()  # drop zero counts
        self._all += Counter()
        if not counts:
            del self._ident[ident]
        if set(counts) != before:
            changed.add(ident)
            self._cache.pop(ident, None)
        if set(self._all) != all_before:
            changed.add(IDENTITY_ANY)
            self._cache.pop(IDENTITY_ANY, None)

    def set_remote(
        self, identities: Mapping[IPAddress, int], ports: Mapping[IPAddress, Iterable[tuple[str, int, int]]],
        only: Iterable[IPAddress] | None = None,
    ) -> set[int]:
        """Other nodes' endpoints, whole: address -> identity, and the
        (name, protocol, port) each published; returns the identities whose
        names changed, as set() does. `only`: the addresses that may have
        changed since the last call (the rest is not compared: it would be
        a walk of every remote pod per event)."""
        changed: set[int] = set()
        if only is not None:
            for addr in only:
                ident, published = identities.get(addr), ports.get(addr)
                want = None if ident is None or published is None else (ident, tuple(sorted(NamedPort(n, p, num) for n, p, num in published)))
                if self._remote.get(addr) == want:
                    continue
                if want is None:
                    changed |= self.set(("remote", addr), None, ())
                    del self._remote[addr]
                else:
                    changed |= self.set(("remote", addr), *want)
                    self._remote[addr] = want
            return changed
        for addr in [a for a in self._remote if a not in ports or a not in identities]:
            changed |= self.set(("remote", addr), None, ())
            del self._remote[addr]
        for addr, published in ports.items():
            ident = identities.get(addr)
            if ident is None:
                continue
            want = (ident, tuple(sorted(NamedPort(n, p, num) for n, p, num in published)))
            if self._remote.get(addr) != want:
                changed |= self.set(("remote", addr), *want)
                self._remote[addr] = want
        return changed

    def identities(self) -> frozenset[int]:
        """The identities that serve some name."""
        return frozenset(self._ident)

    def of(self, ident: int) -> PortsByName:
        """The names an identity serves; for IDENTITY_ANY, every endpoint's."""
        got = self._cache.get(ident)
        if got is None:
            counts = self._all if ident == IDENTITY_ANY else self._ident.get(ident)
            got = self._cache[ident] = _by_name(counts) if counts else NOTHING
        return got
