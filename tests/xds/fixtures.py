"""Hand-built CompiledState values for the xds tests (the policy compiler is
developed separately, so these tests pin the contract, not the compiler)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

from policy.compiled import (
    IDENTITY_WORLD,
    CompiledState,
    Direction,
    EndpointPolicy,
    HeaderMatch,
    HTTPRule,
    L7PeerRule,
    L7Policy,
    PolicyEntry,
    PolicyKey,
    PortRange,
    Protocol,
    RedirectKey,
    Verdict,
)

CLIENT_IDENTITY = 1000  # 127.0.0.1: the test client
OTHER_IDENTITY = 1001  # 127.0.0.2: a peer the tests never use as a client


def ipcache() -> dict[IPv4Network, int]:
    return {
        IPv4Network("0.0.0.0/0"): IDENTITY_WORLD,
        IPv4Network("127.0.0.1/32"): CLIENT_IDENTITY,
        IPv4Network("127.0.0.2/32"): OTHER_IDENTITY,
    }


def rule(idents, method=None, path=None, host=None, headers=()) -> L7PeerRule:
    hs = tuple(HeaderMatch(n, v) for n, v in headers)
    return L7PeerRule(frozenset(idents), HTTPRule(method=method, path=path, host=host, headers=hs))


def state(
    policies: dict[int, tuple[L7PeerRule, ...]],
    *,
    direction: Direction = Direction.INGRESS,
    revision: int = 1,
    extra_ipcache: dict[IPv4Network, int] | None = None,
) -> CompiledState:
    """One endpoint (id 1) with one L7 listener per proxy port in `policies`."""
    l7 = tuple(
        L7Policy(RedirectKey(1, direction, 80 + i), port, rules)
        for i, (port, rules) in enumerate(sorted(policies.items()))
    )
    ep = EndpointPolicy(
        endpoint_id=1,
        identity=2000,
        ipv4=IPv4Address("10.0.0.1"),
        ingress_enforced=True,
        egress_enforced=False,
        entries=(),
        l7=l7,
    )
    ipc = ipcache()
    ipc.update(extra_ipcache or {})
    return CompiledState(revision=revision, endpoints={1: ep}, ipcache=ipc)


def many_rules(n: int, idents=(CLIENT_IDENTITY,), path_prefix: str = "/api") -> tuple[L7PeerRule, ...]:
    """n distinct HTTP rules, the shape used by the benchmark."""
    return tuple(
        rule(idents, method="GET|HEAD", path=f"{path_prefix}/v1/items/{i}(/.*)?", headers=(("x-team", f"t{i % 7}"),))
        for i in range(n)
    )


SENDER, RECEIVER, THIRD = 2000, 3000, 4000
EGRESS_PORT, INGRESS_PORT = 15001, 15002


def sender_and_receiver(receiver_ip: str = "10.0.0.2", receiver_rules=None, receiver_verdict=Verdict.REDIRECT, egress_port: int = EGRESS_PORT) -> CompiledState:
    """A sender (endpoint 1) whose egress proxy on port 80 takes GET, and a
    receiver (endpoint 2) whose ingress on port 80 takes GET /public... from
    the sender (or `receiver_rules`)."""
    sender = EndpointPolicy(
        1, SENDER, IPv4Address("10.0.0.1"), False, True,
        entries=(PolicyEntry(PolicyKey(0, Direction.EGRESS, Protocol.TCP, PortRange(80, 80)), Verdict.REDIRECT, egress_port),),
        l7=(L7Policy(RedirectKey(1, Direction.EGRESS, 80), egress_port, (L7PeerRule(frozenset({0}), HTTPRule(method="GET")),)),),
    )
    rules = receiver_rules if receiver_rules is not None else (L7PeerRule(frozenset({SENDER}), HTTPRule(method="GET", path="/public(/.*)?")),)
    port = INGRESS_PORT if receiver_verdict == Verdict.REDIRECT else 0
    receiver = EndpointPolicy(
        2, RECEIVER, IPv4Address(receiver_ip), True, False,
        entries=(PolicyEntry(PolicyKey(SENDER, Direction.INGRESS, Protocol.TCP, PortRange(80, 80)), receiver_verdict, port),),
        l7=(L7Policy(RedirectKey(2, Direction.INGRESS, 80), INGRESS_PORT, rules),),
    )
    ipcache = {
        IPv4Network("0.0.0.0/0"): IDENTITY_WORLD,
        IPv4Network("10.0.0.1/32"): SENDER,
        IPv4Network(f"{receiver_ip}/32"): RECEIVER,
    }
    return CompiledState(1, {1: sender, 2: receiver}, ipcache)


def forwarding_route(rc):
    """The route of a decoded RouteConfiguration that forwards to the cluster
    (the routes before it only refuse paths)."""
    (route,) = [r for r in rc.virtual_hosts[0].routes if r.route is not None]
    return route


INGRESS_EP, EGRESS_EP = 1, 2


def both_directions(listeners: dict[int, tuple[int, int, HTTPRule]]) -> CompiledState:
    """The test client (127.0.0.1, CLIENT_IDENTITY) as the peer of both
    directions: endpoint 1 (10.0.0.1) takes ingress from it, endpoint 2
    (10.0.0.2) sends egress to it (the egress peer is the destination, which
    on loopback is the proxy's own 127.0.0.1). `listeners`: destination port
    -> (ingress proxy port, egress proxy port, the one HTTP rule both
    listeners of that port admit). The kernel entries redirect, so trace()
    follows the same path: src ip:127.0.0.1 to endpoint 1 (ingress), or
    endpoint 2 to ip:127.0.0.1 (egress)."""
    eps = {}
    for ep_id, direction, which in ((INGRESS_EP, Direction.INGRESS, 0), (EGRESS_EP, Direction.EGRESS, 1)):
        entries, l7 = [], []
        for dport, ports in sorted(listeners.items()):
            proxy_port, http = ports[which], ports[2]
            key = PolicyKey(CLIENT_IDENTITY, direction, Protocol.TCP, PortRange(dport, dport))
            entries.append(PolicyEntry(key, Verdict.REDIRECT, proxy_port))
            l7.append(L7Policy(RedirectKey(ep_id, direction, dport), proxy_port, (L7PeerRule(frozenset({CLIENT_IDENTITY}), http),)))
        ingress = direction == Direction.INGRESS
        eps[ep_id] = EndpointPolicy(
            ep_id, 2000 + ep_id, IPv4Address(f"10.0.0.{ep_id}"), ingress, not ingress, entries=tuple(entries), l7=tuple(l7)
        )
    return CompiledState(1, eps, ipcache())
