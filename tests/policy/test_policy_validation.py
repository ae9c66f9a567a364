"""Bad input: every error names the file, document, field path and reason,
and a bad file or document never stops the good ones from loading."""

from __future__ import annotations

from pathlib import Path

import pytest

from policy.errors import PolicyErrors
from policy.load import load_paths, load_text
from policy.parse import parse_object


def cnp_rule(rule: str, section: str = "ingress") -> str:
    body = "\n".join("    " + line for line in rule.strip("\n").splitlines())
    return (
        "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n"
        f"  endpointSelector: {{matchLabels: {{app: web}}}}\n  {section}:\n  -\n{body}\n"
    )


HTTP_PORT = "toPorts:\n- ports: [{port: '80', protocol: TCP}]\n  rules:\n    http:\n    - {method: GET}\n"

CASES = [
    pytest.param(cnp_rule(HTTP_PORT + "    - {path: '/a(?=b)'}\n"), "spec.ingress[0].toPorts[0].rules.http[1].path",
                 "invalid RE2 regex '/a(?=b)'", id="re2-rejects-lookahead"),
    pytest.param(cnp_rule("toPorts:\n- rules: {http: [{method: '(GET'}]}\n  ports: [{port: '80'}]\n"),
                 "spec.ingress[0].toPorts[0].rules.http[0].method", "invalid RE2 regex", id="re2-unbalanced"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '70000'}]\n"), "spec.ingress[0].toPorts[0].ports[0].port",
                 "port 70000 out of range 0-65535", id="port-out-of-range"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '80', protocol: SCTPX}]\n"), "spec.ingress[0].toPorts[0].ports[0].protocol",
                 "unknown protocol 'SCTPX'", id="unknown-protocol"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '80', protocol: ICMP}]\n"), "spec.ingress[0].toPorts[0].ports[0].protocol",
                 "ICMP types are matched with `icmps`", id="icmp-protocol-in-toports"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '80', protocol: SCTP}]\n  rules: {http: [{}]}\n"),
                 "spec.ingress[0].toPorts[0].ports[0].protocol", "HTTP rules need TCP, got SCTP", id="http-with-sctp"),
    pytest.param(cnp_rule("fromEntities: [galaxy]\n"), "spec.ingress[0].fromEntities[0]", "unknown entity 'galaxy'",
                 id="unknown-entity"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '90', endPort: 80}]\n"), "spec.ingress[0].toPorts[0].ports[0].endPort",
                 "endPort 80 is below port 90", id="endport-below-port"),
    pytest.param(cnp_rule("fromCIDR: [10.0.0.0/33]\n"), "spec.ingress[0].fromCIDR[0]", "invalid CIDR '10.0.0.0/33'",
                 id="invalid-cidr"),
    pytest.param(cnp_rule("fromCIDR: [10.0.0.1/8]\n"), "spec.ingress[0].fromCIDR[0]", "has host bits set", id="cidr-host-bits"),
    pytest.param(cnp_rule("fromCIDRSet:\n- {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}\n"), "spec.ingress[0].fromCIDRSet[0].except[0]",
                 "11.0.0.0/16 is not inside 10.0.0.0/8", id="except-outside-cidr"),
    pytest.param(cnp_rule(HTTP_PORT, section="ingressDeny"), "spec.ingressDeny[0].toPorts[0].rules",
                 "L7 rules are not allowed in deny rules", id="http-in-deny"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '80', endPort: 81}]\n  rules: {http: [{}]}\n"),
                 "spec.ingress[0].toPorts[0].ports[0]", "HTTP rules need a single port, got a port range", id="http-with-endport"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '53', protocol: UDP}]\n  rules: {http: [{}]}\n"),
                 "spec.ingress[0].toPorts[0].ports[0].protocol", "HTTP rules need TCP, got UDP", id="http-with-udp"),
    pytest.param(cnp_rule("toPorts:\n- rules: {http: [{}]}\n"), "spec.ingress[0].toPorts[0].ports",
                 "HTTP rules need a single port, got all ports", id="http-without-port"),
    pytest.param(cnp_rule("toFQDNs: [{matchName: example.com}]\n", section="egressDeny"), "spec.egressDeny[0].toFQDNs",
                 "not supported: toFQDNs in egressDeny", id="tofqdns-in-deny"),
    pytest.param(cnp_rule("toFQDNs: [{matchName: example.com, matchPattern: '*.example.com'}]\n", section="egress"),
                 "spec.egress[0].toFQDNs[0]", "must set exactly one of matchName and matchPattern", id="tofqdns-name-and-pattern"),
    pytest.param(cnp_rule("toFQDNs: [{}]\n", section="egress"), "spec.egress[0].toFQDNs[0]",
                 "must set exactly one of matchName and matchPattern", id="tofqdns-empty-item"),
    pytest.param(cnp_rule("toFQDNs: [{matchName: 'a..example.com'}]\n", section="egress"), "spec.egress[0].toFQDNs[0].matchName",
                 "has an empty label", id="tofqdns-empty-label"),
    pytest.param(cnp_rule("toFQDNs: [{matchPattern: 'ex ample.com'}]\n", section="egress"), "spec.egress[0].toFQDNs[0].matchPattern",
                 "may contain only", id="tofqdns-bad-pattern-char"),
    pytest.param(cnp_rule("toFQDNs: [{matchName: a.com}]\ntoEndpoints: [{}]\n", section="egress"), "spec.egress[0].toFQDNs",
                 "toFQDNs cannot be combined with toEndpoints", id="tofqdns-with-toendpoints"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '53'}]\n  rules: {dns: [{matchPattern: '*'}]}\n"),
                 "spec.ingress[0].toPorts[0].rules.dns", "DNS rules apply to egress only", id="dns-on-ingress"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '53', protocol: SCTP}]\n  rules: {dns: [{matchPattern: '*'}]}\n", section="egress"),
                 "spec.egress[0].toPorts[0].ports[0].protocol", "DNS rules need UDP or TCP, got SCTP", id="dns-with-sctp"),
    pytest.param(cnp_rule("toPorts:\n- rules: {dns: [{matchPattern: '*'}]}\n", section="egress"),
                 "spec.egress[0].toPorts[0].ports", "DNS rules need a single port, got all ports", id="dns-without-port"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '53'}]\n  rules: {dns: [{matchName: x.com}], http: [{}]}\n", section="egress"),
                 "spec.egress[0].toPorts[0].rules", "multiple L7 protocol rule types", id="dns-and-http"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '53'}]\n  rules: {dns: [{matchPattern: 'a.***.com'}]}\n", section="egress"),
                 "spec.egress[0].toPorts[0].rules.dns[0].matchPattern", "at most two '*'", id="dns-triple-star"),
    pytest.param(cnp_rule("toServices: [{k8sService: {serviceName: x}}]\n", section="egressDeny"), "spec.egressDeny[0].toServices",
                 "not supported: toServices in egressDeny", id="unsupported-toservices-in-deny"),
    pytest.param(cnp_rule("fromRequires: [{matchLabels: {a: b}}]\n"), "spec.ingress[0].fromRequires", "not supported: fromRequires",
                 id="unsupported-fromrequires"),
    pytest.param(cnp_rule("icmps: [{fields: [{type: 8}]}]\ntoPorts: [{ports: [{port: '80'}]}]\n"), "spec.ingress[0].toPorts",
                 "toPorts cannot be combined with icmps", id="icmps-with-toports"),
    pytest.param(cnp_rule("icmps: [{fields: [{type: NeighborSolicitation}]}]\n"), "spec.ingress[0].icmps[0].fields[0].type",
                 "NeighborSolicitation is an IPv6 type: set `family`", id="icmp-name-of-other-family"),
    pytest.param(cnp_rule("icmps: [{fields: [{type: 256, family: IPv6}]}]\n"), "spec.ingress[0].icmps[0].fields[0].type",
                 "ICMP type 256 out of range 0-255", id="icmp-type-out-of-range"),
    pytest.param(cnp_rule("icmps: [{fields: [{type: 8, family: ipv4}]}]\n"), "spec.ingress[0].icmps[0].fields[0].family",
                 "unknown family 'ipv4': expected IPv4 or IPv6", id="icmp-family"),
    pytest.param(cnp_rule("authentication: {mode: required}\n"), "spec.ingress[0].authentication", "not supported: mutual",
                 id="unsupported-authentication"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: '9092'}]\n  rules: {kafka: [{topic: t}]}\n"), "spec.ingress[0].toPorts[0].rules.kafka",
                 "not supported: Kafka", id="unsupported-kafka"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: http_alt}]\n"), "spec.ingress[0].toPorts[0].ports[0].port",
                 "not a port name (a port name has letters, digits and hyphens only)", id="bad-port-name"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: http, endPort: 90}]\n"), "spec.ingress[0].toPorts[0].ports[0].endPort",
                 "endPort needs a numeric port, got the name 'http'", id="named-port-range"),
    pytest.param(cnp_rule("toPorts:\n- ports: [{port: a-very-long-port-name}]\n"), "spec.ingress[0].toPorts[0].ports[0].port",
                 "1 to 15 characters", id="port-name-too-long"),
    pytest.param(cnp_rule("fromEndpoint: [{}]\n"), "spec.ingress[0].fromEndpoint", "unknown field", id="unknown-field-typo"),
    pytest.param(cnp_rule("toEndpoints: [{}]\n"), "spec.ingress[0].toEndpoints", "belongs to egress rules", id="egress-field-in-ingress"),
    pytest.param(cnp_rule("fromEndpoints: [{matchLabels: {a: 1}}]\n"), "spec.ingress[0].fromEndpoints[0].matchLabels.a",
                 "label value must be a string, got a number", id="label-value-not-string"),
    pytest.param(cnp_rule("fromEndpoints: [{matchExpressions: [{key: a, operator: Has}]}]\n"),
                 "spec.ingress[0].fromEndpoints[0].matchExpressions[0].operator", "unknown operator 'Has'", id="bad-operator"),
    pytest.param(cnp_rule("fromEndpoints: [{matchExpressions: [{key: a, operator: In}]}]\n"),
                 "spec.ingress[0].fromEndpoints[0].matchExpressions[0].values", "operator In needs at least one value", id="in-without-values"),
    pytest.param(cnp_rule("fromEndpoints: [{matchLabels: {'reserved:host': '', app: x}}]\n"),
                 "spec.ingress[0].fromEndpoints[0].matchLabels.reserved:host", "not supported: reserved labels combined", id="reserved-mixed"),
    pytest.param(cnp_rule(HTTP_PORT + "    - {headers: ['bad name: x']}\n"), "spec.ingress[0].toPorts[0].rules.http[1].headers[0]",
                 "bad header", id="bad-header"),
    pytest.param(cnp_rule(HTTP_PORT + "    - {headerMatches: [{name: X, secret: {name: s}}]}\n"),
                 "spec.ingress[0].toPorts[0].rules.http[1].headerMatches[0].secret", "not supported", id="header-secret"),
    pytest.param("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  ingress: [{}]\n",
                 "spec.endpointSelector", "required", id="missing-endpoint-selector"),
    pytest.param("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec:\n  nodeSelector: {}\n",
                 "spec.nodeSelector", "nodeSelector needs a CiliumClusterwideNetworkPolicy", id="node-selector-in-cnp"),
    pytest.param("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {}\nspec: {endpointSelector: {}}\n",
                 "metadata.name", "required", id="missing-name"),
    pytest.param("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p}\n", "kind", "unknown kind 'ConfigMap'", id="unknown-kind"),
    pytest.param("apiVersion: cilium.io/v1\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\n",
                 "apiVersion", "needs apiVersion cilium.io/v2", id="wrong-api-version"),
    pytest.param("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: p}\nspec: {endpointSelector: {}}\nextra: 1\n",
                 "extra", "unknown field", id="unknown-top-level-field"),
    pytest.param("- just\n- a list\n", "", "must be a mapping, got a list", id="not-a-mapping"),
    pytest.param("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n",
                 "spec.ingress[0].from[0]", "ipBlock cannot be combined", id="np-ipblock-with-selector"),
    pytest.param("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  policyTypes: [Sideways]\n",
                 "spec.policyTypes[0]", "unknown policy type 'Sideways'", id="np-bad-policy-type"),
    pytest.param("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: 80, endPort: 79}]\n",
                 "spec.ingress[0].ports[0].endPort", "endPort 79 is below port 80", id="np-endport-below-port"),
    pytest.param("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  ingress: []\n",
                 "spec.podSelector", "required", id="np-missing-podselector"),
    pytest.param("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\nspec:\n  podSelector: {}\n  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/4]}\n",
                 "spec.ingress[0].from[0].ipBlock.except[0]", "invalid CIDR", id="np-except-invalid"),
]


