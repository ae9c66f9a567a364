"""serverNames (TLS SNI) rules: what the parser accepts and refuses (field
path and reason), what the compiler makes of them (an SNI listener per
redirected port, HTTP rules on the same port fail closed), and what trace
answers for a connection naming a server."""

from __future__ import annotations

import pytest
from policytest_helpers import policies, run_trace

from policy.compiled import ANY_CONNECTION, Direction, L7Kind, SNIRule, Verdict
from policy.load import load_text
from policy.server_names import matches

WEB = "labels:app=web"
CLIENT = "labels:app=client"


def cnp(rule: str, section: str = "egress", name: str = "p", selector: str = "app: client") -> str:
    body = "\n".join("    " + line for line in rule.strip("\n").splitlines())
    return (
        f"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n"
        f"  endpointSelector: {{matchLabels: {{{selector}}}}}\n  {section}:\n  -\n{body}\n---\n"
    )


def sni_port(names: str, port: str = "ports: [{port: '443', protocol: TCP}]") -> str:
    return f"toPorts:\n- {port}\n  serverNames: {names}\n"


# ------------------------------------------------------------------ parsing

BAD = [
    pytest.param(cnp(sni_port("['api.example.com', '']")), "spec.egress[0].toPorts[0].serverNames[1]",
                 "empty server name is not allowed", id="empty-name"),
    pytest.param(cnp(sni_port("['api.example.com']") + "  rules: {http: [{method: GET}]}\n"),
                 "spec.egress[0].toPorts[0].serverNames",
                 "ServerNames are not allowed with L7 rules without TLS termination", id="with-http-rules"),
    pytest.param(cnp(sni_port("[a.example.com]", "ports: [{port: '443', protocol: UDP}]")),
                 "spec.egress[0].toPorts[0].ports[0].protocol", "serverNames need TCP, got UDP", id="udp"),
    pytest.param(cnp(sni_port("[a.example.com]", "ports: [{port: '443', endPort: 444}]")),
                 "spec.egress[0].toPorts[0].ports[0]", "serverNames need a single port, got a port range", id="range"),
    pytest.param(cnp("toPorts:\n- serverNames: [a.example.com]\n"), "spec.egress[0].toPorts[0].ports",
                 "serverNames need a single port, got all ports", id="all-ports"),
    pytest.param(cnp(sni_port("[a.example.com]"), section="egressDeny"), "spec.egressDeny[0].toPorts[0].serverNames",
                 "serverNames are not allowed in deny rules", id="deny"),
    pytest.param(cnp(sni_port("['a.*.example.com']")), "spec.egress[0].toPorts[0].serverNames[0]",
                 "a wildcard must be the whole leftmost label", id="wildcard-inside"),
    pytest.param(cnp(sni_port("['*']")), "spec.egress[0].toPorts[0].serverNames[0]",
                 "needs a domain after it", id="bare-wildcard"),
    pytest.param(cnp(sni_port("['api.example.com.']")), "spec.egress[0].toPorts[0].serverNames[0]",
                 "ends with a dot", id="trailing-dot"),
    pytest.param(cnp(sni_port("['10.0.0.1']")), "spec.egress[0].toPorts[0].serverNames[0]",
                 "is an IP address", id="ip-address"),
    pytest.param(cnp(sni_port("['bad name.example.com']")), "spec.egress[0].toPorts[0].serverNames[0]",
                 "label 'bad name'", id="space"),
    pytest.param(cnp(sni_port("[42]")), "spec.egress[0].toPorts[0].serverNames[0]", "must be a string, got a number",
                 id="not-a-string"),
    pytest.param(cnp("toPorts:\n- ports: [{port: '443'}]\n  terminatingTLS: {secret: {name: s}}\n"),
                 "spec.egress[0].toPorts[0].terminatingTLS", "not supported: TLS interception", id="terminating-tls"),
    pytest.param(cnp("toPorts:\n- ports: [{port: '443'}]\n  originatingTLS: {secret: {name: s}}\n"),
                 "spec.egress[0].toPorts[0].originatingTLS", "not supported: TLS interception", id="originating-tls"),
]


@pytest.mark.parametrize("text,field,reason", BAD)
def test_bad_server_names_name_field_and_reason(text, field, reason):
    res = load_text(text, "bad.yaml")
    assert res.policies == []
    got = [e for e in res.errors if e.field == field]
    assert got, [str(e) for e in res.errors]
    assert reason in got[0].reason


