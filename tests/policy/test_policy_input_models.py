"""The declared input shapes (policy/api/): every problem of a document in
one pass, reasons that say what was found, and no shape that quietly
accepts a field it does not declare."""

from __future__ import annotations

import inspect

import pytest

import policy.api as api_pkg
from policy.api import base, documents, http, netpol, peers, ports, rule, selectors
from policy.api.problems import UP, field_path
from policy.load import INTERNAL_ERROR, load_text

HEAD = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n"


def errors(text: str) -> list[str]:
    res = load_text(text, "p.yaml")
    assert res.policies == [], "expected the document to be refused"
    return [str(e) for e in res.errors]


def test_problems_in_metadata_and_spec_are_reported_together():
    # The old checker stopped at a bad namespace and never looked at the spec.
    text = HEAD + (
        "metadata: {name: p, namespace: 5}\n"
        "spec:\n  endpointSelector: {}\n  ingress: [{fromEntities: [galaxy]}]\n"
        "  egress: [{toPorts: [{ports: [{port: '99999'}]}]}]\n"
    )
    assert errors(text) == [
        "p.yaml: metadata.namespace: must be a string, got a number",
        "p.yaml: spec.ingress[0].fromEntities[0]: unknown entity 'galaxy': expected one of "
        "all, cluster, world, world-ipv4, world-ipv6, host, remote-node, init, health, unmanaged, kube-apiserver, ingress",
        "p.yaml: spec.egress[0].toPorts[0].ports[0].port: port 99999 out of range 0-65535",
    ]


def test_metadata_name_reason_says_what_was_found():
    assert errors(HEAD + "metadata: {name: 7}\nspec: {endpointSelector: {}}\n") == [
        "p.yaml: metadata.name: must be a string, got a number"
    ]
    assert errors(HEAD + "metadata: {name: ''}\nspec: {endpointSelector: {}}\n") == ["p.yaml: metadata.name: must not be empty"]


@pytest.mark.parametrize("port", ["'²'", "'٣'"])
def test_a_port_in_non_ascii_digits_is_an_invalid_port_not_a_crash(port):
    text = HEAD + f"metadata: {{name: p}}\nspec:\n  endpointSelector: {{}}\n  ingress: [{{toPorts: [{{ports: [{{port: {port}}}]}}]}}]\n"
    (err,) = errors(text)
    assert INTERNAL_ERROR not in err
    assert err.startswith("p.yaml: spec.ingress[0].toPorts[0].ports[0].port: invalid port")
    assert "not a number, and not a port name" in err


@pytest.mark.parametrize("field, value", [("from", "{}"), ("ports", "''"), ("from", "0")])
def test_networkpolicy_lists_must_be_lists(field, value):
    # A falsy non-list used to mean "every peer" / "every port".
    text = (
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: n}\n"
        f"spec:\n  podSelector: {{}}\n  ingress: [{{{field}: {value}}}]\n"
    )
    (err,) = errors(text)
    assert err.startswith(f"p.yaml: spec.ingress[0].{field}: must be a list, got ")


def test_a_null_selector_part_is_refused_not_widened():
    text = HEAD + "metadata: {name: p}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{matchLabels: null}]}]\n"
    assert errors(text) == ["p.yaml: spec.ingress[0].fromEndpoints[0].matchLabels: must be a mapping, got null"]


def test_kubernetes_server_fields_in_metadata_are_accepted():
    text = HEAD + (
        "metadata: {name: p, namespace: prod, uid: abc, resourceVersion: '7', labels: {a: b}, annotations: {x: y}}\n"
        "spec: {endpointSelector: {}}\nstatus: {nodes: {}}\n"
    )
    res = load_text(text, "p.yaml")
    assert res.errors == [] and [p.key for p in res.policies] == ["CiliumNetworkPolicy/prod/p"]


def test_field_path_reads_like_the_document():
    assert field_path(("spec", "ingress", 0, "toPorts", 2, "ports", 0, "port")) == "spec.ingress[0].toPorts[2].ports[0].port"
    assert field_path(("spec", "endpointSelector", "matchLabels", "k" * 90, "[key]")) == (
        "spec.endpointSelector.matchLabels." + "k" * 80 + "..."
    )
    assert field_path(()) == ""
    assert UP == ("..",)


def _shapes():
    for module in (base, selectors, peers, ports, http, rule, netpol, documents):
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, base.Strict) and cls.__module__.startswith("policy.api"):
                yield cls


def test_every_declared_shape_refuses_unknown_fields():
    shapes = set(_shapes())
    assert len(shapes) > 15
    assert all(cls.model_config.get("extra") == "forbid" for cls in shapes)
    # The one exception, on purpose: metadata carries server-set fields.
    assert documents.Metadata.model_config.get("extra") == "ignore"
    assert set(api_pkg.DOCUMENTS) == {"CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy", "NetworkPolicy"}