@pytest.mark.parametrize("text,field,reason", CASES)
def test_error_names_file_field_and_reason(text, field, reason):
    res = load_text(text, "policies/bad.yaml")
    assert res.policies == []
    matching = [e for e in res.errors if e.field == field]
    assert matching, [str(e) for e in res.errors]
    assert reason in matching[0].reason
    assert str(matching[0]).startswith(f"policies/bad.yaml: {field}: " if field else "policies/bad.yaml: ")


def test_multi_document_errors_carry_document_index():
    good = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: good}\nspec: {endpointSelector: {}}\n"
    bad = cnp_rule("toPorts:\n- ports: [{port: '99999'}]\n")
    res = load_text(good + "---\n" + bad, "f.yaml")
    assert [p.name for p in res.policies] == ["good"]
    assert [str(e) for e in res.errors] == ["f.yaml:1: spec.ingress[0].toPorts[0].ports[0].port: port 99999 out of range 0-65535"]


def test_all_errors_of_a_document_are_reported():
    text = cnp_rule("fromEntities: [nope]\ntoPorts:\n- ports: [{port: '-1'}]\n")
    res = load_text(text, "f.yaml")
    assert {e.field for e in res.errors} == {"spec.ingress[0].fromEntities[0]", "spec.ingress[0].toPorts[0].ports[0].port"}