def test_names_are_lower_cased_deduplicated_and_allowed_both_ways():
    text = cnp(sni_port("[API.Example.com, api.example.com, '*.Example.org', '**.example.net']"))
    text += cnp(sni_port("[web.example.com]"), section="ingress", name="q")
    egress, ingress = policies(text)
    (pr,) = egress.specs[0].rules[0].port_rules
    assert pr.server_names == ("api.example.com", "*.example.org", "**.example.net")
    assert pr.http is None
    assert ingress.specs[0].rules[0].port_rules[0].server_names == ("web.example.com",)


def test_empty_server_names_is_an_l4_rule():
    (p,) = policies(cnp(sni_port("[]")))
    assert p.specs[0].rules[0].port_rules[0].server_names is None


@pytest.mark.parametrize("pattern,name,expected", [
    ("api.example.com", "api.example.com", True),
    ("api.example.com", "API.example.COM", True),
    ("api.example.com", "x.api.example.com", False),
    ("*.example.com", "a.example.com", True),
    ("*.example.com", "a.b.example.com", False),
    ("*.example.com", "example.com", False),
    ("*.example.com", "aexample.com", False),
    ("**.example.com", "a.example.com", True),
    ("**.example.com", "a.b.example.com", True),
    ("**.example.com", "example.com", False),
    ("**.example.com", ".example.com", False),
])
def test_pattern_semantics(pattern, name, expected):
    assert matches(pattern, name) is expected


# ------------------------------------------------------------------ compile

EGRESS_SNI = cnp(
    "toEndpoints: [{matchLabels: {app: web}}]\n" + sni_port("[api.example.com, '*.example.org']")
)


def test_sni_rule_redirects_its_port_to_an_sni_listener():
    _, st = run_trace(EGRESS_SNI, CLIENT, WEB, 443)
    client = st.endpoints[101]
    web_id = st.endpoints[102].identity
    (l7,) = client.l7
    assert (l7.kind, l7.key.direction, l7.key.port) == (L7Kind.SNI, Direction.EGRESS, 443)
    (rule,) = l7.peer_rules
    assert rule.identities == frozenset({web_id}) and rule.http is None
    assert rule.sni == SNIRule(("api.example.com", "*.example.org"))
    redirect = [e for e in client.entries if e.key.identity == web_id]
    assert [(e.key.ports.lo, e.verdict, e.proxy_port) for e in redirect] == [(443, Verdict.REDIRECT, l7.proxy_port)]


def test_l4_allow_on_an_sni_port_admits_any_connection():
    text = EGRESS_SNI + cnp("toEndpoints: [{matchLabels: {app: web}}]\ntoPorts: [{ports: [{port: '443'}]}]\n", name="l4")
    _, st = run_trace(text, CLIENT, WEB, 443)
    (l7,) = st.endpoints[101].l7
    assert {r.sni for r in l7.peer_rules} == {SNIRule(("api.example.com", "*.example.org")), ANY_CONNECTION}


def test_http_and_sni_on_one_port_fail_closed_for_http_only_peers():
    text = cnp("toEndpoints: [{matchLabels: {app: web}}]\n" + sni_port("[api.example.com]"))
    text += cnp("toEndpoints: [{matchLabels: {app: web}}]\ntoPorts:\n- ports: [{port: '443'}]\n  rules: {http: [{}]}\n", name="h")
    res, st = run_trace(text, CLIENT, WEB, 443, sni="other.example.com")
    (l7,) = st.endpoints[101].l7
    assert l7.kind == L7Kind.SNI
    assert all(r.sni is not None for r in l7.peer_rules)
    assert [str(r) for r in l7.shadowed] == ["CiliumNetworkPolicy default/h spec.egress[0]"]
    assert not res.allowed
    assert "HTTP rules on port 443 admit nothing" in res.reason and "default/h" in res.reason


# ------------------------------------------------------------------ trace


@pytest.mark.parametrize("sni,allowed", [
    ("api.example.com", True),
    ("API.EXAMPLE.COM", True),
    ("x.example.org", True),
    ("x.y.example.org", False),
    ("evil.example.com", False),
    (None, False),
])
def test_trace_judges_the_server_name(sni, allowed):
    from policy.trace import HTTPRequest

    http = HTTPRequest() if sni is None else None  # no --sni: a plain connection
    res, _ = run_trace(EGRESS_SNI, CLIENT, WEB, 443, http=http, sni=sni)
    assert res.allowed is allowed, res.reason
    assert res.layer == "l7" and res.redirected
    if not allowed:
        assert "closes the connection" in res.reason


def test_trace_without_sni_says_the_proxy_decides():
    res, _ = run_trace(EGRESS_SNI, CLIENT, WEB, 443)
    assert res.allowed and res.layer == "l3l4" and "--sni" in res.reason


