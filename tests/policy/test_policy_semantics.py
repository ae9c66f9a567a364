"""What a user sees for a flow, rule by rule: Cilium's semantics for
CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy and Kubernetes'
semantics for NetworkPolicy, asked through trace() on the compiled state."""

from __future__ import annotations

from pathlib import Path

import pytest
from policytest_helpers import get, run_trace

from policy.compiled import Protocol

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SW_L3L4 = (EXAMPLES / "starwars/1-l3l4.yaml").read_text()
SW_L7 = (EXAMPLES / "starwars/2-l7.yaml").read_text()
HTTP_RULES = (EXAMPLES / "cilium/http-rules.yaml").read_text()
NP_DOCS = (EXAMPLES / "kubernetes/allow-frontend.yaml").read_text()

DEATHSTAR = "labels:org=empire,class=deathstar"
TIE = "labels:org=empire,class=tiefighter"
XWING = "labels:org=alliance,class=xwing"


def cnp(spec: str, name: str = "p", ns: str = "default", kind: str = "CiliumNetworkPolicy") -> str:
    md = f"  name: {name}\n" + (f"  namespace: {ns}\n" if kind != "CiliumClusterwideNetworkPolicy" else "")
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata:\n{md}spec:\n{body}\n"


def np_(spec: str, name: str = "np", ns: str = "default") -> str:
    body = "\n".join("  " + line for line in spec.strip("\n").splitlines())
    return f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n{body}\n"


SEL_WEB = "endpointSelector:\n  matchLabels:\n    app: web\n"
ALLOW_FROM_CLIENT_80 = cnp(
    SEL_WEB
    + """
ingress:
- fromEndpoints:
  - matchLabels: {app: client}
  toPorts:
  - ports:
    - {port: "80", protocol: TCP}
"""
)

