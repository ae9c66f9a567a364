"""Identities and proxy ports: stable numbers that survive a restart."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from policy.compiled import Direction, RedirectKey
from policy.identity import FIRST_CIDR_IDENTITY, FIRST_LABEL_IDENTITY, IdentityAllocator
from policy.proxyports import ProxyPortAllocator, ProxyPortsExhausted


@pytest.mark.parametrize(
    "a,b,same",
    [
        pytest.param({"app": "web"}, {"k8s:app": "web"}, True, id="source-prefix-defaults-to-k8s"),
        pytest.param({"app": "web"}, {"app": "web", "io.kubernetes.pod.namespace": "default"}, True, id="namespace-defaults"),
        pytest.param({"app": "web"}, {"app": "web", "pod-template-hash": "abc"}, True, id="per-pod-label-ignored"),
        pytest.param({"app": "web"}, {"app": "web", "io.kubernetes.pod.namespace": "prod"}, False, id="namespace-splits"),
        pytest.param({"app": "web"}, {"app": "db"}, False, id="different-labels"),
    ],
)
def test_label_identities(a, b, same):
    ids = IdentityAllocator()
    x, y = ids.for_labels(a), ids.for_labels(b)
    assert x >= FIRST_LABEL_IDENTITY and y >= FIRST_LABEL_IDENTITY
    assert (x == y) is same


def test_identities_survive_a_restart():
    ids = IdentityAllocator()
    web = ids.for_labels({"app": "web"})
    db = ids.for_labels({"app": "db"})
    net = ids.for_cidr(IPv4Network("10.0.0.0/8"))
    again = IdentityAllocator.from_json(ids.to_json())
    assert again.for_labels({"app": "db"}) == db
    assert again.for_labels({"app": "web"}) == web
    assert again.for_cidr(IPv4Network("10.0.0.0/8")) == net >= FIRST_CIDR_IDENTITY
    fresh = again.for_labels({"app": "new"})
    assert fresh not in (web, db)
    assert again.labels_of(web) == ids.labels_of(web)


def test_proxy_ports_stable_released_and_persisted():
    ports = ProxyPortAllocator()
    k1 = RedirectKey(1, Direction.INGRESS, 80)
    k2 = RedirectKey(2, Direction.EGRESS, 80)
    p1, p2 = ports.allocate(k1), ports.allocate(k2)
    assert p1 != p2 and ports.allocate(k1) == p1
    again = ProxyPortAllocator.from_json(ports.to_json())
    assert again.port_of(k1) == p1 and again.port_of(k2) == p2
    again.retain([k2])
    assert again.port_of(k1) is None
    p3 = again.allocate(RedirectKey(3, Direction.INGRESS, 8080))
    assert p3 not in (p2,)


def test_proxy_ports_exhausted_is_an_error():
    ports = ProxyPortAllocator(lo=10000, hi=10001)
    ports.allocate(RedirectKey(1, Direction.INGRESS, 1))
    ports.allocate(RedirectKey(1, Direction.INGRESS, 2))
    with pytest.raises(ProxyPortsExhausted):
        ports.allocate(RedirectKey(1, Direction.INGRESS, 3))
