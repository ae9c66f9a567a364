"""CIDR identities at scale: adding and removing N toCIDR prefixes is linear
work, and identities stay stable while a policy is edited.

The scaling check counts function calls (Python and builtin) under a profile
hook instead of timing anything: the count is deterministic, and quadratic
work shows as a 16x growth when N grows 4x. Speed targets live in
bench/bench_cidr.py.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from policy.compiler import Compiler
from policy.endpoint import Endpoint
from policy.identity import FIRST_CIDR_IDENTITY, IdentityAllocator
from policy.model import Policy
from policy.parse import parse_object

SUBJECT = Endpoint(1, {"k8s:app": "a", "k8s:io.kubernetes.pod.namespace": "default"}, IPv4Address("10.200.0.1"))


def cidr(i: int) -> str:
    return f"{10 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.1/32"


def cidr_policy(name: str, prefixes: list[str], *, world: bool = False) -> Policy:
    egress: list[dict[str, Any]] = [{"toCIDR": prefixes}]
    if world:
        egress.append({"toEntities": ["world"]})  # world selects every CIDR identity too
    obj = {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"endpointSelector": {"matchLabels": {"app": "a"}}, "egress": egress},
    }
    return parse_object(obj, "test")


def calls(fn: Callable[[], object]) -> int:
    """Function calls (Python and builtin) made while running fn."""
    count = 0

    def hook(frame: object, event: str, arg: object) -> None:
        nonlocal count
        if event in ("call", "c_call"):
            count += 1

    sys.setprofile(hook)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return count


def add_remove_calls(n: int) -> tuple[int, int]:
    policy = cidr_policy("big", [cidr(i) for i in range(n)], world=True)
    c = Compiler()
    c.upsert_endpoint(SUBJECT)
    c.compile()

    def add() -> None:
        c.upsert_policy(policy)
        c.compile()

    def remove() -> None:
        c.delete_policy(policy.key)
        c.compile()

    return calls(add), calls(remove)


def test_adding_and_removing_cidrs_is_linear_work() -> None:
    small_add, small_remove = add_remove_calls(250)
    big_add, big_remove = add_remove_calls(1000)
    # Linear: ~4x for 4x the prefixes. Quadratic (one allocator scan per
    # removed prefix, one scan of every selector per prefix) is ~16x.
    assert big_add / small_add < 6, (small_add, big_add)
    assert big_remove / small_remove < 6, (small_remove, big_remove)


def test_removing_many_prefixes_releases_each_once() -> None:
    released: list[int] = []

    class Counting(IdentityAllocator):
        def release_cidrs(self, nets) -> None:  # type: ignore[no-untyped-def]
            nets = list(nets)
            released.append(len(nets))
            super().release_cidrs(nets)

        def release_cidrs_except(self, keep) -> None:  # type: ignore[no-untyped-def]
            raise AssertionError("no full sweep needed: nothing was persisted")

    ids = Counting()
    c = Compiler(ids)
    c.upsert_endpoint(SUBJECT)
    policy = cidr_policy("big", [cidr(i) for i in range(500)])
    c.upsert_policy(policy)
    c.compile()
    c.delete_policy(policy.key)
    c.compile()
    assert released == [500]
    assert ids.cidr_count == 0
    assert not any(lbl.startswith("cidr:") for ls in c.compile().identity_labels.values() for lbl in ls)


def cidr_ids(c: Compiler) -> dict[str, int]:
    """prefix -> identity, read from what a compile hands the datapath."""
    state = c.compile()
    return {str(net): ident for net, ident in state.ipcache.items() if ident >= FIRST_CIDR_IDENTITY}


def test_editing_a_policy_keeps_the_identities_of_its_unchanged_prefixes() -> None:
    c = Compiler()
    c.upsert_endpoint(SUBJECT)
    c.upsert_policy(cidr_policy("p", [cidr(0), cidr(1), cidr(2)]))
    before = cidr_ids(c)
    c.upsert_policy(cidr_policy("p", [cidr(0), cidr(1), cidr(3)]))  # cidr(2) out, cidr(3) in
    after = cidr_ids(c)
    assert after[cidr(0)] == before[cidr(0)] and after[cidr(1)] == before[cidr(1)]
    assert cidr(2) not in after and after[cidr(3)] not in before.values()


def test_a_renamed_policy_keeps_its_identities_and_released_numbers_are_not_reused() -> None:
    c = Compiler()
    c.upsert_endpoint(SUBJECT)
    old, shared = cidr_policy("old", [cidr(0), cidr(1)]), cidr_policy("shared", [cidr(1), cidr(2)])
    c.upsert_policy(old)
    c.upsert_policy(shared)
    before = cidr_ids(c)
    # A rename (a file moved, metadata.name edited) reaches the compiler as a
    # delete and an upsert in one batch: the datapath must not see new numbers.
    c.delete_policy(old.key)
    c.upsert_policy(cidr_policy("new", [cidr(0), cidr(1)]))
    assert cidr_ids(c) == before
    c.delete_policy(cidr_policy("new", [cidr(0)]).key)
    after = cidr_ids(c)
    assert after == {cidr(1): before[cidr(1)], cidr(2): before[cidr(2)]}
    saved = json.loads(c.identities.to_json())
    assert set(saved) == {"labels", "cidrs", "next_label", "next_cidr"}  # the persisted format
    assert sorted(saved["cidrs"].values()) == [cidr(1), cidr(2)]
    c.upsert_policy(old)
    assert cidr_ids(c)[cidr(0)] not in before.values()  # a released number is never handed out again


def test_prefixes_persisted_by_an_earlier_run_and_named_by_no_policy_are_dropped() -> None:
    old = IdentityAllocator()
    kept, stale = old.for_cidr(IPv4Network(cidr(0))), old.for_cidr(IPv4Network(cidr(9)))
    ids = IdentityAllocator.from_json(old.to_json())
    c = Compiler(ids)
    c.upsert_endpoint(SUBJECT)
    c.upsert_policy(cidr_policy("p", [cidr(0), cidr(1)]))
    assert cidr_ids(c)[cidr(0)] == kept
    c.upsert_policy(cidr_policy("p", [cidr(0)]))
    c.compile()
    assert json.loads(ids.to_json())["cidrs"] == {str(kept): cidr(0)}  # the stale prefix is gone, the named one kept
    assert ids.cidr_count == 1
