from policy.compiled import ALL_PORTS, Direction, EndpointPolicy, PolicyEntry, PolicyKey, PortRange, Protocol, Verdict, lookup


def _ep(*entries: PolicyEntry, ingress: bool = True) -> EndpointPolicy:
    return EndpointPolicy(1, 300, None, ingress, False, tuple(sorted(entries, key=lambda e: e.key)))


def test_deny_beats_redirect_beats_allow():
    allow = PolicyEntry(PolicyKey(300, Direction.INGRESS, Protocol.TCP, PortRange(80, 80)), Verdict.ALLOW)
    redirect = PolicyEntry(PolicyKey(0, Direction.INGRESS, Protocol.TCP, PortRange(80, 80)), Verdict.REDIRECT, 10001)
    deny = PolicyEntry(PolicyKey(0, Direction.INGRESS, Protocol.ANY, ALL_PORTS), Verdict.DENY)
    assert lookup(_ep(allow, redirect), 300, Direction.INGRESS, 6, 80).proxy_port == 10001
    assert not lookup(_ep(allow, redirect, deny), 300, Direction.INGRESS, 6, 80).allowed


def test_no_entry_drops_only_when_enforced():
    assert not lookup(_ep(), 5, Direction.INGRESS, 6, 80).allowed
    assert lookup(_ep(), 5, Direction.EGRESS, 6, 80).allowed


def test_icmp_matches_only_l3_entries():
    l4 = PolicyEntry(PolicyKey(7, Direction.INGRESS, Protocol.ANY, PortRange(80, 80)), Verdict.ALLOW)
    l3 = PolicyEntry(PolicyKey(8, Direction.INGRESS, Protocol.ANY, ALL_PORTS), Verdict.ALLOW)
    assert not lookup(_ep(l4, l3), 7, Direction.INGRESS, 1, 0).allowed
    assert lookup(_ep(l4, l3), 8, Direction.INGRESS, 1, 0).allowed
