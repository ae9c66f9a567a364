"""toServices: what the parser accepts (and refuses, with field paths), and
how policy/services.py turns it into the peers behind the Services, as
Cilium does: a Service's selector becomes an endpoint selector in its
namespace, a selectorless Service's ready endpoint addresses become /32 and
/128 CIDRs, and nothing matching selects nothing."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from policy.compiled import Protocol
from policy.compiler import compile_state
from policy.endpoint import Endpoint
from policy.load import load_text
from policy.services import NO_SOURCE, Service, ServiceCatalog, resolve
from policy.trace import Party, trace
from tests.policy.policytest_helpers import policies


def cnp(egress: str, namespace: str = "shop", kind: str = "CiliumNetworkPolicy") -> str:
    body = "\n".join("  " + line for line in egress.strip("\n").splitlines())
    meta = f"{{name: p, namespace: {namespace}}}" if kind == "CiliumNetworkPolicy" else "{name: p}"
    return (f"apiVersion: cilium.io/v2\nkind: {kind}\nmetadata: {meta}\nspec:\n"
            f"  endpointSelector: {{matchLabels: {{app: web}}}}\n  egress:\n{body}\n")


BAD = [
    pytest.param("- toServices: [{k8sService: {serviceName: db, port: 80}}]", "spec.egress[0].toServices[0].k8sService.port",
                 "unknown field", id="unknown-field-in-k8sService"),
    pytest.param("- toServices: [{k8sService: {namespace: data}}]", "spec.egress[0].toServices[0].k8sService.serviceName",
                 "required", id="service-name-required"),
    pytest.param("- toServices: [{k8sService: {serviceName: ''}}]", "spec.egress[0].toServices[0].k8sService.serviceName",
                 "must not be empty", id="service-name-empty"),
    pytest.param("- toServices: [{}]", "spec.egress[0].toServices[0]",
                 "must set exactly one of k8sService and k8sServiceSelector", id="neither"),
    pytest.param("- toServices: [{k8sService: {serviceName: a}, k8sServiceSelector: {selector: {}}}]", "spec.egress[0].toServices[0]",
                 "must set exactly one of k8sService and k8sServiceSelector", id="both"),
    pytest.param("- toServices: [{k8sServiceSelector: {namespace: data}}]", "spec.egress[0].toServices[0].k8sServiceSelector.selector",
                 "required", id="selector-required"),
    pytest.param("- toServices: [{k8sServiceSelector: {selector: {matchLabels: {'a b': x}}}}]",
                 "spec.egress[0].toServices[0].k8sServiceSelector.selector.matchLabels.a b", "", id="bad-label-key"),
    pytest.param("- toServices: [{k8sServiceSelector: {selector: {matchLabel: {a: b}}}}]",
                 "spec.egress[0].toServices[0].k8sServiceSelector.selector.matchLabel", "unknown field", id="unknown-selector-field"),
    pytest.param("- toServices: [{k8sService: {serviceName: db}}]\n  toEndpoints: [{}]", "spec.egress[0].toServices",
                 "toServices cannot be combined with toEndpoints", id="not-with-toEndpoints"),
    pytest.param("- toServices: {k8sService: {serviceName: db}}", "spec.egress[0].toServices", "must be a list", id="not-a-list"),
]


@pytest.mark.parametrize("egress,field,reason", BAD)
def test_bad_toservices_is_refused_with_its_field_path(egress: str, field: str, reason: str) -> None:
    res = load_text(cnp(egress), "p.yaml")
    assert not res.policies
    assert any(e.field == field and reason in e.reason for e in res.errors), [str(e) for e in res.errors]


def test_toservices_in_ingress_and_egress_deny_are_refused() -> None:
    text = cnp("- toServices: [{k8sService: {serviceName: db}}]").replace("  egress:", "  egressDeny:")
    text += "  ingress:\n  - toServices: [{k8sService: {serviceName: db}}]\n"
    errors = {e.field: e.reason for e in load_text(text, "p.yaml").errors}
    assert errors["spec.egressDeny[0].toServices"].startswith("not supported: toServices in egressDeny")
    assert errors["spec.ingress[0].toServices"] == "unknown field (toServices belongs to egress rules)"


DB = Service("data", "db", {"tier": "db"}, {"app": "postgres"})
EXTERNAL = Service("data", "legacy", {"tier": "db", "external": "yes"}, {},
                   (ip_address("203.0.113.7"), ip_address("203.0.113.8"), ip_address("2001:db8::7")))


def _peers(text: str, catalog: ServiceCatalog | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    res = resolve(policies(text)[0], catalog)
    out = []
    for p in res.policy.specs[0].rules[0].peers:
        out.append(str(p.net) if hasattr(p, "net") else str(p.selector))
    return tuple(out), res.notes


def test_a_service_with_a_selector_stands_for_its_pods_in_its_namespace() -> None:
    peers, notes = _peers(cnp("- toServices: [{k8sService: {serviceName: db, namespace: data}}]"), ServiceCatalog.of([DB, EXTERNAL]))
    assert peers == ("app=postgres,io.kubernetes.pod.namespace=data",) and notes == ()


def test_a_selectorless_service_stands_for_its_endpoint_addresses() -> None:
    peers, _ = _peers(cnp("- toServices: [{k8sService: {serviceName: legacy, namespace: data}}]"), ServiceCatalog.of([DB, EXTERNAL]))
    assert peers == ("203.0.113.7/32", "203.0.113.8/32", "2001:db8::7/128")


def test_a_service_selector_matches_service_labels_in_any_namespace_when_none_is_given() -> None:
    other = Service("other", "db", {"tier": "db"}, {"app": "mysql"})
    peers, _ = _peers(cnp("- toServices: [{k8sServiceSelector: {selector: {matchLabels: {tier: db}}}}]"),
                      ServiceCatalog.of([DB, EXTERNAL, other]))
    assert set(peers) == {"app=postgres,io.kubernetes.pod.namespace=data", "203.0.113.7/32", "203.0.113.8/32",
                          "2001:db8::7/128", "app=mysql,io.kubernetes.pod.namespace=other"}
    peers, _ = _peers(cnp("- toServices: [{k8sServiceSelector: {selector: {matchLabels: {external: 'yes'}}, namespace: data}}]"),
                      ServiceCatalog.of([DB, EXTERNAL, other]))
    assert peers == ("203.0.113.7/32", "203.0.113.8/32", "2001:db8::7/128")


def test_an_omitted_namespace_matches_the_name_in_every_namespace_as_cilium_does() -> None:
    other = Service("other", "db", {}, {"app": "mysql"})
    peers, _ = _peers(cnp("- toServices: [{k8sService: {serviceName: db}}]"), ServiceCatalog.of([DB, other]))
    assert set(peers) == {"app=postgres,io.kubernetes.pod.namespace=data", "app=mysql,io.kubernetes.pod.namespace=other"}


@pytest.mark.parametrize("catalog,why", [
    pytest.param(ServiceCatalog.of([DB]), "no such Service", id="missing-service"),
    pytest.param(None, NO_SOURCE, id="no-service-source"),
])
def test_nothing_matching_selects_nothing_and_says_why(catalog: ServiceCatalog | None, why: str) -> None:
    text = cnp("- toServices: [{k8sService: {serviceName: gone, namespace: data}}]\n  toPorts: [{ports: [{port: '80', protocol: TCP}]}]")
    peers, notes = _peers(text, catalog)
    assert peers == ()
    assert notes == (f"spec.egress[0]: toServices k8sService gone in data: selects nothing: {why}",)


def _verdict(text: str, catalog: ServiceCatalog | None, dst_labels: dict[str, str] | None, dst_ip: str, port: int) -> bool:
    pol = resolve(policies(text)[0], catalog).policy
    eps = [Endpoint(1, {"app": "web", "io.kubernetes.pod.namespace": "shop"}, ip_address("10.0.0.1"))]
    dst = Party.address(dst_ip)
    if dst_labels is not None:
        eps.append(Endpoint(2, dst_labels, ip_address(dst_ip)))
        dst = Party.endpoint(2)
    state = compile_state([pol], eps)
    return trace(state, Party.endpoint(1), dst, port, Protocol.TCP).allowed


PG = {"app": "postgres", "io.kubernetes.pod.namespace": "data"}


def test_ports_still_apply_and_a_missing_service_opens_nothing() -> None:
    text = cnp("- toServices: [{k8sService: {serviceName: db, namespace: data}}]\n  toPorts: [{ports: [{port: '5432', protocol: TCP}]}]")
    cat = ServiceCatalog.of([DB])
    assert _verdict(text, cat, PG, "10.0.0.2", 5432) is True
    assert _verdict(text, cat, PG, "10.0.0.2", 80) is False  # toPorts still applies
    assert _verdict(text, cat, {**PG, "io.kubernetes.pod.namespace": "shop"}, "10.0.0.2", 5432) is False  # other namespace
    # Without the Service (or without any Service source), the rule with toPorts
    # must not turn into "any peer on 5432" (Cilium issue 20067's hole).
    assert _verdict(text, ServiceCatalog(), PG, "10.0.0.2", 5432) is False
    assert _verdict(text, None, None, "203.0.113.9", 5432) is False


def test_selectorless_service_addresses_allow_only_those_addresses() -> None:
    text = cnp("- toServices: [{k8sService: {serviceName: legacy, namespace: data}}]")
    cat = ServiceCatalog.of([EXTERNAL])
    assert _verdict(text, cat, None, "203.0.113.7", 443) is True
    assert _verdict(text, cat, None, "203.0.113.9", 443) is False


def test_a_policy_without_toservices_is_returned_as_is() -> None:
    pol = policies(cnp("- toEndpoints: [{}]"))[0]
    assert resolve(pol, None).policy is pol
