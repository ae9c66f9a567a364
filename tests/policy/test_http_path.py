"""The path HTTP rules judge: Envoy's normalization, stated in policy/http_path.py
and used by `trace` (checked against the real Envoy in
tests/xds/test_envoy_path_normalization.py)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from policy.http_path import PathRejected, normalize_path


@pytest.mark.parametrize(
    "sent, seen",
    [
        pytest.param("/public/../private", "/private", id="dot-dot"),
        pytest.param("/public/%2e%2e/private", "/private", id="encoded-dots"),
        pytest.param("/public/%2E%2E/private", "/private", id="encoded-dots-upper"),
        pytest.param("/public/.%2e/private", "/private", id="half-encoded-dots"),
        pytest.param("/public//../private", "/public/private", id="dot-dot-eats-the-empty-segment-then-slashes-merge"),
        pytest.param("/public/./../private", "/private", id="dot-then-dot-dot"),
        pytest.param("/public/..\\private", "/private", id="backslash-is-a-slash"),
        pytest.param("//public///x", "/public/x", id="merged-slashes"),
        pytest.param("/public/x/..", "/public/", id="trailing-dot-dot"),
        pytest.param("/public/x/.", "/public/x/", id="trailing-dot"),
        pytest.param("/..", "/", id="above-root"),
        pytest.param("/public/a%41b%7euser", "/public/aAb~user", id="unreserved-decoded"),
        pytest.param("/public/a%20b%2a%3Fb", "/public/a%20b%2a%3Fb", id="reserved-escapes-kept-as-written"),
        pytest.param("/public/a|b{c}", "/public/a%7Cb%7Bc%7D", id="unsafe-characters-encoded"),
        pytest.param("/public/%252e%252e/x", "/public/%252e%252e/x", id="double-encoding-is-not-decoded-twice"),
        pytest.param("/public/a?x=/../y", "/public/a?x=/../y", id="query-left-alone"),
        pytest.param("/public/%zz%", "/public/%zz%", id="invalid-escapes-kept"),
        pytest.param("/public/..;/private", "/private", id="dot-dot-with-params"),
        pytest.param("/public/.;x/y", "/public/y", id="dot-with-params"),
        pytest.param("/public/.;\\private", "/public/", id="params-reach-to-the-next-literal-slash"),
        pytest.param("/public/x;/../y", "/public/y", id="params-on-a-plain-segment"),
        pytest.param("/public/...;/x", "/public/...;/x", id="three-dots-are-a-name"),
        pytest.param("/public/x?q=/%2e%2e;/y", "/public/x?q=/%2e%2e;/y", id="query-may-hold-dots-with-params"),
        pytest.param("/public/..//", "//", id="only-slashes-left-stay-two"),
        pytest.param("/public/%%41b", "/public/%25Ab", id="decoding-never-completes-an-escape"),
    ],
)
def test_paths_normalize_as_envoy_does(sent, seen):
    assert normalize_path(sent) == seen


@pytest.mark.parametrize("sent", ["/public/..%2fprivate", "/public/..%2Fprivate", "/public/..%5cprivate", "/a%00b", "public/x", "/a#b", "/a?b#c"])
def test_escaped_slashes_and_malformed_targets_are_refused(sent):
    with pytest.raises(PathRejected):
        normalize_path(sent)


@pytest.mark.parametrize(
    "sent",
    [
        # Envoy leaves these segments unresolved; Tomcat, Jetty and Spring read `..;x` as `..`.
        "/public/%2e%2e;/private", "/public/%2e%2e;x/private", "/public/.%2e;x/private", "/public/%2e.;x/private",
        "/public/%2E%2E;a=b/admin", "/public/%2e;/x", "/public/%2e%2e;", "/public\\..;\\private", "/public/..%3bx",
        "/public/%2e%2e%3B/x", "/public/.%3b/x",
    ],
)
def test_dot_segments_with_parameters_left_after_normalizing_are_refused(sent):
    with pytest.raises(PathRejected, match="dot segment with parameters"):
        normalize_path(sent)


_PATHS = st.text(alphabet="/.%2eEfF5cC3bB;\\ab?~|", max_size=24).map(lambda s: "/" + s)


@given(_PATHS)
def test_normalizing_twice_changes_nothing(path):
    try:
        once = normalize_path(path)
    except PathRejected:
        return
    assert normalize_path(once) == once
    path = once.partition("?")[0]
    assert "/../" not in path + "/" and ("//" not in path or path == "//")


_PUBLIC_ONLY = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: s-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: s}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules: {http: [{method: GET, path: "/public/.*"}]}
"""


@pytest.mark.parametrize(
    "path, verdict, says",
    [
        pytest.param("/public/x", "allowed", "matches", id="plain"),
        pytest.param("/public/../private", "denied", "normalized: /private", id="dot-dot"),
        pytest.param("/public/%2e%2e/private", "denied", "normalized: /private", id="encoded-dots"),
        pytest.param("/public/..%2fprivate", "denied", "answers 400", id="escaped-slash"),
        pytest.param("/public/%2e%2e;/private", "denied", "answers 400: dot segment with parameters", id="encoded-dots-with-params"),
        pytest.param("/public/..;/private", "denied", "normalized: /private", id="dots-with-params"),
        pytest.param("/public//../private", "allowed", "matches", id="stays-inside"),
    ],
)
def test_trace_judges_the_normalized_path(path, verdict, says):
    from tests.policy.policytest_helpers import get, run_trace

    result, _ = run_trace(_PUBLIC_ONLY, "labels:app=c", "labels:app=s", 80, http=get("GET", path))
    assert (result.verdict, result.layer) == (verdict, "l7"), result.reason
    assert says in result.reason
    assert result.proxy_status == (None if verdict == "allowed" else 400 if "400" in says else 403)
