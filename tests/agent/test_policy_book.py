"""The policy book's resolution of toServices (agent/core/policy_book.py):
what is in force follows every change, and an unchanged policy is not
resolved again against an unchanged Services snapshot."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from agent.core.policy_book import PolicyBook
from agent.core.ports import LoadedFile


@dataclass(frozen=True)
class Doc:
    name: str
    service: str | None = None  # a toServices reference, resolved to "svc:<snapshot>"
    resolved: str | None = None

    @property
    def key(self) -> str:
        return f"CiliumNetworkPolicy/default/{self.name}"

    @property
    def ref_name(self) -> str:
        return f"default/{self.name}"


class CountingPeers:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def resolve(self, policy, services):
        self.calls.append(policy.name)
        if policy.service is None:
            return policy, ()
        found = services.get(policy.service) if services else None
        return replace(policy, resolved=found), (() if found else (f"{policy.service} selects nothing",))


def test_resolution_is_redone_only_for_new_policies_or_a_new_snapshot():
    peers = CountingPeers()
    book = PolicyBook(peers)
    book.update_file(Path("a.yaml"), LoadedFile((Doc("a", "web"), Doc("b"))))
    book.set_services({"web": "10.96.0.1"})
    assert book.in_force()["CiliumNetworkPolicy/default/a"].policy.resolved == "10.96.0.1"
    peers.calls.clear()

    book.update_file(Path("c.yaml"), LoadedFile((Doc("c"),)))
    assert set(book.in_force()) == {f"CiliumNetworkPolicy/default/{n}" for n in "abc"}
    assert peers.calls == ["c"], "a and b were resolved again with nothing new"

    peers.calls.clear()
    assert book.set_services({})  # a's Service went away: its resolution changed
    assert sorted(peers.calls) == ["a", "b", "c"]
    assert book.in_force()["CiliumNetworkPolicy/default/a"].policy.resolved is None
    assert book.service_notes() == {"CiliumNetworkPolicy/default/a": ("web selects nothing",)}

    book.remove_file(Path("a.yaml"))
    assert set(book.in_force()) == {"CiliumNetworkPolicy/default/c"} and book.service_notes() == {}


def test_a_new_snapshot_with_the_same_result_keeps_the_entry():
    """The compiler is asked again only for policies whose resolution changed."""
    book = PolicyBook(CountingPeers())
    book.update_file(Path("a.yaml"), LoadedFile((Doc("a", "web"),)))
    book.set_services({"web": "10.96.0.1"})
    before = book.in_force()["CiliumNetworkPolicy/default/a"]
    assert not book.set_services({"web": "10.96.0.1", "db": "10.96.0.2"})
    assert book.in_force()["CiliumNetworkPolicy/default/a"] is before