def test_directory_with_one_bad_file_loads_the_good_ones(tmp_path: Path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.yaml").write_text("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n")
    (tmp_path / "sub" / "b.yml").write_text("key: [unclosed\n")
    (tmp_path / "sub" / "c.json").write_text('{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "c"}, "spec": {"podSelector": {}}}')
    (tmp_path / "notes.txt").write_text("not a policy")
    res = load_paths([tmp_path])
    assert sorted(p.key for p in res.policies) == ["CiliumNetworkPolicy/default/a", "NetworkPolicy/default/c"]
    assert len(res.errors) == 1
    assert str(res.errors[0]).startswith(f"{tmp_path / 'sub' / 'b.yml'}: invalid YAML at line 2")


def test_missing_path_is_an_error_not_a_crash(tmp_path: Path):
    res = load_paths([tmp_path / "nope.yaml"])
    assert [e.reason for e in res.errors] == ["no such file or directory"]


def test_later_file_with_same_key_replaces_earlier_with_warning():
    # The star-wars stages share a name so stage 2 replaces stage 1, as kubectl apply would.
    root = Path(__file__).resolve().parents[2] / "examples" / "starwars"
    res = load_paths([root])
    assert res.errors == []
    assert [p.source for p in res.policies] == [str(root / "2-l7.yaml")]
    assert res.policies[0].specs[0].rules[0].port_rules[0].http is not None
    assert len(res.warnings) == 1 and "replaces the one from" in res.warnings[0]


def test_parse_object_raises_policy_errors_for_agent_objects():
    obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "x", "namespace": "ns"},
           "spec": {"endpointSelector": {}, "ingress": [{"toPorts": [{"ports": [{"port": 80, "endPort": 1}]}]}]},
           "status": {"ignored": True}}
    with pytest.raises(PolicyErrors) as info:
        parse_object(obj, "k8s:ns/x")
    assert [str(e) for e in info.value.errors] == ["k8s:ns/x: spec.ingress[0].toPorts[0].ports[0].endPort: endPort 1 is below port 80"]


def test_parse_object_gives_stable_key_and_source():
    obj = {"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy", "metadata": {"name": "x"},
           "spec": {"endpointSelector": {}}}
    p = parse_object(obj, "src.yaml", 3)
    assert (p.key, p.source, p.doc, p.ref_name) == ("CiliumClusterwideNetworkPolicy/x", "src.yaml", 3, "x")
