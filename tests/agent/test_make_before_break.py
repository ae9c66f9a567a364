"""fail_closed with the per-endpoint memo of redirect ports the regenerator
keeps: an endpoint whose policy object did not change is not re-read, yet a
listener Envoy no longer holds still turns its redirects into denies."""

from __future__ import annotations

from ipaddress import IPv4Address

from agent.core.make_before_break import RedirectPorts, fail_closed
from policy.compiled import Verdict
from policy.compiler import compile_state
from policy.endpoint import Endpoint
from policy.load import load_text

L7 = """apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: client}}]
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules: {http: [{method: GET}]}
"""
L4 = L7.replace("      rules: {http: [{method: GET}]}\n", "")

EPS = [Endpoint(1, {"app": "web"}, IPv4Address("10.0.0.1")), Endpoint(2, {"app": "client"}, IPv4Address("10.0.0.2"))]


def _web(text: str):
    return compile_state(load_text(text, "p.yaml").policies, EPS).endpoints[1]


def _redirects(ep) -> list:
    return [e for e in ep.entries if e.verdict == Verdict.REDIRECT]


def test_an_unchanged_endpoint_still_fails_closed_when_its_listener_is_gone():
    web, memo = _web(L7), RedirectPorts()
    acked = {l7.proxy_port: l7 for l7 in web.l7}
    assert _redirects(web)
    assert fail_closed(web, acked, memo.of(web)) is web
    # Envoy lost the listener (restart, NACK): the same policy object, read from the memo.
    gone = fail_closed(web, {}, memo.of(web))
    assert gone is not web and not _redirects(gone)
    assert any(e.verdict == Verdict.DENY for e in gone.entries)


def test_the_memo_follows_a_new_policy_object_of_the_same_endpoint():
    memo = RedirectPorts()
    l4 = _web(L4)
    assert memo.of(l4) == frozenset()
    assert fail_closed(l4, {}, memo.of(l4)) is l4
    l7 = _web(L7)
    assert memo.of(l7) == {e.proxy_port for e in _redirects(l7)} != frozenset()
    assert not _redirects(fail_closed(l7, {}, memo.of(l7)))
    memo.forget(1)
    assert memo.of(l7) == {e.proxy_port for e in _redirects(l7)}
