"""CNP `toServices` against Services and EndpointSlices from the API server
(kubesim, through the real `kubernetes` client): the agent's compiled
policy follows a selectorless Service's EndpointSlice as it scales up and
down, and a selector Service's pods as they come and go; a Service that does
not exist selects nothing, and the policy status says so."""

from __future__ import annotations

from kubernetes import client

from policy.compiled import Protocol
from policy.trace import Party, trace
from tests.k8s.conftest import eventually

EGRESS_TO_SERVICES = {
    "apiVersion": "cilium.io/v2",
    "kind": "CiliumNetworkPolicy",
    "metadata": {"name": "to-db", "namespace": "default"},
    "spec": {
        "endpointSelector": {"matchLabels": {"app": "client"}},
        "egress": [{
            "toServices": [{"k8sService": {"serviceName": "legacy-db", "namespace": "default"}},
                           {"k8sService": {"serviceName": "db", "namespace": "default"}}],
            "toPorts": [{"ports": [{"port": "5432", "protocol": "TCP"}]}],
        }],
    },
}


def service(name: str, selector: dict[str, str] | None = None) -> dict:
    spec: dict = {"ports": [{"port": 5432, "protocol": "TCP"}]}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": spec}


def slice_(name: str, service_name: str, addresses: list[tuple[str, bool]]) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": name, "labels": {"kubernetes.io/service-name": service_name}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [a], "conditions": {"ready": ready}} for a, ready in addresses],
        "ports": [{"port": 5432, "protocol": "TCP"}],
    }


def reaches(rig, src: int, dst: Party, port: int = 5432) -> bool:
    state = rig.agent.regenerator.last_state
    return state is not None and trace(state, Party.endpoint(src), dst, port, Protocol.TCP).allowed


async def test_to_services_follows_endpointslices_and_selected_pods(rig):
    rig.pod("client", {"app": "client"})
    rig.pod("pg-0", {"app": "postgres"})
    rig.pod("pg-1", {"app": "postgres"})
    core, disc = rig.core, client.DiscoveryV1Api(rig.api)
    core.create_namespaced_service("default", service("legacy-db"))  # no selector: backends from its EndpointSlice
    disc.create_namespaced_endpoint_slice("default", slice_("legacy-db-1", "legacy-db", [("203.0.113.10", True)]))
    rig.create_cnp(EGRESS_TO_SERVICES)
    agent = rig.build()
    await agent.start(serve_api=False)
    cli = await rig.endpoint("client", "10.0.0.3", n=1)
    pg0 = await rig.endpoint("pg-0", "10.0.0.4", n=2)
    pg1 = await rig.endpoint("pg-1", "10.0.0.5", n=3)

    # The selectorless Service: its ready endpoint address, on the policy's port only.
    await eventually(lambda: reaches(rig, cli.id, Party.address("203.0.113.10")))
    assert not reaches(rig, cli.id, Party.address("203.0.113.10"), port=80)
    assert not reaches(rig, cli.id, Party.address("203.0.113.11"))
    # `db` does not exist yet: it selects nothing, and the status says why.
    assert not reaches(rig, cli.id, Party.endpoint(pg0.id))
    pol = await eventually(lambda: rig.policy("default/to-db"))
    assert any("k8sService db in default: selects nothing: no such Service" in w for w in pol.warnings), pol.warnings

    # Scale up: a second ready address, and one not ready (not admitted).
    disc.replace_namespaced_endpoint_slice("legacy-db-1", "default", slice_(
        "legacy-db-1", "legacy-db", [("203.0.113.10", True), ("203.0.113.11", True), ("203.0.113.12", False)]))
    await eventually(lambda: reaches(rig, cli.id, Party.address("203.0.113.11")))
    assert reaches(rig, cli.id, Party.address("203.0.113.10"))
    assert not reaches(rig, cli.id, Party.address("203.0.113.12"))
    # Scale down to none.
    disc.delete_namespaced_endpoint_slice("legacy-db-1", "default")
    await eventually(lambda: not reaches(rig, cli.id, Party.address("203.0.113.10")))
    assert not reaches(rig, cli.id, Party.address("203.0.113.11"))

    # The selector Service: its selector in its namespace, whatever pods it selects now.
    core.create_namespaced_service("default", service("db", {"app": "postgres"}))
    await eventually(lambda: reaches(rig, cli.id, Party.endpoint(pg0.id)))
    assert reaches(rig, cli.id, Party.endpoint(pg1.id)) and not reaches(rig, cli.id, Party.endpoint(pg0.id), port=80)
    await eventually(lambda: not any("k8sService db in default" in w for w in rig.policy("default/to-db").warnings))
    # A pod leaving the Service's selection leaves the policy's peers; coming back, it is in again.
    core.patch_namespaced_pod("pg-1", "default", {"metadata": {"labels": {"app": "retired"}}})
    await eventually(lambda: not reaches(rig, cli.id, Party.endpoint(pg1.id)))
    assert reaches(rig, cli.id, Party.endpoint(pg0.id))
    core.patch_namespaced_pod("pg-1", "default", {"metadata": {"labels": {"app": "postgres"}}})
    await eventually(lambda: reaches(rig, cli.id, Party.endpoint(pg1.id)))

    # The Service goes: fail closed.
    core.delete_namespaced_service("db", "default")
    await eventually(lambda: not reaches(rig, cli.id, Party.endpoint(pg0.id)))
    assert not reaches(rig, cli.id, Party.endpoint(pg1.id))


async def test_a_service_change_recompiles_only_the_policies_naming_it(rig):
    rig.pod("client", {"app": "client"})
    other = {**EGRESS_TO_SERVICES, "metadata": {"name": "unrelated", "namespace": "default"},
             "spec": {"endpointSelector": {"matchLabels": {"app": "client"}}, "egress": [{"toEndpoints": [{}]}]}}
    rig.create_cnp(EGRESS_TO_SERVICES)
    rig.create_cnp(other)
    rig.core.create_namespaced_service("default", service("legacy-db"))
    agent = rig.build()
    await agent.start(serve_api=False)
    cli = await rig.endpoint("client", "10.0.0.3", n=1)
    await eventually(lambda: rig.policy("default/unrelated").state == "enforced")
    applied = agent.regenerator.applied_policies
    unrelated, to_db = applied["k8s:CiliumNetworkPolicy/default/unrelated"], applied["k8s:CiliumNetworkPolicy/default/to-db"]

    client.DiscoveryV1Api(rig.api).create_namespaced_endpoint_slice(
        "default", slice_("legacy-db-1", "legacy-db", [("203.0.113.10", True)]))
    await eventually(lambda: reaches(rig, cli.id, Party.address("203.0.113.10")))
    applied = agent.regenerator.applied_policies
    assert applied["k8s:CiliumNetworkPolicy/default/to-db"] is not to_db
    assert applied["k8s:CiliumNetworkPolicy/default/unrelated"] is unrelated  # not handed to the compiler again
