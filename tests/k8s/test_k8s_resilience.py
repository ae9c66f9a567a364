"""The watch under faults: 410 and a relist with a changed set, a stream cut
mid-way, the API server down for 10 s, the API server hung (the agent still
stops); and status written back per node."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace

from tests.k8s.conftest import FAST, NODE, cnp, eventually

CNP_PATH = "/apis/cilium.io/v2/namespaces/default/ciliumnetworkpolicies"


async def _two_pods(rig):
    rig.pod("server", {"app": "server"})
    rig.pod("client", {"app": "client"})
    agent = rig.build()
    await agent.start(serve_api=False)
    srv = await rig.endpoint("server", "10.0.0.2", n=1)
    cli = await rig.endpoint("client", "10.0.0.3", n=2)
    return agent, srv, cli


def _lists(rig) -> int:
    return sum(1 for r in rig.kube.request_log() if r.path == "/apis/cilium.io/v2/ciliumnetworkpolicies" and not r.is_watch)


async def test_relist_after_410_applies_only_the_difference(rig):
    rig.create_cnp(cnp("keep", app="server", from_app="client"))
    rig.create_cnp(cnp("goes", app="server", from_app="other"))
    agent, srv, cli = await _two_pods(rig)
    await eventually(lambda: rig.policy("default/goes") and rig.policy("default/goes").state == "enforced")
    kept = agent.book.in_force()["k8s:CiliumNetworkPolicy/default/keep"]
    lists = _lists(rig)

    rig.kube.stop()  # the agent's watches break; while away the set changes and history is compacted
    rig.kube.start()
    rig.co.delete_namespaced_custom_object("cilium.io", "v2", "default", "ciliumnetworkpolicies", "goes")
    rig.create_cnp(cnp("new", app="client", from_app="server"))
    rig.kube.compact()
    rig.kube.drop_watches()

    await eventually(lambda: rig.policy("default/new") and rig.policy("default/goes") is None, timeout=10)
    assert _lists(rig) > lists  # a relist, not a replay
    # The unchanged policy was not handed over again: the book holds the very same entry.
    assert agent.book.in_force()["k8s:CiliumNetworkPolicy/default/keep"] is kept
    assert rig.allowed(srv.id, cli.id)


async def test_a_stream_cut_mid_way_resumes_without_a_relist(rig):
    agent, srv, cli = await _two_pods(rig)
    lists = _lists(rig)
    for _ in range(3):
        await eventually(lambda: rig.kube.open_watches >= 5)
        rig.kube.drop_watches()
        await asyncio.sleep(0.05)
    rig.create_cnp(cnp("after-cut", app="server", from_app="nobody"))
    await eventually(lambda: not rig.allowed(srv.id, cli.id))
    assert _lists(rig) == lists
    watches = [r for r in rig.kube.request_log() if r.is_watch and r.path.endswith("ciliumnetworkpolicies")]
    assert all(r.query.get("allowWatchBookmarks") == "true" for r in watches)
    assert all(r.query.get("resourceVersion") for r in watches[1:])  # every re-watch resumes


async def test_api_server_down_for_10s_keeps_enforcing_and_says_so(rig):
    rig.create_cnp(cnp("deny-client", app="server", from_app="nobody"))
    agent, srv, cli = await _two_pods(rig)
    await eventually(lambda: rig.policy("default/deny-client").state == "enforced")
    assert not rig.allowed(srv.id, cli.id) and agent.health().ok
    kernel = {k: dict(v) for k, v in rig.datapath.kernel.items()}

    rig.kube.stop()
    await eventually(lambda: not agent.health().ok, timeout=5)
    health = agent.health()
    assert "API server unreachable" in health.checks["kubernetes"]
    assert "enforcing the last known" in health.checks["kubernetes"]
    status = agent.status()
    assert status.kubernetes["ok"] is False and status.kubernetes["since"]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        await asyncio.sleep(0.5)
        assert rig.datapath.kernel == kernel  # enforcement unchanged while away
        assert rig.policy("default/deny-client").state == "enforced"

    rig.kube.start()
    rig.co.patch_namespaced_custom_object(
        "cilium.io", "v2", "default", "ciliumnetworkpolicies", "deny-client",
        {"spec": cnp("deny-client", app="server", from_app="client")["spec"]})
    await eventually(lambda: agent.health().ok, timeout=10)
    await eventually(lambda: rig.allowed(srv.id, cli.id), timeout=10)  # caught up
    assert agent.status().kubernetes["detail"] == "connected"


async def test_status_is_written_per_node_the_way_cilium_reads_it(rig):
    rig.create_cnp(cnp("good", app="server", from_app="client"))
    agent, srv, cli = await _two_pods(rig)
    entry = await eventually(lambda: (rig.get_cnp("good").get("status") or {}).get("nodes", {}).get(NODE))
    assert entry["ok"] is True and entry["enforcing"] is True
    assert entry["localPolicyRevision"] >= 1 and entry["lastUpdated"].endswith("Z")
    assert "error" not in entry and entry["observedGeneration"] == 1


async def test_a_malformed_object_shows_its_error_and_the_rest_keeps_working(rig):
    agent, srv, cli = await _two_pods(rig)
    bad = cnp("bad", app="server", from_app="client")
    bad["spec"]["ingress"][0]["bogus"] = True
    rig.create_cnp(bad)
    rig.create_cnp(cnp("deny", app="server", from_app="nobody"))
    await eventually(lambda: not rig.allowed(srv.id, cli.id))  # the good one is enforced

    entry = await eventually(lambda: (rig.get_cnp("bad").get("status") or {}).get("nodes", {}).get(NODE))
    assert entry["ok"] is False and entry["enforcing"] is False
    assert entry["error"] == "k8s:CiliumNetworkPolicy/default/bad: spec.ingress[0].bogus: unknown field"
    pol = rig.policy("default/bad")
    assert pol.state == "error" and pol.source == "k8s:CiliumNetworkPolicy/default/bad"
    assert (await eventually(lambda: (rig.get_cnp("deny").get("status") or {}).get("nodes", {}).get(NODE)))["ok"] is True

    fixed = cnp("bad", app="server", from_app="client")
    rig.co.patch_namespaced_custom_object("cilium.io", "v2", "default", "ciliumnetworkpolicies", "bad", {"spec": fixed["spec"]})
    entry = await eventually(lambda: rig.get_cnp("bad")["status"]["nodes"][NODE]["ok"] is True and rig.get_cnp("bad")["status"]["nodes"][NODE])
    assert "error" not in entry  # the merge patch removed it


async def test_status_writes_are_coalesced_and_skipped_when_nothing_changed(rig):
    agent, srv, cli = await _two_pods(rig)
    rig.create_cnp(cnp("busy", app="server", from_app="client", port=1))
    await eventually(lambda: (rig.get_cnp("busy").get("status") or {}).get("nodes", {}).get(NODE))
    rig.kube.clear_request_log()
    began = time.monotonic()
    for port in range(2, 22):  # 20 changes in quick succession
        rig.co.patch_namespaced_custom_object(
            "cilium.io", "v2", "default", "ciliumnetworkpolicies", "busy",
            {"spec": cnp("busy", app="server", from_app="client", port=port)["spec"]})
    await eventually(lambda: rig.get_cnp("busy")["status"]["nodes"][NODE]["observedGeneration"] == 21, timeout=30)
    took = time.monotonic() - began
    patches = [r for r in rig.kube.request_log() if r.method == "PATCH" and r.path == f"{CNP_PATH}/busy/status"]
    # At most one per 0.5 s interval, not one per change: the bound follows
    # how long the changes took (a loaded machine takes longer), not a guess.
    assert 1 <= len(patches) <= took / 0.5 + 2 and len(patches) < 20, (len(patches), took)

    rig.kube.clear_request_log()
    agent.queue.mark(list(agent.table.ids()), reason="test: nothing changed")
    await asyncio.sleep(1.0)
    assert not [r for r in rig.kube.request_log() if r.method == "PATCH"]


async def test_this_nodes_entry_replaced_by_another_writer_is_put_back(rig):
    rig.create_cnp(cnp("p", app="server", from_app="client"))
    agent, srv, cli = await _two_pods(rig)
    await eventually(lambda: (rig.get_cnp("p").get("status") or {}).get("nodes", {}).get(NODE))
    wrong = {"ok": False, "enforcing": False, "error": "written by someone else", "localPolicyRevision": 0}
    rig.co.patch_namespaced_custom_object_status(
        "cilium.io", "v2", "default", "ciliumnetworkpolicies", "p", {"status": {"nodes": {NODE: wrong}}})
    entry = await eventually(lambda: (e := rig.get_cnp("p")["status"]["nodes"][NODE])["ok"] is True and e, timeout=10)
    assert entry["enforcing"] is True and "error" not in entry


async def test_status_already_on_the_object_is_not_rewritten_after_a_restart(rig, tmp_path):
    rig.create_cnp(cnp("p", app="server", from_app="client"))
    agent, srv, cli = await _two_pods(rig)
    await eventually(lambda: (rig.get_cnp("p").get("status") or {}).get("nodes", {}).get(NODE))
    await agent.stop()
    rig.kube.clear_request_log()
    agent = rig.build()
    await agent.start(serve_api=False)
    await eventually(lambda: rig.policy("default/p") and rig.policy("default/p").state == "enforced")
    await asyncio.sleep(0.8)
    assert not [r for r in rig.kube.request_log() if r.method == "PATCH"]


async def test_stop_returns_when_the_api_server_hangs_mid_stream_and_a_wake_meets_the_cancel(rig):
    """The API server hangs: its open watches send nothing more and never
    close, new requests are read and never answered. The status writer,
    the server unreachable, waits to retry; a wake from the core (as after
    every regeneration) lands in the same loop tick as the cancel of stop().
    asyncio.wait_for on Python 3.11 swallowed that cancel, the writer went
    on, and stop() waited for it forever (seen under CPU load)."""
    rig.create_cnp(cnp("deny-client", app="server", from_app="nobody"))
    # No settle pause: the writer spends all its waiting in the wait for a wake.
    agent = rig.build(status_settle=0.0, stop_timeout=30.0)
    await agent.start(serve_api=False)
    source = rig.source
    assert source is not None
    await eventually(lambda: (rig.get_cnp("deny-client").get("status") or {}).get("nodes", {}).get(NODE))
    await eventually(lambda: rig.kube.open_watches >= len(rig.source.reflectors))  # every kind watched

    rig.kube.stall()
    await eventually(lambda: not agent.health().ok, timeout=30)  # the silence taken for a dead server
    source.regenerated()
    await asyncio.wait_for(source.stop(), 60)  # a hang guard: it returns as soon as everything has ended
    assert not any(r.running for r in source.reflectors.values())
    await asyncio.wait_for(agent.stop(), 60)
    rig.agent = None


async def test_stop_leaves_behind_a_reflector_blocked_before_the_response_and_says_which(rig, caplog):
    """A request the hung server read but never answered cannot be cut from
    outside the client: its reflector thread stays blocked until its read
    timeout (here far away). stop() gives up on it after `stop_timeout`,
    names it, and returns; the thread is a daemon."""
    caplog.set_level(logging.WARNING, logger="agent.adapters.kubernetes")
    slow = replace(FAST, read_timeout=600.0)
    agent = rig.build(timing=slow, stop_timeout=0.5)
    await agent.start(serve_api=False)
    await eventually(lambda: rig.kube.open_watches >= len(rig.source.reflectors))  # every kind watched
    rig.kube.stall()
    rig.kube.clear_request_log()
    rig.kube.drop_watches()  # every stream cut: each reflector asks again and gets no answer
    await eventually(lambda: len({r.path for r in rig.kube.request_log() if r.is_watch}) >= len(rig.source.reflectors), timeout=30)

    await asyncio.wait_for(agent.stop(), 60)
    rig.agent = None
    assert rig.source is not None and all(r.running for r in rig.source.reflectors.values())
    warned = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
    assert len(warned) == 1 and all(name in warned[0] for name in rig.source.reflectors)
