"""What the kernel and Envoy may hold while the other one lags behind.

The kernel is written after Envoy acknowledged (a redirect to a listener
nobody serves drops or hangs the flow), and Envoy drops a listener only after
the kernel stopped redirecting to it. These are the two rules, as pure
functions of compiled states: the regenerator applies them. No I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

from policy.compiled import CompiledState, EndpointPolicy, L7Policy, Verdict


class RedirectPorts:
    """Per endpoint, the proxy ports its entries redirect to, remembered for
    the EndpointPolicy object they were read from: an endpoint selected by
    rules over thousands of remote identities has as many entries, and
    reading them all at every cluster event grew the agent's CPU with the
    cluster (the compiler hands back the same object when nothing changed)."""

    def __init__(self) -> None:
        self._seen: dict[int, tuple[EndpointPolicy, frozenset[int]]] = {}

    def of(self, ep: EndpointPolicy) -> frozenset[int]:
        hit = self._seen.get(ep.endpoint_id)
        if hit is not None and hit[0] is ep:
            return hit[1]
        ports = frozenset(e.proxy_port for e in ep.entries if e.verdict == Verdict.REDIRECT)
        self._seen[ep.endpoint_id] = (ep, ports)
        return ports

    def forget(self, endpoint_id: int) -> None:
        self._seen.pop(endpoint_id, None)


def fail_closed(ep: EndpointPolicy, acked: Mapping[int, L7Policy], redirects: frozenset[int] | None = None) -> EndpointPolicy:
    """Turn redirects to listeners Envoy has not acknowledged as-is into denies.

    A denied flow is what the user would get from a proxy that rejects it; a
    redirect to a listener with old or missing rules could let through what
    the new policy forbids, or hang. Other entries are untouched.
    """
    safe = {l7.proxy_port for l7 in ep.l7 if acked.get(l7.proxy_port) == l7}
    # The DNS proxy is not Envoy: it reads its rules from the state in force
    # at each query, so its redirects need no acknowledgement (without it the
    # kernel drops them: nobody listens).
    safe |= {d.proxy_port for d in ep.dns}
    if redirects is not None and redirects <= safe:
        return ep
    if all(e.verdict != Verdict.REDIRECT or e.proxy_port in safe for e in ep.entries):
        return ep
    entries = tuple(
        replace(e, verdict=Verdict.DENY, proxy_port=0) if e.verdict == Verdict.REDIRECT and e.proxy_port not in safe else e
        for e in ep.entries
    )
    return replace(ep, entries=entries)


def with_retiring(state: CompiledState, realized: Mapping[int, EndpointPolicy]) -> CompiledState | None:
    """`state` plus the listeners the kernel may still redirect to but `state`
    drops (their old rules), or None when no listener goes away.

    Break after make, as Cilium does: Envoy keeps a listener until the kernel
    has stopped sending new connections to it. Publishing its removal before
    the kernel write would drop every SYN that arrives in between (the
    datapath finds nobody listening) and the client would wait for a
    retransmit."""
    ports_now = {l7.proxy_port for ep in state.endpoints.values() for l7 in ep.l7}
    extra: dict[int, tuple[L7Policy, ...]] = {}
    for eid, old in realized.items():
        ep = state.endpoints.get(eid)
        going = tuple(l7 for l7 in old.l7 if l7.proxy_port not in ports_now)
        if ep is not None and going:
            extra[eid] = going
    if not extra:
        return None
    endpoints = dict(state.endpoints)
    for eid, going in extra.items():
        endpoints[eid] = replace(endpoints[eid], l7=tuple(sorted(endpoints[eid].l7 + going, key=lambda p: p.key)))
    return replace(state, endpoints=endpoints)
