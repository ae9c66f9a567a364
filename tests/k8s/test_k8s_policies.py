"""Policies, pod labels and namespace labels from the API server (kubesim)
through the real `kubernetes` client, enforced by the agent core."""

from __future__ import annotations

from tests.k8s.conftest import NODE, cnp, eventually


async def test_add_modify_delete_a_policy_from_the_api(rig):
    rig.pod("server", {"app": "server"})
    rig.pod("client", {"app": "client"})
    agent = rig.build()
    await agent.start(serve_api=False)
    srv = await rig.endpoint("server", "10.0.0.2", n=1)
    cli = await rig.endpoint("client", "10.0.0.3", n=2)
    assert srv.labels["k8s:app"] == "server" and cli.labels["k8s:app"] == "client"
    assert rig.allowed(srv.id, cli.id)  # no policy: all in

    rig.create_cnp(cnp("allow-other", app="server", from_app="nobody"))
    await eventually(lambda: not rig.allowed(srv.id, cli.id))
    pol = await eventually(lambda: rig.policy("default/allow-other"))
    assert pol.source == "k8s:CiliumNetworkPolicy/default/allow-other"

    rig.co.patch_namespaced_custom_object(
        "cilium.io", "v2", "default", "ciliumnetworkpolicies", "allow-other",
        {"spec": cnp("allow-other", app="server", from_app="client")["spec"]})
    await eventually(lambda: rig.allowed(srv.id, cli.id))

    rig.co.delete_namespaced_custom_object("cilium.io", "v2", "default", "ciliumnetworkpolicies", "allow-other")
    await eventually(lambda: rig.policy("default/allow-other") is None)
    assert rig.allowed(srv.id, cli.id)


async def test_pod_label_change_reidentifies_its_endpoint_in_place(rig):
    rig.pod("server", {"app": "server"})
    rig.pod("client", {"app": "visitor"})
    agent = rig.build()
    await agent.start(serve_api=False)
    rig.create_cnp(cnp("from-client", app="server", from_app="client"))
    srv = await rig.endpoint("server", "10.0.0.2", n=1)
    cli = await rig.endpoint("client", "10.0.0.3", n=2)
    await eventually(lambda: rig.policy("default/from-client").state == "enforced")
    assert not rig.allowed(srv.id, cli.id)
    before = agent.table.view(cli.id)

    rig.core.patch_namespaced_pod("client", "default", {"metadata": {"labels": {"app": "client"}}})
    await eventually(lambda: rig.allowed(srv.id, cli.id))
    after = agent.table.view(cli.id)
    assert after.id == before.id and after.host_ifname == before.host_ifname  # same endpoint, not restarted
    assert after.identity != before.identity and after.labels["k8s:app"] == "client"
    assert cli.id not in rig.datapath.detached


async def test_namespace_label_change_moves_pods_in_and_out_of_a_namespace_selector(rig):
    rig.namespace("shop", {"team": "red"})
    rig.pod("server", {"app": "server"})
    rig.pod("client", {"app": "client"}, namespace="shop")
    agent = rig.build()
    await agent.start(serve_api=False)
    netpol = {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "from-blue", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}]},
    }
    from kubernetes import client

    client.NetworkingV1Api(rig.api).create_namespaced_network_policy("default", netpol)
    srv = await rig.endpoint("server", "10.0.0.2", n=1)
    cli = await rig.endpoint("client", "10.0.0.3", namespace="shop", n=2)
    assert cli.labels["k8s:io.cilium.k8s.namespace.labels.team"] == "red"
    await eventually(lambda: rig.policy("default/from-blue") and rig.policy("default/from-blue").state == "enforced")
    assert not rig.allowed(srv.id, cli.id)

    rig.core.patch_namespace("shop", {"metadata": {"labels": {"team": "blue"}}})
    await eventually(lambda: rig.allowed(srv.id, cli.id))
    assert agent.table.view(cli.id).labels["k8s:io.cilium.k8s.namespace.labels.team"] == "blue"


async def test_only_this_nodes_pods_are_read(rig):
    rig.pod("here", {"app": "x"})
    rig.pod("there", {"app": "x"}, node="node-b")
    agent = rig.build()
    await agent.start(serve_api=False)
    assert set(rig.source.objects["Pod"]) == {"default/here"}
    assert rig.source.endpoint_labels("default/there") is None
    assert any(r.query.get("fieldSelector") == f"spec.nodeName={NODE}" for r in rig.kube.request_log())
