"""deploy/kubernetes/: every manifest is valid against the Kubernetes
schemas (offline, kubernetes-validate), the DaemonSet only passes flags
`ciliate` has, RBAC is least privilege, and the CRD schema accepts the
policies the agent accepts and refuses what it can say the agent refuses."""

from __future__ import annotations

import copy
import functools
import json
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from agent.adapters.kubernetes.kinds import CCNP_PLURAL, CNP_PLURAL
from agent.cli.ciliate import build_parser
from policy.errors import PolicyErrors
from policy.parse import parse_object

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"


@functools.cache
def _docs() -> tuple[tuple[str, dict], ...]:
    """The manifests, parsed once per process (crds.yaml is 100 kB of YAML,
    ~0.3 s a parse) and shared read-only by the tests."""
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        out += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return tuple(out)


def _one(kind: str, name: str | None = None) -> dict:
    return next(d for _, d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name))


@pytest.mark.parametrize("name,doc", _docs(), ids=lambda v: v if isinstance(v, str) else v["kind"] + "/" + v["metadata"]["name"])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(name, doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_set_is_complete():
    kinds = sorted(d["kind"] for _, d in _docs())
    assert kinds == sorted(["CustomResourceDefinition"] * 2 + ["ServiceAccount", "ClusterRole", "ClusterRoleBinding",
                                                                 "ConfigMap", "DaemonSet"])


def _expand(arg: str) -> str:
    return re.sub(r"\$\((\w+)\)", lambda m: {"NODE_NAME": "node-a", "K8S_SYNC_TIMEOUT": "180", "METRICS_PORT": "9962",
                                           "LOG_LEVEL": "info"}[m.group(1)], arg)


def test_the_daemonset_passes_only_flags_the_agent_has():
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    agent = next(c for c in pod["containers"] if c["name"] == "agent")
    argv = [_expand(a) for a in agent["args"]]
    args = build_parser().parse_args(argv)  # argparse exits on an unknown flag or a bad value
    assert args.command == "agent" and args.node_name == "node-a" and args.k8s_sync_timeout == 180.0
    for probe in ("readinessProbe", "startupProbe"):
        cmd = agent[probe]["exec"]["command"]
        assert cmd[0] == "ciliate" and build_parser().parse_args(cmd[1:]).command == "status"
    env = {e["name"] for e in agent["env"]}
    assert {m for a in agent["args"] for m in re.findall(r"\$\((\w+)\)", a)} <= env
    cm = _one("ConfigMap")["data"]
    for e in agent["env"]:
        ref = e.get("valueFrom", {}).get("configMapKeyRef")
        if ref:
            assert ref["key"] in cm


def test_the_daemonset_has_the_node_side_it_needs():
    pod = _one("DaemonSet")["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True and pod["serviceAccountName"] == "ciliate-agent"
    paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert {"/sys/fs/bpf", "/var/run/ciliate", "/opt/cni/bin", "/etc/cni/net.d"} <= paths
    assert [c["name"] for c in pod["initContainers"]] == ["install-cni"]


def test_rbac_is_least_privilege():
    rules = _one("ClusterRole")["rules"]
    granted = {(g, r, v) for rule in rules for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    reads = {("", "namespaces"), ("", "pods"), ("networking.k8s.io", "networkpolicies"),
             ("cilium.io", CNP_PLURAL), ("cilium.io", CCNP_PLURAL),
             ("", "services"), ("discovery.k8s.io", "endpointslices"),  # toServices
             ("", "nodes")}  # its Node's labels
    assert {(g, r, v) for g, r in reads for v in ("list", "watch")} <= granted
    assert {(g, r) for g, r, v in granted if v in ("list", "watch")} == reads  # nothing read beyond these
    writes = {(g, r, v) for g, r, v in granted if v not in ("list", "watch", "get")}
    assert writes == {("cilium.io", f"{CNP_PLURAL}/status", "patch"), ("cilium.io", f"{CCNP_PLURAL}/status", "patch")}
    assert {(g, r) for g, r, v in granted if v == "get"} == {("", "nodes")}  # the CNI installer's pod CIDR
    assert not any("*" in x for rule in rules for x in rule["verbs"] + rule["resources"] + rule["apiGroups"])


def test_the_cni_config_names_the_agents_socket():
    cm = _one("ConfigMap")["data"]
    conf = json.loads(cm["cni-conflist"])
    plugin = conf["plugins"][0]
    assert plugin["type"] == "ciliate-cni" and plugin["agentSocket"] == "/var/run/ciliate/agent.sock"
    assert plugin["ipam"]["type"] == "host-local"
    assert "ciliate-cni" in cm["install-cni.sh"] and "05-ciliate.conflist" in cm["install-cni.sh"]


# --- the CRD schema and the agent's validator --------------------------------------
def _schema(kind: str) -> dict:
    crd = next(d for _, d in _docs() if d["kind"] == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == kind)
    (version,) = crd["spec"]["versions"]
    assert crd["spec"]["group"] == "cilium.io" and version["name"] == "v2" and version["subresources"] == {"status": {}}
    return version["schema"]["openAPIV3Schema"]


@functools.cache
def _validator(kind: str) -> jsonschema.protocols.Validator:
    """What jsonschema.validate builds on every call: the schema checked
    against its metaschema, then a validator for it. Built once per kind."""
    schema = _schema(kind)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def _schema_ok(obj: dict, kind: str = "CiliumNetworkPolicy") -> bool:
    try:
        _validator(kind).validate(obj)
    except jsonschema.ValidationError:
        return False
    return True


def _agent_ok(obj: dict) -> bool:
    try:
        parse_object(obj, "test")
    except PolicyErrors:
        return False
    return True


def _example_policies() -> list[dict]:
    out = []
    for path in sorted((ROOT / "examples").rglob("*.yaml")):
        out += [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind", "").startswith("Cilium")]
    return out


def test_the_schema_accepts_every_example_the_agent_accepts():
    examples = [d for d in _example_policies() if _agent_ok(d)]
    assert len(examples) >= 3
    for doc in examples:
        assert _schema_ok(doc, doc["kind"]), doc["metadata"]["name"]


BASE = {
    "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy", "metadata": {"name": "p", "namespace": "default"},
    "spec": {"endpointSelector": {"matchLabels": {"app": "a"}},
             "ingress": [{"fromEndpoints": [{"matchLabels": {"app": "b"}}],
                          "toPorts": [{"ports": [{"port": "80", "protocol": "TCP"}],
                                       "rules": {"http": [{"method": "GET", "path": "/"}]}}]}]},
}


def _with(path: str, value) -> dict:
    doc = copy.deepcopy(BASE)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[int(k)] if k.isdigit() else node[k]
    last = keys[-1]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return doc


@pytest.mark.parametrize("path,value", [
    ("spec.ingress.0.toPorts.0.ports.0.protocol", "SCTPX"),
    ("spec.ingress.0.toPorts.0.ports.0.port", "99999999"),
    ("spec.ingress.0.toPorts.0.ports.0.port", "http_alt"),
    ("spec.ingress.0.toPorts.0.ports.0.port", "a-very-long-port-name"),
    ("spec.ingress.0.fromEntities", ["bogus"]),
    ("spec.ingress.0.fromCIDR", ["not-a-cidr"]),
    ("spec.endpointSelector", {"matchExpressions": [{"key": "app", "operator": "Near"}]}),
    ("spec.endpointSelector", {"matchExpressions": [{"operator": "Exists"}]}),
    ("spec.endpointSelector", {"matchLabels": {"app": 3}}),
    ("spec.ingress", {"not": "a list"}),
    ("spec.endpointSelector", None),
])
def test_the_schema_refuses_what_the_agent_refuses(path, value):
    bad = _with(path, value)
    assert not _agent_ok(bad), "the agent accepts it: the schema must not refuse it"
    assert not _schema_ok(bad)
    assert _schema_ok(BASE) and _agent_ok(BASE)


@pytest.mark.parametrize("path,value", [
    ("spec.ingress.0.toPorts.0.ports.0.port", "http"),
    ("spec.ingress.0.toPorts.0.ports.0", {"port": "5000", "protocol": "SCTP"}),
])
def test_the_schema_accepts_named_ports_and_sctp_as_the_agent_does(path, value):
    doc = _with(path, value)
    if isinstance(value, dict):
        del doc["spec"]["ingress"][0]["toPorts"][0]["rules"]  # HTTP rules need TCP
    assert _agent_ok(doc) and _schema_ok(doc)


def test_unknown_fields_reach_the_agent_instead_of_being_pruned():
    """A field the schema does not type (an unsupported Cilium feature) is kept
    for the agent to refuse with a status error, never silently dropped."""
    doc = _with("spec.ingress.0.fromRequires", [{"matchLabels": {"env": "prod"}}])
    assert _schema_ok(doc)
    assert not _agent_ok(doc)
    rule = _schema("CiliumNetworkPolicy")["properties"]["spec"]["properties"]["ingress"]["items"]
    assert rule.get("x-kubernetes-preserve-unknown-fields") is True


@pytest.mark.parametrize("path,value", [
    ("spec.ingress.0.fromCIDR", ["2001:db8::/32", "10.0.0.0/8"]),
    ("spec.ingress.0.fromCIDR", ["2001:db8::1", "::/0", "64:ff9b::192.0.2.0/120"]),
    ("spec.ingress.0.fromCIDRSet", [{"cidr": "2001:db8::/32", "except": ["2001:db8:bad::/48"]}]),
    ("spec.ingress.0.fromEntities", ["world-ipv4", "world-ipv6"]),
])
def test_the_schema_accepts_ipv6_as_the_agent_does(path, value):
    """Cilium's CRD takes IPv6 CIDRs (`format: cidr`); ours too, and the
    world entities of each family the agent implements."""
    doc = _with(path, value)
    assert _agent_ok(doc) and _schema_ok(doc)


# --- icmps and toServices, typed in every rule section of both kinds -----------------
SECTIONS = ("ingress", "ingressDeny", "egress", "egressDeny")


def _rule_doc(kind: str, section: str, item: dict, in_specs: bool = False) -> dict:
    rule = {"endpointSelector": {"matchLabels": {"app": "a"}}, section: [item]}
    meta = {"name": "p", "namespace": "default"} if kind == "CiliumNetworkPolicy" else {"name": "p"}
    doc = {"apiVersion": "cilium.io/v2", "kind": kind, "metadata": meta}
    doc["specs" if in_specs else "spec"] = [rule] if in_specs else rule
    return doc


PLACES = [pytest.param(kind, section, in_specs, id=f"{kind[6:-13] or 'CNP'}-{'specs' if in_specs else 'spec'}-{section}")
          for kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy") for in_specs in (False, True) for section in SECTIONS]
ICMPS = {"icmps": [{"fields": [{"type": 8}, {"family": "IPv4", "type": "EchoReply"}, {"family": "IPv6", "type": "EchoRequest"},
                               {"family": "IPv6", "type": 136}]}]}


def _item_schema(kind: str, section: str, in_specs: bool) -> dict:
    spec = _schema(kind)["properties"]["specs" if in_specs else "spec"]
    rule = spec["items"] if in_specs else spec
    return rule["properties"][section]["items"]


@pytest.mark.parametrize("kind,section,in_specs", PLACES)
def test_icmps_and_toservices_are_typed_in_every_rule_section(kind, section, in_specs):
    """The blocks repeat per kind, spec/specs and section; none may be missed."""
    item = _item_schema(kind, section, in_specs)
    assert item.get("x-kubernetes-preserve-unknown-fields") is True
    family = item["properties"]["icmps"]["items"]["properties"]["fields"]["items"]["properties"]["family"]
    assert family["enum"] == ["IPv4", "IPv6"]
    assert ("toServices" in item["properties"]) == section.startswith("egress")
    doc = _rule_doc(kind, section, ICMPS, in_specs)
    assert _agent_ok(doc) and _schema_ok(doc, kind)


SERVICES = [
    pytest.param({"toServices": [{"k8sService": {"serviceName": "payments", "namespace": "billing"}}],
                  "toPorts": [{"ports": [{"port": "8443", "protocol": "TCP"}]}]}, id="by-name"),
    pytest.param({"toServices": [{"k8sService": {"serviceName": "payments"}}]}, id="by-name-any-namespace"),
    pytest.param({"toServices": [{"k8sServiceSelector": {"selector": {"matchLabels": {"tier": "cache"}}, "namespace": "infra"}}],
                  "toPorts": [{"ports": [{"port": "6379", "protocol": "TCP"}]}]}, id="by-selector"),
    pytest.param({"toServices": [{"k8sServiceSelector": {"selector": {"matchExpressions": [{"key": "tier", "operator": "Exists"}]}}}]},
                 id="by-selector-expression"),
]


@pytest.mark.parametrize("item", SERVICES)
@pytest.mark.parametrize("kind", ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"])
def test_the_schema_accepts_toservices_as_the_agent_does(kind, item):
    for in_specs in (False, True):
        doc = _rule_doc(kind, "egress", item, in_specs)
        assert _agent_ok(doc) and _schema_ok(doc, kind)


@pytest.mark.parametrize("section,item", [
    pytest.param("ingress", {"icmps": [{"fields": [{"family": "IPv5", "type": 8}]}]}, id="family-IPv5"),
    pytest.param("egressDeny", {"icmps": [{"fields": [{"family": "ipv6", "type": 128}]}]}, id="family-lowercase"),
    pytest.param("ingress", {"icmps": [{"fields": [{"type": 256}]}]}, id="type-256"),
    pytest.param("egress", {"icmps": [{"fields": [{"type": -1}]}]}, id="type-negative"),
    pytest.param("egress", {"icmps": [{"fields": [{"type": "Echo Request"}]}]}, id="type-not-a-name"),
    pytest.param("egress", {"icmps": [{"fields": [{"family": "IPv6"}]}]}, id="type-missing"),
    pytest.param("egress", {"icmps": [{"fields": [{"type": True}]}]}, id="type-boolean"),
    pytest.param("egress", {"toServices": [{}]}, id="service-neither"),
    pytest.param("egress", {"toServices": [{"k8sService": {"serviceName": "a"}, "k8sServiceSelector": {"selector": {}}}]},
                 id="service-both"),
    pytest.param("egress", {"toServices": [{"k8sService": {"namespace": "billing"}}]}, id="service-name-missing"),
    pytest.param("egress", {"toServices": [{"k8sService": {"serviceName": ""}}]}, id="service-name-empty"),
    pytest.param("egress", {"toServices": [{"k8sServiceSelector": {"namespace": "infra"}}]}, id="service-selector-missing"),
    pytest.param("egress", {"toServices": [{"k8sServiceSelector": {"selector": {"matchLabels": {"tier": 3}}}}]},
                 id="service-selector-bad-value"),
    pytest.param("egress", {"toServices": {"k8sService": {"serviceName": "a"}}}, id="services-not-a-list"),
])
def test_the_schema_refuses_bad_icmps_and_toservices_as_the_agent_does(section, item):
    for kind in ("CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"):
        bad = _rule_doc(kind, section, item)
        assert not _agent_ok(bad), "the agent accepts it: the schema must not refuse it"
        assert not _schema_ok(bad, kind)


def test_toservices_in_egress_deny_passes_the_schema_and_the_agent_refuses_it():
    """Typed as Cilium types it, kept for the agent, which says why in status."""
    doc = _rule_doc("CiliumNetworkPolicy", "egressDeny", {"toServices": [{"k8sService": {"serviceName": "payments"}}]})
    assert _schema_ok(doc) and not _agent_ok(doc)


@pytest.mark.parametrize("rule, ok", [
    ({"fromNodes": [{"matchLabels": {"role": "frontend"}}]}, True),
    ({"fromNodes": [{"matchExpressions": [{"key": "role", "operator": "In", "values": ["a"]}]}]}, True),
    ({"fromNodes": [{"matchExpressions": [{"key": "role", "operator": "Near"}]}]}, False),
    ({"fromNodes": [{"matchLabels": {"role": 3}}]}, False),
])
def test_the_schema_types_from_nodes_as_the_agent_reads_it(rule, ok):
    doc = copy.deepcopy(BASE)
    doc["spec"]["ingress"] = [rule]
    assert _agent_ok(doc) is ok and _schema_ok(doc) is ok


FQDN_ITEMS = [
    {"toFQDNs": [{"matchName": "api.example.com"}, {"matchPattern": "*.example.com"}],
     "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}]},
    {"toEndpoints": [{"matchLabels": {"k8s-app": "kube-dns"}}],
     "toPorts": [{"ports": [{"port": "53", "protocol": "ANY"}], "rules": {"dns": [{"matchPattern": "**.example.com"}]}}]},
]


@pytest.mark.parametrize("item", FQDN_ITEMS)
@pytest.mark.parametrize("kind", ["CiliumNetworkPolicy", "CiliumClusterwideNetworkPolicy"])
def test_the_schema_accepts_to_fqdns_and_dns_rules_as_the_agent_does(kind, item):
    for in_specs in (False, True):
        doc = _rule_doc(kind, "egress", item, in_specs)
        assert _agent_ok(doc) and _schema_ok(doc, kind)


@pytest.mark.parametrize("item", [
    pytest.param({"toFQDNs": [{"matchName": "api example.com"}]}, id="name-with-space"),
    pytest.param({"toFQDNs": [{"matchPattern": "a/b.com"}]}, id="pattern-with-slash"),
    pytest.param({"toFQDNs": [{"matchName": 3}]}, id="name-not-a-string"),
    pytest.param({"toPorts": [{"ports": [{"port": "53"}], "rules": {"dns": [{"matchName": "a..b;"}]}}]}, id="dns-bad-name"),
])
def test_the_schema_refuses_bad_names_as_the_agent_does(item):
    bad = _rule_doc("CiliumNetworkPolicy", "egress", item)
    assert not _agent_ok(bad), "the agent accepts it: the schema must not refuse it"
    assert not _schema_ok(bad)
