"""HTTP header rules as `trace` judges them: a header named in a rule must
satisfy it on every line it is sent on (the proxy renders the same, checked
against the real Envoy in tests/xds/test_envoy_header_rules.py)."""

from __future__ import annotations

import json

import pytest

from policy.trace import HTTPRequest
from tests.policy.policytest_helpers import run_trace

_TOKEN_RULES = """
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: s-ingress, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: s}}
  ingress:
  - fromEndpoints: [{matchLabels: {app: c}}]
    toPorts:
    - ports: [{port: "80", protocol: TCP}]
      rules:
        http:
        - {path: "/headers", headers: ["X-Token: secret"]}
        - {path: "/matches", headerMatches: [{name: X-Token, value: secret}]}
        - {path: "/present", headerMatches: [{name: X-Debug}]}
"""


@pytest.mark.parametrize(
    "path, headers, verdict",
    [
        pytest.param("/headers", {"X-Token": "secret"}, "allowed", id="one-good-line"),
        pytest.param("/headers", {"X-Token": ("other", "secret")}, "denied", id="bad-line-then-good"),
        pytest.param("/headers", {"X-Token": ("secret", "other")}, "denied", id="good-line-then-bad"),
        pytest.param("/headers", {"X-Token": ("secret", "secret")}, "allowed", id="every-line-good"),
        pytest.param("/headers", {"X-Token": "other, secret"}, "denied", id="comma-joined-is-one-value"),
        pytest.param("/headers", {"X-Token": "secret", "x-token": "other"}, "denied", id="names-differ-only-in-case"),
        pytest.param("/headers", {}, "denied", id="missing"),
        pytest.param("/matches", {"x-token": ("other", "secret")}, "denied", id="headerMatches-bad-line"),
        pytest.param("/matches", {"x-token": ("secret", "secret")}, "allowed", id="headerMatches-every-line-good"),
        pytest.param("/present", {"X-Debug": ("", "1")}, "allowed", id="presence-on-several-lines"),
        pytest.param("/present", {}, "denied", id="presence-missing"),
    ],
)
def test_a_header_rule_holds_on_every_line_of_the_header(path, headers, verdict):
    result, _ = run_trace(_TOKEN_RULES, "labels:app=c", "labels:app=s", 80, http=HTTPRequest("GET", path, "", headers))
    assert (result.verdict, result.layer) == (verdict, "l7"), result.reason
    assert result.proxy_status == (None if verdict == "allowed" else 403)


@pytest.mark.parametrize(
    "header_args, code, verdict",
    [
        pytest.param(["--header", "X-Token: secret"], 0, "allowed", id="one-line"),
        pytest.param(["--header", "X-Token: other", "--header", "x-token: secret"], 1, "denied", id="name-twice-is-two-lines"),
        pytest.param(["--header", "X-Token: secret", "--header", "X-Token: secret"], 0, "allowed", id="two-good-lines"),
    ],
)
def test_trace_cli_sends_a_header_given_twice_on_two_lines(capsys, tmp_path, header_args, code, verdict):
    from agent.cli import main

    policy = tmp_path / "s.yaml"
    policy.write_text(_TOKEN_RULES)
    argv = ["policy", "trace", "--policies", str(policy), "--src", "labels:app=c", "--dst", "labels:app=s", "--dport", "80",
            "--path", "/headers", *header_args, "-o", "json"]
    got = main(argv)
    data = json.loads(capsys.readouterr().out)
    assert (got, data["verdict"], data["proxy_status"]) == (code, verdict, None if code == 0 else 403)
