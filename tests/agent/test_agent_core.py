"""The agent core against fakes: what a user sees in endpoint and policy status,
and what reaches the (fake) kernel and Envoy."""

from __future__ import annotations

import asyncio
import json
from ipaddress import IPv4Address

import pytest

from agent.core.agent import Agent
from agent.core.models import EndpointCreate, EndpointState
from policy.compiled import Verdict
from tests.agent.conftest import Rig


def ep(name: str, ip: str, **labels: str) -> EndpointCreate:
    return EndpointCreate(container_id=f"cid-{name}", host_ifname=f"lxc{name}"[:15], ipv4=IPv4Address(ip), labels=labels, name=name)


async def settle(agent: Agent) -> None:
    assert agent.watcher is not None
    await agent.watcher.poll_once()
    await agent.queue.drain(5)


async def started(rig: Rig, **kw) -> Agent:
    agent = rig.agent(**kw)
    await agent.start(serve_api=False)
    await agent.queue.drain(5)
    return agent


async def add_starwars(agent: Agent) -> dict[str, int]:
    ids = {}
    for name, ip, labels in [
        ("deathstar", "10.200.0.10", {"org": "empire", "class": "deathstar"}),
        ("tiefighter", "10.200.0.11", {"org": "empire", "class": "tiefighter"}),
        ("xwing", "10.200.0.12", {"org": "alliance", "class": "xwing"}),
    ]:
        view, created = await agent.create_endpoint(ep(name, ip, **labels), wait=5)
        assert created
        ids[name] = view.id
    return ids


L4 = {"name": "l4", "selector": {"class": "deathstar"}, "allowFrom": {"org": "empire"}, "port": 80}
L7 = {"name": "l7", "selector": {"class": "deathstar"}, "allowFrom": {"org": "empire"}, "port": 80, "l7": True}


async def test_new_endpoint_waits_for_identity_then_becomes_ready(rig: Rig) -> None:
    agent = await started(rig)
    try:
        view, created = await agent.create_endpoint(ep("a", "10.200.0.1", app="a"), wait=None)
        assert created and view.state == EndpointState.WAITING_FOR_IDENTITY and view.identity is None
        await agent.queue.drain(5)
        after = agent.table.view(view.id)
        assert after is not None and after.state == EndpointState.READY and after.identity is not None
        assert rig.datapath.attached[view.id] == ("lxca", IPv4Address("10.200.0.1"), after.identity)
    finally:
        await agent.stop()


