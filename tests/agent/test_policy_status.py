"""Policy status text: a full policy map is blamed on the policies that filled it,
the endpoint is named once, and the table shows error kinds by their wire names."""

from __future__ import annotations

from agent.cli.agent_commands import _policy_rows
from agent.core.agent import Agent
from agent.core.endpoint_table import LiveState
from agent.core.models import EndpointState, PolicyList
from agent.core.ports import Failure
from agent.core.policy_status import policy_statuses
from redirect.errors import MapFullError
from tests.agent.conftest import Rig
from tests.agent.test_agent_core import add_starwars, settle, started

BIG = {"name": "big", "selector": {"class": "deathstar"}, "allowFrom": {"org": "empire"}, "port": 80}  # 2 entries
SMALL = {"name": "small", "selector": {"class": "deathstar"}, "allowFrom": {"class": "tiefighter"}, "port": 81}  # 1 entry
ELSEWHERE = {"name": "elsewhere", "selector": {"class": "xwing"}, "allowFrom": {"org": "alliance"}, "port": 82}


def _statuses(agent: Agent):
    return {s.name: s for s in agent.policies().policies}


async def test_map_full_is_blamed_on_the_policy_that_filled_it(rig: Rig) -> None:
    agent = await started(rig)
    try:
        ids = await add_starwars(agent)
        rig.datapath.map_capacity = 2
        rig.write_policy("p.json", [BIG, SMALL, ELSEWHERE])
        await settle(agent)
        ds = agent.table.view(ids["deathstar"])
        assert ds is not None and ds.state == EndpointState.NOT_READY
        st = _statuses(agent)
        big, small, elsewhere = st["default/big"], st["default/small"], st["default/elsewhere"]
        assert big.state == "error" and [e.kind for e in big.errors] == ["map-full"]
        assert "2 of those entries come from this policy" in big.errors[0].message
        assert small.state == "not-enforced" and small.errors == []
        assert small.reason == f"endpoint {ids['deathstar']}: its policy map is full, mostly with entries of default/big"
        assert elsewhere.state == "enforced" and elsewhere.reason is None
        table = _policy_rows(list(st.values()))
        assert "mostly with entries of default/big" in table and "not-enforced on 0 endpoint(s)" in table
    finally:
        await agent.stop()


def test_tied_fillers_are_all_blamed() -> None:
    from pathlib import Path

    from agent.core.policy_book import BookEntry
    from tests.agent.fakes import FakeDoc
    from policy.compiled import CompiledState, Direction, EndpointPolicy, PolicyEntry, PolicyKey, PortRange, Protocol, RuleRef, Verdict

    def entry(port: int, *policies: str) -> PolicyEntry:
        key = PolicyKey(300, Direction.INGRESS, Protocol.TCP, PortRange(port, port))
        return PolicyEntry(key, Verdict.ALLOW, 0, tuple(RuleRef("CiliumNetworkPolicy", p, "spec.ingress[0]") for p in policies))

    names = ("default/a", "default/b", "default/c")
    entries = (entry(1, "default/a"), entry(2, "default/b"), entry(3, "default/a", "default/b"), entry(4, "default/c"))
    ep = EndpointPolicy(7, 300, None, True, False, entries, selected_by=frozenset(names))
    compiled = CompiledState(3, {7: ep}, {})
    failure = Failure("map-full", str(MapFullError("policy map", 4, 2, 7)))
    live = {7: LiveState(state=EndpointState.NOT_READY, policies=names, failure=failure)}
    book = {f"CiliumNetworkPolicy/{n}": BookEntry(FakeDoc(n.removeprefix("default/"), (), (), 80, False), Path("/p.yaml")) for n in names}
    st = {s.name: s for s in policy_statuses(book, {}, {}, live, 3, None, compiled, applied=book)}
    assert (st["default/a"].state, st["default/b"].state, st["default/c"].state) == ("error", "error", "not-enforced")
    assert st["default/c"].reason == "endpoint 7: its policy map is full, mostly with entries of default/a, default/b"


def test_map_full_message_names_the_endpoint_once() -> None:
    from pathlib import Path

    from agent.core.policy_book import BookEntry
    from tests.agent.fakes import FakeDoc

    failure = Failure("map-full", str(MapFullError("policy map", 21, 8, 1)))
    live = {1: LiveState(state=EndpointState.NOT_READY, policies=("default/p",), failure=failure)}
    book = {"CiliumNetworkPolicy/default/p": BookEntry(FakeDoc("p", (), (), 80, False), Path("/p.yaml"))}
    (st,) = policy_statuses(book, {}, {}, live, 1, applied=book)
    (err,) = st.errors
    assert err.message.startswith("endpoint 1: policy map would hold 21 entries but its capacity is 8")
    assert err.message.count("endpoint 1") == 1


def test_table_shows_the_error_kind_by_its_value() -> None:
    # As the CLI sees it: parsed back from the API's JSON.
    wire = {
        "revision": 3,
        "policies": [
            {
                "name": "default/p", "kind": "CiliumNetworkPolicy", "source": "/p.yaml", "state": "error",
                "errors": [{"kind": "map-full", "message": "endpoint 1: policy map would hold 21 entries"}],
            }
        ],
    }
    pols = PolicyList.model_validate(wire).policies
    table = _policy_rows(pols)
    assert "  map-full: endpoint 1: policy map would hold 21 entries" in table
    assert "PolicyErrorKind" not in table
    assert f"{pols[0].errors[0].kind}" == "map-full"
