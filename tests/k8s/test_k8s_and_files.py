"""Where two policy sources meet, both hold: a file in the policy directory
and an object in the API server select the same endpoint; each one's deny
wins over the other's allow, and a file and an object of the same name are
two policies, neither replacing the other."""

from __future__ import annotations

import yaml

from tests.k8s.conftest import cnp, eventually


def _deny(name: str, app: str, from_app: str, port: int) -> dict:
    return {
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": app}},
                 "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": from_app}}],
                                  "toPorts": [{"ports": [{"port": str(port), "protocol": "TCP"}]}]}]},
    }


async def test_file_and_api_policies_both_hold(rig, tmp_path):
    policies = tmp_path / "policies"
    policies.mkdir()
    # The file allows the client on 80 and 81 and denies it on 82.
    allow = cnp("shared", app="server", from_app="client")
    allow["spec"]["ingress"][0]["toPorts"][0]["ports"].append({"port": "81", "protocol": "TCP"})
    (policies / "file.yaml").write_text(yaml.safe_dump_all([allow, _deny("file-deny", "server", "client", 82)]))
    rig.pod("server", {"app": "server"})
    rig.pod("client", {"app": "client"})
    agent = rig.build(policy_dir=policies)
    await agent.start(serve_api=False)
    srv = await rig.endpoint("server", "10.0.0.2", n=1)
    cli = await rig.endpoint("client", "10.0.0.3", n=2)
    await eventually(lambda: rig.allowed(srv.id, cli.id, 80) and rig.allowed(srv.id, cli.id, 81))
    assert not rig.allowed(srv.id, cli.id, 82)

    # The API denies 81 and, under the same name as the file's policy, allows 82.
    rig.create_cnp(_deny("api-deny", "server", "client", 81))
    api_allow = cnp("shared", app="server", from_app="client", port=82)
    rig.create_cnp(api_allow)
    await eventually(lambda: not rig.allowed(srv.id, cli.id, 81))
    assert rig.allowed(srv.id, cli.id, 80)  # the file's allow still holds
    assert not rig.allowed(srv.id, cli.id, 82)  # the file's deny beats the API's allow
    shared = [p for p in agent.policies().policies if p.name == "default/shared"]
    assert sorted(p.source.split("/")[-1] if not p.source.startswith("k8s:") else p.source for p in shared) == [
        "file.yaml", "k8s:CiliumNetworkPolicy/default/shared"]

    # Removing the API's deny leaves the file's policy alone in force.
    rig.co.delete_namespaced_custom_object("cilium.io", "v2", "default", "ciliumnetworkpolicies", "api-deny")
    await eventually(lambda: rig.allowed(srv.id, cli.id, 81))
    assert not rig.allowed(srv.id, cli.id, 82)