def test_ingress_sni_rule_binds_the_receiver():
    text = cnp("fromEndpoints: [{matchLabels: {app: client}}]\n" + sni_port("[web.example.com]"), section="ingress",
               selector="app: web")
    ok, _ = run_trace(text, CLIENT, WEB, 443, sni="web.example.com")
    bad, _ = run_trace(text, CLIENT, WEB, 443, sni="other.example.com")
    assert ok.allowed and not bad.allowed
    assert "endpoint 102 ingress" in bad.reason


# ------------------------------------------------------------------ the CLI

SNI_FILE = cnp("toEndpoints: [{matchLabels: {app: web}}]\n" + sni_port("[api.example.com]"))


@pytest.mark.parametrize("sni,code,verdict", [
    ("API.example.com", 0, "allowed"),
    ("evil.example.com", 1, "denied"),
])
def test_cli_trace_sni(capsys, tmp_path, sni, code, verdict):
    from agent.cli import main

    f = tmp_path / "sni.yaml"
    f.write_text(SNI_FILE)
    got = main(["policy", "trace", "--policies", str(f), "--src", CLIENT, "--dst", WEB, "--dport", "443", "--sni", sni,
                "-o", "json"])
    import json

    out = json.loads(capsys.readouterr().out)
    assert (got, out["verdict"], out["layer"]) == (code, verdict, "l7")


def test_cli_trace_refuses_a_wildcard_as_sni(capsys, tmp_path):
    from agent.cli import main

    f = tmp_path / "sni.yaml"
    f.write_text(SNI_FILE)
    got = main(["policy", "trace", "--policies", str(f), "--src", CLIENT, "--dst", WEB, "--dport", "443", "--sni", "*.example.com"])
    assert got == 2 and "bad --sni" in capsys.readouterr().err


# ------------------------------------------------------------------ policy diff


def test_diff_shows_a_server_name_change_with_a_sample_trace_agrees_with():
    from ipaddress import IPv4Address

    from policy.diff import diff_policies
    from policy.diff_report import rule_text
    from policy.endpoint import Endpoint
    from policy.trace import Party, trace

    def sni(*names: str) -> str:
        return cnp("toEndpoints: [{matchLabels: {app: web}}]\n" + sni_port("[" + ", ".join(repr(n) for n in names) + "]"))

    eps = [Endpoint(1, {"app": "client"}, IPv4Address("10.0.0.1")), Endpoint(2, {"app": "web"}, IPv4Address("10.0.0.2"))]
    old, new = policies(sni("api.example.com", "*.example.org")), policies(sni("api.example.com", "**.example.net"))
    d = diff_policies(old, new, eps)
    got = {(c.layer, c.old, c.new, rule_text(c.http_rule), c.sample.server_name) for c in d.changes}
    assert got == {
        ("l7", "allowed", "denied", "TLS to api.example.com, *.example.org", "x.example.org"),
        ("l7", "denied", "allowed", "TLS to api.example.com, **.example.net", "x.y.example.net"),
    }
    # What diff reports is what trace answers for its sample.
    from policy.compiler import compile_state

    for c in d.changes:
        for pols, want in ((old, c.old), (new, c.new)):
            st = compile_state(pols, eps)
            assert trace(st, Party.endpoint(1), Party.endpoint(2), 443, sni=c.sample.server_name).verdict == want
    assert d.changes[0].to_dict()["sample"] == {"tls_server_name": d.changes[0].sample.server_name}
    from agent.cli.policy_diff import change_line

    assert {change_line(c) for c in d.changes} == {
        "443/TCP        TLS allowed -> denied: TLS to api.example.com, *.example.org (rule removed)  e.g. TLS with server name x.example.org",
        "443/TCP        TLS denied -> allowed: TLS to api.example.com, **.example.net (rule added)  e.g. TLS with server name x.y.example.net",
    }


def test_diff_from_l4_to_sni_denies_other_names_and_plain_connections():
    from ipaddress import IPv4Address

    from policy.diff import diff_policies
    from policy.endpoint import Endpoint

    eps = [Endpoint(1, {"app": "client"}, IPv4Address("10.0.0.1")), Endpoint(2, {"app": "web"}, IPv4Address("10.0.0.2"))]
    l4 = policies(cnp("toEndpoints: [{matchLabels: {app: web}}]\ntoPorts: [{ports: [{port: '443', protocol: TCP}]}]\n"))
    sni = policies(cnp("toEndpoints: [{matchLabels: {app: web}}]\n" + sni_port("[api.example.com]")))
    d = diff_policies(l4, sni, eps)
    (c,) = d.changes
    assert (c.layer, c.old, c.new, c.ports.lo, c.protocol.name) == ("l7", "allowed", "denied", 443, "TCP")
    assert c.http_rule is None  # the L4 allow's "any connection" went away