async def test_only_affected_endpoints_are_regenerated(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        writes_before = len(rig.datapath.writes)
        rig.write_policy("l4.json", [L4])
        await settle(agent)
        assert rig.datapath.writes[writes_before:] == [ids["deathstar"]]
        ds = agent.table.view(ids["deathstar"])
        assert ds is not None and ds.ingress_enforced and ds.policies == ["default/l4"]
        # Untouched endpoints still report the new revision: they enforce it too.
        revisions = {v.name: v.policy_revision for v in agent.table.views()}
        assert len(set(revisions.values())) == 1
    finally:
        await agent.stop()


async def test_policy_burst_is_compiled_once(rig: Rig) -> None:
    agent = await started(rig)
    try:
        await add_starwars(agent)
        compiles = rig.compiler.compiles
        for i in range(20):
            rig.write_policy(f"p{i}.json", [dict(L4, name=f"p{i}", port=1000 + i)])
        await settle(agent)
        assert rig.compiler.compiles == compiles + 1
        statuses = agent.policies().policies
        assert [s.state for s in statuses] == ["enforced"] * 20
        assert all(s.endpoints == 1 for s in statuses)
    finally:
        await agent.stop()


async def test_policy_status_shows_enforcement_count_and_revision(rig: Rig) -> None:
    agent = await started(rig)
    try:
        await add_starwars(agent)
        rig.write_policy("empire.json", [{"name": "empire-only", "selector": {"org": "empire"}, "allowFrom": {"org": "empire"}}])
        await settle(agent)
        (st,) = agent.policies().policies
        assert (st.name, st.state, st.endpoints, st.revision) == ("default/empire-only", "enforced", 2, agent.regenerator.applied_revision)
        (rig.policy_dir / "empire.json").unlink()
        await settle(agent)
        assert agent.policies().policies == []
        assert all(not v.ingress_enforced for v in agent.table.views())
    finally:
        await agent.stop()


@pytest.mark.parametrize(
    "bad_content, field",
    [
        pytest.param("{not json", "not JSON", id="unparsable"),
        pytest.param(json.dumps([{"selector": {}}]), "[0].name", id="missing-name"),
        pytest.param(json.dumps([{"name": "l4", "port": "eighty"}]), "[0].port", id="bad-field"),
    ],
)
async def test_invalid_file_is_an_error_and_the_rest_stays_enforced(rig: Rig, bad_content: str, field: str) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.write_policy("good.json", [L4])
        await settle(agent)
        kernel_before = dict(rig.datapath.kernel[ids["deathstar"]])
        rig.write_policy("bad.json", bad_content)
        await settle(agent)
        by_name = {s.name: s for s in agent.policies().policies}
        assert by_name["default/l4"].state == "enforced"
        bad = [s for s in by_name.values() if s.source.endswith("bad.json")]
        assert len(bad) == 1 and bad[0].state == "error"
        assert bad[0].errors[0].kind == "validation" and field in bad[0].errors[0].message
        assert rig.datapath.kernel[ids["deathstar"]] == kernel_before
    finally:
        await agent.stop()


async def test_broken_edit_keeps_previous_version_enforced(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.write_policy("l4.json", [L4])
        await settle(agent)
        kernel = dict(rig.datapath.kernel[ids["deathstar"]])
        rig.write_policy("l4.json", "[{broken")
        await settle(agent)
        (st,) = agent.policies().policies
        assert st.name == "default/l4" and st.stale and st.state == "error" and st.endpoints == 1
        assert rig.datapath.kernel[ids["deathstar"]] == kernel
        rig.write_policy("l4.json", [dict(L4, port=8080)])
        await settle(agent)
        (st,) = agent.policies().policies
        assert st.state == "enforced" and not st.stale
        assert {k.ports.lo for k in rig.datapath.kernel[ids["deathstar"]]} == {8080}
    finally:
        await agent.stop()


async def test_redirect_is_written_only_after_envoy_acked(rig: Rig) -> None:
    agent = await started(rig)
    order: list[str] = []
    real_publish, real_apply = rig.proxy.publish, rig.datapath.apply

    async def publish(state, timeout):
        order.append("publish")
        return await real_publish(state, timeout)

    async def apply(state):
        if any(e.verdict == Verdict.REDIRECT for ep_ in state.endpoints.values() for e in ep_.entries):
            order.append("redirect-written")
        return await real_apply(state)

    rig.proxy.publish, rig.datapath.apply = publish, apply  # type: ignore[method-assign]
    try:
        await add_starwars(agent)
        rig.write_policy("l7.json", [L7])
        await settle(agent)
        assert order[-2:] == ["publish", "redirect-written"]
    finally:
        await agent.stop()


async def test_listener_is_removed_from_envoy_only_after_the_kernel_stopped_redirecting(rig: Rig) -> None:
    """Break after make: a SYN arriving between Envoy dropping a listener and
    the kernel write would find nobody listening and wait for a retransmit."""
    agent = await started(rig)
    order: list[tuple[str, bool]] = []
    real_publish, real_apply = rig.proxy.publish, rig.datapath.apply

    def has_l7(state) -> bool:
        return any(ep.l7 for ep in state.endpoints.values())

    def redirects(state) -> bool:
        return any(e.verdict == Verdict.REDIRECT for ep in state.endpoints.values() for e in ep.entries)

    async def publish(state, timeout):
        order.append(("envoy has the listener", has_l7(state)))
        return await real_publish(state, timeout)

    async def apply(state):
        order.append(("kernel redirects", redirects(state)))
        return await real_apply(state)

    rig.proxy.publish, rig.datapath.apply = publish, apply  # type: ignore[method-assign]
    try:
        await add_starwars(agent)
        rig.write_policy("l7.json", [L7])
        await settle(agent)
        order.clear()
        rig.write_policy("l7.json", [L4])  # the same port, now without L7: the listener goes
        await settle(agent)
        # Envoy already holds the listener (nothing to publish before the
        # kernel write); its removal is published once nothing redirects to it.
        assert order == [("kernel redirects", False), ("envoy has the listener", False)]
    finally:
        await agent.stop()


@pytest.mark.parametrize(
    "mode, kind, text",
    [
        pytest.param("nack", "envoy-nack", "invalid regex", id="nack"),
        pytest.param("timeout", "envoy-timeout", "did not acknowledge", id="no-ack"),
    ],
)
async def test_envoy_failure_fails_closed_and_shows_why(rig: Rig, mode: str, kind: str, text: str) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.proxy.mode = mode
        rig.write_policy("l7.json", [L7])
        await settle(agent)
        ds = agent.table.view(ids["deathstar"])
        assert ds is not None and ds.state == EndpointState.NOT_READY and text in (ds.reason or "")
        verdicts = {v for v, _ in rig.datapath.kernel[ids["deathstar"]].values()}
        assert verdicts == {Verdict.DENY}  # never a redirect to a listener Envoy does not hold
        (st,) = agent.policies().policies
        assert st.state == "error" and st.errors[0].kind == kind and text in st.errors[0].message
        # Envoy comes back: the next regeneration (a retry, or any change) heals it.
        rig.proxy.mode = "ack"
        agent.queue.mark([ids["deathstar"]], reason="test")
        await agent.queue.drain(5)
        ds = agent.table.view(ids["deathstar"])
        assert ds is not None and ds.state == EndpointState.READY
        assert {v for v, _ in rig.datapath.kernel[ids["deathstar"]].values()} == {Verdict.REDIRECT}
        assert agent.policies().policies[0].state == "enforced"
    finally:
        await agent.stop()


async def test_map_full_is_reported_on_endpoint_and_policy(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.datapath.map_capacity = 1
        rig.write_policy("l4.json", [L4])
        await settle(agent)
        ds = agent.table.view(ids["deathstar"])
        assert ds is not None and ds.state == EndpointState.NOT_READY and "map-full" in (ds.reason or "")
        (st,) = agent.policies().policies
        assert st.state == "error" and st.errors[0].kind == "map-full" and st.endpoints == 0
    finally:
        await agent.stop()


async def test_statuses_read_again_follow_every_kind_of_change(rig: Rig) -> None:
    """Statuses are kept between reads while nothing changed (each scrape
    and status write-back reads them): a read after any change shows it."""
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.write_policy("l4.json", [L4])
        await settle(agent)
        first = agent.policies()
        assert agent.policies() is first, "nothing changed: the kept answer"
        assert [s.state for s in first.policies] == ["enforced"]

        rig.write_policy("l4.json", "not json")  # the book only: no regeneration
        await agent.watcher.poll_once()
        (st,) = agent.policies().policies
        assert st.state == "error" and st.stale

        rig.write_policy("l4.json", [L4])
        await settle(agent)
        (st,) = agent.policies().policies
        assert st.state == "enforced" and not st.stale and st.endpoints == 1

        agent.table.set_live(ids["deathstar"], state=EndpointState.NOT_READY)  # an endpoint's live state only
        (st,) = agent.policies().policies
        assert st.endpoints == 0

        rig.datapath.map_capacity = 1  # a regeneration's outcome
        agent.queue.mark(list(agent.table.ids()), reason="test")
        await settle(agent)
        (st,) = agent.policies().policies
        assert st.state == "error" and st.errors[0].kind == "map-full"
    finally:
        await agent.stop()


async def test_attach_failure_is_not_ready_and_others_proceed(rig: Rig) -> None:
    agent = await started(rig)
    try:
        rig.datapath.fail_attach.add(1)
        a, _ = await agent.create_endpoint(ep("a", "10.200.0.1", app="a"), wait=5)
        b, _ = await agent.create_endpoint(ep("b", "10.200.0.2", app="b"), wait=5)
        assert a.state == EndpointState.NOT_READY and "no such device lxca" in (a.reason or "")
        assert b.state == EndpointState.READY
    finally:
        await agent.stop()


async def test_delete_detaches_and_forgets(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        removed = await agent.delete_endpoint(ids["xwing"])
        assert removed is not None
        await agent.queue.drain(5)
        assert rig.datapath.detached == [ids["xwing"]]
        assert agent.table.view(ids["xwing"]) is None
        assert await agent.delete_endpoint(ids["xwing"]) is None
    finally:
        await agent.stop()


async def test_restart_keeps_ids_identities_ports_and_does_not_rewrite_the_kernel(rig: Rig) -> None:
    agent = await started(rig)
    ids = await add_starwars(agent)
    rig.write_policy("l7.json", [L7])
    await settle(agent)
    before = {v.name: (v.id, v.identity) for v in agent.table.views()}
    ports_before = dict(rig.compiler.ports)
    kernel_before = {k: dict(v) for k, v in rig.datapath.kernel.items()}
    await agent.stop()
    assert rig.datapath.detached == []  # shutdown leaves the datapath enforcing

    writes = len(rig.datapath.writes)
    again = await started(rig)
    try:
        after = {v.name: (v.id, v.identity) for v in again.table.views()}
        assert after == before
        assert rig.compiler.ports == ports_before and rig.compiler is rig.compilers[-1] and len(rig.compilers) == 2
        assert rig.datapath.kernel == kernel_before
        assert rig.datapath.writes[writes:] == []  # adopted, nothing rewritten, no transient drop
        assert all(v.state == EndpointState.READY for v in again.table.views())
        # A new endpoint gets a fresh id, not one of the restored ones.
        view, _ = await again.create_endpoint(ep("new", "10.200.0.20", app="new"), wait=5)
        assert view.id not in ids.values()
    finally:
        await again.stop()


async def test_flow_events_are_enriched_with_labels(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        xwing = agent.table.view(ids["xwing"])
        assert xwing is not None
        sub = agent.flows.subscribe(frozenset({"drop"}))
        rig.datapath.events.put_nowait({"type": "forward", "src_identity": xwing.identity})
        rig.datapath.events.put_nowait({"type": "drop", "src_identity": xwing.identity, "dst_port": 80, "reason": "policy denied"})
        event = await asyncio.wait_for(sub.queue.get(), 2)
        sub.close()
        assert event.type == "drop" and "k8s:class=xwing" in event.src_labels and event.dst_port == 80
    finally:
        await agent.stop()


async def test_label_change_gives_a_new_identity_and_reattaches(rig: Rig) -> None:
    agent = await started(rig)
    try:
        first, _ = await agent.create_endpoint(ep("a", "10.200.0.1", app="a"), wait=5)
        again, created = await agent.create_endpoint(ep("a", "10.200.0.1", app="b"), wait=5)
        assert not created and again.id == first.id and again.identity != first.identity
        assert rig.datapath.attached[first.id][2] == again.identity  # program rebuilt for the new identity
    finally:
        await agent.stop()


async def test_watcher_picks_up_changes_on_its_own(rig: Rig) -> None:
    agent = await started(rig, poll_interval=0.02)
    try:
        await add_starwars(agent)
        rig.write_policy("l4.json", [L4])
        for _ in range(250):
            if [p.state for p in agent.policies().policies] == ["enforced"]:
                break
            await asyncio.sleep(0.02)
        assert [(p.name, p.state) for p in agent.policies().policies] == [("default/l4", "enforced")]
    finally:
        await agent.stop()


async def test_same_policy_in_two_files_later_path_wins_with_a_warning(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.write_policy("1-l4.json", [dict(L4, name="rule1")])
        await settle(agent)
        rig.write_policy("2-l7.json", [dict(L7, name="rule1")])
        await settle(agent)
        (st,) = agent.policies().policies
        assert st.state == "enforced" and st.source.endswith("2-l7.json")
        assert len(st.warnings) == 1 and "1-l4.json" in st.warnings[0]
        assert {v for v, _ in rig.datapath.kernel[ids["deathstar"]].values()} == {Verdict.REDIRECT}
        (rig.policy_dir / "2-l7.json").unlink()
        await settle(agent)
        (st,) = agent.policies().policies
        assert st.source.endswith("1-l4.json") and not st.warnings
        assert {v for v, _ in rig.datapath.kernel[ids["deathstar"]].values()} == {Verdict.ALLOW}
    finally:
        await agent.stop()


async def test_host_addresses_are_refreshed_when_endpoints_arrive(rig: Rig) -> None:
    addrs = [IPv4Address("192.0.2.1")]
    agent = rig.agent()
    agent._host_ips = lambda: list(addrs)  # what `ciliate agent` reads from netlink
    await agent.start(serve_api=False)
    try:
        await agent.queue.drain(5)
        assert rig.compiler.host_ips == {IPv4Address("192.0.2.1")}
        addrs.append(IPv4Address("10.200.0.1"))  # the CNI put a gateway on ciliate_host
        await agent.create_endpoint(ep("a", "10.200.0.2", app="a"), wait=5)
        assert rig.compiler.host_ips == {IPv4Address("192.0.2.1"), IPv4Address("10.200.0.1")}
    finally:
        await agent.stop()


def _sample(agent: Agent, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(agent.metrics.render().decode()):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


async def test_publishes_to_envoy_are_counted_by_outcome(rig: Rig) -> None:
    agent = await started(rig)
    try:
        await add_starwars(agent)
        rig.write_policy("l7.json", [L7])
        await settle(agent)
        assert _sample(agent, "ciliate_proxy_publishes_total", outcome="acked") == 1
        rig.proxy.mode = "nack"
        rig.write_policy("l7.json", [{**L7, "port": 8080}])
        await settle(agent)
        assert _sample(agent, "ciliate_proxy_publishes_total", outcome="rejected") == 1
        assert _sample(agent, "ciliate_proxy_publishes_total", outcome="acked") == 1
    finally:
        await agent.stop()


async def test_policies_gauge_is_current_without_any_status_read(rig: Rig) -> None:
    # Before: only a GET of /v1/policies (or /v1/status) moved the gauge.
    agent = await started(rig)
    try:
        await add_starwars(agent)
        rig.write_policy("l4.json", [L4])
        await settle(agent)
        assert _sample(agent, "ciliate_policies", state="enforced") == 1
        rig.write_policy("l4.json", "not json")
        await agent.watcher.poll_once()
        assert _sample(agent, "ciliate_policies", state="error") == 1
    finally:
        await agent.stop()


async def test_one_info_line_per_policy_change(rig: Rig, caplog) -> None:
    """What an operator reads in a week of logs: one line per policy file
    loaded, replaced or removed, and a warning naming what was refused."""
    import logging

    agent = await started(rig)
    try:
        with caplog.at_level(logging.INFO, logger="agent.core.agent"):
            path = rig.write_policy("empire.json", [{"name": "empire-only", "selector": {"org": "empire"}, "allowFrom": {"org": "empire"}}])
            await settle(agent)
            path.unlink()
            await settle(agent)
        lines = [r.getMessage() for r in caplog.records if r.name == "agent.core.agent"]
        assert lines == [f"policy file loaded: {path} (1 policies)", f"policy file removed: {path}"], lines
    finally:
        await agent.stop()
