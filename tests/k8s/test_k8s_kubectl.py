"""kubectl as the second client: the star-wars L3/L4 policy applied, a
ship relabelled and the policy deleted with kubectl, seen and enforced by
the agent through the `kubernetes` client, status readable with kubectl."""

from __future__ import annotations

import json
from pathlib import Path

from tests.k8s.conftest import NODE, eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "starwars" / "1-l3l4.yaml"


async def test_kubectl_apply_label_and_delete_drive_the_agent(rig, kubectl):
    rig.pod("deathstar", {"org": "empire", "class": "deathstar"})
    rig.pod("tiefighter", {"org": "empire", "class": "tiefighter"})
    rig.pod("xwing", {"org": "alliance", "class": "xwing"})
    agent = rig.build()
    await agent.start(serve_api=False)
    ds = await rig.endpoint("deathstar", "10.0.0.2", n=1)
    tie = await rig.endpoint("tiefighter", "10.0.0.3", n=2)
    xw = await rig.endpoint("xwing", "10.0.0.4", n=3)

    kubectl("apply", "-f", str(EXAMPLE))
    await eventually(lambda: not rig.allowed(ds.id, xw.id))
    assert rig.allowed(ds.id, tie.id)

    out = await eventually(lambda: json.loads(kubectl("get", "cnp", "-o", "json").stdout)["items"][0].get("status"))
    assert out["nodes"][NODE]["enforcing"] is True

    kubectl("label", "pod", "xwing", "org=empire", "--overwrite")
    await eventually(lambda: rig.allowed(ds.id, xw.id))  # re-identified: now an empire ship

    kubectl("delete", "-f", str(EXAMPLE))
    await eventually(lambda: not any(p.source.startswith("k8s:") for p in agent.policies().policies))
    kubectl("label", "pod", "xwing", "org=alliance", "--overwrite")
    await eventually(lambda: agent.table.view(xw.id).labels["k8s:org"] == "alliance")
    assert rig.allowed(ds.id, xw.id)  # no policy any more
