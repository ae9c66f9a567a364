"""The agent keeps a bounded history of flow events and serves it read-only
at GET /v1/flows/history, for `ciliate policy diff --observed`."""

from __future__ import annotations

from agent.core.flow_history import FlowHistory, FlowHistoryList
from agent.core.flows import FlowHub
from agent.core.models import FlowEvent
from tests.agent.api_client import api_client
from tests.agent.conftest import Rig


def _ev(t: float, port: int = 80) -> FlowEvent:
    return FlowEvent(time=t, type="drop", src_ip="10.0.0.1", dst_ip="10.0.0.2", dst_port=port, verdict="drop")


def test_history_keeps_the_newest_events_up_to_capacity():
    h = FlowHistory(capacity=3, max_age=3600, clock=lambda: 100.0)
    for i in range(5):
        h.add(_ev(90 + i, port=i))
    assert [e.dst_port for e in h.events()] == [2, 3, 4]
    assert h.evicted == 2


def test_history_forgets_events_older_than_max_age_and_answers_since():
    now = [1000.0]
    h = FlowHistory(capacity=100, max_age=60, clock=lambda: now[0])
    for t in (930.0, 950.0, 990.0, 999.0):
        h.add(_ev(t))
    assert [e.time for e in h.events()] == [950.0, 990.0, 999.0]
    assert [e.time for e in h.events(since=15)] == [990.0, 999.0]
    now[0] = 1051.0
    assert [e.time for e in h.events()] == [999.0]


def test_every_published_event_lands_in_the_hub_history():
    hub = FlowHub()
    hub.publish(_ev(1e12))  # far future: not expired by the wall clock
    assert [e.dst_port for e in hub.history.events()] == [80]


async def test_api_serves_the_history_and_refuses_a_bad_since(rig: Rig) -> None:
    async with api_client(rig) as (agent, client):
        agent.flows.publish(_ev(1e12, port=8080))
        r = await client.get("/v1/flows/history")
        assert r.status == 200
        body = FlowHistoryList.model_validate(await r.json())
        assert [e.dst_port for e in body.events] == [8080] and body.capacity == 10_000
        r = await client.get("/v1/flows/history", params={"since": "60"})
        assert [e["dst_port"] for e in (await r.json())["events"]] == [8080]
        for bad in ("-1", "x", "inf", "0"):
            r = await client.get("/v1/flows/history", params={"since": bad})
            assert r.status == 400, bad
            assert "since" in (await r.json())["detail"]


def test_history_gives_back_every_field_it_was_given():
    """The ring keeps events in their JSON form; what a replay reads back is
    the event as it was recorded, whatever fields it carries."""
    labels = ["k8s:org=empire", "k8s:class=tiefighter"]
    kept = [
        FlowEvent(time=1.0, type="drop", endpoint_id=3, direction="egress", protocol="TCP", src_ip="10.0.0.1", src_port=41000,
                  dst_ip="fd00::9", dst_port=80, src_identity=300, dst_identity=2, src_labels=labels, verdict="drop", reason="policy denied"),
        FlowEvent(time=2.0, type="l7", src_ip="10.0.0.1", dst_ip="10.0.0.9", dst_port=80, src_labels=labels, dst_labels=["k8s:class=deathstar"],
                  src_pod="tiefighter", src_namespace="default", verdict="forwarded", method="PUT", path="/v1/exhaust-port?x=1", status=403),
        FlowEvent(time=3.0, type="dns", dns_name="allowed.test.", dns_type="AAAA", dns_rcode="NOERROR", dns_addresses=["fd00::7", "10.9.9.9"], verdict="forwarded"),
        FlowEvent(time=4.0, type="agent", summary="an extra field survives", node="b"),  # extra="allow"
        FlowEvent(time=5.0, type="drop", src_port=0, dst_port=0, src_labels=[], status=0),  # falsy values are values
    ]
    h = FlowHistory(capacity=10, max_age=3600, clock=lambda: 6.0)
    for e in kept:
        h.add(e)
    back = h.events()
    assert back == kept
    assert [e.model_dump() for e in back] == [e.model_dump() for e in kept]


def test_a_hostile_string_in_an_event_neither_breaks_the_history_nor_changes():
    """Paths and names come from tenants: a lone surrogate (not encodable as
    UTF-8), NUL, a bidi override and quotes are kept as they were, and the
    events around them are unaffected."""
    hostile = FlowEvent(time=2.0, type="l7", path='/a\udc80b\x00\u202e"\\', summary="x\ud800", src_labels=["k8s:app=\udcff"])
    h = FlowHistory(capacity=10, max_age=3600, clock=lambda: 5.0)
    for e in (_ev(1.0), hostile, _ev(3.0)):
        h.add(e)
    assert h.events() == [_ev(1.0), hostile, _ev(3.0)]