CASES = [
    # -------- star wars
    pytest.param("", TIE, DEATHSTAR, 80, "TCP", None, "allowed", "l3l4", id="no-policy-allows-everything"),
    pytest.param(SW_L3L4, TIE, DEATHSTAR, 80, "TCP", None, "allowed", "l3l4", id="sw-l3l4-empire-allowed"),
    pytest.param(SW_L3L4, XWING, DEATHSTAR, 80, "TCP", None, "denied", "l3l4", id="sw-l3l4-alliance-dropped"),
    pytest.param(SW_L3L4, TIE, DEATHSTAR, 81, "TCP", None, "denied", "l3l4", id="sw-l3l4-other-port-dropped"),
    pytest.param(SW_L3L4, TIE, DEATHSTAR, 80, "UDP", None, "denied", "l3l4", id="sw-l3l4-udp-dropped"),
    pytest.param(SW_L3L4, TIE, DEATHSTAR, 80, "TCP", get("PUT", "/v1/exhaust-port"), "allowed", "l3l4", id="sw-l3l4-no-l7"),
    pytest.param(SW_L7, TIE, DEATHSTAR, 80, "TCP", get("POST", "/v1/request-landing"), "allowed", "l7", id="sw-l7-landing-allowed"),
    pytest.param(SW_L7, TIE, DEATHSTAR, 80, "TCP", get("PUT", "/v1/exhaust-port"), "denied", "l7", id="sw-l7-exhaust-port-403"),
    pytest.param(SW_L7, TIE, DEATHSTAR, 80, "TCP", get("POST", "/v1/request-landing/x"), "denied", "l7", id="sw-l7-path-full-match"),
    pytest.param(SW_L7, XWING, DEATHSTAR, 80, "TCP", get("POST", "/v1/request-landing"), "denied", "l3l4", id="sw-l7-alliance-dropped"),
    pytest.param(SW_L7 + "---\n" + SW_L3L4.replace("rule1", "rule2"), TIE, DEATHSTAR, 80, "TCP", get("PUT", "/v1/exhaust-port"),
                 "allowed", "l7", id="l4-allow-plus-l7-same-peer-allows-all-http"),
    # -------- enforcement
    pytest.param(cnp(SEL_WEB + "ingress:\n- {}\n"), "labels:app=client", "labels:app=web", 80, "TCP", None, "denied", "l3l4",
                 id="cnp-ingress-empty-rule-enforces-allows-nothing"),
    pytest.param(cnp(SEL_WEB + "ingress: []\n"), "labels:app=client", "labels:app=web", 80, "TCP", None, "allowed", "l3l4",
                 id="cnp-ingress-empty-list-does-not-enforce"),
    pytest.param(cnp(SEL_WEB + "ingressDeny:\n- fromEntities: [world]\n"), "labels:app=client", "labels:app=web", 80, "TCP", None,
                 "denied", "l3l4", id="ingress-deny-section-enforces-default-deny"),
    pytest.param(ALLOW_FROM_CLIENT_80, "labels:app=web", "labels:app=other", 443, "TCP", None, "allowed", "l3l4",
                 id="ingress-policy-leaves-egress-open"),
    pytest.param(cnp(SEL_WEB + "egress:\n- toEndpoints:\n  - matchLabels: {app: db}\n"), "labels:app=web", "labels:app=other", 5432, "TCP",
                 None, "denied", "l3l4", id="egress-default-deny"),
    pytest.param(cnp(SEL_WEB + "egress:\n- toEndpoints:\n  - matchLabels: {app: db}\n"), "labels:app=web", "labels:app=db", 5432, "TCP",
                 None, "allowed", "l3l4", id="egress-allow-l3"),
    pytest.param(cnp(SEL_WEB + "enableDefaultDeny: {ingress: false}\ningress:\n- fromEndpoints:\n  - matchLabels: {app: client}\n"),
                 "labels:app=other", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="enable-default-deny-false"),
    # -------- allows are a union, deny wins
    pytest.param(ALLOW_FROM_CLIENT_80, "labels:app=client", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="l4-allow"),
    pytest.param(ALLOW_FROM_CLIENT_80 + "---\n" + cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchLabels: {app: client}\n  toPorts:\n  - ports: [{port: '443'}]\n", name="q"),
                 "labels:app=client", "labels:app=web", 443, "TCP", None, "allowed", "l3l4", id="allows-union-across-policies"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [all]\ningressDeny:\n- fromEndpoints:\n  - matchLabels: {app: client}\n"),
                 "labels:app=client", "labels:app=web", 80, "TCP", None, "denied", "l3l4", id="deny-wins-over-allow-all"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [all]\ningressDeny:\n- fromEndpoints:\n  - matchLabels: {app: client}\n"),
                 "labels:app=other", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="deny-only-hits-its-peer"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- toPorts:\n  - ports: [{port: '80', endPort: 90, protocol: TCP}]\ningressDeny:\n- toPorts:\n  - ports: [{port: '85', protocol: TCP}]\n"),
                 "labels:app=client", "labels:app=web", 85, "TCP", None, "denied", "l3l4", id="deny-port-inside-allowed-range"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- toPorts:\n  - ports: [{port: '80', endPort: 90, protocol: TCP}]\ningressDeny:\n- toPorts:\n  - ports: [{port: '85', protocol: TCP}]\n"),
                 "labels:app=client", "labels:app=web", 86, "TCP", None, "allowed", "l3l4", id="range-around-denied-port-still-allowed"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- toPorts:\n  - ports: [{port: '80'}]\n"), "ip:8.8.8.8", "labels:app=web", 80, "UDP", None,
                 "allowed", "l3l4", id="l4-only-rule-any-peer-any-protocol"),
    # -------- namespaces
    pytest.param(ALLOW_FROM_CLIENT_80, "labels:app=client,k8s:io.kubernetes.pod.namespace=other", "labels:app=web", 80, "TCP", None,
                 "denied", "l3l4", id="cnp-peers-default-to-own-namespace"),
    pytest.param(ALLOW_FROM_CLIENT_80, "labels:app=client", "labels:app=web,k8s:io.kubernetes.pod.namespace=other", 81, "TCP", None,
                 "allowed", "l3l4", id="cnp-selects-only-own-namespace"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchLabels: {app: client, 'k8s:io.kubernetes.pod.namespace': other}\n"),
                 "labels:app=client,io.kubernetes.pod.namespace=other", "labels:app=web", 80, "TCP", None, "allowed", "l3l4",
                 id="cnp-peer-names-namespace"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchLabels: {app: client}\n", kind="CiliumClusterwideNetworkPolicy"),
                 "labels:app=client,k8s:io.kubernetes.pod.namespace=a", "labels:app=web,k8s:io.kubernetes.pod.namespace=b", 80, "TCP", None,
                 "allowed", "l3l4", id="ccnp-no-namespace-scoping"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchLabels: {app: client}\n", kind="CiliumClusterwideNetworkPolicy"),
                 "labels:app=other,k8s:io.kubernetes.pod.namespace=a", "labels:app=web,k8s:io.kubernetes.pod.namespace=b", 80, "TCP", None,
                 "denied", "l3l4", id="ccnp-selects-in-every-namespace"),
    # -------- selectors
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: tier, operator: In, values: [a, b]}\n"),
                 "labels:tier=b", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="match-expressions-in"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: tier, operator: NotIn, values: [a]}\n"),
                 "labels:app=x", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="match-expressions-notin-absent-key"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: tier, operator: NotIn, values: [a]}\n"),
                 "labels:tier=a", "labels:app=web", 80, "TCP", None, "denied", "l3l4", id="match-expressions-notin"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: tier, operator: Exists}\n"),
                 "labels:tier=z", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="match-expressions-exists"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchExpressions:\n    - {key: tier, operator: DoesNotExist}\n"),
                 "labels:tier=z", "labels:app=web", 80, "TCP", None, "denied", "l3l4", id="match-expressions-doesnotexist"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - {}\n"), "labels:x=y", "labels:k8s:app=web", 80, "TCP", None,
                 "allowed", "l3l4", id="empty-selector-and-source-prefix"),
    # -------- entities
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [cluster]\n"), "labels:x=y", "labels:app=web", 80, "TCP", None, "allowed",
                 "l3l4", id="cluster-includes-endpoints"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [cluster]\n"), "entity:host", "labels:app=web", 80, "TCP", None, "allowed",
                 "l3l4", id="cluster-includes-host"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [cluster]\n"), "ip:1.2.3.4", "labels:app=web", 80, "TCP", None, "denied",
                 "l3l4", id="cluster-excludes-world"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [all]\n"), "ip:1.2.3.4", "labels:app=web", 80, "TCP", None, "allowed",
                 "l3l4", id="all-includes-world"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [host]\n"), "labels:x=y", "labels:app=web", 80, "TCP", None, "denied",
                 "l3l4", id="host-excludes-endpoints"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEntities: [remote-node]\n"), "entity:remote-node", "labels:app=web", 80, "TCP", None,
                 "allowed", "l3l4", id="remote-node-entity"),
    pytest.param(cnp(SEL_WEB + "egress:\n- toEntities: [world]\n") + "---\n" + cnp("endpointSelector: {matchLabels: {app: z}}\negress:\n- toCIDR: [20.0.0.0/8]\n", name="q"),
                 "labels:app=web", "ip:20.1.1.1", 443, "TCP", None, "allowed", "l3l4", id="world-includes-cidr-identities"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchLabels: {'reserved:host': ''}\n"), "entity:host", "labels:app=web", 80,
                 "TCP", None, "allowed", "l3l4", id="reserved-label-selector-is-entity"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints:\n  - matchLabels: {'reserved:host': ''}\n"), "labels:x=y", "labels:app=web", 80,
                 "TCP", None, "denied", "l3l4", id="reserved-label-selector-not-endpoints"),
    # -------- CIDR
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromCIDR: [10.0.0.0/8]\n"), "ip:10.1.2.3", "labels:app=web", 80, "TCP", None, "allowed",
                 "l3l4", id="from-cidr"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromCIDR: [10.0.0.0/8]\n"), "ip:11.1.2.3", "labels:app=web", 80, "TCP", None, "denied",
                 "l3l4", id="from-cidr-outside"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromCIDRSet:\n  - {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}\n"), "ip:10.97.0.1",
                 "labels:app=web", 80, "TCP", None, "denied", "l3l4", id="cidr-except-excluded"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromCIDRSet:\n  - {cidr: 10.0.0.0/8, except: [10.96.0.0/12]}\n"), "ip:10.95.0.1",
                 "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="cidr-except-rest-allowed"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromCIDR: [10.0.0.0/8]\n") + "---\n" + cnp("endpointSelector: {matchLabels: {app: z}}\ningress:\n- fromCIDR: [10.1.0.0/16]\n", name="q"),
                 "ip:10.1.2.3", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="nested-cidr-of-other-policy-keeps-allow"),
    pytest.param(cnp(SEL_WEB + "egress:\n- toCIDR: [0.0.0.0/0]\n"), "labels:app=web", "ip:9.9.9.9", 443, "TCP", None, "allowed",
                 "l3l4", id="cidr-zero-is-world"),
    # -------- L7
    pytest.param(HTTP_RULES, "labels:app=x", "labels:app=service", 80, "TCP", get("GET", "/public"), "allowed", "l7", id="http-rule-1"),
    pytest.param(HTTP_RULES, "labels:app=x", "labels:app=service", 80, "TCP",
                 get("PUT", "/v1/x", "api.example.com", **{"x_my_header": "true"}), "allowed", "l7", id="http-rule-2-all-fields"),
    pytest.param(HTTP_RULES, "labels:app=x", "labels:app=service", 80, "TCP",
                 get("PUT", "/v1/x", "api.example.com", **{"X_MY_HEADER": "true"}), "allowed", "l7", id="http-header-name-case-insensitive"),
    pytest.param(HTTP_RULES, "labels:app=x", "labels:app=service", 80, "TCP", get("PUT", "/v1/x", "api.example.com"), "denied", "l7",
                 id="http-fields-anded-missing-header"),
    pytest.param(HTTP_RULES, "labels:app=x", "labels:app=service", 80, "TCP",
                 get("PUT", "/v1/x", "api.example.com", x_my_header="false"), "denied", "l7", id="http-header-value-exact"),
    pytest.param(HTTP_RULES, "labels:app=x", "labels:app=service", 80, "TCP", get("GET", "/public2"), "denied", "l7", id="http-path-anchored"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- toPorts:\n  - ports: [{port: '80'}]\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{method: GET}]}\n"),
                 "labels:app=client", "labels:app=web", 80, "TCP", get("PUT", "/"), "allowed", "l7", id="l4-allow-via-any-gives-redirected-peer-all-http"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- toPorts:\n  - ports: [{port: '80'}]\n- fromEndpoints: [{matchLabels: {app: client}}]\n  toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{method: GET}]}\n"),
                 "labels:app=other", "labels:app=web", 80, "TCP", get("PUT", "/"), "allowed", "l3l4", id="l4-allow-via-any-other-peer-not-redirected"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{method: GET}]}\n"),
                 "labels:app=client", "labels:app=web", 80, "TCP", get("PUT", "/"), "allowed", "l7", id="l7-from-any-l3-allowed-peer-gets-all-http"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- fromEndpoints: [{matchLabels: {app: client}}]\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{method: GET}]}\n"),
                 "labels:app=other", "labels:app=web", 80, "TCP", get("PUT", "/"), "denied", "l7", id="l7-from-any-others-filtered"),
    pytest.param(cnp(SEL_WEB + "ingress:\n- toPorts:\n  - ports: [{port: '80', protocol: ANY}]\n    rules: {http: [{}]}\n"),
                 "labels:app=x", "labels:app=web", 80, "UDP", None, "denied", "l3l4", id="http-with-protocol-any-redirects-tcp-only"),
    pytest.param(cnp("endpointSelector: {matchLabels: {app: client}}\negress:\n- toPorts:\n  - ports: [{port: '80', protocol: TCP}]\n    rules: {http: [{path: '/ok'}]}\n"),
                 "labels:app=client", "labels:app=web", 80, "TCP", get("GET", "/no"), "denied", "l7", id="egress-l7"),
    # -------- multiple specs
    pytest.param("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: m}\nspecs:\n- endpointSelector: {matchLabels: {app: a}}\n  ingress: [{}]\n- endpointSelector: {matchLabels: {app: web}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: a}}]\n",
                 "labels:app=a", "labels:app=web", 80, "TCP", None, "allowed", "l3l4", id="specs-list"),
    # -------- NetworkPolicy
    pytest.param(np_("podSelector: {}\npolicyTypes: [Ingress]\n", ns="prod"), "labels:app=a,k8s:io.kubernetes.pod.namespace=prod",
                 "labels:app=b,k8s:io.kubernetes.pod.namespace=prod", 80, "TCP", None, "denied", "l3l4", id="np-empty-podselector-deny-all"),
    pytest.param(np_("podSelector: {}\npolicyTypes: [Ingress]\n", ns="prod"), "labels:app=a", "labels:app=b", 80, "TCP", None,
                 "allowed", "l3l4", id="np-other-namespace-unaffected"),
    pytest.param(np_("podSelector: {}\ningress: []\n"), "labels:app=a", "labels:app=b", 80, "TCP", None, "denied", "l3l4",
                 id="np-empty-ingress-denies"),
    pytest.param(np_("podSelector: {}\ningress:\n- {}\n"), "ip:1.2.3.4", "labels:app=b", 80, "UDP", None, "allowed", "l3l4",
                 id="np-empty-rule-allows-all"),
    pytest.param(np_("podSelector: {}\ningress:\n- ports: [{port: 80}]\n"), "ip:1.2.3.4", "labels:app=b", 80, "TCP", None,
                 "allowed", "l3l4", id="np-missing-from-all-sources"),
    pytest.param(np_("podSelector: {}\ningress:\n- from: []\n  ports: [{port: 80}]\n"), "labels:app=a", "labels:app=b", 80, "UDP", None,
                 "denied", "l3l4", id="np-port-defaults-tcp"),
    pytest.param(np_("podSelector: {}\npolicyTypes: [Egress]\n"), "labels:app=a", "labels:app=b", 80, "TCP", None, "denied", "l3l4",
                 id="np-egress-only-denies-egress"),
    pytest.param(np_("podSelector: {matchLabels: {app: a}}\npolicyTypes: [Egress]\n"), "labels:app=x", "labels:app=a", 80, "TCP", None,
                 "allowed", "l3l4", id="np-egress-only-leaves-ingress"),
    pytest.param(NP_DOCS, "ip:172.17.2.5", "labels:role=db", 6379, "TCP", None, "allowed", "l3l4", id="np-ipblock"),
    pytest.param(NP_DOCS, "ip:172.17.1.5", "labels:role=db", 6379, "TCP", None, "denied", "l3l4", id="np-ipblock-except"),
    pytest.param(NP_DOCS, "labels:role=frontend", "labels:role=db", 6379, "TCP", None, "allowed", "l3l4", id="np-podselector"),
    pytest.param(NP_DOCS, "labels:role=frontend,k8s:io.kubernetes.pod.namespace=x", "labels:role=db", 6379, "TCP", None, "denied", "l3l4",
                 id="np-podselector-own-namespace"),
    pytest.param(NP_DOCS, "labels:a=b,k8s:io.kubernetes.pod.namespace=x,io.cilium.k8s.namespace.labels.project=myproject",
                 "labels:role=db", 6379, "TCP", None, "allowed", "l3l4", id="np-namespaceselector"),
    pytest.param(NP_DOCS, "labels:role=db", "ip:10.0.0.9", 5985, "TCP", None, "allowed", "l3l4", id="np-endport-inside"),
    pytest.param(NP_DOCS, "labels:role=db", "ip:10.0.0.9", 5991, "TCP", None, "denied", "l3l4", id="np-endport-outside"),
    pytest.param(np_("podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: mon}}\n    podSelector: {matchLabels: {app: prom}}\n"),
                 "labels:app=prom,k8s:io.kubernetes.pod.namespace=mon", "labels:app=b", 9090, "TCP", None, "allowed", "l3l4", id="np-ns-and-pod"),
    pytest.param(np_("podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: mon}}\n    podSelector: {matchLabels: {app: prom}}\n"),
                 "labels:app=other,k8s:io.kubernetes.pod.namespace=mon", "labels:app=b", 9090, "TCP", None, "denied", "l3l4", id="np-ns-and-pod-both-needed"),
    pytest.param(np_("podSelector: {}\ningress:\n- from:\n  - namespaceSelector: {}\n"), "labels:app=o,k8s:io.kubernetes.pod.namespace=zz",
                 "labels:app=b", 1, "TCP", None, "allowed", "l3l4", id="np-empty-namespaceselector-all-namespaces"),
    pytest.param(NP_DOCS + "---\n" + cnp("endpointSelector: {matchLabels: {role: db}}\ningress:\n- fromEndpoints: [{matchLabels: {app: mon}}]\n  toPorts: [{ports: [{port: '9100'}]}]\n"),
                 "labels:app=mon", "labels:role=db", 9100, "TCP", None, "allowed", "l3l4", id="np-and-cnp-union-cnp-part"),
    pytest.param(NP_DOCS + "---\n" + cnp("endpointSelector: {matchLabels: {role: db}}\ningress:\n- fromEndpoints: [{matchLabels: {app: mon}}]\n  toPorts: [{ports: [{port: '9100'}]}]\n"),
                 "labels:role=frontend", "labels:role=db", 6379, "TCP", None, "allowed", "l3l4", id="np-and-cnp-union-np-part"),
    pytest.param(NP_DOCS + "---\n" + cnp("endpointSelector: {matchLabels: {role: db}}\ningress:\n- fromEndpoints: [{matchLabels: {app: mon}}]\n  toPorts: [{ports: [{port: '9100'}]}]\n"),
                 "labels:app=mon", "labels:role=db", 6379, "TCP", None, "denied", "l3l4", id="np-and-cnp-union-rest-denied"),
]


@pytest.mark.parametrize("text,src,dst,port,proto,http,verdict,layer", CASES)
def test_flow_verdict(text, src, dst, port, proto, http, verdict, layer):
    result, _ = run_trace(text, src, dst, port, Protocol[proto], http)
    assert (result.verdict, result.layer) == (verdict, layer), result.reason


def test_host_address_is_host_identity():
    from ipaddress import IPv4Address

    text = cnp(SEL_WEB + "ingress:\n- fromEntities: [host]\n")
    result, state = run_trace(text, "ip:10.9.9.9", "labels:app=web", 80, host_ips=(IPv4Address("10.9.9.9"),))
    assert result.verdict == "allowed"
    assert state.identity_of(IPv4Address("10.9.9.9")) == 1


def test_denied_trace_names_the_deciding_rule():
    text = cnp(SEL_WEB + "ingress:\n- fromEntities: [all]\ningressDeny:\n- fromEndpoints:\n  - matchLabels: {app: client}\n", name="guard")
    result, _ = run_trace(text, "labels:app=client", "labels:app=web", 80)
    assert result.rules == ("CiliumNetworkPolicy default/guard spec.ingressDeny[0]",)
