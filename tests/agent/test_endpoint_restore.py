"""An endpoint table that lost endpoints (endpoints.json moved aside after a
crash) is reconciled with the datapath's records at start: endpoints whose
veth is still there come back under their id, address and identity; stale
ones are removed; an endpoint nobody can reconstruct stops the start with a
message naming it. Never healthy with orphaned pods."""

from __future__ import annotations

import pytest

from agent.core.endpoint_restore import EndpointRestoreError
from agent.core.models import EndpointState
from tests.agent.conftest import Rig
from tests.agent.test_agent_core import add_starwars, ep, started


async def _lose_table(rig: Rig) -> dict[str, tuple[int, int | None, str | None]]:
    agent = await started(rig)
    ids = await add_starwars(agent)
    before = {n: (v.id, v.identity, str(v.ipv4)) for n in ids if (v := agent.table.view(ids[n])) is not None}
    await agent.stop()
    (rig.state_dir / "endpoints.json").rename(rig.state_dir / "endpoints.json.aside")
    return before


async def test_lost_endpoints_come_back_with_their_ids_identities_and_policy(rig: Rig) -> None:
    before = await _lose_table(rig)
    agent = await started(rig)
    try:
        views = {v.id: v for v in agent.table.views()}
        assert {(v.id, v.identity, str(v.ipv4)) for v in views.values()} == set(before.values())
        assert {v.state for v in views.values()} == {EndpointState.READY}
        assert agent.health().ok
        # The restored table is persisted, and a CNI ADD of the same pod (same
        # host veth) updates the restored endpoint instead of adding a second.
        assert (rig.state_dir / "endpoints.json").exists()
        ds_id = before["deathstar"][0]
        host_if = views[ds_id].host_ifname
        view, created = await agent.create_endpoint(ep("deathstar", before["deathstar"][2], org="empire", **{"class": "deathstar"}).model_copy(update={"host_ifname": host_if}), wait=5)
        assert (view.id, created) == (ds_id, False)
        assert len(agent.table) == 3
    finally:
        await agent.stop()


async def test_endpoint_whose_veth_is_gone_is_removed_not_restored(rig: Rig) -> None:
    before = await _lose_table(rig)
    xwing_id = before["xwing"][0]
    rig.datapath.links_gone.add(rig.datapath.attached[xwing_id][0])
    agent = await started(rig)
    try:
        assert xwing_id not in agent.table and xwing_id in rig.datapath.detached
        assert len(agent.table) == 2 and agent.health().ok
    finally:
        await agent.stop()


async def test_unknown_identity_refuses_to_start_naming_the_endpoint(rig: Rig) -> None:
    before = await _lose_table(rig)
    (rig.state_dir / "identities.json").unlink()
    agent = rig.agent()
    with pytest.raises(EndpointRestoreError) as err:
        await agent.start(serve_api=False)
    await agent.stop()
    msg = str(err.value)
    assert f"endpoint {before['deathstar'][0]} (" in msg and "identities.json" in msg and "endpoints.json" in msg
