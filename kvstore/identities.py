"""Cluster-wide identities in etcd: allocate, hold a reference, drop it,
and collect the unreferenced ones. Every write is one etcd transaction, so
two nodes racing on the same labels end up with one id. I/O (etcd).

allocate(labels):
 1. read labels/<L>. If it names N, `hold(N)`: txn [value(id/N) == L-json]
    -> put id/N (same value; the new mod_revision voids a pending GC) and
    put refs/N/<node> under the lease. On failure read again.
 2. If absent, pick a random candidate in ID_MIN..ID_MAX not known to be
    used (random, as Cilium, so nodes rarely collide) and
    txn [version(id/c) == 0, version(labels/L) == 0] -> put id/c, labels/L,
    refs/c/<node>. On failure read again (another node may have won L).
    Bounded: MAX_ATTEMPTS, then KvstoreError.

`hold` also repairs what a GC or a hand edit can leave behind: if id/N is
gone but labels/L still names N (or is gone too), it re-creates id/N with
the same number, so a node that re-publishes its refs after a long outage
keeps its ids when nobody took them meanwhile.

GC (see kvstore/gc.py for the rules): `list_identities` reads the whole
identities prefix at one revision; `delete_if_unchanged` deletes id/N and,
if it still names N, labels/L, conditioned on id/N's mod_revision.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence, Set
from dataclasses import dataclass

from aetcd import transactions as tx

from kvstore import layout
from kvstore.errors import KvstoreError
from kvstore.etcd import Etcd
from kvstore.gc import GcTracker

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 16


async def _txn(etcd: Etcd, what: str, compare: Sequence, success: Sequence, failure: Sequence = ()) -> tuple[bool, list]:
    return await etcd.call(
        what, lambda c: c.transaction(compare=list(compare), success=list(success), failure=list(failure))
    )


async def allocate(
    etcd: Etcd, labels: frozenset[str], node: str, lease_id: int, known: Set[int], rng: random.Random
) -> int:
    lkey = layout.labels_key(labels)
    value = layout.labels_value(labels)
    tried: set[int] = set()
    for _ in range(MAX_ATTEMPTS):
        kv = await etcd.call("reading an identity", lambda c: c.get(lkey))
        if kv is not None:
            n = layout.parse_identity_value(kv.value)
            if n is None:
                log.warning("kvstore: replacing malformed %s = %r", lkey.decode(), kv.value)
                await _txn(etcd, "replacing a malformed labels key", [tx.Mod(lkey) == kv.mod_revision], [tx.Delete(lkey)])
                continue
            if await hold(etcd, n, labels, node, lease_id):
                return n
            continue
        c = _candidate(rng, known | tried)
        tried.add(c)
        ok, _ = await _txn(
            etcd,
            "allocating an identity",
            [tx.Version(layout.id_key(c)) == 0, tx.Version(lkey) == 0],
            [
                tx.Put(layout.id_key(c), value),
                tx.Put(lkey, layout.identity_value(c)),
                tx.Put(layout.ref_key(c, node), b"", lease=lease_id),
            ],
        )
        if ok:
            return c
    raise KvstoreError(f"could not allocate an identity for {sorted(labels)} in {MAX_ATTEMPTS} attempts (contention)")


def _candidate(rng: random.Random, used: Set[int]) -> int:
    span = layout.ID_MAX - layout.ID_MIN + 1
    if len(used) < span // 2:
        while True:
            c = rng.randint(layout.ID_MIN, layout.ID_MAX)
            if c not in used:
                return c
    free = [i for i in range(layout.ID_MIN, layout.ID_MAX + 1) if i not in used]
    if not free:
        raise KvstoreError(f"identity space {layout.ID_MIN}..{layout.ID_MAX} is exhausted")
    return rng.choice(free)


async def hold(etcd: Etcd, n: int, labels: frozenset[str], node: str, lease_id: int) -> bool:
    """Reference identity n for `labels` from `node` under `lease_id`.
    False if n now stands for other labels (the caller reads labels/L again)."""
    idk, lkey, value = layout.id_key(n), layout.labels_key(labels), layout.labels_value(labels)
    put_both = [tx.Put(idk, value), tx.Put(layout.ref_key(n, node), b"", lease=lease_id)]
    # A missing labels/L (hand edit) would let another node allocate a second
    # id for L: put it back in the same transaction.
    restore_labels = tx.Txn([tx.Version(lkey) == 0], [tx.Put(lkey, layout.identity_value(n))], [])
    ok, responses = await _txn(
        etcd, "referencing an identity", [tx.Value(idk) == value], [*put_both, restore_labels], [tx.Get(idk)]
    )
    if ok:
        return True
    current = responses[0] if responses else []
    if not current:
        # id/N is gone: re-create it with the same number if nobody took L.
        ok, _ = await _txn(
            etcd,
            "re-creating an identity",
            [tx.Version(idk) == 0, tx.Value(lkey) == layout.identity_value(n)],
            put_both,
        )
        if not ok:
            ok, _ = await _txn(
                etcd,
                "re-creating an identity",
                [tx.Version(idk) == 0, tx.Version(lkey) == 0],
                [*put_both, tx.Put(lkey, layout.identity_value(n))],
            )
        return ok
    # id/N stands for other labels; a labels/L still naming N is stale.
    _, other = current[0]
    await _txn(
        etcd,
        "removing a stale labels key",
        [tx.Value(lkey) == layout.identity_value(n), tx.Mod(idk) == other.mod_revision],
        [tx.Delete(lkey)],
    )
    return False


async def drop_ref(etcd: Etcd, n: int, node: str) -> None:
    key = layout.ref_key(n, node)
    await etcd.call("dropping an identity reference", lambda c: c.delete(key))


# -- garbage collection ------------------------------------------------------


@dataclass(frozen=True)
class IdentityListing:
    revision: int
    ids: dict[int, tuple[int, bytes]]  # id -> (mod_revision, value) of id/<id>
    refs: dict[int, frozenset[str]]  # id -> nodes referencing it


async def list_identities(etcd: Etcd) -> IdentityListing:
    p = layout.prefix(layout.IDENTITIES)
    rng = await etcd.call("listing identities", lambda c: c.get_prefix(p))
    ids: dict[int, tuple[int, bytes]] = {}
    refs: dict[int, set[str]] = {}
    for kv in rng:
        k = layout.parse_key(kv.key)
        if k is None:
            continue
        if k.kind == "id":
            ids[k.identity] = (kv.mod_revision, kv.value)
        elif k.kind == "ref":
            refs.setdefault(k.identity, set()).add(k.node)
    return IdentityListing(rng.header.revision, ids, {n: frozenset(s) for n, s in refs.items()})


async def delete_if_unchanged(etcd: Etcd, n: int, mod_revision: int, value: bytes) -> bool:
    """Delete id/N (and labels/L if it still names N) unless id/N was
    written since `mod_revision`."""
    idk = layout.id_key(n)
    success: list = [tx.Delete(idk)]
    labels = layout.parse_labels_value(value)
    if labels is not None:
        lkey = layout.labels_key(labels)
        success.append(tx.Txn([tx.Value(lkey) == layout.identity_value(n)], [tx.Delete(lkey)], []))
    ok, _ = await _txn(etcd, "deleting an unused identity", [tx.Mod(idk) == mod_revision], success)
    return ok


async def collect_garbage(etcd: Etcd, tracker: GcTracker, now: float) -> list[int]:
    """One GC pass: returns the ids deleted."""
    listing = await list_identities(etcd)
    due = tracker.scan({n: mod for n, (mod, _) in listing.ids.items()}, listing.refs.keys(), now)
    deleted = []
    for n, mod in due:
        if await delete_if_unchanged(etcd, n, mod, listing.ids[n][1]):
            log.info("kvstore: deleted identity %d (unreferenced for %.0f s or more)", n, tracker.grace)
            deleted.append(n)
        tracker.forget(n)
    return deleted
